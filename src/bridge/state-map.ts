/**
 * v1 device_state values <-> v2 states (docs/protocol.md#bridge-states).
 */
import { V1 } from '../v1/uapi.js';
import { MigFlag, MigState } from '../v2/uapi.js';

/** Optional NDMA extension bit (off by default): RUNNING|NDMA <-> RUNNING_P2P. */
export const V1_NDMA = 1 << 3;

/**
 * The v2 state that carries a valid v1 value. 011 without PRE_COPY is
 * "virtual pre-copy": the device stays RUNNING and reports no pending data.
 * NDMA only changes the running states: STOP already halts all DMA.
 */
export function v2TargetFor(v1: number, flags: number): MigState {
  const ndma = (v1 & V1_NDMA) !== 0;
  switch (v1 & V1.MASK) {
    case V1.STOP:
      return MigState.STOP;
    case V1.RUNNING:
      return ndma ? MigState.RUNNING_P2P : MigState.RUNNING;
    case V1.SAVING | V1.RUNNING:
      if (flags & MigFlag.PRE_COPY) return ndma ? MigState.PRE_COPY_P2P : MigState.PRE_COPY;
      return ndma ? MigState.RUNNING_P2P : MigState.RUNNING;
    case V1.SAVING:
      return MigState.STOP_COPY;
    case V1.RESUMING:
      return MigState.RESUMING;
    default:
      return MigState.ERROR;
  }
}

/** Whether the v1 value is pre-copy carried by a real PRE_COPY state. */
export function isRealPrecopy(v1: number, flags: number): boolean {
  return (v1 & V1.MASK) === (V1.SAVING | V1.RUNNING) && (flags & MigFlag.PRE_COPY) !== 0;
}
