/**
 * A cursor over a whole migration stream in memory that reads the layouts
 * of framing.ts. Every failure is a VfioError naming the file and the byte
 * offset: EBADMSG for a malformed or truncated stream, EINVAL for a file
 * that is not a QEMU migration stream at all.
 */
import { VfioError } from '../errors.js';
import type { Layout } from './framing.js';

export const OP = 'qemu-stream';

export function hex(n: number | bigint, width = 0): string {
  return `0x${n.toString(16).padStart(width, '0')}`;
}

export class StreamReader {
  pos = 0;

  constructor(
    readonly buf: Buffer,
    readonly file: string,
  ) {}

  get left(): number {
    return this.buf.length - this.pos;
  }

  /** A refusal at `offset` (default: here). */
  fail(reason: string, offset = this.pos, code: 'EBADMSG' | 'EINVAL' = 'EBADMSG'): VfioError {
    return new VfioError(code, OP, this.file, `at byte ${offset} (${hex(offset)}): ${reason}`, { details: { offset } });
  }

  /** `n` more bytes must be there for `what`, which starts at `start`. */
  need(n: number, what: string, start = this.pos): void {
    if (this.pos + n > this.buf.length) {
      throw this.fail(
        `truncated: ${what} needs ${this.pos + n - start} bytes, the file has ${this.buf.length - start} left`,
        start,
      );
    }
  }

  /** Reads one layout (checking its length fields against what is left) and moves past it. */
  read<T>(l: Layout<T>, what = l.name): T {
    const start = this.pos;
    this.need(l.head, what, start);
    const size = l.head + (l.rest ? l.rest(this.buf.subarray(start, start + l.head)) : 0);
    this.need(size, what, start);
    const v = l.parser.parse(this.buf.subarray(start, start + size)) as T;
    this.pos = start + size;
    return v;
  }

  bytes(n: number, what: string): Buffer {
    this.need(n, what);
    const b = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return b;
  }

  peek(): number | undefined {
    return this.buf[this.pos];
  }
}
