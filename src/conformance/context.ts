/**
 * What every check shares: the devices wrapped so that each call lands in the
 * running check's evidence, the verdict collector, and the few procedures
 * (settle, save, resume) the checks are built from.
 */
import { readdirSync } from 'node:fs';
import { VfioError, isVfioError } from '../errors.js';
import type { DataStream, PrecopyInfo, V2Device } from '../v2/device.js';
import { ForwardingDevice } from '../v2/forwarding-device.js';
import { writeAll } from '../v2/stream-io.js';
import { MIG_FLAGS_ALL, MigFlag, MigState, migStateName } from '../v2/uapi.js';
import { Skip } from './types.js';

/** The checker reads in pieces of this size (drivers must take any size; the bridge uses others). */
export const READ_CHUNK = 16 * 1024;
const EVIDENCE_HEAD = 80;
const EVIDENCE_TAIL = 20;

const S = MigState;

export function errText(e: unknown): string {
  if (isVfioError(e)) return e.code;
  return e instanceof Error ? e.message : String(e);
}

/** Evidence of one check: every call, the middle elided when there are very many. */
export class Evidence {
  readonly head: string[] = [];
  tail: string[] = [];
  elided = 0;
  add(line: string): void {
    if (this.head.length < EVIDENCE_HEAD) {
      this.head.push(line);
      return;
    }
    this.tail.push(line);
    if (this.tail.length > EVIDENCE_TAIL) {
      this.tail.shift();
      this.elided++;
    }
  }
  lines(): string[] {
    return [...this.head, ...(this.elided ? [`... ${this.elided} calls not shown ...`] : []), ...this.tail];
  }
}

/** Runs one call and notes it in the evidence with its result or its error. */
async function logged<T>(ctx: CheckContext, call: string, fn: () => Promise<T>, show: (v: T) => string): Promise<T> {
  try {
    const v = await fn();
    ctx.note(`${call} = ${show(v)}`);
    return v;
  } catch (e) {
    ctx.note(`${call} = ${errText(e)}`);
    throw e;
  }
}

/** A data stream whose every call is logged. */
class LoggedStream implements DataStream {
  constructor(
    readonly inner: DataStream,
    readonly label: string,
    readonly ctx: CheckContext,
  ) {}
  get closed(): boolean {
    return this.inner.closed;
  }
  #log<T>(call: string, fn: () => Promise<T>, show: (v: T) => string): Promise<T> {
    return logged(this.ctx, `${this.label} ${call}`, fn, show);
  }
  read(into: Uint8Array): Promise<number> {
    return this.#log(`read(${into.length})`, () => this.inner.read(into), String);
  }
  write(from: Uint8Array): Promise<number> {
    return this.#log(`write(${from.length})`, () => this.inner.write(from), String);
  }
  precopyInfo(): Promise<PrecopyInfo> {
    return this.#log(
      'PRECOPY_INFO',
      () => this.inner.precopyInfo(),
      (i) => `initial ${i.initialBytes} dirty ${i.dirtyBytes}`,
    );
  }
  close(): Promise<void> {
    return this.#log(
      'close',
      () => this.inner.close(),
      () => 'ok',
    );
  }
}

