/**
 * The bridge's save side: what v1 asks of a saving device that v2 does not
 * give (docs/protocol.md#bridge-pending-bytes, #bridge-save-data). v2 has a
 * byte stream with no count of what is left; v1 wants a stable pending_bytes
 * and a chunk frozen in the data section. So this reads one chunk ahead and
 * holds the chunk it handed out until the caller moves on. Everything here
 * belongs to one data session and is dropped with it.
 */
import { isVfioError } from '../errors.js';
import { V1, isErrorV1 } from '../v1/uapi.js';
import type { DataStream, V2Device } from '../v2/device.js';
import { readSome } from '../v2/stream-io.js';
import { MigState } from '../v2/uapi.js';
import { isRealPrecopy } from './state-map.js';
import type { TraceLog } from './trace-log.js';

/** Largest read-ahead buffer of its own (used only while a chunk holds the section). */
const READ_AHEAD = 64 * 1024;

/** What the window reads from the bridge on each access: the session and the two states. */
export interface SaveSession {
  /** The data_fd of the session, or null (none, or virtual pre-copy). */
  readonly stream: DataStream | null;
  /** v1 device_state as the caller sees it. */
  readonly v1: number;
  /** The v2 state the device is in, as far as the bridge knows. */
  readonly v2: MigState;
}

export class SaveWindow {
  readonly #section: Uint8Array;
  readonly #dev: V2Device;
  readonly #flags: number;
  readonly #trace: TraceLog;
  readonly #session: SaveSession;
  #readAhead: Uint8Array | null = null;
  /** The read-ahead bytes are at the start of the section itself (no chunk was held there). */
  #aheadInSection = false;
  #aheadStart = 0;
  #aheadEnd = 0;
  /** The stop-copy stream has ended (read() gave 0). */
  #eof = false;
  /** data_size of the chunk in the section, frozen until the next pending_bytes read; null when none is held. */
  #chunk: number | null = null;
  /** Whether the caller has read that data_size (only then is the chunk handed out). */
  #chunkSizeRead = false;
  #pendingCache: bigint | null = null;
  /** PRECOPY_INFO counts when the temporary end was hit. */
  #tempEndInfo: string | null = null;

  constructor(section: Uint8Array, device: V2Device, flags: number, trace: TraceLog, session: SaveSession) {
    this.#section = section;
    this.#dev = device;
    this.#flags = flags;
    this.#trace = trace;
    this.#session = session;
  }

  /** Bytes of the read-ahead buffer of its own, if one was allocated. */
  get aheadBytes(): number {
    return this.#readAhead?.length ?? 0;
  }

  /** Ends the session's window: buffers, frozen chunk and cached counts go. */
  drop(): void {
    this.#readAhead = null;
    this.#aheadInSection = false;
    this.#aheadStart = this.#aheadEnd = 0;
    this.#eof = false;
    this.#chunk = null;
    this.#chunkSizeRead = false;
    this.#pendingCache = null;
    this.#tempEndInfo = null;
  }

  /** The state changed within the session: pending_bytes is computed afresh; the chunk and read-ahead stay. */
  forgetPending(): void {
    this.#pendingCache = null;
  }

  /** data_size read: the size of the frozen chunk (0 with none), which from now on counts as handed out. */
  readDataSize(): bigint {
    if (this.#chunk !== null) this.#chunkSizeRead = true;
    return BigInt(this.#chunk ?? 0);
  }

  #saving(): boolean {
    const v1 = this.#session.v1;
    return (v1 & V1.SAVING) !== 0 && !isErrorV1(v1);
  }

  #buffered(): number {
    return this.#aheadEnd - this.#aheadStart;
  }

