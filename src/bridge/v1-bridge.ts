/**
 * A byte-exact v1 migration region over a v2 device (docs/protocol.md#bridge:
 * the region, the state mapping, the data path). Every v1 access is
 * translated here and nowhere else: the access rules, the state machine and
 * the resume path are in this class; what saving adds (read-ahead, the frozen
 * chunk, pending_bytes) is its SaveWindow, and the trace its TraceLog.
 */
import { VfioError } from '../errors.js';
import {
  MIGRATION_INFO as F,
  MIGRATION_INFO_FIELDS,
  V1,
  isErrorV1,
  isValidV1,
  setErrorV1,
  v1StateName,
  v1TransitionCheckAllows,
  type V1Region,
} from '../v1/uapi.js';
import type { DataStream, V2Device } from '../v2/device.js';
import { arcEndsStream, arcOpensStream } from '../v2/fsm.js';
import { writeAll } from '../v2/stream-io.js';
import {
  MigFlag,
  MigState,
  PAGE,
  VFIO_PCI_NUM_REGIONS,
  VFIO_REGION_INFO_FLAG_MMAP,
  VFIO_REGION_INFO_FLAG_READ,
  VFIO_REGION_INFO_FLAG_WRITE,
  VFIO_REGION_SUBTYPE_MIGRATION_DEPRECATED,
  VFIO_REGION_TYPE_MIGRATION_DEPRECATED,
  migStateName,
  type RegionInfo,
} from '../v2/uapi.js';
import { SaveWindow } from './save-window.js';
import { V1_NDMA, v2TargetFor } from './state-map.js';
import { TraceLog, type V1Field, type V1TraceEvent } from './trace-log.js';
import { getU32LE, getU64LE, putU32LE, putU64LE } from '../struct.js';

export type { V1Field, V1TraceEvent } from './trace-log.js';

export interface V1BridgeOptions {
  /** Data section size in bytes (default 1 MiB, or the length of `section`). */
  sectionSize?: number;
  /** The data section's memory, when the caller provides it (shared with another process); else allocated. */
  section?: Uint8Array;
  /** Where the data section starts: page aligned, past the 32-byte header (default 4096). */
  dataOffset?: number;
  /** Enforce the v1 transition check (docs/protocol.md#v1-transition-check): transitions old v1 drivers accepted. */
  strict?: boolean;
  /** On a transition that leaves the device in ERROR: reset it and report 001 instead of 110. */
  resetOnError?: boolean;
  /** Accept the NDMA extension bit (bit 3): RUNNING|NDMA -> RUNNING_P2P, SAVING|RUNNING|NDMA -> PRE_COPY_P2P. */
  ndma?: boolean;
  /** Offer a zero-copy view of the data section (mmap semantics) and advertise MMAP in region info. */
  mmap?: boolean;
  /** Region index reported in region info (device-specific indexes start at 9). */
  regionIndex?: number;
  /** Receives each v1 access with the v2 operations it caused. */
  trace?: (event: V1TraceEvent) => void;
}

const DEFAULT_SECTION = 1 << 20;

export class V1Bridge implements V1Region {
  readonly size: number;
  readonly dataOffset: number;
  readonly sectionSize: number;
  readonly regionInfo: RegionInfo;
  readonly #dev: V2Device;
  readonly #flags: number;
  readonly #opts: V1BridgeOptions;
  readonly #section: Uint8Array;
  /** v1 device_state as the caller sees it. Starts at 001 with no SET (docs/protocol.md#bridge-states). */
  #shadow: number = V1.RUNNING;
  /** The v2 state the device is in, as far as the bridge knows. */
  #v2: MigState = MigState.RUNNING;
  /** The data_fd of the current session (saving or resuming). */
  #stream: DataStream | null = null;
  readonly #trace: TraceLog;
  /** pending_bytes, the read-ahead and the frozen chunk: everything saving adds. */
  readonly #save: SaveWindow;
  /** The data_size last written while resuming, read back as written. */
  #resumeSize = 0n;
  /** Every access and reset runs after the previous one has finished, as a v1 driver's state mutex makes them. */
  #tail: Promise<unknown> = Promise.resolve();