/** A device whose every call is logged; streams it opens are logged and tracked for closing. */
export class LoggedDevice extends ForwardingDevice {
  #fds = 0;
  readonly open = new Set<DataStream>();
  constructor(
    inner: V2Device,
    readonly label: string,
    readonly ctx: CheckContext,
  ) {
    super(inner);
  }
  #log<T>(call: string, fn: () => Promise<T>, show: (v: T) => string): Promise<T> {
    return logged(this.ctx, `${this.label} ${call}`, fn, show);
  }
  override migrationFlags(): Promise<number> {
    return this.#log(
      'FEATURE_MIGRATION',
      () => this.inner.migrationFlags(),
      (f) => `flags ${f}`,
    );
  }
  override getState(): Promise<MigState> {
    return this.#log('GET_STATE', () => this.inner.getState(), migStateName);
  }
  override async setState(state: MigState): Promise<DataStream | null> {
    let label = '';
    const s = await this.#log(
      `SET_STATE ${migStateName(state)}`,
      async () => {
        const r = await this.inner.setState(state);
        if (r) label = `fd${++this.#fds}`;
        return r;
      },
      (r) => (r ? `data_fd ${label}` : 'no data_fd'),
    );
    if (!s) return null;
    const wrapped = new LoggedStream(s, `${this.label}.${label}`, this.ctx);
    this.open.add(wrapped);
    return wrapped;
  }
  override stopCopySize(): Promise<bigint> {
    return this.#log('MIG_DATA_SIZE', () => this.inner.stopCopySize(), String);
  }
  override reset(): Promise<void> {
    return this.#log(
      'RESET',
      () => this.inner.reset(),
      () => 'ok',
    );
  }
  /** Closes every stream a check left open (a check's fds never outlive it). */
  async closeStreams(): Promise<void> {
    for (const s of this.open) if (!s.closed) await s.close().catch(() => undefined);
    this.open.clear();
  }
}

/** Anomalies a tolerant helper saw on behalf of the check that owns the rule. */
export interface Anomalies {
  enomsgInStopCopy: string[];
}

export class CheckContext {
  evidence = new Evidence();
  fails: string[] = [];
  warns: string[] = [];
  notes: string[] = [];
  readonly dev: LoggedDevice;
  readonly peer: LoggedDevice;
  /** Flags the predictions use: what the device reported, limited to the defined bits. */
  flags = MIG_FLAGS_ALL;
  /** The flags the device reported, as it reported them. */
  rawFlags = 0;
  readonly anomalies: Anomalies = { enomsgInStopCopy: [] };
  readonly memo = new Map<string, unknown>();

  constructor(
    device: V2Device,
    peer: V2Device | undefined,
    readonly cycles: number,
    readonly debugfsState: string | null,
  ) {
    this.dev = new LoggedDevice(device, 'dev', this);
    this.peer = peer && peer !== device ? new LoggedDevice(peer, 'peer', this) : this.dev;
  }

  get samePeer(): boolean {
    return this.peer === this.dev;
  }

  note(line: string): void {
    this.evidence.add(line);
  }
  fail(msg: string): void {
    this.fails.push(msg);
  }
  warn(msg: string): void {
    this.warns.push(msg);
  }
  info(msg: string): void {
    this.notes.push(msg);
  }
  has(flag: number): boolean {
    return (this.flags & flag) === flag;
  }

  /** Computes once per run what several checks judge (e.g. the transition matrix). */
  async once<T>(key: string, fn: () => Promise<T>): Promise<T> {
    if (!this.memo.has(key)) this.memo.set(key, await fn());
    return this.memo.get(key) as T;
  }

  /**
   * Back to RUNNING with no session: VFIO_DEVICE_RESET, and where reset left
   * it elsewhere (a rule resume.reset-recovers judges), SET_STATE RUNNING.
   */
  async settle(dev: LoggedDevice = this.dev): Promise<void> {
    // Reset before the fds close: the session ends on the device's side first (mtty, docs/decisions.md #10).
    await dev.reset().catch(() => undefined);
    await dev.closeStreams();
    let s = await dev.getState();
    if (s !== S.RUNNING && s !== S.ERROR) {
      await dev
        .setState(S.RUNNING)
        .then((r) => r?.close())
        .catch(() => undefined);
      s = await dev.getState();
    }
    if (s !== S.RUNNING) throw new Unsettled(dev.name, s);
  }

