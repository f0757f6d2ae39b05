import { Parser } from 'binary-parser';
import { describe, expect, it, vi } from 'vitest';
import { uapi } from '../../src/index.js';
import { vfio_device_migration_info } from '../../src/v1/uapi.js';

const offsets = (c: { size: number; layout: Record<string, { offset: number }> }) => [
  c.size,
  Object.fromEntries(Object.entries(c.layout).map(([k, v]) => [k, v.offset])),
];

describe('ioctl numbers (asm-generic _IO encoding, Linux 6.12)', () => {
  it.each([
    ['VFIO_GET_API_VERSION', 15204],
    ['VFIO_CHECK_EXTENSION', 15205],
    ['VFIO_SET_IOMMU', 15206],
    ['VFIO_GROUP_GET_STATUS', 15207],
    ['VFIO_GROUP_SET_CONTAINER', 15208],
    ['VFIO_GROUP_GET_DEVICE_FD', 15210],
    ['VFIO_DEVICE_GET_INFO', 15211],
    ['VFIO_DEVICE_GET_REGION_INFO', 15212],
    ['VFIO_DEVICE_RESET', 15215],
    ['VFIO_DEVICE_FEATURE', 15221],
    ['VFIO_DEVICE_BIND_IOMMUFD', 15222],
    ['VFIO_DEVICE_ATTACH_IOMMUFD_PT', 15223],
    ['VFIO_MIG_GET_PRECOPY_INFO', 15225],
    ['IOMMU_IOAS_ALLOC', 0x3b81],
  ])('%s = %i', (name, value) => {
    expect((uapi as unknown as Record<string, number>)[name]).toBe(value);
  });

  it('feature flags and ids', () => {
    expect(uapi.VFIO_DEVICE_FEATURE_GET | uapi.VFIO_DEVICE_FEATURE_MIGRATION).toBe(0x10001);
    expect(uapi.VFIO_DEVICE_FEATURE_SET | uapi.VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE).toBe(0x20002);
    expect(uapi.VFIO_DEVICE_FEATURE_GET | uapi.VFIO_DEVICE_FEATURE_MIG_DATA_SIZE).toBe(0x10009);
    expect(uapi.VFIO_DEVICE_FEATURE_PROBE).toBe(0x40000);
  });
});

describe('struct layouts equal the uAPI', () => {
  it.each([
    [uapi.vfio_device_feature, [8, { argsz: 0, flags: 4 }]],
    [uapi.vfio_device_feature_migration, [8, { flags: 0 }]],
    [uapi.vfio_device_feature_mig_state, [8, { device_state: 0, data_fd: 4 }]],
    [uapi.vfio_device_feature_mig_data_size, [8, { stop_copy_length: 0 }]],
    [uapi.vfio_precopy_info, [24, { argsz: 0, flags: 4, initial_bytes: 8, dirty_bytes: 16 }]],
    [uapi.vfio_device_info, [24, { argsz: 0, flags: 4, num_regions: 8, num_irqs: 12, cap_offset: 16, pad: 20 }]],
    [uapi.vfio_region_info, [32, { argsz: 0, flags: 4, index: 8, cap_offset: 12, size: 16, offset: 24 }]],
    [uapi.vfio_info_cap_header, [8, { id: 0, version: 2, next: 4 }]],
    [uapi.vfio_region_info_cap_type, [16, { id: 0, version: 2, next: 4, type: 8, subtype: 12 }]],
    [uapi.vfio_region_info_cap_sparse_mmap_header, [16, { id: 0, version: 2, next: 4, nr_areas: 8, reserved: 12 }]],
    [uapi.vfio_region_sparse_mmap_area, [16, { offset: 0, size: 8 }]],
    [uapi.vfio_group_status, [8, { argsz: 0, flags: 4 }]],
    [uapi.vfio_device_bind_iommufd, [16, { argsz: 0, flags: 4, iommufd: 8, out_devid: 12 }]],
    [uapi.vfio_device_attach_iommufd_pt, [12, { argsz: 0, flags: 4, pt_id: 8 }]],
    [uapi.iommu_ioas_alloc, [12, { size: 0, flags: 4, out_ioas_id: 8 }]],
    [
      vfio_device_migration_info,
      [32, { device_state: 0, reserved: 4, pending_bytes: 8, data_offset: 16, data_size: 24 }],
    ],
  ])('%s', (codec, expected) => {
    expect(offsets(codec as never)).toEqual(expected);
  });
});

