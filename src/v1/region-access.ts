/**
 * Typed field access to a V1Region, the way a v1 VMM does it: header fields
 * at their own width, little-endian, and the data section either in one
 * access or split like QEMU's vfio_mig_rw() (8/4/2/1-byte naturally aligned
 * pieces, i.e. a 1 MiB chunk as 131072 8-byte reads).
 */
import type { V1Region } from './uapi.js';
import { VfioError } from '../errors.js';
import { getU32LE, getU64LE, putU32LE, putU64LE } from '../struct.js';

export type DataAccess = 'bulk' | 'qemu';

/** A region that answers with fewer bytes than asked: EIO, as a short pread of a header field would be. */
async function readField(region: V1Region, offset: number, width: number): Promise<Uint8Array> {
  const b = await region.read(offset, width);
  if (b.length < width)
    throw new VfioError('EIO', `v1.read(${offset})`, 'v1 region', `short read: ${b.length} of ${width} bytes`, {
      details: { offset, length: b.length },
    });
  return b;
}

export async function readU32(region: V1Region, offset: number): Promise<number> {
  return getU32LE(await readField(region, offset, 4));
}

export async function readU64(region: V1Region, offset: number): Promise<bigint> {
  return getU64LE(await readField(region, offset, 8));
}

export async function writeU32(region: V1Region, offset: number, value: number): Promise<void> {
  const b = new Uint8Array(4);
  putU32LE(b, value >>> 0);
  await region.write(offset, b);
}

export async function writeU64(region: V1Region, offset: number, value: bigint): Promise<void> {
  const b = new Uint8Array(8);
  putU64LE(b, value);
  await region.write(offset, b);
}

/** QEMU's split: 8 bytes if >= 8 remain and the offset is 8-aligned, else 4, 2, 1. */
function pieceSize(offset: number, remaining: number): number {
  if (remaining >= 8 && offset % 8 === 0) return 8;
  if (remaining >= 4 && offset % 4 === 0) return 4;
  if (remaining >= 2 && offset % 2 === 0) return 2;
  return 1;
}

/**
 * Reads `length` bytes of the data section; a bulk read hands back the
 * region's own copy. With `buffer` (at least `length` bytes), the bytes go
 * into it, with readInto() where the region has it, and the result is a view
 * of it.
 */
export async function readData(
  region: V1Region,
  offset: number,
  length: number,
  mode: DataAccess,
  buffer?: Uint8Array,
): Promise<Uint8Array> {
  const into = buffer ? buffer.subarray(0, length) : null;
  if (mode === 'bulk') {
    if (into && region.readInto) {
      await region.readInto(offset, into);
      return into;
    }
    return region.read(offset, length);
  }
  return readPieces(region, offset, into ?? new Uint8Array(length));
}

async function readPieces(region: V1Region, offset: number, into: Uint8Array): Promise<Uint8Array> {
  for (let done = 0; done < into.length;) {
    const n = pieceSize(offset + done, into.length - done);
    if (region.readInto) await region.readInto(offset + done, into.subarray(done, done + n));
    else into.set(await region.read(offset + done, n), done);
    done += n;
  }
  return into;
}

export async function writeData(region: V1Region, offset: number, data: Uint8Array, mode: DataAccess): Promise<void> {
  if (mode === 'bulk') {
    if (data.length) await region.write(offset, data);
    return;
  }
  for (let done = 0; done < data.length;) {
    const n = pieceSize(offset + done, data.length - done);
    await region.write(offset + done, data.subarray(done, done + n));
    done += n;
  }
}
