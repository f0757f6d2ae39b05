export { VfioError, isVfioError, asVfioError, errnoOf, hintOf } from './errors.js';
export type { VfioErrorOptions, ErrorHint } from './errors.js';
export { MigState, MigFlag, migStateName, parseMigState, migFlagNames } from './v2/uapi.js';
export type { RegionInfo, SparseMmapArea } from './v2/uapi.js';
export * as uapi from './v2/uapi.js';
export {
  nextState,
  migrationPath,
  isStateSupported,
  arcOpensStream,
  arcEndsStream,
  isSavingState,
  holdsSession,
} from './v2/fsm.js';
export type { V2Device, DataStream, PrecopyInfo, DeviceKind } from './v2/device.js';
export { ForwardingDevice } from './v2/forwarding-device.js';
export { openDevice, deviceKindOf } from './v2/open-device.js';
export type { DeviceSpec } from './v2/open-device.js';
export { readSome, writeAll, chunkPipe } from './v2/stream-io.js';
export { createSimDevice, SimDevice, SIM_ARCS_KEPT } from './v2/sim/sim-device.js';
export { SIM_MAX_STATE_SIZE } from './v2/sim/limits.js';
export type {
  SimDeviceOptions,
  SimFaults,
  SimArcFault,
  SimIoFault,
  SimProfile,
  FrozenFaults,
} from './v2/sim/sim-device.js';
export {
  V1,
  isValidV1,
  isErrorV1,
  setErrorV1,
  v1StateName,
  V1_TRANSITION_CHECK,
  v1TransitionCheckAllows,
  SEED004_ALLOWED,
  isSeed004Allowed,
  vfio_device_migration_info,
  MIGRATION_INFO,
} from './v1/uapi.js';
export type { V1Region } from './v1/uapi.js';
export { saveV1, loadV1, setStateV1 } from './v1/reference-caller.js';
export type { SaveV1Options, SaveV1Result, LoadV1Options, SaveProgress, ChunkSink } from './v1/reference-caller.js';
export type { DataAccess } from './v1/region-access.js';
export { openV1Bridge, V1Bridge } from './bridge/v1-bridge.js';
export type { V1BridgeOptions, V1TraceEvent, V1Field } from './bridge/v1-bridge.js';
export { V1_NDMA } from './bridge/state-map.js';
export { openKernelDevice, KernelDevice, parseKernelSpec, kernelDataStream } from './v2/kernel/kernel-device.js';
export type { KernelDeviceSpec, BorrowedDeviceSpec } from './v2/kernel/kernel-device.js';
export { startBridgeService, BridgeService } from './service/bridge-service.js';
export type { BridgeServiceOptions, DeviceHello, ServiceTraceEvent, SessionStats } from './service/bridge-service.js';
export { QuiesceGroup, GroupMember } from './service/quiesce-group.js';
export type { GroupEvent } from './service/quiesce-group.js';
export { preloadLibrary } from './service/preload-library.js';
export { saveV2, loadV2, drainStream } from './v2/native-caller.js';
export type { SaveV2Options, SaveV2Result, Sink } from './v2/native-caller.js';
export { checkConformance } from './conformance/runner.js';
export { CHECKS as CONFORMANCE_CHECKS } from './conformance/registry.js';
export type {
  CheckResult,
  ConformanceOptions,
  ConformanceReport,
  Verdict,
  CheckGroup,
  DeviceEnd,
} from './conformance/types.js';
