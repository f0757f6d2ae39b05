/** QEMU migration streams: walk one (walk.ts), its VFIO devices and their state (devices.ts), two compared (diff.ts). */
export { walkStream, isSection, isVfioIdstr } from './walk.js';
export type { QemuStream, Section, SectionKind, OtherRecord, OtherKind } from './walk.js';
export { vfioDevices, findVfioDevice, vfioPayloads, savedWith, deviceSummaries } from './devices.js';
export type { VfioDevice, PhaseStats, DeviceSummary } from './devices.js';
export { diffStreams } from './diff.js';
export type { StreamDiff, Difference, DiffKind } from './diff.js';
export { SectionType, VfioMarker, RamFlag, QEMU_VM_FILE_MAGIC, QEMU_VM_FILE_VERSION } from './framing.js';
export type { VfioPciConfig, VfioRecord, VfioSectionWalk } from './vfio.js';
export type { RamWalk, RamBlock } from './ram.js';
