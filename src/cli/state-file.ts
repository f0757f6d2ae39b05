/**
 * The vfio-mig state file: a 32-byte header, the device's migration byte
 * stream exactly as the device produced it, and a 48-byte trailer with the
 * byte count and a SHA-256 of the stream. All integers little-endian.
 *
 *   header  @0  magic "VFIOMIG\0"      8 bytes
 *           @8  format version u16     1
 *           @10 protocol u8            1 = saved with the v1 caller through the bridge, 2 = native v2
 *           @11 reserved u8            0
 *           @12 source flags u32       VFIO_MIGRATION_* of the source device
 *           @16 stream bytes u64       all ones when written to a pipe (then only the trailer has it)
 *           @24 reserved u64           0
 *   stream  the device's bytes
 *   trailer @0  magic "VFIOEND\0"      8 bytes
 *           @8  stream bytes u64
 *           @16 SHA-256 of the stream  32 bytes
 *
 * The checksum covers the stream. The header's reserved fields must be 0;
 * protocol and source flags are informational (a load does not use them)
 * and are only checked to be valid values.
 */
import { createHash, type Hash } from 'node:crypto';
import { defineStruct } from '../struct.js';
import { VfioError } from '../errors.js';
import { isMigFlagSet } from '../v2/uapi.js';

export const FILE_VERSION = 1;
export const STREAMED = 0xffff_ffff_ffff_ffffn;

const MAGIC = Buffer.from('VFIOMIG\0', 'latin1').readBigUInt64LE();
const END = Buffer.from('VFIOEND\0', 'latin1').readBigUInt64LE();
const PROTOCOL = { v1: 1, v2: 2 } as const;

export const stateFileHeader = defineStruct('vfio_mig_file_header', 32, {
  magic: { offset: 0, type: 'u64' },
  version: { offset: 8, type: 'u16' },
  protocol: { offset: 10, type: 'u8' },
  reserved0: { offset: 11, type: 'u8' },
  flags: { offset: 12, type: 'u32' },
  byte_count: { offset: 16, type: 'u64' },
  reserved: { offset: 24, type: 'u64' },
});
export const stateFileTrailer = defineStruct('vfio_mig_file_trailer', 16, {
  magic: { offset: 0, type: 'u64' },
  byte_count: { offset: 8, type: 'u64' },
});
export const HEADER_SIZE = stateFileHeader.size;
export const TRAILER_SIZE = stateFileTrailer.size + 32; // + SHA-256

export type SavedProtocol = 'v1' | 'v2';

export interface StateFileHeader {
  version: number;
  protocol: SavedProtocol;
  flags: number;
  /** null when the file was streamed and only the trailer knows. */
  byteCount: bigint | null;
}

export function encodeHeader(h: { protocol: SavedProtocol; flags: number; byteCount: bigint | null }): Buffer {
  const b = Buffer.alloc(HEADER_SIZE);
  stateFileHeader.encode(
    {
      magic: MAGIC,
      version: FILE_VERSION,
      protocol: PROTOCOL[h.protocol],
      flags: h.flags,
      byte_count: h.byteCount ?? STREAMED,
    },
    b,
  );
  return b;
}

/** Checks magic, version and protocol; `file` names the input in errors. */
export function decodeHeader(b: Uint8Array, file: string): StateFileHeader {
  const bad = (why: string) => new VfioError('EINVAL', 'load', file, why);
  if (b.length < HEADER_SIZE)
    throw bad(
      b.length === 0
        ? 'empty input: not a vfio-mig state file'
        : `truncated: ${b.length} bytes, shorter than the ${HEADER_SIZE}-byte header`,
    );
  const h = stateFileHeader.decode(b);
  if (h.magic !== MAGIC) throw bad('wrong magic: not a vfio-mig state file');
  if (h.version !== FILE_VERSION)
    throw bad(`unsupported format version ${h.version} (this tool reads ${FILE_VERSION})`);
  if (h.protocol !== PROTOCOL.v1 && h.protocol !== PROTOCOL.v2) throw bad(`unknown protocol byte ${h.protocol}`);
  if (h.reserved0 !== 0 || h.reserved !== 0n)
    throw bad('reserved header bytes are not zero: not written by this tool, or corrupted');
  // The source's flags are informational, but a corrupted value must not pass: STOP_COPY and known bits only.
  if (!isMigFlagSet(h.flags)) throw bad(`source flags 0x${h.flags.toString(16)} are not a VFIO migration flag set`);
  return {
    version: h.version,
    protocol: h.protocol === PROTOCOL.v1 ? 'v1' : 'v2',
    flags: h.flags,
    byteCount: h.byte_count === STREAMED ? null : h.byte_count,
  };
}

export function encodeTrailer(byteCount: bigint, sha256: Buffer): Buffer {
  const b = Buffer.alloc(TRAILER_SIZE);
  stateFileTrailer.encode({ magic: END, byte_count: byteCount }, b);
  sha256.copy(b, stateFileTrailer.size);
  return b;
}

