/**
 * The simulated reference device: a v2 migration driver behind the kernel
 * core, in memory. setState() is structured like mtty_set_state(): ask the
 * FSM for the next arc, run it, commit, repeat. Faults come only from the
 * options object.
 */
import { createHash } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { VfioError } from '../../errors.js';
import type { DataStream, PrecopyInfo, V2Device } from '../device.js';
import { arcEndsStream, arcOpensStream, isSavingState, nextState } from '../fsm.js';
import { MIG_FLAGS_ALL, MigState, MIG_STATE_COUNT, isMigFlagSet, migStateName } from '../uapi.js';
import { Prng, fnv1a32, pageWindow, patternFor } from './content.js';
import { RECORD_END, RECORD_PAGE, SIM_STREAM_MAGIC, simHeader, simRecord } from './stream-format.js';

export type SimProfile = 'default' | 'mtty';

export interface SimArcFault {
  from: MigState;
  to: MigState;
  /** errno name the arc fails with, e.g. 'EIO'. */
  errno: string;
  /** Where the device is left: at `from` (the state reached so far) or ERROR. */
  leave?: 'stay' | 'error';
  /** How many times the fault fires (default: every time). */
  count?: number;
}

export interface SimIoFault {
  /** 'ENOMSG' | 'EINTR' | 'EAGAIN' | 'EIO' | ... */
  errno: string;
  /** Successful calls before the first fault (default 0). */
  after?: number;
  /** Faults in a row (default 1). */
  count?: number;
}

export interface SimFaults {
  failArc?: SimArcFault[];
  /** At most this many bytes per read(). */
  shortRead?: number;
  /** At most this many bytes per write(). */
  shortWrite?: number;
  readErrors?: SimIoFault[];
  writeErrors?: SimIoFault[];
  /** Delay before each read() completes, ms (a slow device). */
  readDelayMs?: number;
  /** Delay before each write() completes, ms (a slow resume). */
  writeDelayMs?: number;
}

export interface SimDeviceOptions {
  /** VFIO_MIGRATION_* flags: 1, 3, 5 or 7 (default 7; mtty profile 7). */
  flags?: number;
  /** Device state size in bytes (default 1 MiB; mtty profile 96, or 60 with ports=1). */
  stateSize?: number;
  /** Sets the initial content only; devices of one model accept each other's streams whatever their seeds. */
  seed?: number;
  profile?: SimProfile;
  /** mtty profile: 1 or 2 ports (stateSize 60 or 96). */
  ports?: 1 | 2;
  pageSize?: number;
  /**
   * Pages a running device dirties per page of pre-copy data read (default
   * 1/8; mtty 0). Below 1 pre-copy converges; at 1 or more it never does.
   */
  dirtyRatio?: number;
  /** Where a failed resume leaves the device: RESUMING (like mtty, default) or ERROR. */
  resumeFailure?: 'stay' | 'error';
  faults?: SimFaults;
  name?: string;
}

const RECORD_HEADER = simRecord.size;

interface Content {
  seed: number;
  versions: Uint32Array;
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
class SaveSession {
  readonly header: Uint8Array;
  headerPos = 0;
  sweepNext = 0;
  readonly dirty = new Set<number>();
  current: OutRecord | null = null;
  endPos = 0;
  constructor(readonly dev: SimDevice) {
    this.header = simHeader.encode({
      magic: SIM_STREAM_MAGIC,
      model: dev.model,
      page_size: dev.pageSize,
      state_size: BigInt(dev.stateSize),
      seed: dev.content.seed,
    });
  }

  /** Bytes still owed before the temporary end of pre-copy: [initial, dirty]. */
  pending(): [bigint, bigint] {
    const d = this.dev;
    let initial = BigInt(this.header.length - this.headerPos);
    initial += BigInt((d.pageCount - this.sweepNext) * RECORD_HEADER) + BigInt(d.stateSize - Math.min(d.stateSize, this.sweepNext * d.pageSize));
    let dirty = 0n;
    for (const p of this.dirty) dirty += BigInt(RECORD_HEADER + d.pageLength(p));
    if (this.current) {
      const rest = BigInt(RECORD_HEADER + this.current.length - this.current.pos);
      if (this.current.dirty) dirty += rest;
      else initial += rest;
    }
    return [initial, dirty];
  }

