/**
 * The kernel backend on the host, against a fake kernel: the SysCalls table
 * is the seam (src/v2/kernel/sys.ts). The fake reads and writes the ioctl
 * buffers at the kernel's literal offsets (argsz @0, flags @4, payload @8),
 * not through the project's codecs, so an offset mistake shows here. The
 * same code runs against mtty in test/kernel/.
 */
import { describe, expect, it } from 'vitest';
import { VfioError } from '../../src/errors.js';
import { KernelDevice, openCdev, openGroup } from '../../src/v2/kernel/kernel-device.js';
import type { SysCalls } from '../../src/v2/kernel/sys.js';
import { MigState, uapi, type RegionInfo } from '../../src/index.js';
import { encodeRegionInfo } from '../../src/v2/uapi.js';

const GET = 1 << 16;
const SET = 1 << 17;

/** One VFIO device behind a fake kernel, with a log of every syscall. */
class FakeKernel implements SysCalls {
  readonly log: string[] = [];
  state: MigState = MigState.RUNNING;
  regions: RegionInfo[] = [];
  /** ioctl request -> errno to fail it with. */
  failIoctl = new Map<number, VfioError['code']>();
  #nextFd = 10;
  readonly closed: number[] = [];
  regionInfoCalls: { index: number; argsz: number }[] = [];