/** The trailer's byte count, or null when `b` is not a whole trailer. */
function trailerCount(b: Uint8Array): bigint | null {
  if (b.length !== TRAILER_SIZE) return null;
  const t = stateFileTrailer.decode(b);
  return t.magic === END ? t.byte_count : null;
}

/** The last `n` bytes of `prev` followed by `c`, copied (chunks may be reused by their reader). */
function keepLast(prev: Buffer, c: Uint8Array, n: number): Buffer {
  return c.length >= n ? Buffer.from(c.subarray(c.length - n)) : Buffer.from(Buffer.concat([prev, c]).subarray(-n));
}

const END_BYTES = Buffer.from('VFIOEND\0', 'latin1');

/**
 * The device's stream out of what follows the header, checked as it
 * passes, with the same rules for a file and a pipe: the stream is exactly
 * the header's byte count (when the header has one; a streamed header has
 * none, and then the last 48 bytes are the trailer), the trailer's count
 * and SHA-256 match it, and nothing follows the trailer. What is yielded
 * is the stream; a mismatch throws EINVAL naming `file` once the input has
 * ended, before the generator is done, so a resume fed from it is never
 * completed.
 */
export async function* checkedStream(
  rest: AsyncIterable<Uint8Array>,
  h: StateFileHeader,
  file: string,
): AsyncGenerator<Uint8Array> {
  const bad = (why: string) => new VfioError('EINVAL', 'load', file, why);
  const extra = (n: bigint) =>
    bad(
      `${n} extra bytes after the trailer: refused, since a state file with bytes appended is not the file that was saved`,
    );
  const hash = newHash();
  let sent = 0n; // stream bytes passed on, and hashed
  let received = 0n; // every byte after the header
  let last: Buffer = Buffer.alloc(0); // the last TRAILER_SIZE bytes received
  let held: Buffer = Buffer.alloc(0); // known count: the first TRAILER_SIZE bytes after the stream; else the last TRAILER_SIZE bytes
  let candidate: bigint | null = null; // streamed header: the first "VFIOEND\0" whose count is its own offset (a trailer with bytes after it)
  let scanned = 0n;
  for await (const c of rest) {
    received += BigInt(c.length);
    last = keepLast(last, c, TRAILER_SIZE);
    if (h.byteCount !== null) {
      const room = h.byteCount - sent;
      const take = room >= BigInt(c.length) ? c.length : Number(room);
      if (held.length < TRAILER_SIZE && take < c.length)
        held = Buffer.concat([held, c.subarray(take, take + TRAILER_SIZE - held.length)]);
      if (take === 0) continue;
      const body = c.subarray(0, take);
      hash.update(body);
      sent += BigInt(take);
      yield body;
      continue;
    }
    const buf = held.length ? Buffer.concat([held, c]) : Buffer.from(c);
    // buf starts at stream offset `sent`; look for a trailer that says where it is.
    for (
      let i = buf.indexOf(END_BYTES, Number(scanned - sent));
      candidate === null && i >= 0 && i + 16 <= buf.length;
      i = buf.indexOf(END_BYTES, i + 1)
    ) {
      if (buf.readBigUInt64LE(i + 8) === sent + BigInt(i)) candidate = sent + BigInt(i);
    }
    scanned = sent + BigInt(Math.max(0, buf.length - 15));
    if (buf.length <= TRAILER_SIZE) {
      held = buf;
      continue;
    }
    const body = buf.subarray(0, buf.length - TRAILER_SIZE);
    held = Buffer.from(buf.subarray(buf.length - TRAILER_SIZE));
    hash.update(body);
    sent += BigInt(body.length);
    yield body;
  }
  const T = BigInt(TRAILER_SIZE);
  const atEnd = trailerCount(last);
  if (h.byteCount === null) {
    if (candidate !== null && candidate + T < received) throw extra(received - candidate - T);
    if (atEnd === null) throw bad(`truncated: the trailer is missing (${received} bytes after the header)`);
    if (atEnd !== sent) throw bad(`the trailer says ${atEnd} stream bytes, received ${sent}`);
  } else {
    const H = h.byteCount;
    const atH = trailerCount(held);
    if (atH === null) {
      if (atEnd !== null)
        throw bad(`the header says ${H} stream bytes, received ${received - T}, the trailer says ${atEnd}`);
      if (received < H + T)
        throw bad(`truncated: the header says ${H} stream bytes (${H + T} with the trailer), received ${received}`);
      throw bad(`no trailer after the ${H} stream bytes the header says (received ${received} bytes after the header)`);
    }
    if (atH !== H) throw bad(`the header says ${H} stream bytes, the trailer says ${atH}`);
  }
  if (
    !hash
      .digest()
      .equals(h.byteCount === null ? last.subarray(stateFileTrailer.size) : held.subarray(stateFileTrailer.size))
  )
    throw bad('checksum mismatch: the state data is corrupted');
  if (h.byteCount !== null && received > h.byteCount + T) throw extra(received - h.byteCount - T);
}

export function newHash(): Hash {
  return createHash('sha256');
}