  /**
   * From a settled RUNNING into PRE_COPY for a check that needs its data_fd;
   * skips the check on a device without PRE_COPY (`noPrecopy` says why that
   * check has nothing to judge) or when no data_fd came (streams.data-fd judges that).
   */
  async enterPrecopy(noPrecopy: string): Promise<DataStream> {
    if (!this.has(MigFlag.PRE_COPY)) throw new Skip(noPrecopy);
    await this.settle();
    const s = await this.dev.setState(S.PRE_COPY);
    if (!s) throw new Skip('RUNNING->PRE_COPY returned no data_fd (streams.data-fd judges that)');
    return s;
  }

  async settleAll(): Promise<void> {
    await this.settle(this.dev);
    if (!this.samePeer) await this.settle(this.peer);
  }

  /**
   * Reads a saving stream to its end (0) in pieces of `chunk`. EINTR and
   * EAGAIN are retried; ENOMSG in STOP_COPY is recorded for the rule that
   * forbids it and retried, so one broken rule fails one check.
   */
  async readToEnd(stream: DataStream, dev: LoggedDevice, chunk = READ_CHUNK, limit = 1 << 30): Promise<Buffer> {
    const parts: Uint8Array[] = [];
    let total = 0;
    let retries = 0;
    for (;;) {
      const buf = new Uint8Array(chunk);
      let n: number;
      try {
        n = await stream.read(buf);
      } catch (e) {
        if (isVfioError(e, 'EINTR') || isVfioError(e, 'EAGAIN') || isVfioError(e, 'ENOMSG')) {
          if (isVfioError(e, 'ENOMSG'))
            this.anomalies.enomsgInStopCopy.push(
              `${dev.name}: read at byte ${total} of a STOP_COPY stream returned ENOMSG`,
            );
          if (++retries > 1000) throw e;
          continue;
        }
        throw e;
      }
      if (n === 0) break;
      parts.push(buf.subarray(0, n));
      total += n;
      if (total > limit) throw new VfioError('EFBIG', 'data_fd.read', dev.name, `stream longer than ${limit} bytes`);
    }
    return Buffer.concat(parts);
  }

  /** A stop-copy save without pre-copy: RUNNING or STOP -> STOP_COPY, read to the end, -> STOP. */
  async saveStopCopy(dev: LoggedDevice = this.dev): Promise<Buffer> {
    const s = await dev.setState(S.STOP_COPY);
    if (!s) throw new VfioError('EINVAL', 'SET_STATE STOP_COPY', dev.name, 'no data_fd returned on entering STOP_COPY');
    try {
      const data = await this.readToEnd(s, dev);
      await dev.setState(S.STOP);
      return data;
    } finally {
      await s.close();
    }
  }

  /** RESUMING, the data in pieces of `piece` bytes, then `final` (default RUNNING). */
  async resume(dev: LoggedDevice, data: Uint8Array, piece = data.length, final: MigState = S.RUNNING): Promise<void> {
    const s = await dev.setState(S.RESUMING);
    if (!s) throw new VfioError('EINVAL', 'SET_STATE RESUMING', dev.name, 'no data_fd returned on entering RESUMING');
    try {
      for (let off = 0; off < data.length; off += Math.max(1, piece))
        await writeAll(s, data.subarray(off, off + Math.max(1, piece)), dev.name);
      await dev.setState(final);
    } finally {
      await s.close();
    }
  }

  /** A stream saved from the device in RUNNING, and whether two saves of one state are equal. */
  async reference(): Promise<{ data: Buffer; deterministic: boolean }> {
    return this.once('reference', async () => {
      await this.settle();
      const a = await this.saveStopCopy();
      const b = await this.saveStopCopy();
      await this.settle();
      return { data: a, deterministic: a.equals(b) };
    });
  }
}

/** The device could not be brought back to RUNNING: the run stops there. */
export class Unsettled extends Error {
  constructor(
    readonly device: string,
    readonly state: MigState,
  ) {
    super(`${device} could not be returned to RUNNING (it is in ${migStateName(state)})`);
  }
}

/** Open file descriptors of this process, where /proc says (null elsewhere). */
export function openFdCount(): number | null {
  try {
    return readdirSync('/proc/self/fd').length;
  } catch {
    return null;
  }
}
