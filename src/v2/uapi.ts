/**
 * Linux 6.12 include/uapi/linux/vfio.h (and iommufd.h): ioctl numbers,
 * feature ids, the v2 migration states and flags, and struct layouts.
 * Names keep the kernel's spelling so one grep finds both.
 */
import { Parser } from 'binary-parser';
import { VfioError } from '../errors.js';
import { defineStruct } from '../struct.js';

// _IO(type, nr) = (type << 8) | nr on x86-64/arm64/riscv (_IOC_NONE = 0).
export const VFIO_TYPE = 0x3b; // ';'
export const VFIO_BASE = 100;
const _IO = (nr: number): number => (VFIO_TYPE << 8) | nr;

export const VFIO_GET_API_VERSION = _IO(VFIO_BASE + 0);
export const VFIO_CHECK_EXTENSION = _IO(VFIO_BASE + 1);
export const VFIO_SET_IOMMU = _IO(VFIO_BASE + 2);
export const VFIO_GROUP_GET_STATUS = _IO(VFIO_BASE + 3);
export const VFIO_GROUP_SET_CONTAINER = _IO(VFIO_BASE + 4);
export const VFIO_GROUP_UNSET_CONTAINER = _IO(VFIO_BASE + 5);
export const VFIO_GROUP_GET_DEVICE_FD = _IO(VFIO_BASE + 6);
export const VFIO_DEVICE_GET_INFO = _IO(VFIO_BASE + 7);
export const VFIO_DEVICE_GET_REGION_INFO = _IO(VFIO_BASE + 8);
export const VFIO_DEVICE_RESET = _IO(VFIO_BASE + 11);
export const VFIO_DEVICE_FEATURE = _IO(VFIO_BASE + 17);
export const VFIO_DEVICE_BIND_IOMMUFD = _IO(VFIO_BASE + 18);
export const VFIO_DEVICE_ATTACH_IOMMUFD_PT = _IO(VFIO_BASE + 19);
export const VFIO_DEVICE_DETACH_IOMMUFD_PT = _IO(VFIO_BASE + 20);
export const VFIO_MIG_GET_PRECOPY_INFO = _IO(VFIO_BASE + 21);
// iommufd: same type, command base 0x80.
export const IOMMU_DESTROY = _IO(0x80);
export const IOMMU_IOAS_ALLOC = _IO(0x81);

export const VFIO_API_VERSION = 0;
export const VFIO_TYPE1v2_IOMMU = 3;
export const VFIO_GROUP_FLAGS_VIABLE = 1 << 0;
export const VFIO_GROUP_FLAGS_CONTAINER_SET = 1 << 1;

export const VFIO_DEVICE_FEATURE_MASK = 0xffff;
export const VFIO_DEVICE_FEATURE_GET = 1 << 16;
export const VFIO_DEVICE_FEATURE_SET = 1 << 17;
export const VFIO_DEVICE_FEATURE_PROBE = 1 << 18;
export const VFIO_DEVICE_FEATURE_MIGRATION = 1;
export const VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE = 2;
export const VFIO_DEVICE_FEATURE_MIG_DATA_SIZE = 9;

export const VFIO_DEVICE_FLAGS_RESET = 1 << 0;
export const VFIO_DEVICE_FLAGS_PCI = 1 << 1;

export const VFIO_REGION_INFO_FLAG_READ = 1 << 0;
export const VFIO_REGION_INFO_FLAG_WRITE = 1 << 1;
export const VFIO_REGION_INFO_FLAG_MMAP = 1 << 2;
export const VFIO_REGION_INFO_FLAG_CAPS = 1 << 3;
export const VFIO_REGION_INFO_CAP_SPARSE_MMAP = 1;
export const VFIO_REGION_INFO_CAP_TYPE = 2;
export const VFIO_REGION_TYPE_MIGRATION_DEPRECATED = 3;
export const VFIO_REGION_SUBTYPE_MIGRATION_DEPRECATED = 1;
export const VFIO_PCI_NUM_REGIONS = 9;

/** enum vfio_device_mig_state. ERROR is 0 so a table hole fails safe. */
export enum MigState {
  ERROR = 0,
  STOP = 1,
  RUNNING = 2,
  STOP_COPY = 3,
  RESUMING = 4,
  RUNNING_P2P = 5,
  PRE_COPY = 6,
  PRE_COPY_P2P = 7,
}
export const MIG_STATE_COUNT = 8;

