/**
 * The simulated device's data sessions: the saving side that produces the
 * stream, the resuming side that checks it, and the data_fd over them. A
 * session sees its device only through a SessionPort, so the device's own
 * fields stay private and every effect a session has on the device (pages
 * dirtied while pre-copy data is read) is a call the device answers.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { VfioError } from '../../errors.js';
import type { DataStream, PrecopyInfo } from '../device.js';
import { MigState, migStateName } from '../uapi.js';
import { pageWindow, patternFor } from './content.js';
import type { FaultPlan, IoFaultCounters } from './faults.js';
import { RECORD_END, RECORD_PAGE, SIM_STREAM_MAGIC, simHeader, simRecord } from './stream-format.js';

export const RECORD_HEADER = simRecord.size;
/** The record's field offsets, for the fast paths that write and check records in place (no encode/decode objects). */
const REC = simRecord.layout;

/** What the device holds: a page's bytes are pattern[pageWindow(seed, page, versions[page])...]. */
export interface Content {
  readonly seed: number;
  readonly versions: Uint32Array;
}

/** The fixed shape of one device model's state. */
export class Geometry {
  readonly pageCount: number;
  /** The shared content pattern (content.ts): read-only by convention, never written. */
  readonly pattern: Buffer;
  constructor(
    readonly model: number,
    readonly pageSize: number,
    readonly stateSize: number,
  ) {
    this.pageCount = Math.ceil(stateSize / pageSize);
    this.pattern = patternFor(pageSize);
  }

  pageLength(page: number): number {
    return Math.min(this.pageSize, this.stateSize - page * this.pageSize);
  }

  /** The length of a whole stop-copy stream: header, every page as a record, END. */
  get streamSize(): bigint {
    return BigInt(simHeader.size + this.pageCount * RECORD_HEADER + this.stateSize + RECORD_HEADER);
  }
}

/** All a session may see and do of its device. */
export interface SessionPort {
  readonly name: string;
  readonly geometry: Geometry;
  /** mtty's deviations: 0 (not ENOMSG) at a temporary end of pre-copy; EFAULT from the write that completes a bad header. */
  readonly mttyQuirks: boolean;
  state(): MigState;
  content(): Content;
  /** The device kept running while `bytes` of pre-copy data were read. */
  ranWhileRead(bytes: number): void;
  /** The faults armed now (SimDevice.setFaults() may replace them while a session is open). */
  faults(): FaultPlan;
}

interface OutRecord {
  hdr: Uint8Array;
  page: number;
  window: number;
  length: number;
  pos: number; // bytes of this record already emitted
  dirty: boolean; // a re-send of a dirtied page (counts as dirty_bytes)
}

