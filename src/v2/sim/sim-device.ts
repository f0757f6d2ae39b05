/**
 * The simulated reference device: a v2 migration driver behind the kernel
 * core, in memory. setState() is structured like mtty_set_state(): ask the
 * FSM for the next arc, run it, commit, repeat. Faults come only from the
 * options and setFaults(). The data sessions (session.ts) reach the device
 * only through the SessionPort it hands them.
 */
import { createHash } from 'node:crypto';
import { VfioError, isVfioError } from '../../errors.js';
import type { DataStream, V2Device } from '../device.js';
import { arcEndsStream, arcOpensStream, isSavingState, nextState } from '../fsm.js';
import { MIG_FLAGS_ALL, MigState, MIG_STATE_COUNT, PAGE, isMigFlagSet, migStateName } from '../uapi.js';
import { Prng, fnv1a32, pageWindow } from './content.js';
import { SIM_MAX_STATE_SIZE } from './limits.js';
import { FaultPlan, type FrozenFaults, type SimFaults } from './faults.js';
import {
  Geometry,
  RECORD_HEADER,
  ResumeSession,
  SaveSession,
  SimStream,
  type Content,
  type SessionPort,
} from './session.js';

export type { FrozenFaults, SimArcFault, SimFaults, SimIoFault } from './faults.js';

export type SimProfile = 'default' | 'mtty';

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
  /** A reset leaves the state as it is (as mtty's does) instead of restoring the initial content. */
  resetKeepsState?: boolean;
  /** Copied at construction: editing the object afterwards changes nothing (SimDevice.setFaults() does). */
  faults?: SimFaults;
  name?: string;
}

/** The arcs log keeps the most recent arcs only, so a long-lived device (`serve --sim`) stays small. */
export const SIM_ARCS_KEPT = 10_000;

/**
 * The largest stateSize, 1 TiB. The content is generated, but every page
 * costs 4 bytes of version (9 while a resume stages it): 1 GiB (2.25 GiB)
 * of memory at 4 KiB pages, and a pass over it ~15 minutes at 1.3 GB/s.
 */

export class SimDevice implements V2Device {
  readonly name: string;
  readonly kind = 'sim';
  readonly flags: number;
  readonly stateSize: number;
  readonly pageSize: number;
  readonly pageCount: number;
  readonly profile: SimProfile;
  readonly model: number;
  readonly dirtyRatio: number;
  readonly resumeFailure: 'stay' | 'error';
  readonly resetKeepsState: boolean;
  readonly initialSeed: number;
  readonly #geo: Geometry;
  #dirtyOwed = 0;
  #faults: FaultPlan;
  #content: Content;
  #state = MigState.RUNNING;
  #stream: SimStream | null = null;
  readonly #port: SessionPort;
  #prng: Prng;
  #closed = false;
  #arcs: Array<[MigState, MigState]> = [];