  /**
   * pending_bytes (docs/protocol.md#bridge-pending-bytes). Side-effect free for the caller and stable on repeated
   * reads: the value is computed once per chunk and kept until the next
   * data access or state change. A read also ends the current chunk, if the
   * caller read its data_size; a chunk prepared by a data_offset read whose
   * size was never read stays, counted in pending_bytes, for the next
   * data_offset: its bytes have left the data_fd and exist nowhere else.
   */
  async pendingBytes(): Promise<bigint> {
    if (this.#chunk !== null && (this.#chunkSizeRead || this.#chunk === 0)) {
      // Handed out: a value cached while the chunk was still held counted it (any order but QEMU's).
      this.#chunk = null;
      this.#pendingCache = null;
    }
    const kept = BigInt(this.#chunk ?? 0);
    if (!this.#saving() || !this.#session.stream) return kept;
    if (this.#pendingCache !== null) return this.#pendingCache;
    let v: bigint;
    if (isRealPrecopy(this.#session.v1, this.#flags)) {
      v = kept + BigInt(this.#buffered()) + (await this.#precopyPending());
    } else {
      // STOP_COPY: read ahead to know whether anything is left (0 only at true end).
      if (this.#buffered() === 0 && !this.#eof) await this.#fillReadAhead(kept === 0n);
      v = kept + BigInt(this.#buffered());
      if (!this.#eof) v += await this.#stopCopyEstimate(v);
    }
    this.#pendingCache = v;
    return v;
  }

  async #precopyPending(): Promise<bigint> {
    const stream = this.#session.stream!;
    const info = await this.#trace.call(
      'VFIO_MIG_GET_PRECOPY_INFO',
      () => stream.precopyInfo(),
      (i) => `initial ${i.initialBytes} dirty ${i.dirtyBytes}`,
    );
    const sum = info.initialBytes + info.dirtyBytes;
    // After a temporary end, a driver that still reports the same counts has nothing now.
    if (this.#tempEndInfo === `${info.initialBytes}/${info.dirtyBytes}`) return 0n;
    return sum;
  }

  async #stopCopyEstimate(buffered: bigint): Promise<bigint> {
    try {
      const est = await this.#trace.call('FEATURE_MIG_DATA_SIZE', () => this.#dev.stopCopySize(), String);
      return est > 0n ? est : buffered > 0n ? 0n : 1n;
    } catch (e) {
      if (isVfioError(e, 'ENOTTY')) return buffered > 0n ? 0n : 1n;
      throw e;
    }
  }

  /**
   * Reads ahead to learn whether the stream goes on. With the section free
   * (no chunk held in it), straight into the section, a whole chunk: the
   * next data_offset then has nothing to copy or read (one read() per
   * chunk). Else into a small buffer of its own, copied in at data_offset.
   */
  async #fillReadAhead(intoSection: boolean): Promise<void> {
    this.#aheadStart = this.#aheadEnd = 0; // a failed read below must not leave the last chunk looking unread
    this.#aheadInSection = intoSection;
    if (!intoSection) this.#readAhead ??= new Uint8Array(Math.min(this.#section.length, READ_AHEAD));
    this.#aheadEnd = await this.#readStream(intoSection ? this.#section : this.#readAhead!, 0);
  }

  /**
   * Reads the stream into `buf` from `at` until it is full, at end of stream
   * (0 in stop-copy), or at a temporary end of pre-copy (ENOMSG, or 0 as mtty).
   * An error after some bytes were read returns those bytes: they have left
   * the data_fd, and the next read meets the error again if it lasts.
   */
  async #readStream(buf: Uint8Array, at: number): Promise<number> {
    const stream = this.#session.stream!;
    let n = at;
    while (n < buf.length && !this.#eof) {
      let got: number;
      try {
        got = await this.#trace.call(
          `read(data_fd, ${buf.length - n})`,
          () => readSome(stream, buf.subarray(n)),
          String,
        );
      } catch (e) {
        if (isVfioError(e, 'ENOMSG') && this.#session.v2 !== MigState.STOP_COPY) {
          await this.#noteTemporaryEnd();
          break;
        }
        if (n > at) break;
        throw e;
      }
      if (got === 0) {
        if (this.#session.v2 === MigState.STOP_COPY) this.#eof = true;
        else await this.#noteTemporaryEnd();
        break;
      }
      n += got;
    }
    return n - at;
  }

  async #noteTemporaryEnd(): Promise<void> {
    const stream = this.#session.stream!;
    try {
      const info = await this.#trace.call(
        'VFIO_MIG_GET_PRECOPY_INFO',
        () => stream.precopyInfo(),
        (i) => `initial ${i.initialBytes} dirty ${i.dirtyBytes}`,
      );
      this.#tempEndInfo = `${info.initialBytes}/${info.dirtyBytes}`;
    } catch {
      this.#tempEndInfo = null;
    }
  }

  /**
   * data_offset read while saving (docs/protocol.md#bridge-save-data): fill the section, read-ahead
   * buffer first, then the stream; freeze {offset, size} until the next
   * pending_bytes read.
   */
  async prepareChunk(): Promise<void> {
    if (!this.#saving() || this.#chunk !== null) return;
    if (!this.#session.stream) {
      this.#chunk = 0; // virtual pre-copy: the device has no data before stop-copy
      return;
    }
    let n = 0;
    const fromAhead = Math.min(this.#buffered(), this.#section.length);
    if (fromAhead > 0) {
      // In the section the bytes are already in place (read ahead from its start).
      if (!this.#aheadInSection)
        this.#section.set(this.#readAhead!.subarray(this.#aheadStart, this.#aheadStart + fromAhead));
      this.#aheadStart += fromAhead;
      n = fromAhead;
    }
    this.#aheadInSection = false;
    try {
      n += await this.#readStream(this.#section, n); // nothing to read when the read-ahead filled the section
    } catch (e) {
      // Read-ahead bytes in hand are the chunk: they have left the data_fd (docs/decisions.md 15).
      if (n === 0) throw e;
    }
    this.#chunk = n;
    this.#chunkSizeRead = false;
    this.#pendingCache = null;
  }
}
