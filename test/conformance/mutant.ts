/**
 * A simulated device with one deliberate bug: a wrapper whose hooks may
 * change what any call does. The bugs the sim's own fault options cannot
 * express live here, one per conformance rule.
 */
import {
  VfioError,
  MigState,
  createSimDevice,
  ForwardingDevice,
  type DataStream,
  type DeviceKind,
  type PrecopyInfo,
  type SimDevice,
  type SimDeviceOptions,
} from '../../src/index.js';

export class MutantStream implements DataStream {
  reads = 0;
  zeroSeen = false;
  /** Set when a reset (not a state change) ended the session. */
  endedByReset = false;
  torn = false;
  constructor(
    readonly inner: DataStream,
    readonly dev: Mutant,
  ) {}
  get closed(): boolean {
    return this.inner.closed;
  }
  async read(into: Uint8Array): Promise<number> {
    if (this.torn) throw new VfioError('ENODEV', 'data_fd.read', this.dev.name, 'torn by the mutant');
    const n = this.dev.hooks.read
      ? await this.dev.hooks.read(this, into, () => this.inner.read(into))
      : await this.inner.read(into);
    this.reads++;
    if (n === 0) this.zeroSeen = true;
    return n;
  }
  write(from: Uint8Array): Promise<number> {
    return this.dev.hooks.write
      ? this.dev.hooks.write(this, from, () => this.inner.write(from))
      : this.inner.write(from);
  }
  precopyInfo(): Promise<PrecopyInfo> {
    return this.dev.hooks.precopyInfo
      ? this.dev.hooks.precopyInfo(this, () => this.inner.precopyInfo())
      : this.inner.precopyInfo();
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}

export interface Hooks {
  flags?: (f: number) => number;
  setState?: (m: Mutant, target: MigState, next: () => Promise<DataStream | null>) => Promise<DataStream | null>;
  stopCopySize?: (m: Mutant, next: () => Promise<bigint>) => Promise<bigint>;
  reset?: (m: Mutant, next: () => Promise<void>) => Promise<void>;
  read?: (s: MutantStream, into: Uint8Array, next: () => Promise<number>) => Promise<number>;
  write?: (s: MutantStream, from: Uint8Array, next: () => Promise<number>) => Promise<number>;
  precopyInfo?: (s: MutantStream, next: () => Promise<PrecopyInfo>) => Promise<PrecopyInfo>;
  /** What the device says it is (a sim posing as a kernel device). */
  kind?: DeviceKind;
  /** Called after every state change or reset (e.g. a fake debugfs). */
  changed?: (m: Mutant) => void;
}

export class Mutant extends ForwardingDevice {
  declare readonly inner: SimDevice;
  readonly streams: MutantStream[] = [];
  /** Per-mutant counters the hooks keep. */
  count = 0;
  constructor(
    readonly hooks: Hooks,
    options: SimDeviceOptions = {},
  ) {
    super(createSimDevice(options));
  }
  override get name(): string {
    return `mutant:${this.inner.name}`;
  }
  override get kind(): DeviceKind {
    return this.hooks.kind ?? this.inner.kind;
  }
  get state(): MigState {
    return this.inner.state;
  }
  override async migrationFlags(): Promise<number> {
    const f = await this.inner.migrationFlags();
    return this.hooks.flags ? this.hooks.flags(f) : f;
  }
  /** Wraps a stream the inner device opened (hooks call it too). */
  wrap(s: DataStream | null): DataStream | null {
    if (!s || s instanceof MutantStream) return s;
    const w = new MutantStream(s, this);
    this.streams.push(w);
    return w;
  }
  override async setState(target: MigState): Promise<DataStream | null> {
    try {
      const next = async () => this.wrap(await this.inner.setState(target));
      return this.wrap(this.hooks.setState ? await this.hooks.setState(this, target, next) : await next());
    } finally {
      this.hooks.changed?.(this);
    }
  }
  override stopCopySize(): Promise<bigint> {
    return this.hooks.stopCopySize
      ? this.hooks.stopCopySize(this, () => this.inner.stopCopySize())
      : this.inner.stopCopySize();
  }
  override async reset(): Promise<void> {
    for (const s of this.streams) s.endedByReset = true;
    try {
      if (this.hooks.reset) await this.hooks.reset(this, () => this.inner.reset());
      else await this.inner.reset();
    } finally {
      this.hooks.changed?.(this);
    }
  }
}

/** A data_fd that is nothing: what a driver that hands out a spurious fd gives. */
export function spuriousStream(name: string): DataStream {
  const no = async (): Promise<never> => {
    throw new VfioError('EINVAL', 'data_fd', name, 'spurious data_fd');
  };
  return { read: no, write: no, precopyInfo: no, close: async () => undefined, closed: false };
}
