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
  stateFileHeader.encode({ magic: MAGIC, version: FILE_VERSION, protocol: PROTOCOL[h.protocol], flags: h.flags, byte_count: h.byteCount ?? STREAMED }, b);
  return b;
}

/** Checks magic, version and protocol; `file` names the input in errors. */
export function decodeHeader(b: Uint8Array, file: string): StateFileHeader {
  const bad = (why: string) => new VfioError('EINVAL', 'load', file, why);
  if (b.length < HEADER_SIZE) throw bad(b.length === 0 ? 'empty input: not a vfio-mig state file' : `truncated: ${b.length} bytes, shorter than the ${HEADER_SIZE}-byte header`);
  const h = stateFileHeader.decode(b);
  if (h.magic !== MAGIC) throw bad('wrong magic: not a vfio-mig state file');
  if (h.version !== FILE_VERSION) throw bad(`unsupported format version ${h.version} (this tool reads ${FILE_VERSION})`);
  if (h.protocol !== PROTOCOL.v1 && h.protocol !== PROTOCOL.v2) throw bad(`unknown protocol byte ${h.protocol}`);
  if (h.reserved0 !== 0 || h.reserved !== 0n) throw bad('reserved header bytes are not zero: not written by this tool, or corrupted');
  // The source's flags are informational, but a corrupted value must not pass: STOP_COPY and known bits only.
  if (!isMigFlagSet(h.flags)) throw bad(`source flags 0x${h.flags.toString(16)} are not a VFIO migration flag set`);
  return { version: h.version, protocol: h.protocol === PROTOCOL.v1 ? 'v1' : 'v2', flags: h.flags, byteCount: h.byte_count === STREAMED ? null : h.byte_count };
}

export function encodeTrailer(byteCount: bigint, sha256: Buffer): Buffer {
  const b = Buffer.alloc(TRAILER_SIZE);
  stateFileTrailer.encode({ magic: END, byte_count: byteCount }, b);
  sha256.copy(b, stateFileTrailer.size);
  return b;
}

/** Checks a trailer against the byte count and hash of what was read. */
export function checkTrailer(b: Uint8Array, byteCount: bigint, hash: Hash, file: string): void {
  const bad = (why: string) => new VfioError('EINVAL', 'load', file, why);
  if (b.length !== TRAILER_SIZE || stateFileTrailer.decode(b).magic !== END) throw bad('truncated: the trailer is missing');
  const count = stateFileTrailer.decode(b).byte_count;
  if (count !== byteCount) throw bad(`truncated or padded: trailer says ${count} stream bytes, found ${byteCount}`);
  if (!hash.digest().equals(b.subarray(stateFileTrailer.size))) throw bad('checksum mismatch: the state data is corrupted');
}

export function newHash(): Hash {
  return createHash('sha256');
}