/** VFIO_MIGRATION_* bits of vfio_device_feature_migration.flags. */
export const MigFlag = {
  STOP_COPY: 1 << 0,
  P2P: 1 << 1,
  PRE_COPY: 1 << 2,
} as const;
export type MigFlagName = keyof typeof MigFlag;
export const MIG_FLAGS_ALL = MigFlag.STOP_COPY | MigFlag.P2P | MigFlag.PRE_COPY;

/**
 * The page size the v1 region's layout (data section alignment, mmap) and
 * the simulated device assume: 4 KiB, as on x86-64 and arm64 with 4K pages.
 */
export const PAGE = 4096;

/** A flag set a v2 driver may report: STOP_COPY always, no bits beyond the three defined. */
export function isMigFlagSet(flags: number): boolean {
  return (flags & MigFlag.STOP_COPY) !== 0 && (flags & ~MIG_FLAGS_ALL) === 0;
}

export function migStateName(s: number): string {
  return MigState[s] ?? `UNKNOWN(${s})`;
}

/** Parses `STOP_COPY`, `stop-copy`, `pre_copy_p2p` or a number 0..7. */
export function parseMigState(text: string): MigState | undefined {
  const t = text.trim().toUpperCase().replace(/-/g, '_');
  if (/^\d+$/.test(t)) {
    const n = Number(t);
    return n < MIG_STATE_COUNT ? n : undefined;
  }
  const v = (MigState as unknown as Record<string, number>)[t];
  return typeof v === 'number' ? v : undefined;
}

export function migFlagNames(flags: number): string[] {
  const names: string[] = (Object.keys(MigFlag) as MigFlagName[]).filter((n) => flags & MigFlag[n]);
  const unknown = flags & ~MIG_FLAGS_ALL;
  if (unknown) names.push(`0x${unknown.toString(16)}`);
  return names;
}

// ---- struct layouts (LP64; sizes and offsets as gcc gives for the 6.12 headers)