  /** Copies stream bytes into `into`; in pre-copy stops at the temporary end, in stop-copy at END. */
  produce(into: Uint8Array, stopCopy: boolean): number {
    const d = this.dev;
    let n = 0;
    if (this.headerPos < this.header.length) {
      const k = Math.min(into.length, this.header.length - this.headerPos);
      into.set(this.header.subarray(this.headerPos, this.headerPos + k), 0);
      this.headerPos += k;
      n += k;
    }
    const pattern = d.pattern;
    while (n < into.length) {
      if (!this.current) n = this.produceWhole(into, n);
      if (n === into.length) break;
      if (!this.current && !this.nextRecord()) {
        if (!stopCopy || this.endPos === RECORD_HEADER) break;
        // END record: emitted only in stop-copy, once everything else is out.
        const end = simRecord.encode({ kind: RECORD_END, page: d.pageCount, version: 0, length: 0 });
        const k = Math.min(into.length - n, RECORD_HEADER - this.endPos);
        into.set(end.subarray(this.endPos, this.endPos + k), n);
        this.endPos += k;
        n += k;
        continue;
      }
      const r = this.current!;
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
      if (r.pos === RECORD_HEADER + r.length) this.current = null;
    }
    return n;
  }

  /**
   * The fast path of produce(): the next unsent pages of the sweep, each as
   * one record written whole at `n`, for as long as whole records fit. The
   * bytes are those nextRecord() and the loop above would give; one copy per
   * page and no allocation, so the sim runs near memory-copy speed.
   */
  private produceWhole(into: Uint8Array, n: number): number {
    const d = this.dev;
    const { pattern, pageCount } = d;
    const { seed, versions } = d.content;
    const view = new DataView(into.buffer, into.byteOffset, into.length);
    while (this.sweepNext < pageCount) {
      const page = this.sweepNext;
      const length = d.pageLength(page);
      if (n + RECORD_HEADER + length > into.length) break;
      const version = versions[page]!;
      view.setUint32(n, RECORD_PAGE, true);
      view.setUint32(n + 4, page, true);
      view.setUint32(n + 8, version, true);
      view.setUint32(n + 12, length, true);
      const w = pageWindow(seed, page, version);
      pattern.copy(into, n + RECORD_HEADER, w, w + length);
      n += RECORD_HEADER + length;
      this.sweepNext = page + 1;
    }
    return n;
  }

  get finished(): boolean {
    return this.endPos === RECORD_HEADER;
  }

  private nextRecord(): boolean {
    const d = this.dev;
    let page: number;
    let dirty = false;
    if (this.sweepNext < d.pageCount) page = this.sweepNext++;
    else {
      const first = this.dirty.values().next();
      if (first.done) return false;
      page = first.value;
      this.dirty.delete(page);
      dirty = true;
    }
    const version = d.content.versions[page]!;
    const length = d.pageLength(page);
    this.current = {
      hdr: simRecord.encode({ kind: RECORD_PAGE, page, version, length }),
      page,
      window: pageWindow(d.content.seed, page, version),
      length,
      pos: 0,
      dirty,
    };
    return true;
  }

  /** The running device changed page `p`: re-send it if it was (being) sent. */
  touched(p: number): void {
    if (p < this.sweepNext || this.current?.page === p) this.dirty.add(p);
  }
}

/** The resuming side of one data session: checks the stream as it arrives. */
class ResumeSession {
  readonly staged: Uint32Array;
  readonly received: Uint8Array;
  receivedCount = 0;
  headerBuf = new Uint8Array(simHeader.size);
  headerPos = 0;
  seed = 0;
  recBuf = new Uint8Array(RECORD_HEADER);
  recPos = 0;
  rec: { page: number; version: number; length: number; window: number; pos: number } | null = null;
  ended = false;
  bytes = 0;
  error: string | null = null;

  constructor(readonly dev: SimDevice) {
    this.staged = new Uint32Array(dev.pageCount);
    this.received = new Uint8Array(dev.pageCount);
  }

