/**
 * A V2Device that hands every call to an inner device: a wrapper (a logger,
 * the quiesce group's member, a tracker) extends it and overrides only what it
 * changes. An optional capability is present exactly when the inner device
 * has it, since callers test for it (`dev.stateDigest ? … : …`).
 * test/v2/forwarding-device.test.ts fails when V2Device gains a member this
 * does not forward.
 */
import type { DeviceKind, DataStream, V2Device } from './device.js';
import type { MigState, RegionInfo } from './uapi.js';

export class ForwardingDevice implements V2Device {
  constructor(readonly inner: V2Device) {
    // Own properties, set only when the inner device has the capability and a
    // subclass did not define it (its method is already on the prototype chain).
    if (inner.regions && !('regions' in this)) this.regions = () => this.inner.regions!();
    if (inner.stateDigest && !('stateDigest' in this))
      this.stateDigest = (...pause) => this.inner.stateDigest!(...pause);
  }

  get name(): string {
    return this.inner.name;
  }
  get kind(): DeviceKind | undefined {
    return this.inner.kind;
  }
  migrationFlags(): Promise<number> {
    return this.inner.migrationFlags();
  }
  getState(): Promise<MigState> {
    return this.inner.getState();
  }
  setState(state: MigState): Promise<DataStream | null> {
    return this.inner.setState(state);
  }
  stopCopySize(): Promise<bigint> {
    return this.inner.stopCopySize();
  }
  reset(): Promise<void> {
    return this.inner.reset();
  }
  close(): Promise<void> {
    return this.inner.close();
  }
  regions?(): Promise<RegionInfo[]>;
  stateDigest?(pause?: () => Promise<void>): string | Promise<string>;
}