  constructor(device: V2Device, flags: number, options: V1BridgeOptions = {}) {
    if (!device || typeof device.setState !== 'function')
      throw new TypeError('openV1Bridge: device must be a V2Device');
    const sectionSize = options.section?.length ?? options.sectionSize ?? DEFAULT_SECTION;
    const dataOffset = options.dataOffset ?? PAGE;
    const name = device.name;
    if (!Number.isSafeInteger(sectionSize) || sectionSize < 1)
      throw new VfioError(
        'EINVAL',
        'openV1Bridge',
        name,
        `sectionSize must be a positive byte count (got ${sectionSize})`,
      );
    if (!Number.isSafeInteger(dataOffset) || dataOffset < F.SIZE || dataOffset % PAGE !== 0) {
      throw new VfioError(
        'EINVAL',
        'openV1Bridge',
        name,
        `dataOffset must be page aligned and at least ${PAGE} (got ${dataOffset})`,
      );
    }
    if (options.ndma && !(flags & MigFlag.P2P))
      throw new VfioError('EINVAL', 'openV1Bridge', name, 'NDMA needs a device with VFIO_MIGRATION_P2P');
    this.#dev = device;
    this.#flags = flags;
    this.#opts = options;
    this.sectionSize = sectionSize;
    this.dataOffset = dataOffset;
    this.size = dataOffset + sectionSize;
    this.#section = options.section ?? new Uint8Array(sectionSize);
    this.#trace = new TraceLog(options.trace);
    // Read live on each access; arrows keep the bridge's `this` (the getters' own is the literal).
    const live = { stream: () => this.#stream, v1: () => this.#shadow, v2: () => this.#v2 };
    this.#save = new SaveWindow(this.#section, device, flags, this.#trace, {
      get stream() {
        return live.stream();
      },
      get v1() {
        return live.v1();
      },
      get v2() {
        return live.v2();
      },
    });
    this.regionInfo = {
      index: options.regionIndex ?? VFIO_PCI_NUM_REGIONS,
      flags: VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE | (options.mmap ? VFIO_REGION_INFO_FLAG_MMAP : 0),
      size: BigInt(this.size),
      offset: 0n,
      type: { type: VFIO_REGION_TYPE_MIGRATION_DEPRECATED, subtype: VFIO_REGION_SUBTYPE_MIGRATION_DEPRECATED },
      ...(options.mmap ? { sparseMmap: [{ offset: BigInt(dataOffset), size: BigInt(sectionSize) }] } : {}),
    };
  }

  get device(): V2Device {
    return this.#dev;
  }

  /** The v1 device_state the caller would read now. */
  get deviceState(): number {
    return this.#shadow;
  }

  /** Bytes of buffer the bridge holds now: the data section plus any read-ahead chunk. */
  heldBytes(): number {
    return this.#section.length + this.#save.aheadBytes;
  }

  /** The data section itself, for in-process callers that want mmap semantics (mmap option). */
  dataView(): Uint8Array {
    if (!this.#opts.mmap)
      throw new VfioError('EINVAL', 'v1.mmap', this.#dev.name, 'the bridge was opened without the mmap option');
    return this.#section;
  }

  // ---------------------------------------------------------------- access

  /** Runs `fn` after every access queued before it; one failure does not stop the queue. */
  #serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#tail.then(fn);
    this.#tail = run.catch(() => undefined);
    return run;
  }

  read(offset: number, length: number): Promise<Uint8Array> {
    return this.#serial(() => this.#read(offset, length));
  }

  /** read() into the caller's buffer: a data section access is one copy and no allocation. */
  readInto(offset: number, into: Uint8Array): Promise<void> {
    return this.#serial(async () => {
      if (this.#field('read', offset, into.length) === 'data') this.#readData(offset, into);
      else into.set(await this.#read(offset, into.length));
    });
  }

  #readData(offset: number, into: Uint8Array): Uint8Array {
    const at = offset - this.dataOffset;
    into.set(this.#section.subarray(at, at + into.length));
    this.#trace.emit({ op: 'read', field: 'data', offset, length: into.length, v2: [] });
    return into;
  }

  write(offset: number, data: Uint8Array): Promise<void> {
    return this.#serial(() => this.#write(offset, data));
  }

  async #read(offset: number, length: number): Promise<Uint8Array> {
    const field = this.#field('read', offset, length);
    if (field === 'data') return this.#readData(offset, new Uint8Array(length));
    return this.#trace.traced('read', field, offset, length, undefined, async () => {
      const out = new Uint8Array(length);
      switch (field) {
        case 'device_state':
          putU32LE(out, this.#shadow);
          return [out, this.#shadow];
        case 'reserved':
          return [out, 0];
        case 'pending_bytes': {
          const v = await this.#save.pendingBytes();
          putU64LE(out, v);
          return [out, v];
        }
        case 'data_offset':
          await this.#save.prepareChunk();
          putU64LE(out, BigInt(this.dataOffset));
          return [out, BigInt(this.dataOffset)];
        default: {
          const chunk = this.#save.readDataSize();
          const v = this.#isResuming() ? this.#resumeSize : chunk;
          putU64LE(out, v);
          return [out, v];
        }
      }
    });
  }

  async #write(offset: number, data: Uint8Array): Promise<void> {
    const field = this.#field('write', offset, data.length);
    if (field === 'data') {
      // While saving the section holds device data the caller is handed; a write would become part of the stream
      // (docs/decisions.md 21). An mmap of the section cannot be refused.
      if (this.#isSaving()) {
        const e = new VfioError(
          'EINVAL',
          'v1.write(data)',
          this.#dev.name,
          `the data section is read-only while saving (device_state ${v1StateName(this.#shadow)})`,
          { details: { offset, length: data.length } },
        );
        this.#trace.emit({ op: 'write', field, offset, length: data.length, v2: [], error: e.code });
        throw e;
      }
      this.#section.set(data, offset - this.dataOffset);
      this.#trace.emit({ op: 'write', field, offset, length: data.length, v2: [] });
      return;
    }
    const value = field === 'device_state' ? getU32LE(data) : getU64LE(data);
    await this.#trace.traced('write', field, offset, data.length, value, async () => {
      if (field === 'device_state') await this.#setDeviceState(value as number);
      else await this.#writeDataSize(value as bigint);
      return [data, value];
    });
  }

  /** Which field an access touches, or EINVAL for anything the v1 contract does not allow (docs/protocol.md#v1-access-rules). */
  #field(op: 'read' | 'write', offset: number, length: number): V1Field {
    const bad = (why: string) =>
      new VfioError('EINVAL', `v1.${op}`, this.#dev.name, why, { details: { offset, length } });
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 1) {
      throw bad(`invalid access offset ${offset} length ${length}`);
    }
    if (offset >= this.dataOffset) {
      if (offset + length > this.size)
        throw bad(`access [${offset}, ${offset + length}) runs past the region end ${this.size}`);
      return 'data';
    }
    const hit = MIGRATION_INFO_FIELDS.find((h) => h.offset === offset && h.width === length);
    if (!hit)
      throw bad(`header fields must be accessed at their own offset and width (offset ${offset}, length ${length})`);
    const f = hit.name;
    if (op === 'write' && (f === 'pending_bytes' || f === 'data_offset' || f === 'reserved'))
      throw bad(`${f} is read-only`);
    return f;
  }

  // ---------------------------------------------------------------- state

  /** 010 or 011 (with NDMA too); not the error state 110, which has the SAVING bit. */
  #isSaving(): boolean {
    return (this.#shadow & V1.SAVING) !== 0 && !isErrorV1(this.#shadow);
  }

  #isResuming(): boolean {
    return (this.#shadow & V1.MASK) === V1.RESUMING;
  }

  async #setDeviceState(value: number): Promise<void> {
    const old = this.#shadow;
    const name = this.#dev.name;
    const op = `v1.write(device_state) ${v1StateName(old)}->${v1StateName(value)}`;
    const known = V1.MASK | (this.#opts.ndma ? V1_NDMA : 0);
    const nak = (why: string) =>
      new VfioError('EINVAL', op, name, why, { details: { from: old, to: value }, hint: 'v1-states' });
    if (value & ~known)
      throw nak(
        `unknown bits 0x${((value & ~known) >>> 0).toString(16)}${value & V1_NDMA ? ' (NDMA needs the ndma option)' : ''}`,
      );
    if (value === old) return; // same-state writes are normal for QEMU: no SET_STATE, stream untouched
    if (isErrorV1(old)) throw nak('device is in the error state; reset it');
    if (!isValidV1(value) || isErrorV1(value)) throw nak(`${v1StateName(value)} is not a state a caller may request`);
    const from = old & V1.MASK;
    const to = value & V1.MASK;
    // v2 blocks STOP_COPY -> PRE_COPY, so v1 010 -> 011 cannot be carried out.
    if (from === V1.SAVING && to === (V1.SAVING | V1.RUNNING))
      throw nak('SAVING -> SAVING|RUNNING has no v2 equivalent (STOP_COPY -> PRE_COPY is blocked)');
    if (this.#opts.strict && from !== to && !v1TransitionCheckAllows(from, to))
      throw nak('not allowed by the v1 transition check (strict mode)');

    const target = v2TargetFor(value, this.#flags);
    const start = this.#v2;
    if (target === start) {
      this.#shadow = value; // virtual pre-copy on and off: nothing to tell the device
      this.#afterTransition(start, target, null, value);
      return;
    }
    let stream: DataStream | null;
    try {
      stream = await this.#trace.call(
        `SET_STATE ${migStateName(start)}->${migStateName(target)}`,
        () => this.#dev.setState(target),
        (s) => (s ? 'data_fd' : 'ok'),
      );
    } catch (e) {
      await this.#recover(start, old);
      throw e;
    }
    if (Boolean(stream) !== arcOpensStream(start, target)) {
      await this.#movedBehindUs(start, target, stream, old, op);
    }
    this.#v2 = target;
    this.#shadow = value;
    this.#afterTransition(start, target, stream, value);
  }

  /**
   * SET_STATE answered with a data_fd where the bridge expected none, or none
   * where it expected one: the device was not in the state the bridge left
   * it in, so another owner moved it (a second bridge, a reset from outside).
   * No data_fd: the device already was at the target, in someone else's
   * session; nothing changed, so a nak. An unexpected data_fd: the session
   * this bridge's caller was reading or writing is gone; the new one would
   * restart the stream, so it is closed and the region reads 110.
   */
  async #movedBehindUs(
    start: MigState,
    target: MigState,
    stream: DataStream | null,
    oldV1: number,
    op: string,
  ): Promise<never> {
    const name = this.#dev.name;
    if (!stream) {
      this.#v2 = await this.#trace.call('GET_STATE', () => this.#dev.getState(), migStateName).catch(() => target);
      this.#dropSession();
      throw new VfioError(
        'EBUSY',
        op,
        name,
        `the device was already in ${migStateName(this.#v2)} without a data_fd for this region: another owner holds its data session`,
      );
    }
    void stream.close().catch(() => undefined);
    this.#dropSession();
    this.#v2 = target;
    this.#shadow = setErrorV1(oldV1);
    throw new VfioError(
      'EBUSY',
      op,
      name,
      `the device was moved outside this region (expected ${migStateName(start)}): its data session is gone; reset the device`,
    );
  }

  /** Stream and buffer bookkeeping after the device moved start -> target. */
  #afterTransition(start: MigState, target: MigState, stream: DataStream | null, newV1: number): void {
    if (arcEndsStream(start, target) || stream) this.#dropSession();
    if (stream) this.#stream = stream;
    this.#save.forgetPending();
    if ((newV1 & V1.MASK) === V1.RESUMING) this.#resumeSize = 0n;
    // 011 -> 010 keeps the frozen chunk and read-ahead: pre-copy bytes go out before stop-copy bytes.
  }

  /**
   * A failed SET_STATE (docs/protocol.md#bridge-failed-transition): find where the device is. At the start state:
   * a nak. In ERROR: 110 (or reset and 001). Elsewhere: unwind to the start
   * state; if that fails too, 110. P2P and unknown states never leak out.
   */
  async #recover(start: MigState, oldV1: number): Promise<void> {
    let now: MigState;
    try {
      now = await this.#trace.call('GET_STATE', () => this.#dev.getState(), migStateName);
    } catch {
      now = MigState.ERROR;
    }
    if (now === start) return;
    // Unwinding is a nak only when the start state's data session survived
    // the detour (the device never left start's session group); a new
    // session would silently restart or empty the stream (docs/decisions.md
    // #13), so that case is the error state.
    const known = now > MigState.ERROR && now <= MigState.PRE_COPY_P2P;
    if (known && !arcEndsStream(start, now)) {
      try {
        const s = await this.#trace.call(
          `SET_STATE ${migStateName(now)}->${migStateName(start)}`,
          () => this.#dev.setState(start),
          (r) => (r ? 'data_fd' : 'ok'),
        );
        if (s) void s.close().catch(() => undefined); // a session the caller never asked for
        this.#v2 = start;
        this.#save.forgetPending();
        return;
      } catch {
        // fall through: the device is somewhere we cannot name in v1
      }
    }
    this.#dropSession();
    if (this.#opts.resetOnError) {
      try {
        await this.#trace.call('VFIO_DEVICE_RESET', () => this.#dev.reset());
        this.#v2 = MigState.RUNNING;
        this.#shadow = V1.RUNNING;
        return;
      } catch {
        // the reset failed as well: report the error state
      }
    }
    this.#v2 = MigState.ERROR;
    this.#shadow = setErrorV1(oldV1);
  }

  #dropSession(): void {
    const s = this.#stream;
    this.#stream = null;
    if (s && !s.closed) void s.close().catch(() => undefined);
    this.#save.drop();
  }

  /** VFIO_DEVICE_RESET through the bridge: device RUNNING, shadow 001, buffers dropped, stream closed. */
  reset(): Promise<void> {
    return this.#serial(async () => {
      this.#dropSession();
      await this.#dev.reset();
      this.noteReset();
    });
  }

  /** Tell the bridge the device was reset by someone else. */
  noteReset(): void {
    this.#dropSession();
    this.#v2 = MigState.RUNNING;
    this.#shadow = V1.RUNNING;
  }

  /**
   * Takes over a device found in another state at open. STOP and ERROR have
   * v1 names; a device mid-session belongs to whoever holds its data_fd.
   */
  adoptState(state: MigState): void {
    const v1 =
      state === MigState.STOP
        ? V1.STOP
        : state === MigState.ERROR
          ? V1.ERROR
          : state === MigState.RUNNING
            ? V1.RUNNING
            : null;
    if (v1 === null) {
      throw new VfioError(
        'EBUSY',
        'openV1Bridge',
        this.#dev.name,
        `device is in ${migStateName(state)}, which has no v1 value without its data session; reset it first`,
      );
    }
    this.#dropSession();
    this.#v2 = state;
    this.#shadow = v1;
  }

  /** Closes the stream (not the device). */
  close(): Promise<void> {
    return this.#serial(async () => this.#dropSession());
  }

  // ---------------------------------------------------------------- resume path

  /** data_size write while resuming (docs/protocol.md#bridge-resume-data): push exactly the n window bytes into the stream before returning. */
  async #writeDataSize(n: bigint): Promise<void> {
    const name = this.#dev.name;
    if (!this.#isResuming() || !this.#stream)
      throw new VfioError(
        'EINVAL',
        'v1.write(data_size)',
        name,
        `data_size is written only while RESUMING (device_state ${v1StateName(this.#shadow)})`,
      );
    if (n > BigInt(this.sectionSize))
      throw new VfioError(
        'EINVAL',
        'v1.write(data_size)',
        name,
        `data_size ${n} is larger than the data section (${this.sectionSize})`,
      );
    const len = Number(n);
    const stream = this.#stream;
    await this.#trace.call(`write(data_fd, ${len})`, () => writeAll(stream, this.#section.subarray(0, len), name));
    this.#resumeSize = n;
  }
}

/** Opens a v1 migration region over a v2 device. The device must support migration (ENOTTY otherwise). */
export async function openV1Bridge(device: V2Device, options: V1BridgeOptions = {}): Promise<V1Bridge> {
  const flags = await device.migrationFlags();
  if (!(flags & MigFlag.STOP_COPY))
    throw new VfioError('ENOTTY', 'openV1Bridge', device.name, 'device does not support VFIO_MIGRATION_STOP_COPY');
  const bridge = new V1Bridge(device, flags, options);
  // The shadow starts at 001 (docs/protocol.md#bridge-states), but a device not in RUNNING must be stated honestly.
  const state = await device.getState();
  if (state !== MigState.RUNNING) bridge.adoptState(state);
  return bridge;
}