describe('codecs', () => {
  it('encodes a SET_STATE feature argument as hand-written golden bytes', () => {
    const buf = uapi.featureBuffer(uapi.VFIO_DEVICE_FEATURE_SET | uapi.VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, 8);
    uapi.vfio_device_feature_mig_state.encode({ device_state: uapi.MigState.STOP_COPY, data_fd: -1 }, buf, 8);
    expect(Buffer.from(buf).toString('hex')).toBe('10000000' + '02000200' + '03000000' + 'ffffffff');
    expect(uapi.vfio_device_feature_mig_state.decode(buf, 8)).toEqual({ device_state: 3, data_fd: -1 });
  });

  it('round-trips u64 fields as bigint, beyond 2^53', () => {
    const v = { argsz: 24, flags: 0, initial_bytes: 2n ** 60n + 1n, dirty_bytes: 5n };
    const bytes = uapi.vfio_precopy_info.encode(v);
    expect(Buffer.from(bytes.subarray(8, 16)).toString('hex')).toBe('0100000000000010');
    expect(uapi.vfio_precopy_info.decode(bytes)).toEqual(v);
  });

  it('round-trips the v1 header', () => {
    const v = { device_state: 3, reserved: 0, pending_bytes: 123n, data_offset: 4096n, data_size: 7n };
    expect(vfio_device_migration_info.decode(vfio_device_migration_info.encode(v))).toEqual(v);
  });

  it('decodes a region info capability chain (type + sparse mmap) via binary-parser as bigint', () => {
    const info = {
      index: 9,
      flags: uapi.VFIO_REGION_INFO_FLAG_READ | uapi.VFIO_REGION_INFO_FLAG_WRITE | uapi.VFIO_REGION_INFO_FLAG_MMAP,
      size: 0x101000n,
      offset: 0x90000000000n,
      type: { type: 3, subtype: 1 },
      sparseMmap: [{ offset: 4096n, size: 0x100000n }],
    };
    const buf = uapi.encodeRegionInfo(info);
    expect(buf.length).toBe(32 + 16 + 32);
    // Hand-checked bytes: caps flag set, cap_offset 32, first cap id 2 version 1 next 48.
    expect(Buffer.from(buf.subarray(4, 16)).toString('hex')).toBe('0f000000' + '09000000' + '20000000');
    expect(Buffer.from(buf.subarray(32, 40)).toString('hex')).toBe('0200' + '0100' + '30000000');
    const back = uapi.decodeRegionInfo(buf);
    expect(back).toEqual({ ...info, flags: info.flags | uapi.VFIO_REGION_INFO_FLAG_CAPS });
    expect(typeof back.sparseMmap![0]!.size).toBe('bigint');
  });

  it('decodes sparse mmap areas without compiling a parser per call', () => {
    // binary-parser generates code on a Parser's first parse(); the layout is built once at load.
    const compile = vi.spyOn(Parser.prototype, 'compile');
    try {
      for (const n of [0, 1, 3]) {
        const areas = Array.from({ length: n }, (_, i) => ({
          offset: BigInt(4096 * (2 * i + 1)),
          size: BigInt(4096 * (i + 1)),
        }));
        const back = uapi.decodeRegionInfo(
          uapi.encodeRegionInfo({ index: 9, flags: 7, size: 1n << 20n, offset: 0n, sparseMmap: areas }),
        );
        expect(back.sparseMmap).toEqual(areas);
      }
      expect(compile).not.toHaveBeenCalled();
    } finally {
      compile.mockRestore();
    }
  });

  it('rejects a capability chain that loops', () => {
    const buf = uapi.encodeRegionInfo({ index: 0, flags: 0, size: 0n, offset: 0n, type: { type: 3, subtype: 1 } });
    new DataView(buf.buffer).setUint32(32 + 4, 32, true); // next points back at itself
    expect(() => uapi.decodeRegionInfo(buf)).toThrow(/chain broken/);
  });
});
