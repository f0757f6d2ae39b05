/**
 * The "ram" section's own record framing (QEMU v7.2.0 and v10.0.0
 * migration/ram.c): records of a be64 address whose bits below the target
 * page size are flags; MEM_SIZE carries the RAMBlock list (u8-length idstr,
 * be64 used length each), PAGE a page, ZERO a fill byte, both after the
 * block's idstr unless CONTINUE; EOS ends the section's records.
 */
import { RamFlag, be64, ramBlock, shortString } from './framing.js';
import { hex, type StreamReader } from './reader.js';

export interface RamBlock {
  idstr: string;
  length: number;
}

export interface RamWalk {
  blocks: RamBlock[];
  pages: number;
  zeroPages: number;
}

export interface RamOptions {
  pageSize: number;
  /** The x-ignore-shared capability: each block entry has its memory region's address too. */
  ignoreShared: boolean;
}

const KNOWN = RamFlag.ZERO | RamFlag.MEM_SIZE | RamFlag.PAGE | RamFlag.EOS | RamFlag.CONTINUE | RamFlag.MULTIFD_FLUSH;

/** Walks one "ram" section's records, from the reader's position through EOS. */
export function walkRamSection(r: StreamReader, opts: RamOptions): RamWalk {
  const out: RamWalk = { blocks: [], pages: 0, zeroPages: 0 };
  const mask = BigInt(opts.pageSize - 1);
  for (;;) {
    const offset = r.pos;
    const word = r.read(be64, 'ram record').value;
    const flags = Number(word & mask);
    const addr = word & ~mask;
    if (flags & ~KNOWN) {
      const what =
        flags & RamFlag.XBZRLE
          ? 'XBZRLE'
          : flags & RamFlag.COMPRESS_PAGE
            ? 'compressed page'
            : flags & RamFlag.HOOK
              ? 'RDMA hook'
              : 'unknown';
      throw r.fail(
        `ram record flags ${hex(flags)} (${what}) are not supported: migrate without compression, XBZRLE or RDMA`,
        offset,
      );
    }
    if (flags & RamFlag.MEM_SIZE) {
      // The RAMBlock list: entries until their lengths add up to the total in the address word.
      let total = addr;
      while (total > 0n) {
        const at = r.pos;
        const b = r.read(ramBlock, 'RAMBlock entry');
        if (b.length > total)
          throw r.fail(
            `RAMBlock ${b.idstr} is ${b.length} bytes, more than the ${total} the MEM_SIZE record has left`,
            at,
          );
        total -= b.length;
        out.blocks.push({ idstr: b.idstr, length: Number(b.length) });
        if (opts.ignoreShared) r.read(be64, `memory region address of RAMBlock ${b.idstr}`);
      }
    }
    if (flags & (RamFlag.ZERO | RamFlag.PAGE)) {
      if (!(flags & RamFlag.CONTINUE)) r.read(shortString, 'RAMBlock idstr');
      if (flags & RamFlag.ZERO) {
        r.bytes(1, 'zero page fill byte');
        out.zeroPages++;
      } else {
        r.bytes(opts.pageSize, `page at ${hex(addr)}`);
        out.pages++;
      }
    }
    if (flags & RamFlag.EOS) return out;
  }
}