  open(path: string): number {
    const fd = this.#nextFd++;
    this.log.push(`open ${path} = ${fd}`);
    return fd;
  }
  close(fd: number): void {
    this.log.push(`close ${fd}`);
    this.closed.push(fd);
  }
  ioctl(fd: number, request: number, arg: Uint8Array | null, op: string, device: string): number {
    const name =
      Object.entries(uapi).find(([k, v]) => v === request && /^(VFIO|IOMMU)_/.test(k))?.[0] ?? String(request);
    this.log.push(`ioctl ${fd} ${name}`);
    const errno = this.failIoctl.get(request);
    if (errno) throw new VfioError(errno, op, device, undefined, { syscall: 'ioctl' });
    const dv = arg ? new DataView(arg.buffer, arg.byteOffset, arg.byteLength) : null;
    switch (request) {
      case uapi.VFIO_DEVICE_FEATURE: {
        const flags = dv!.getUint32(4, true);
        const feature = flags & 0xffff;
        if (dv!.getUint32(0, true) !== arg!.length) throw new VfioError('EINVAL', op, device, 'argsz');
        if (feature === uapi.VFIO_DEVICE_FEATURE_MIGRATION && flags & GET) dv!.setBigUint64(8, 7n, true);
        else if (feature === uapi.VFIO_DEVICE_FEATURE_MIG_DATA_SIZE && flags & GET) dv!.setBigUint64(8, 4096n, true);
        else if (feature === uapi.VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE && flags & GET) {
          dv!.setUint32(8, this.state, true);
          dv!.setInt32(12, -1, true);
        } else if (feature === uapi.VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE && flags & SET) {
          const to = dv!.getUint32(8, true) as MigState;
          const opens = to === MigState.STOP_COPY || to === MigState.RESUMING || to === MigState.PRE_COPY;
          this.state = to;
          dv!.setInt32(12, opens ? this.#nextFd++ : -1, true);
        } else throw new VfioError('ENOTTY', op, device);
        return 0;
      }
      case uapi.VFIO_DEVICE_RESET:
        this.state = MigState.RUNNING;
        return 0;
      case uapi.VFIO_DEVICE_GET_INFO:
        dv!.setUint32(8, this.regions.length, true);
        return 0;
      case uapi.VFIO_DEVICE_GET_REGION_INFO: {
        // As the kernel does: when the caps do not fit, say how much is
        // needed in argsz, copy the 32-byte struct only, cap_offset 0.
        const argsz = dv!.getUint32(0, true);
        const index = dv!.getUint32(8, true);
        this.regionInfoCalls.push({ index, argsz });
        const full = encodeRegionInfo(this.regions[index]!);
        if (argsz >= full.length) arg!.set(full);
        else {
          arg!.set(full.subarray(0, 32));
          dv!.setUint32(12, 0, true);
        }
        return 0;
      }
      case uapi.VFIO_MIG_GET_PRECOPY_INFO:
        dv!.setBigUint64(8, 24n, true);
        dv!.setBigUint64(16, 0n, true);
        return 0;
      case uapi.VFIO_GET_API_VERSION:
        return 0;
      case uapi.VFIO_GROUP_GET_STATUS:
        dv!.setUint32(4, uapi.VFIO_GROUP_FLAGS_VIABLE, true);
        return 0;
      case uapi.VFIO_GROUP_GET_DEVICE_FD:
        return this.#nextFd++;
      case uapi.IOMMU_IOAS_ALLOC:
        dv!.setUint32(8, 5, true);
        return 0;
      default:
        return 0;
    }
  }
  ioctlInt(fd: number, request: number): number {
    this.log.push(`ioctl ${fd} ${request === uapi.VFIO_CHECK_EXTENSION ? 'VFIO_CHECK_EXTENSION' : 'VFIO_SET_IOMMU'}`);
    return 1;
  }
  async read(fd: number, into: Uint8Array): Promise<number> {
    this.log.push(`read ${fd}`);
    into.fill(0xab, 0, 4);
    return 4;
  }
  async write(fd: number, from: Uint8Array): Promise<number> {
    this.log.push(`write ${fd}`);
    return from.length;
  }
  pread(): number {
    return 0;
  }
  pwrite(): number {
    return 0;
  }
}

describe('KernelDevice over a fake kernel: feature payloads', () => {
  it('reads and writes the payload after the 8-byte feature header', async () => {
    const k = new FakeKernel();
    const dev = new KernelDevice('fake', 3, [], false, k);
    expect(await dev.migrationFlags()).toBe(7);
    expect(await dev.stopCopySize()).toBe(4096n);
    k.state = MigState.STOP;
    expect(await dev.getState()).toBe(MigState.STOP);
    const stream = await dev.setState(MigState.STOP_COPY);
    expect(k.state).toBe(MigState.STOP_COPY);
    expect(stream).not.toBeNull();
    const buf = new Uint8Array(8);
    expect(await stream!.read(buf)).toBe(4);
    expect(await dev.setState(MigState.STOP)).toBeNull();
    // The data_fd is closed once, however often close() is called.
    await stream!.close();
    await stream!.close();
    expect(k.closed).toHaveLength(1);
    await expect(stream!.read(buf)).rejects.toMatchObject({ code: 'EBADF' });
  });
});

describe('KernelDevice over a fake kernel: region info argsz retry', () => {
  it('asks again with the argsz the kernel names, and decodes the capability chain', async () => {
    const k = new FakeKernel();
    k.regions = [
      { index: 0, flags: 3, size: 4096n, offset: 0n },
      {
        index: 1,
        flags: 7,
        size: 1n << 20n,
        offset: 1n << 40n,
        type: { type: 3, subtype: 1 },
        sparseMmap: [
          { offset: 4096n, size: 8192n },
          { offset: 65536n, size: 4096n },
        ],
      },
    ];
    const dev = new KernelDevice('fake', 3, [], false, k);
    const regions = await dev.regions();
    const full = encodeRegionInfo(k.regions[1]!).length;
    expect(k.regionInfoCalls).toEqual([
      { index: 0, argsz: 32 },
      { index: 1, argsz: 32 },
      { index: 1, argsz: full },
    ]);
    expect(regions[0]).toEqual({ index: 0, flags: 3, size: 4096n, offset: 0n });
    expect(regions[1]).toMatchObject({ index: 1, size: 1n << 20n, offset: 1n << 40n, type: { type: 3, subtype: 1 } });
    expect(regions[1]!.sparseMmap).toEqual([
      { offset: 4096n, size: 8192n },
      { offset: 65536n, size: 4096n },
    ]);
    // Cached: a second call asks the kernel nothing.
    await dev.regions();
    expect(k.regionInfoCalls).toHaveLength(3);
  });
});

describe('KernelDevice over a fake kernel: close()', () => {
  for (const s of [MigState.PRE_COPY, MigState.PRE_COPY_P2P, MigState.STOP_COPY, MigState.RESUMING]) {
    it(`resets a device left in ${MigState[s]} before releasing its fds, device fd first`, async () => {
      const k = new FakeKernel();
      k.state = s;
      const dev = new KernelDevice('fake', 3, [4, 5], false, k);
      await dev.close();
      expect(k.log).toEqual([
        'ioctl 3 VFIO_DEVICE_FEATURE',
        'ioctl 3 VFIO_DEVICE_RESET',
        'close 3',
        'close 5',
        'close 4',
      ]);
      expect(k.state).toBe(MigState.RUNNING);
    });
  }
  it('leaves a device outside a session state as it is', async () => {
    for (const s of [MigState.RUNNING, MigState.STOP, MigState.RUNNING_P2P, MigState.ERROR]) {
      const k = new FakeKernel();
      k.state = s;
      await new KernelDevice('fake', 3, [4], false, k).close();
      expect(k.log).toEqual(['ioctl 3 VFIO_DEVICE_FEATURE', 'close 3', 'close 4']);
      expect(k.state).toBe(s);
    }
  });
  it('never resets a borrowed device, and closes only once', async () => {
    const k = new FakeKernel();
    k.state = MigState.STOP_COPY;
    const dev = new KernelDevice('fake', 3, [], true, k);
    await dev.close();
    await dev.close();
    expect(k.log).toEqual(['close 3']);
    expect(k.state).toBe(MigState.STOP_COPY);
    await expect(dev.getState()).rejects.toMatchObject({ code: 'EBADF' });
  });
  it('still releases every fd when the state cannot be read', async () => {
    const k = new FakeKernel();
    k.failIoctl.set(uapi.VFIO_DEVICE_FEATURE, 'EIO');
    await new KernelDevice('fake', 3, [4, 5], false, k).close();
    expect(k.closed).toEqual([3, 5, 4]);
  });
});

describe('opening over a fake kernel: fd clean-up order', () => {
  it('cdev: a failed attach closes the iommufd, then the device fd, and names the ioctl', () => {
    const k = new FakeKernel();
    k.failIoctl.set(uapi.VFIO_DEVICE_ATTACH_IOMMUFD_PT, 'EPERM');
    expect(() => openCdev('/dev/vfio/devices/vfio0', '/dev/iommu', k)).toThrow(
      expect.objectContaining({ code: 'EPERM', op: 'VFIO_DEVICE_ATTACH_IOMMUFD_PT' }),
    );
    expect(k.log.filter((l) => l.startsWith('open') || l.startsWith('close'))).toEqual([
      'open /dev/vfio/devices/vfio0 = 10',
      'open /dev/iommu = 11',
      'close 11',
      'close 10',
    ]);
  });
  it('cdev: a node that is not a VFIO device is ENOTTY with the reason', () => {
    const k = new FakeKernel();
    k.failIoctl.set(uapi.VFIO_DEVICE_BIND_IOMMUFD, 'ENOTTY');
    expect(() => openCdev('/dev/null', '/dev/iommu', k)).toThrow(/not a VFIO device \(cdev\) node/);
    expect(k.closed).toEqual([11, 10]);
  });
  it('cdev: the opened device keeps the iommufd until it is closed', async () => {
    const k = new FakeKernel();
    const dev = openCdev('/dev/vfio/devices/vfio0', '/dev/iommu', k);
    expect(k.closed).toEqual([]);
    await dev.close();
    expect(k.closed).toEqual([10, 11]);
  });
  it('group: a device missing from the group closes the group, then the container', () => {
    const k = new FakeKernel();
    k.failIoctl.set(uapi.VFIO_GROUP_GET_DEVICE_FD, 'ENODEV');
    expect(() => openGroup('/dev/vfio/12', 'uuid-1', '/dev/vfio/vfio', k)).toThrow(
      /no device "uuid-1" in group \/dev\/vfio\/12/,
    );
    expect(k.log.filter((l) => l.startsWith('open') || l.startsWith('close'))).toEqual([
      'open /dev/vfio/vfio = 10',
      'open /dev/vfio/12 = 11',
      'close 11',
      'close 10',
    ]);
  });
  it('group: the opened device closes its fd, then the group, then the container', async () => {
    const k = new FakeKernel();
    const dev = openGroup('/dev/vfio/12', 'uuid-1', '/dev/vfio/vfio', k);
    expect(dev.name).toBe('/dev/vfio/12:uuid-1');
    expect(dev.kind).toBe('kernel');
    await dev.close();
    expect(k.closed).toEqual([12, 11, 10]);
  });
});