/** The saving side of one data session: produces the stream lazily. */
export class SaveSession {
  readonly #port: SessionPort;
  readonly #geo: Geometry;
  readonly #header: Uint8Array;
  #headerPos = 0;
  #sweepNext = 0;
  readonly #dirty = new Set<number>();
  #current: OutRecord | null = null;
  #endPos = 0;
  constructor(port: SessionPort) {
    this.#port = port;
    const g = (this.#geo = port.geometry);
    this.#header = simHeader.encode({
      magic: SIM_STREAM_MAGIC,
      model: g.model,
      page_size: g.pageSize,
      state_size: BigInt(g.stateSize),
      seed: port.content().seed,
    });
  }

  /** Bytes still owed before the temporary end of pre-copy: [initial, dirty]. */
  pending(): [bigint, bigint] {
    const d = this.#geo;
    let initial = BigInt(this.#header.length - this.#headerPos);
    initial +=
      BigInt((d.pageCount - this.#sweepNext) * RECORD_HEADER) +
      BigInt(d.stateSize - Math.min(d.stateSize, this.#sweepNext * d.pageSize));
    let dirty = 0n;
    for (const p of this.#dirty) dirty += BigInt(RECORD_HEADER + d.pageLength(p));
    if (this.#current) {
      const rest = BigInt(RECORD_HEADER + this.#current.length - this.#current.pos);
      if (this.#current.dirty) dirty += rest;
      else initial += rest;
    }
    return [initial, dirty];
  }

  /** Copies stream bytes into `into`; in pre-copy stops at the temporary end, in stop-copy at END. */
  produce(into: Uint8Array, stopCopy: boolean): number {
    const d = this.#geo;
    let n = 0;
    if (this.#headerPos < this.#header.length) {
      const k = Math.min(into.length, this.#header.length - this.#headerPos);
      into.set(this.#header.subarray(this.#headerPos, this.#headerPos + k), 0);
      this.#headerPos += k;
      n += k;
    }
    const pattern = d.pattern;
    while (n < into.length) {
      if (!this.#current) n = this.#produceWhole(into, n);
      if (n === into.length) break;
      if (!this.#current && !this.#nextRecord()) {
        if (!stopCopy || this.#endPos === RECORD_HEADER) break;
        // END record: emitted only in stop-copy, once everything else is out.
        const end = simRecord.encode({ kind: RECORD_END, page: d.pageCount, version: 0, length: 0 });
        const k = Math.min(into.length - n, RECORD_HEADER - this.#endPos);
        into.set(end.subarray(this.#endPos, this.#endPos + k), n);
        this.#endPos += k;
        n += k;
        continue;
      }
      const r = this.#current!;
      if (r.pos < RECORD_HEADER) {
        const k = Math.min(into.length - n, RECORD_HEADER - r.pos);
        into.set(r.hdr.subarray(r.pos, r.pos + k), n);
        r.pos += k;
        n += k;
        continue;
      }
      const off = r.pos - RECORD_HEADER;
      const k = Math.min(into.length - n, r.length - off);
      into.set(pattern.subarray(r.window + off, r.window + off + k), n);
      r.pos += k;
      n += k;
      if (r.pos === RECORD_HEADER + r.length) this.#current = null;
    }
    return n;
  }

  /**
   * The fast path of produce(): the next unsent pages of the sweep, each as
   * one record written whole at `n`, for as long as whole records fit. The
   * bytes are those nextRecord() and the loop above would give; one copy per
   * page and no allocation, so the sim runs near memory-copy speed.
   */
  #produceWhole(into: Uint8Array, n: number): number {
    const d = this.#geo;
    const { pattern, pageCount } = d;
    const { seed, versions } = this.#port.content();
    const view = new DataView(into.buffer, into.byteOffset, into.length);
    while (this.#sweepNext < pageCount) {
      const page = this.#sweepNext;
      const length = d.pageLength(page);
      if (n + RECORD_HEADER + length > into.length) break;
      const version = versions[page]!;
      view.setUint32(n + REC.kind.offset, RECORD_PAGE, true);
      view.setUint32(n + REC.page.offset, page, true);
      view.setUint32(n + REC.version.offset, version, true);
      view.setUint32(n + REC.length.offset, length, true);
      const w = pageWindow(seed, page, version);
      pattern.copy(into, n + RECORD_HEADER, w, w + length);
      n += RECORD_HEADER + length;
      this.#sweepNext = page + 1;
    }
    return n;
  }

  get finished(): boolean {
    return this.#endPos === RECORD_HEADER;
  }

  #nextRecord(): boolean {
    const d = this.#geo;
    let page: number;
    let dirty = false;
    if (this.#sweepNext < d.pageCount) page = this.#sweepNext++;
    else {
      const first = this.#dirty.values().next();
      if (first.done) return false;
      page = first.value;
      this.#dirty.delete(page);
      dirty = true;
    }
    const { seed, versions } = this.#port.content();
    const version = versions[page]!;
    const length = d.pageLength(page);
    this.#current = {
      hdr: simRecord.encode({ kind: RECORD_PAGE, page, version, length }),
      page,
      window: pageWindow(seed, page, version),
      length,
      pos: 0,
      dirty,
    };
    return true;
  }

  /** The running device changed page `p`: re-send it if it was (being) sent. */
  touched(p: number): void {
    if (p < this.#sweepNext || this.#current?.page === p) this.#dirty.add(p);
  }
}

/** The resuming side of one data session: checks the stream as it arrives. */
export class ResumeSession {
  readonly #geo: Geometry;
  readonly #staged: Uint32Array;
  readonly #received: Uint8Array;
  #receivedCount = 0;
  readonly #headerBuf = new Uint8Array(simHeader.size);
  #headerPos = 0;
  #seed = 0;
  readonly #recBuf = new Uint8Array(RECORD_HEADER);
  #recPos = 0;
  #rec: { page: number; version: number; length: number; window: number; pos: number } | null = null;
  #ended = false;
  #bytes = 0;
  #error: string | null = null;

  constructor(port: SessionPort) {
    this.#geo = port.geometry;
    this.#staged = new Uint32Array(this.#geo.pageCount);
    this.#received = new Uint8Array(this.#geo.pageCount);
  }

  /** Consumes bytes; returns a header error for the caller to raise at once (mtty mode), else null. */
  consume(data: Uint8Array): string | null {
    let i = 0;
    this.#bytes += data.length;
    while (i < data.length && !this.#error) {
      if (this.#headerPos < this.#headerBuf.length) {
        const k = Math.min(data.length - i, this.#headerBuf.length - this.#headerPos);
        this.#headerBuf.set(data.subarray(i, i + k), this.#headerPos);
        this.#headerPos += k;
        i += k;
        if (this.#headerPos === this.#headerBuf.length) {
          this.#checkHeader();
          if (this.#error) return this.#error;
        }
        continue;
      }
      if (this.#ended) {
        this.#error = `${data.length - i} bytes after the end of the stream`;
        break;
      }
      if (!this.#rec) {
        if (this.#recPos === 0) {
          i = this.#consumeWhole(data, i);
          if (i === data.length || this.#error) break;
        }
        const k = Math.min(data.length - i, RECORD_HEADER - this.#recPos);
        this.#recBuf.set(data.subarray(i, i + k), this.#recPos);
        this.#recPos += k;
        i += k;
        if (this.#recPos === RECORD_HEADER) {
          this.#recPos = 0;
          this.#startRecord();
        }
        continue;
      }
      const r = this.#rec;
      const k = Math.min(data.length - i, r.length - r.pos);
      const expect = this.#geo.pattern.subarray(r.window + r.pos, r.window + r.pos + k);
      if (Buffer.compare(expect, data.subarray(i, i + k)) !== 0) {
        this.#error = `page ${r.page} content does not match its record (corrupt stream)`;
        break;
      }
      r.pos += k;
      i += k;
      if (r.pos === r.length) {
        this.#staged[r.page] = r.version;
        if (!this.#received[r.page]) {
          this.#received[r.page] = 1;
          this.#receivedCount++;
        }
        this.#rec = null;
      }
    }
    return null;
  }

  /**
   * The fast path of consume(): whole, well-formed page records from `i`,
   * each checked with one compare and no allocation. Stops at the first
   * record that is not whole or not a valid page record, and leaves it to
   * the byte-at-a-time path, which gives its verdict.
   */
  #consumeWhole(data: Uint8Array, i: number): number {
    const d = this.#geo;
    const { pattern, pageCount } = d;
    const view = new DataView(data.buffer, data.byteOffset, data.length);
    while (i + RECORD_HEADER <= data.length) {
      const page = view.getUint32(i + REC.page.offset, true);
      const length = view.getUint32(i + REC.length.offset, true);
      if (
        view.getUint32(i + REC.kind.offset, true) !== RECORD_PAGE ||
        page >= pageCount ||
        length !== d.pageLength(page)
      )
        break;
      const at = i + RECORD_HEADER;
      if (at + length > data.length) break;
      const version = view.getUint32(i + REC.version.offset, true);
      const w = pageWindow(this.#seed, page, version);
      if (pattern.compare(data, at, at + length, w, w + length) !== 0) {
        this.#error = `page ${page} content does not match its record (corrupt stream)`;
        return at;
      }
      this.#staged[page] = version;
      if (!this.#received[page]) {
        this.#received[page] = 1;
        this.#receivedCount++;
      }
      i = at + length;
    }
    return i;
  }

  #checkHeader(): void {
    const h = simHeader.decode(this.#headerBuf);
    const d = this.#geo;
    if (h.magic !== SIM_STREAM_MAGIC) this.#error = 'bad stream magic (not a simulated-device stream)';
    else if (h.model !== d.model || h.page_size !== d.pageSize || h.state_size !== BigInt(d.stateSize))
      this.#error = `foreign stream: model 0x${h.model.toString(16)} state ${h.state_size} bytes, this device is model 0x${d.model.toString(16)} with ${d.stateSize} bytes`;
    else this.#seed = h.seed;
  }

  #startRecord(): void {
    const r = simRecord.decode(this.#recBuf);
    const d = this.#geo;
    if (r.kind === RECORD_END && r.length === 0) {
      this.#ended = true;
      return;
    }
    if (r.kind !== RECORD_PAGE || r.page >= d.pageCount || r.length !== d.pageLength(r.page)) {
      this.#error = `bad record (kind ${r.kind}, page ${r.page}, length ${r.length})`;
      return;
    }
    this.#rec = {
      page: r.page,
      version: r.version,
      length: r.length,
      window: pageWindow(this.#seed, r.page, r.version),
      pos: 0,
    };
  }

  /** The state the stream carried, for the device to take once verdict() is null. */
  loaded(): Content {
    return { seed: this.#seed, versions: this.#staged };
  }

  /** Why the data cannot be loaded, or null when it is complete and intact. */
  verdict(): string | null {
    if (this.#error) return this.#error;
    if (this.#bytes === 0) return 'no data was written (empty resume)';
    if (this.#headerPos < this.#headerBuf.length) return `truncated: ${this.#bytes} bytes, stream header incomplete`;
    if (!this.#ended) return `truncated: ${this.#bytes} bytes and no end record`;
    if (this.#receivedCount !== this.#geo.pageCount)
      return `incomplete: ${this.#receivedCount} of ${this.#geo.pageCount} pages`;
    return null;
  }
}

/** A data_fd: one session (saving or resuming) and the faults injected into its calls. */
export class SimStream implements DataStream {
  readonly #port: SessionPort;
  #closed = false;
  #torn = false;
  #io: IoFaultCounters;

  constructor(
    port: SessionPort,
    readonly save: SaveSession | null,
    readonly resume: ResumeSession | null,
  ) {
    this.#port = port;
    this.#io = port.faults().ioCounters();
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** True once the device ended this session (state change or reset). */
  get torn(): boolean {
    return this.#torn;
  }

  /** The device ended this session: every later call fails ENODEV. */
  tear(): void {
    this.#torn = true;
  }

  #check(op: string): void {
    if (this.#closed) throw new VfioError('EBADF', op, this.#port.name, 'data stream already closed');
    if (this.#torn)
      throw new VfioError('ENODEV', op, this.#port.name, 'migration session ended (state change or reset)');
  }

  /** This session's fault counters under the plan armed now (new counters when it was replaced). */
  #counters(): IoFaultCounters {
    const plan = this.#port.faults();
    if (this.#io.plan !== plan) this.#io = plan.ioCounters();
    return this.#io;
  }

  #injected(op: string, errno: string | undefined): void {
    if (errno !== undefined) throw new VfioError(errno, op, this.#port.name, 'injected fault');
  }

  async read(into: Uint8Array): Promise<number> {
    const op = 'data_fd.read';
    const port = this.#port;
    this.#check(op);
    // A call runs under the faults armed when it began.
    const io = this.#counters();
    const f = io.plan.faults;
    if (f.readDelayMs) {
      await sleep(f.readDelayMs);
      this.#check(op);
    }
    if (!this.save) throw new VfioError('EINVAL', op, port.name, 'resuming stream is write-only');
    this.#injected(op, io.readFault());
    const stopCopy = port.state() === MigState.STOP_COPY;
    const limit = f.shortRead ? into.subarray(0, Math.min(into.length, f.shortRead)) : into;
    const n = this.save.produce(limit, stopCopy);
    io.readDone();
    if (n === 0 && !stopCopy && into.length > 0) {
      // Temporary end of pre-copy: the uAPI says ENOMSG; mtty returns 0.
      if (port.mttyQuirks) return 0;
      throw new VfioError('ENOMSG', op, port.name, 'no pre-copy data now');
    }
    if (!stopCopy) port.ranWhileRead(n);
    return n;
  }

  async write(from: Uint8Array): Promise<number> {
    const op = 'data_fd.write';
    const port = this.#port;
    this.#check(op);
    if (!this.resume) throw new VfioError('EINVAL', op, port.name, 'saving stream is read-only');
    const io = this.#counters();
    const f = io.plan.faults;
    if (f.writeDelayMs) {
      await sleep(f.writeDelayMs);
      this.#check(op);
    }
    this.#injected(op, io.writeFault());
    const chunk = f.shortWrite ? from.subarray(0, Math.min(from.length, f.shortWrite)) : from;
    const headerError = this.resume.consume(chunk);
    io.writeDone();
    // mtty checks its header as soon as it is complete and answers EFAULT.
    if (headerError && port.mttyQuirks) throw new VfioError('EFAULT', op, port.name, headerError);
    return chunk.length;
  }

  async precopyInfo(): Promise<PrecopyInfo> {
    const op = 'VFIO_MIG_GET_PRECOPY_INFO';
    this.#check(op);
    const s = this.#port.state();
    if (!this.save || (s !== MigState.PRE_COPY && s !== MigState.PRE_COPY_P2P)) {
      throw new VfioError(
        'EINVAL',
        op,
        this.#port.name,
        `valid only in PRE_COPY states (device is ${migStateName(s)})`,
      );
    }
    const [initialBytes, dirtyBytes] = this.save.pending();
    return { initialBytes, dirtyBytes };
  }

  async close(): Promise<void> {
    this.#closed = true;
  }
}
