/**
 * The v1 migration region (Linux 5.8-5.17; kept in 6.12 as *_V1_* and
 * *_DEPRECATED): device_state bits, validity macros, region layout.
 * v1 never imports v2: the two constant sets share names but not values
 * (v1 RUNNING is 1, v2 RUNNING is 2 = v1 SAVING).
 */
import { defineStruct, fieldPlaces, type FieldPlace } from '../struct.js';

/** VFIO_DEVICE_STATE_V1_*: bits of device_state. */
export const V1 = {
  STOP: 0,
  RUNNING: 1 << 0,
  SAVING: 1 << 1,
  RESUMING: 1 << 2,
  /** VFIO_DEVICE_STATE_MASK */
  MASK: 0x7,
  /** SAVING|RESUMING: the error state, reachable only through a driver failure. */
  ERROR: (1 << 1) | (1 << 2),
} as const;

/** VFIO_DEVICE_STATE_VALID(s): with RESUMING set, the masked state must be exactly RESUMING. */
export function isValidV1(state: number): boolean {
  return state & V1.RESUMING ? (state & V1.MASK) === V1.RESUMING : true;
}

/** VFIO_DEVICE_STATE_IS_ERROR(s) */
export function isErrorV1(state: number): boolean {
  return (state & V1.MASK) === V1.ERROR;
}

/** VFIO_DEVICE_STATE_SET_ERROR(s): keeps bits outside the mask. */
export function setErrorV1(state: number): number {
  return ((state & ~V1.MASK) | V1.SAVING | V1.RESUMING) >>> 0;
}

const V1_NAMES: Record<number, string> = {
  0: 'STOP',
  1: 'RUNNING',
  2: 'SAVING',
  3: 'SAVING|RUNNING',
  4: 'RESUMING',
  5: 'RESUMING|RUNNING',
  6: 'ERROR',
  7: 'SAVING|RESUMING|RUNNING',
};

/** `011 SAVING|RUNNING`; bits above the mask are shown in hex. */
export function v1StateName(state: number): string {
  const low = state & V1.MASK;
  const bits = low.toString(2).padStart(3, '0');
  const high = state & ~V1.MASK;
  return `${bits} ${V1_NAMES[low]}${high ? ` +0x${(high >>> 0).toString(16)}` : ''}`;
}

/**
 * The v1 transition check (docs/protocol.md#v1-transition-check): the
 * [old, new] pairs of the allow-list proposed on the kernel list in Sep 2021
 * and never merged, diagonal excluded, RUNNING->RESUMING added as the review
 * agreed. `strict` bridges enforce it.
 */
export const V1_TRANSITION_CHECK: ReadonlyArray<readonly [number, number]> = [
  [V1.STOP, V1.RUNNING],
  [V1.STOP, V1.RESUMING],
  [V1.RUNNING, V1.STOP],
  [V1.RUNNING, V1.SAVING],
  [V1.RUNNING, V1.SAVING | V1.RUNNING],
  [V1.RUNNING, V1.RESUMING],
  [V1.SAVING, V1.STOP],
  [V1.SAVING, V1.RUNNING],
  [V1.SAVING | V1.RUNNING, V1.RUNNING],
  [V1.SAVING | V1.RUNNING, V1.SAVING],
  [V1.RESUMING, V1.STOP],
  [V1.RESUMING, V1.RUNNING],
];

/** Whether the v1 transition check allows from -> to (bits outside MASK ignored). */
export function v1TransitionCheckAllows(from: number, to: number): boolean {
  const f = from & V1.MASK;
  const t = to & V1.MASK;
  return V1_TRANSITION_CHECK.some(([a, b]) => a === f && b === t);
}

/** @deprecated The former name of V1_TRANSITION_CHECK. */
export const SEED004_ALLOWED = V1_TRANSITION_CHECK;
/** @deprecated The former name of v1TransitionCheckAllows. */
export const isSeed004Allowed = v1TransitionCheckAllows;

/**
 * struct vfio_device_migration_info, at offset 0 of the migration region:
 * the one written-out copy of the header (docs/protocol.md#v1-layout);
 * MIGRATION_INFO and the bridge's access rules are read from it.
 */
export const vfio_device_migration_info = defineStruct('vfio_device_migration_info', 32, {
  device_state: { offset: 0, type: 'u32' },
  reserved: { offset: 4, type: 'u32' },
  pending_bytes: { offset: 8, type: 'u64' },
  data_offset: { offset: 16, type: 'u64' },
  data_size: { offset: 24, type: 'u64' },
});

/** A header field's name, as the kernel spells it. */
export type V1HeaderField = keyof typeof vfio_device_migration_info.layout;

/** The header fields with offset and width, in layout order: the only header accesses a v1 region allows. */
export const MIGRATION_INFO_FIELDS: ReadonlyArray<FieldPlace<V1HeaderField>> = fieldPlaces(
  vfio_device_migration_info.layout,
);

const L = vfio_device_migration_info.layout;

/** Header offsets by name, and the header size. */
export const MIGRATION_INFO = {
  DEVICE_STATE: L.device_state.offset,
  RESERVED: L.reserved.offset,
  PENDING_BYTES: L.pending_bytes.offset,
  DATA_OFFSET: L.data_offset.offset,
  DATA_SIZE: L.data_size.offset,
  SIZE: vfio_device_migration_info.size,
} as const;

/**
 * A v1 migration region, accessed by offset as a v1 VMM does with
 * pread/pwrite on the device fd. Failed accesses reject with VfioError.
 */
export interface V1Region {
  /** Header + data section, bytes. */
  readonly size: number;
  read(offset: number, length: number): Promise<Uint8Array>;
  /** read() into the caller's buffer, `into.length` bytes (pread into its own buffer): no allocation per access. */
  readInto?(offset: number, into: Uint8Array): Promise<void>;
  write(offset: number, data: Uint8Array): Promise<void>;
}