  /** Consumes bytes; returns a header error for the caller to raise at once (mtty mode), else null. */
  consume(data: Uint8Array): string | null {
    let i = 0;
    this.bytes += data.length;
    while (i < data.length && !this.error) {
      if (this.headerPos < this.headerBuf.length) {
        const k = Math.min(data.length - i, this.headerBuf.length - this.headerPos);
        this.headerBuf.set(data.subarray(i, i + k), this.headerPos);
        this.headerPos += k;
        i += k;
        if (this.headerPos === this.headerBuf.length) {
          this.checkHeader();
          if (this.error) return this.error;
        }
        continue;
      }
      if (this.ended) {
        this.error = `${data.length - i} bytes after the end of the stream`;
        break;
      }
      if (!this.rec) {
        if (this.recPos === 0) {
          i = this.consumeWhole(data, i);
          if (i === data.length || this.error) break;
        }
        const k = Math.min(data.length - i, RECORD_HEADER - this.recPos);
        this.recBuf.set(data.subarray(i, i + k), this.recPos);
        this.recPos += k;
        i += k;
        if (this.recPos === RECORD_HEADER) {
          this.recPos = 0;
          this.startRecord();
        }
        continue;
      }
      const r = this.rec;
      const k = Math.min(data.length - i, r.length - r.pos);
      const expect = this.dev.pattern.subarray(r.window + r.pos, r.window + r.pos + k);
      if (Buffer.compare(expect, data.subarray(i, i + k)) !== 0) {
        this.error = `page ${r.page} content does not match its record (corrupt stream)`;
        break;
      }
      r.pos += k;
      i += k;
      if (r.pos === r.length) {
        this.staged[r.page] = r.version;
        if (!this.received[r.page]) {
          this.received[r.page] = 1;
          this.receivedCount++;
        }
        this.rec = null;
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
  private consumeWhole(data: Uint8Array, i: number): number {
    const d = this.dev;
    const { pattern, pageCount } = d;
    const view = new DataView(data.buffer, data.byteOffset, data.length);
    while (i + RECORD_HEADER <= data.length) {
      const page = view.getUint32(i + 4, true);
      const length = view.getUint32(i + 12, true);
      if (view.getUint32(i, true) !== RECORD_PAGE || page >= pageCount || length !== d.pageLength(page)) break;
      const at = i + RECORD_HEADER;
      if (at + length > data.length) break;
      const version = view.getUint32(i + 8, true);
      const w = pageWindow(this.seed, page, version);
      if (pattern.compare(data, at, at + length, w, w + length) !== 0) {
        this.error = `page ${page} content does not match its record (corrupt stream)`;
        return at;
      }
      this.staged[page] = version;
      if (!this.received[page]) {
        this.received[page] = 1;
        this.receivedCount++;
      }
      i = at + length;
    }
    return i;
  }

  private checkHeader(): void {
    const h = simHeader.decode(this.headerBuf);
    const d = this.dev;
    if (h.magic !== SIM_STREAM_MAGIC) this.error = 'bad stream magic (not a simulated-device stream)';
    else if (h.model !== d.model || h.page_size !== d.pageSize || h.state_size !== BigInt(d.stateSize))
      this.error = `foreign stream: model 0x${h.model.toString(16)} state ${h.state_size} bytes, this device is model 0x${d.model.toString(16)} with ${d.stateSize} bytes`;
    else this.seed = h.seed;
  }

  private startRecord(): void {
    const r = simRecord.decode(this.recBuf);
    const d = this.dev;
    if (r.kind === RECORD_END && r.length === 0) {
      this.ended = true;
      return;
    }
    if (r.kind !== RECORD_PAGE || r.page >= d.pageCount || r.length !== d.pageLength(r.page)) {
      this.error = `bad record (kind ${r.kind}, page ${r.page}, length ${r.length})`;
      return;
    }
    this.rec = { page: r.page, version: r.version, length: r.length, window: pageWindow(this.seed, r.page, r.version), pos: 0 };
  }

  /** Why the data cannot be loaded, or null when it is complete and intact. */
  verdict(): string | null {
    if (this.error) return this.error;
    if (this.bytes === 0) return 'no data was written (empty resume)';
    if (this.headerPos < this.headerBuf.length) return `truncated: ${this.bytes} bytes, stream header incomplete`;
    if (!this.ended) return `truncated: ${this.bytes} bytes and no end record`;
    if (this.receivedCount !== this.dev.pageCount) return `incomplete: ${this.receivedCount} of ${this.dev.pageCount} pages`;
    return null;
  }
}

class SimStream implements DataStream {
  #closed = false;
  torn = false;
  #reads = 0;
  #writes = 0;
  #readFaultsLeft: number[];
  #writeFaultsLeft: number[];

  constructor(
    readonly dev: SimDevice,
    readonly save: SaveSession | null,
    readonly resume: ResumeSession | null,
  ) {
    this.#readFaultsLeft = (dev.faults.readErrors ?? []).map((f) => f.count ?? 1);
    this.#writeFaultsLeft = (dev.faults.writeErrors ?? []).map((f) => f.count ?? 1);
  }

  get closed(): boolean {
    return this.#closed;
  }

  #check(op: string): void {
    if (this.#closed) throw new VfioError('EBADF', op, this.dev.name, 'data stream already closed');
    if (this.torn) throw new VfioError('ENODEV', op, this.dev.name, 'migration session ended (state change or reset)');
  }

  #injected(op: string, faults: SimIoFault[] | undefined, left: number[], calls: number): void {
    faults?.forEach((f, i) => {
      if (calls >= (f.after ?? 0) && left[i]! > 0) {
        left[i]!--;
        throw new VfioError(f.errno, op, this.dev.name, 'injected fault');
      }
    });
  }

  async read(into: Uint8Array): Promise<number> {
    const op = 'data_fd.read';
    this.#check(op);
    const f = this.dev.faults;
    if (f.readDelayMs) {
      await sleep(f.readDelayMs);
      this.#check(op);
    }
    if (!this.save) throw new VfioError('EINVAL', op, this.dev.name, 'resuming stream is write-only');
    this.#injected(op, f.readErrors, this.#readFaultsLeft, this.#reads);
    const state = this.dev.state;
    const stopCopy = state === MigState.STOP_COPY;
    const limit = f.shortRead ? into.subarray(0, Math.min(into.length, f.shortRead)) : into;
    const n = this.save.produce(limit, stopCopy);
    this.#reads++;
    if (n === 0 && !stopCopy && into.length > 0) {
      // Temporary end of pre-copy: the uAPI says ENOMSG; mtty returns 0.
      if (this.dev.profile === 'mtty') return 0;
      throw new VfioError('ENOMSG', op, this.dev.name, 'no pre-copy data now');
    }
    if (!stopCopy) this.dev.ranWhileRead(n);
    return n;
  }

  async write(from: Uint8Array): Promise<number> {
    const op = 'data_fd.write';
    this.#check(op);
    if (!this.resume) throw new VfioError('EINVAL', op, this.dev.name, 'saving stream is read-only');
    const f = this.dev.faults;
    if (f.writeDelayMs) {
      await sleep(f.writeDelayMs);
      this.#check(op);
    }
    this.#injected(op, f.writeErrors, this.#writeFaultsLeft, this.#writes);
    const chunk = f.shortWrite ? from.subarray(0, Math.min(from.length, f.shortWrite)) : from;
    const headerError = this.resume.consume(chunk);
    this.#writes++;
    // mtty checks its header as soon as it is complete and answers EFAULT.
    if (headerError && this.dev.profile === 'mtty') throw new VfioError('EFAULT', op, this.dev.name, headerError);
    return chunk.length;
  }

  async precopyInfo(): Promise<PrecopyInfo> {
    const op = 'VFIO_MIG_GET_PRECOPY_INFO';
    this.#check(op);
    const s = this.dev.state;
    if (!this.save || (s !== MigState.PRE_COPY && s !== MigState.PRE_COPY_P2P)) {
      throw new VfioError('EINVAL', op, this.dev.name, `valid only in PRE_COPY states (device is ${migStateName(s)})`);
    }
    const [initialBytes, dirtyBytes] = this.save.pending();
    return { initialBytes, dirtyBytes };
  }

  async close(): Promise<void> {
    this.#closed = true;
  }
}

export class SimDevice implements V2Device {
  readonly name: string;
  readonly flags: number;
  readonly stateSize: number;
  readonly pageSize: number;
  readonly pageCount: number;
  readonly profile: SimProfile;
  readonly model: number;
  readonly dirtyRatio: number;
  #dirtyOwed = 0;
  readonly resumeFailure: 'stay' | 'error';
  readonly faults: SimFaults;
  readonly pattern: Buffer;
  readonly initialSeed: number;
  content: Content;
  #state = MigState.RUNNING;
  #stream: SimStream | null = null;
  #prng: Prng;
  #arcFaultsLeft: number[];
  #closed = false;
  /** Every arc the driver ran, for tests and traces: [from, to]. */
  readonly arcs: Array<[MigState, MigState]> = [];

  constructor(options: SimDeviceOptions = {}) {
    this.profile = options.profile ?? 'default';
    const mtty = this.profile === 'mtty';
    this.flags = options.flags ?? MIG_FLAGS_ALL;
    if (!isMigFlagSet(this.flags)) {
      throw new VfioError('EINVAL', 'createSimDevice', 'sim', `flags must be 1, 3, 5 or 7 (got ${this.flags})`);
    }
    this.stateSize = options.stateSize ?? (mtty ? (options.ports === 1 ? 60 : 96) : 1 << 20);
    if (!Number.isSafeInteger(this.stateSize) || this.stateSize < 0) {
      throw new VfioError('EINVAL', 'createSimDevice', 'sim', `stateSize must be a byte count (got ${options.stateSize})`);
    }
    this.pageSize = options.pageSize ?? 4096;
    this.pageCount = Math.ceil(this.stateSize / this.pageSize);
    this.initialSeed = (options.seed ?? 1) >>> 0;
    this.dirtyRatio = options.dirtyRatio ?? (mtty ? 0 : 1 / 8);
    this.resumeFailure = options.resumeFailure ?? 'stay';
    this.faults = options.faults ?? {};
    this.name = options.name ?? `sim:${this.profile === 'mtty' ? 'mtty:' : ''}flags=${this.flags},size=${this.stateSize}`;
    this.model = fnv1a32(`${this.profile}|${this.flags}|${this.stateSize}|${this.pageSize}`);
    this.pattern = patternFor(this.pageSize);
    this.content = { seed: this.initialSeed, versions: new Uint32Array(this.pageCount) };
    this.#prng = new Prng(this.initialSeed);
    this.#arcFaultsLeft = (this.faults.failArc ?? []).map((f) => f.count ?? Infinity);
  }

  /** Re-reads the fault counts from options.faults.failArc (tests arm a fault after setup). */
  rearmFaults(): void {
    this.#arcFaultsLeft = (this.faults.failArc ?? []).map((f) => f.count ?? Infinity);
  }

  /** The current state, without an ioctl (tests). */
  get state(): MigState {
    return this.#state;
  }

  pageLength(page: number): number {
    return Math.min(this.pageSize, this.stateSize - page * this.pageSize);
  }

  #live(op: string): void {
    if (this.#closed) throw new VfioError('EBADF', op, this.name, 'device closed');
  }

  async migrationFlags(): Promise<number> {
    this.#live('FEATURE_MIGRATION');
    return this.flags;
  }

  async getState(): Promise<MigState> {
    this.#live('GET_STATE');
    return this.#state;
  }

  async stopCopySize(): Promise<bigint> {
    this.#live('FEATURE_MIG_DATA_SIZE');
    const s = this.#stream?.save;
    if (s && !this.#stream!.torn) {
      const [a, b] = s.pending();
      return a + b + (s.finished ? 0n : BigInt(RECORD_HEADER));
    }
    return BigInt(simHeader.size + this.pageCount * RECORD_HEADER + this.stateSize + RECORD_HEADER);
  }

  async setState(target: MigState): Promise<DataStream | null> {
    const op = `SET_STATE ${migStateName(this.#state)}->${migStateName(target)}`;
    this.#live(op);
    if (!Number.isInteger(target) || target < 0 || target >= MIG_STATE_COUNT) {
      throw new VfioError('EINVAL', op, this.name, `no such state ${target}`);
    }
    let opened: SimStream | null = null;
    while (this.#state !== target) {
      let next: MigState;
      try {
        next = nextState(this.#state, target, this.flags);
      } catch (e) {
        throw new VfioError('EINVAL', op, this.name, (e as VfioError).reason, { cause: e });
      }
      opened = this.#arc(op, this.#state, next) ?? opened;
      this.#state = next;
    }
    return opened;
  }

  /** One driver arc; returns the stream it opens, if any. */
  #arc(op: string, from: MigState, to: MigState): SimStream | null {
    const faults = this.faults.failArc ?? [];
    for (let i = 0; i < faults.length; i++) {
      const f = faults[i]!;
      if (f.from === from && f.to === to && this.#arcFaultsLeft[i]! > 0) {
        this.#arcFaultsLeft[i]!--;
        if (f.leave === 'error') this.#fail();
        throw new VfioError(f.errno, op, this.name, `injected fault on arc ${migStateName(from)}->${migStateName(to)}`, {
          details: { from, to, leftAt: migStateName(this.#state) },
        });
      }
    }
    if (arcEndsStream(from, to)) {
      const s = this.#stream;
      if (from === MigState.RESUMING && s?.resume) {
        const why = s.resume.verdict();
        if (why) {
          if (this.resumeFailure === 'error') this.#fail();
          throw new VfioError('EINVAL', op, this.name, `resume data rejected: ${why}`, { details: { arc: [from, to] } });
        }
        this.content = { seed: s.resume.seed, versions: s.resume.staged };
      }
      this.#endSession();
    }
    this.arcs.push([from, to]);
    if (arcOpensStream(from, to)) {
      this.#endSession();
      const save = isSavingState(to) ? new SaveSession(this) : null;
      this.#stream = new SimStream(this, save, save ? null : new ResumeSession(this));
      return this.#stream;
    }
    return null;
  }

  #endSession(): void {
    if (this.#stream) this.#stream.torn = true;
    this.#stream = null;
  }

  #fail(): void {
    this.#endSession();
    this.#state = MigState.ERROR;
  }

  /** The device kept running while `bytes` of pre-copy data were read: it dirties pages at dirtyRatio. */
  ranWhileRead(bytes: number): void {
    this.#dirtyOwed += (bytes / this.pageSize) * this.dirtyRatio;
    const pages = Math.floor(this.#dirtyOwed);
    this.#dirtyOwed -= pages;
    this.runFor(pages);
  }

  /** The device runs for a while and changes `pages` pages of its state (only while RUNNING-ish). */
  runFor(pages: number): void {
    const running = [MigState.RUNNING, MigState.RUNNING_P2P, MigState.PRE_COPY, MigState.PRE_COPY_P2P].includes(this.#state);
    if (!running || this.pageCount === 0) return;
    for (let i = 0; i < pages; i++) {
      const p = this.#prng.next(this.pageCount);
      this.content.versions[p]!++;
      this.#stream?.save?.touched(p);
    }
  }

  async reset(): Promise<void> {
    this.#live('VFIO_DEVICE_RESET');
    this.#endSession();
    this.#state = MigState.RUNNING;
    this.content = { seed: this.initialSeed, versions: new Uint32Array(this.pageCount) };
  }

  async close(): Promise<void> {
    this.#endSession();
    this.#closed = true;
  }

  /** SHA-256 of the device's current state bytes, to prove a resume reproduced the source exactly. */
  stateDigest(): string {
    const h = createHash('sha256');
    const size = Buffer.alloc(8);
    size.writeBigUInt64LE(BigInt(this.stateSize));
    h.update(size);
    const { seed, versions } = this.content;
    for (let p = 0; p < this.pageCount; p++) {
      const w = pageWindow(seed, p, versions[p]!);
      h.update(this.pattern.subarray(w, w + this.pageLength(p)));
    }
    return h.digest('hex');
  }
}

export function createSimDevice(options: SimDeviceOptions = {}): SimDevice {
  return new SimDevice(options);
}