export const vfio_device_feature = defineStruct('vfio_device_feature', 8, {
  argsz: { offset: 0, type: 'u32' },
  flags: { offset: 4, type: 'u32' },
});
export const vfio_device_feature_migration = defineStruct('vfio_device_feature_migration', 8, {
  flags: { offset: 0, type: 'u64' },
});
export const vfio_device_feature_mig_state = defineStruct('vfio_device_feature_mig_state', 8, {
  device_state: { offset: 0, type: 'u32' },
  data_fd: { offset: 4, type: 's32' },
});
export const vfio_device_feature_mig_data_size = defineStruct('vfio_device_feature_mig_data_size', 8, {
  stop_copy_length: { offset: 0, type: 'u64' },
});
export const vfio_precopy_info = defineStruct('vfio_precopy_info', 24, {
  argsz: { offset: 0, type: 'u32' },
  flags: { offset: 4, type: 'u32' },
  initial_bytes: { offset: 8, type: 'u64' },
  dirty_bytes: { offset: 16, type: 'u64' },
});
export const vfio_device_info = defineStruct('vfio_device_info', 24, {
  argsz: { offset: 0, type: 'u32' },
  flags: { offset: 4, type: 'u32' },
  num_regions: { offset: 8, type: 'u32' },
  num_irqs: { offset: 12, type: 'u32' },
  cap_offset: { offset: 16, type: 'u32' },
  pad: { offset: 20, type: 'u32' },
});
export const vfio_region_info = defineStruct('vfio_region_info', 32, {
  argsz: { offset: 0, type: 'u32' },
  flags: { offset: 4, type: 'u32' },
  index: { offset: 8, type: 'u32' },
  cap_offset: { offset: 12, type: 'u32' },
  size: { offset: 16, type: 'u64' },
  offset: { offset: 24, type: 'u64' },
});
export const vfio_info_cap_header = defineStruct('vfio_info_cap_header', 8, {
  id: { offset: 0, type: 'u16' },
  version: { offset: 2, type: 'u16' },
  next: { offset: 4, type: 'u32' },
});
export const vfio_region_info_cap_type = defineStruct('vfio_region_info_cap_type', 16, {
  id: { offset: 0, type: 'u16' },
  version: { offset: 2, type: 'u16' },
  next: { offset: 4, type: 'u32' },
  type: { offset: 8, type: 'u32' },
  subtype: { offset: 12, type: 'u32' },
});
export const vfio_region_info_cap_sparse_mmap_header = defineStruct('vfio_region_info_cap_sparse_mmap', 16, {
  id: { offset: 0, type: 'u16' },
  version: { offset: 2, type: 'u16' },
  next: { offset: 4, type: 'u32' },
  nr_areas: { offset: 8, type: 'u32' },
  reserved: { offset: 12, type: 'u32' },
});
/** One of the sparse mmap capability's `areas[]`, right after its header. */
export const vfio_region_sparse_mmap_area = defineStruct('vfio_region_sparse_mmap_area', 16, {
  offset: { offset: 0, type: 'u64' },
  size: { offset: 8, type: 'u64' },
});
export const vfio_group_status = defineStruct('vfio_group_status', 8, {
  argsz: { offset: 0, type: 'u32' },
  flags: { offset: 4, type: 'u32' },
});
export const vfio_device_bind_iommufd = defineStruct('vfio_device_bind_iommufd', 16, {
  argsz: { offset: 0, type: 'u32' },
  flags: { offset: 4, type: 'u32' },
  iommufd: { offset: 8, type: 's32' },
  out_devid: { offset: 12, type: 'u32' },
});
export const vfio_device_attach_iommufd_pt = defineStruct('vfio_device_attach_iommufd_pt', 12, {
  argsz: { offset: 0, type: 'u32' },
  flags: { offset: 4, type: 'u32' },
  pt_id: { offset: 8, type: 'u32' },
});
export const iommu_ioas_alloc = defineStruct('iommu_ioas_alloc', 12, {
  size: { offset: 0, type: 'u32' },
  flags: { offset: 4, type: 'u32' },
  out_ioas_id: { offset: 8, type: 'u32' },
});
export const iommu_destroy = defineStruct('iommu_destroy', 8, {
  size: { offset: 0, type: 'u32' },
  id: { offset: 4, type: 'u32' },
});

// ---- VFIO_DEVICE_FEATURE buffers: the 8-byte header, then the payload at byte 8.

export const FEATURE_HEADER_SIZE = vfio_device_feature.size;

/** A whole VFIO_DEVICE_FEATURE argument: header with argsz and flags, zeroed payload. */
export function featureBuffer(flags: number, payloadSize: number): Uint8Array {
  const buf = new Uint8Array(FEATURE_HEADER_SIZE + payloadSize);
  vfio_device_feature.encode({ argsz: buf.length, flags }, buf);
  return buf;
}

// ---- region info with its capability chain

export interface SparseMmapArea {
  offset: bigint;
  size: bigint;
}
export interface RegionInfo {
  index: number;
  flags: number;
  size: bigint;
  offset: bigint;
  /** VFIO_REGION_INFO_CAP_TYPE, when present. */
  type?: { type: number; subtype: number };
  /** VFIO_REGION_INFO_CAP_SPARSE_MMAP areas, when present. */
  sparseMmap?: SparseMmapArea[];
}

// VFIO_REGION_INFO_CAP_SPARSE_MMAP with its variable-length area array, as
// one declarative binary-parser layout (u64 fields come back as bigint). Built
// and compiled once here: binary-parser generates its parse function on the
// first parse() of a Parser and keeps it. The fixed structs stay in the
// defineStruct tables (docs/decisions.md 19 says why).
const sparseAreaParser = new Parser().endianness('little').uint64('offset').uint64('size');
const sparseMmapCapParser = new Parser()
  .endianness('little')
  .uint16('id')
  .uint16('version')
  .uint32('next')
  .uint32('nr_areas')
  .uint32('reserved')
  .array('areas', { type: sparseAreaParser, length: 'nr_areas' });
sparseMmapCapParser.compile();

/**
 * Decodes a vfio_region_info buffer the kernel filled, following the
 * capability chain (offsets from the start of the buffer) with a bounds and
 * loop check. Unknown capabilities are skipped. A malformed chain is EINVAL
 * (`details.offset`): the buffer, not the device, is at fault, and a caller
 * of the V2Device contract only ever sees VfioErrors.
 */