  constructor(options: SimDeviceOptions = {}) {
    this.profile = options.profile ?? 'default';
    const mtty = this.profile === 'mtty';
    this.flags = options.flags ?? MIG_FLAGS_ALL;
    if (!isMigFlagSet(this.flags)) {
      throw new VfioError('EINVAL', 'createSimDevice', 'sim', `flags must be 1, 3, 5 or 7 (got ${this.flags})`);
    }
    this.stateSize = options.stateSize ?? (mtty ? (options.ports === 1 ? 60 : 96) : 1 << 20);
    if (!Number.isSafeInteger(this.stateSize) || this.stateSize < 0 || this.stateSize > SIM_MAX_STATE_SIZE) {
      throw new VfioError(
        'EINVAL',
        'createSimDevice',
        'sim',
        `stateSize must be a byte count of at most ${SIM_MAX_STATE_SIZE} (got ${options.stateSize})`,
      );
    }
    this.pageSize = options.pageSize ?? PAGE;
    this.initialSeed = (options.seed ?? 1) >>> 0;
    this.dirtyRatio = options.dirtyRatio ?? (mtty ? 0 : 1 / 8);
    this.resumeFailure = options.resumeFailure ?? 'stay';
    this.resetKeepsState = options.resetKeepsState ?? false;
    this.#faults = new FaultPlan(options.faults);
    this.name =
      options.name ?? `sim:${this.profile === 'mtty' ? 'mtty:' : ''}flags=${this.flags},size=${this.stateSize}`;
    this.model = fnv1a32(`${this.profile}|${this.flags}|${this.stateSize}|${this.pageSize}`);
    this.#geo = new Geometry(this.model, this.pageSize, this.stateSize);
    this.pageCount = this.#geo.pageCount;
    this.#content = { seed: this.initialSeed, versions: new Uint32Array(this.pageCount) };
    this.#prng = new Prng(this.initialSeed);
    this.#port = {
      name: this.name,
      geometry: this.#geo,
      mttyQuirks: mtty,
      state: () => this.#state,
      content: () => this.#content,
      ranWhileRead: (bytes) => this.#ranWhileRead(bytes),
      faults: () => this.#faults,
    };
  }

  /**
   * Arms `faults` in place of the current ones, with every count fresh: arc
   * faults count from now, and an open data stream counts its reads and
   * writes (`after`) from its next call. The object is copied.
   */
  setFaults(faults: SimFaults): void {
    this.#faults = new FaultPlan(faults);
  }

  /** The faults armed now (a frozen copy: arm others with setFaults()). */
  get faults(): FrozenFaults {
    return this.#faults.faults;
  }

  /** The current state, without an ioctl (tests). */
  get state(): MigState {
    return this.#state;
  }

  /** The arcs the driver ran, oldest first: [from, to], at most the last SIM_ARCS_KEPT (a copy). */
  get arcs(): ReadonlyArray<readonly [MigState, MigState]> {
    return this.#arcs.slice(-SIM_ARCS_KEPT);
  }

  /** What the device holds now (a copy): the seed its content came from and each page's version. */
  get content(): Content {
    return { seed: this.#content.seed, versions: this.#content.versions.slice() };
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
    return this.#geo.streamSize;
  }

  async setState(target: MigState): Promise<DataStream | null> {
    const op = `SET_STATE ${migStateName(this.#state)}->${migStateName(target)}`;
    this.#live(op);
    const n: number = target; // from a caller: may be any number
    if (!Number.isInteger(n) || n < 0 || n >= MIG_STATE_COUNT) {
      throw new VfioError('EINVAL', op, this.name, `no such state ${target}`);
    }
    let opened: SimStream | null = null;
    while (this.#state !== target) {
      let next: MigState;
      try {
        next = nextState(this.#state, target, this.flags);
      } catch (e) {
        if (!isVfioError(e)) throw e;
        throw new VfioError('EINVAL', op, this.name, e.reason, { cause: e, hint: 'fsm-path' });
      }
      opened = this.#arc(op, this.#state, next) ?? opened;
      this.#state = next;
    }
    return opened;
  }

  /** One driver arc; returns the stream it opens, if any. */
  #arc(op: string, from: MigState, to: MigState): SimStream | null {
    const f = this.#faults.takeArcFault(from, to);
    if (f) {
      if (f.leave === 'error') this.#fail();
      throw new VfioError(f.errno, op, this.name, `injected fault on arc ${migStateName(from)}->${migStateName(to)}`, {
        details: { from, to, leftAt: migStateName(this.#state) },
      });
    }
    if (arcEndsStream(from, to)) {
      const s = this.#stream;
      if (from === MigState.RESUMING && s?.resume) {
        const why = s.resume.verdict();
        if (why) {
          if (this.resumeFailure === 'error') this.#fail();
          throw new VfioError('EINVAL', op, this.name, `resume data rejected: ${why}`, {
            details: { arc: [from, to] },
            hint: 'resume-rejected',
          });
        }
        this.#content = s.resume.loaded();
      }
      this.#endSession();
    }
    this.#logArc(from, to);
    if (arcOpensStream(from, to)) {
      this.#endSession();
      const save = isSavingState(to) ? new SaveSession(this.#port) : null;
      this.#stream = new SimStream(this.#port, save, save ? null : new ResumeSession(this.#port));
      return this.#stream;
    }
    return null;
  }

  #logArc(from: MigState, to: MigState): void {
    this.#arcs.push([from, to]);
    // Trimmed in batches, so logging stays O(1) per arc on average.
    if (this.#arcs.length >= 2 * SIM_ARCS_KEPT) this.#arcs = this.#arcs.slice(-SIM_ARCS_KEPT);
  }

  #endSession(): void {
    this.#stream?.tear();
    this.#stream = null;
  }

  #fail(): void {
    this.#endSession();
    this.#state = MigState.ERROR;
  }

  /** The device kept running while `bytes` of pre-copy data were read: it dirties pages at dirtyRatio. */
  #ranWhileRead(bytes: number): void {
    this.#dirtyOwed += (bytes / this.pageSize) * this.dirtyRatio;
    const pages = Math.floor(this.#dirtyOwed);
    this.#dirtyOwed -= pages;
    this.runFor(pages);
  }

  /** The device runs for a while and changes `pages` pages of its state (only while RUNNING-ish). */
  runFor(pages: number): void {
    const running = [MigState.RUNNING, MigState.RUNNING_P2P, MigState.PRE_COPY, MigState.PRE_COPY_P2P].includes(
      this.#state,
    );
    if (!running || this.pageCount === 0) return;
    for (let i = 0; i < pages; i++) {
      const p = this.#prng.next(this.pageCount);
      this.#content.versions[p]!++;
      this.#stream?.save?.touched(p);
    }
  }

  async reset(): Promise<void> {
    this.#live('VFIO_DEVICE_RESET');
    this.#endSession();
    this.#state = MigState.RUNNING;
    if (!this.resetKeepsState) this.#content = { seed: this.initialSeed, versions: new Uint32Array(this.pageCount) };
  }

  async close(): Promise<void> {
    this.#endSession();
    this.#closed = true;
  }

  /**
   * SHA-256 of the device's current state bytes, to prove a resume
   * reproduced the source exactly. With `pause` it is asynchronous: pause()
   * is awaited after each MiB hashed (a CLI lets signal handlers run there,
   * the hashing never waits on I/O), and a device closed meanwhile ends it
   * with EBADF.
   */
  stateDigest(): string;
  stateDigest(pause: () => Promise<void>): Promise<string>;
  stateDigest(pause?: () => Promise<void>): string | Promise<string> {
    const steps = this.#digestSteps();
    if (!pause) {
      let r = steps.next();
      while (!r.done) r = steps.next();
      return r.value;
    }
    return (async () => {
      for (let r = steps.next(); ; r = steps.next()) {
        if (r.done) return r.value;
        await pause();
        this.#live('stateDigest');
      }
    })();
  }

  /** Hashes the state, yielding after every 256 pages; returns the hex digest. */
  *#digestSteps(): Generator<void, string> {
    const h = createHash('sha256');
    const size = Buffer.alloc(8);
    size.writeBigUInt64LE(BigInt(this.stateSize));
    h.update(size);
    const { seed, versions } = this.#content;
    const g = this.#geo;
    for (let p = 0; p < this.pageCount; p++) {
      const w = pageWindow(seed, p, versions[p]!);
      h.update(g.pattern.subarray(w, w + g.pageLength(p)));
      if ((p & 255) === 255) yield;
    }
    return h.digest('hex');
  }
}

export function createSimDevice(options: SimDeviceOptions = {}): SimDevice {
  return new SimDevice(options);
}
