/**
 * The v2 device contract every backend (kernel, simulated) implements and
 * every consumer (bridge, CLI, tests) relies on. Errors are always VfioError.
 */
import type { MigState, RegionInfo } from './uapi.js';

export interface PrecopyInfo {
  /** Initial mandatory pre-copy data still to read. */
  initialBytes: bigint;
  /** Device state changed since it was read. */
  dirtyBytes: bigint;
}

/**
 * A migration data_fd. One owner; closed exactly once.
 *
 * read(): resolves with the number of bytes copied into `into` (> 0), or 0 at
 * end of stream. Rejects ENOMSG at a temporary end of pre-copy data (some
 * drivers, mtty among them, return 0 there instead), EAGAIN when a
 * non-blocking source has nothing yet, EINTR when interrupted (callers
 * retry both), ENODEV once the session was torn down (reset, state change).
 *
 * write(): may be short; callers loop. Rejects like read().
 *
 * precopyInfo(): VFIO_MIG_GET_PRECOPY_INFO; EINVAL outside PRE_COPY states.
 */
export interface DataStream {
  read(into: Uint8Array): Promise<number>;
  write(from: Uint8Array): Promise<number>;
  precopyInfo(): Promise<PrecopyInfo>;
  close(): Promise<void>;
  readonly closed: boolean;
}

/**
 * What a device is, for the behaviour only one kind has (debugfs, rebinding
 * a driver, the kernel release in a report): asked of the device, never
 * guessed from its name.
 */
export type DeviceKind = 'kernel' | 'sim';

/**
 * A device speaking the v2 migration protocol.
 *
 * migrationFlags(): FEATURE_MIGRATION GET; ENOTTY when the device has none.
 * getState(): FEATURE_MIG_DEVICE_STATE GET.
 * setState(s): FEATURE_MIG_DEVICE_STATE SET. Resolves with the new data
 *   stream exactly when the transition opens a session (entering the saving
 *   group from outside it, or entering RESUMING), else null. On failure the
 *   device may be left at any state of the path, or ERROR: GET to find out.
 * stopCopySize(): FEATURE_MIG_DATA_SIZE; ENOTTY when absent.
 * reset(): VFIO_DEVICE_RESET; the device returns to RUNNING and every open
 *   data stream of it is torn down.
 */
export interface V2Device {
  /** Path or description, used in error messages. */
  readonly name: string;
  /** Absent on a device that does not say (a wrapper of another backend): no kind-specific behaviour. Wrappers forward it. */
  readonly kind?: DeviceKind;
  migrationFlags(): Promise<number>;
  getState(): Promise<MigState>;
  setState(state: MigState): Promise<DataStream | null>;
  stopCopySize(): Promise<bigint>;
  reset(): Promise<void>;
  close(): Promise<void>;
  /** VFIO_DEVICE_GET_INFO and GET_REGION_INFO, where the backend has real regions. */
  regions?(): Promise<RegionInfo[]>;
  /**
   * A digest of the device's whole current state, where the backend can
   * compute one (the simulated device: SHA-256 of its state bytes). Equal
   * digests on source and target prove a resume reproduced the state.
   * `pause`, when given, is awaited now and then while a large state is
   * hashed (to let signal handlers run).
   */
  stateDigest?(pause?: () => Promise<void>): string | Promise<string>;
}