export function decodeRegionInfo(
  buf: Uint8Array,
  device = 'vfio_region_info',
  op = 'VFIO_DEVICE_GET_REGION_INFO',
): RegionInfo {
  const malformed = (offset: number, why: string) =>
    new VfioError('EINVAL', op, device, `vfio_region_info: ${why}`, { details: { offset } });
  if (buf.length < vfio_region_info.size)
    throw malformed(0, `${buf.length} bytes, shorter than the struct (${vfio_region_info.size})`);
  const info = vfio_region_info.decode(buf);
  const out: RegionInfo = { index: info.index, flags: info.flags, size: info.size, offset: info.offset };
  if (!(info.flags & VFIO_REGION_INFO_FLAG_CAPS)) return out;
  const limit = Math.min(buf.length, info.argsz);
  const seen = new Set<number>();
  let off = info.cap_offset;
  while (off !== 0) {
    if (seen.has(off) || off < vfio_region_info.size || off + vfio_info_cap_header.size > limit) {
      throw malformed(off, `capability chain broken at offset ${off}`);
    }
    seen.add(off);
    const hdr = vfio_info_cap_header.decode(buf, off);
    if (hdr.id === VFIO_REGION_INFO_CAP_TYPE && off + vfio_region_info_cap_type.size <= limit) {
      const cap = vfio_region_info_cap_type.decode(buf, off);
      out.type = { type: cap.type, subtype: cap.subtype };
    } else if (
      hdr.id === VFIO_REGION_INFO_CAP_SPARSE_MMAP &&
      off + vfio_region_info_cap_sparse_mmap_header.size <= limit
    ) {
      const cap = vfio_region_info_cap_sparse_mmap_header.decode(buf, off);
      const areasEnd =
        off + vfio_region_info_cap_sparse_mmap_header.size + vfio_region_sparse_mmap_area.size * cap.nr_areas;
      if (areasEnd > limit) throw malformed(off, `sparse mmap areas run past argsz (${areasEnd} > ${limit})`);
      const parsed = sparseMmapCapParser.parse(Buffer.from(buf.buffer, buf.byteOffset + off, areasEnd - off)) as {
        areas: SparseMmapArea[];
      };
      out.sparseMmap = parsed.areas.map((a) => ({ offset: a.offset, size: a.size }));
    }
    off = hdr.next;
  }
  return out;
}

/** Encodes a region info with a CAP_TYPE (and optional sparse mmap) chain, as a driver would. */
export function encodeRegionInfo(info: RegionInfo): Uint8Array {
  const caps: Uint8Array[] = [];
  if (info.type)
    caps.push(vfio_region_info_cap_type.encode({ id: VFIO_REGION_INFO_CAP_TYPE, version: 1, ...info.type }));
  if (info.sparseMmap) {
    const areas = info.sparseMmap;
    const head = vfio_region_info_cap_sparse_mmap_header.size;
    const cap = new Uint8Array(head + vfio_region_sparse_mmap_area.size * areas.length);
    vfio_region_info_cap_sparse_mmap_header.encode(
      { id: VFIO_REGION_INFO_CAP_SPARSE_MMAP, version: 1, nr_areas: areas.length },
      cap,
    );
    areas.forEach((a, i) => vfio_region_sparse_mmap_area.encode(a, cap, head + vfio_region_sparse_mmap_area.size * i));
    caps.push(cap);
  }
  const total = vfio_region_info.size + caps.reduce((n, c) => n + c.length, 0);
  const buf = new Uint8Array(total);
  let off = vfio_region_info.size;
  const flags = info.flags | (caps.length ? VFIO_REGION_INFO_FLAG_CAPS : 0);
  vfio_region_info.encode(
    { argsz: total, flags, index: info.index, cap_offset: caps.length ? off : 0, size: info.size, offset: info.offset },
    buf,
  );
  caps.forEach((cap, i) => {
    const next = i + 1 < caps.length ? off + cap.length : 0;
    new DataView(cap.buffer).setUint32(vfio_info_cap_header.layout.next.offset, next, true);
    buf.set(cap, off);
    off += cap.length;
  });
  return buf;
}
