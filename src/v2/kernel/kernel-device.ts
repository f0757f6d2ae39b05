/**
 * A V2Device over a real VFIO device: the iommufd cdev path
 * (/dev/vfio/devices/vfioN) or the legacy group/container path
 * (/dev/vfio/N:NAME). Every operation is one ioctl on the device fd; each
 * data_fd is owned by one KernelStream and closed exactly once. Syscalls go
 * through a SysCalls table (the real ones from sys.ts unless a test passes
 * a fake kernel).
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { VfioError, isVfioError } from '../../errors.js';
import type { DataStream, PrecopyInfo, V2Device } from '../device.js';
import { holdsSession } from '../fsm.js';
import {
  IOMMU_IOAS_ALLOC,
  MigState,
  VFIO_API_VERSION,
  VFIO_CHECK_EXTENSION,
  VFIO_DEVICE_ATTACH_IOMMUFD_PT,
  VFIO_DEVICE_BIND_IOMMUFD,
  VFIO_DEVICE_FEATURE,
  VFIO_DEVICE_FEATURE_GET,
  VFIO_DEVICE_FEATURE_MIGRATION,
  VFIO_DEVICE_FEATURE_MIG_DATA_SIZE,
  VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
  VFIO_DEVICE_FEATURE_SET,
  VFIO_DEVICE_GET_INFO,
  VFIO_DEVICE_GET_REGION_INFO,
  VFIO_DEVICE_RESET,
  VFIO_GET_API_VERSION,
  VFIO_GROUP_FLAGS_VIABLE,
  VFIO_GROUP_GET_DEVICE_FD,
  VFIO_GROUP_GET_STATUS,
  VFIO_GROUP_SET_CONTAINER,
  VFIO_MIG_GET_PRECOPY_INFO,
  VFIO_SET_IOMMU,
  VFIO_TYPE1v2_IOMMU,
  FEATURE_HEADER_SIZE,
  decodeRegionInfo,
  featureBuffer,
  iommu_ioas_alloc,
  migStateName,
  vfio_device_attach_iommufd_pt,
  vfio_device_bind_iommufd,
  vfio_device_feature_mig_data_size,
  vfio_device_feature_mig_state,
  vfio_device_feature_migration,
  vfio_device_info,
  vfio_group_status,
  vfio_precopy_info,
  vfio_region_info,
  type RegionInfo,
} from '../uapi.js';
import { linuxSys, type SysCalls } from './sys.js';

export type KernelDeviceSpec =
  | string
  | { cdev: string; iommu?: string }
  | { group: string; device: string; container?: string }
  | BorrowedDeviceSpec;

/**
 * A device fd that belongs to someone else's session (a VMM's, taken with
 * pidfd_getfd): the KernelDevice closes this descriptor but never resets the
 * device on close, because the device is still the owner's.
 */
export interface BorrowedDeviceSpec {
  fd: number;
  name: string;
}

const FEATURE_PAYLOAD = 8; // every migration feature payload used here is 8 bytes (after the FEATURE_HEADER_SIZE header)

/** Parses `/dev/vfio/devices/vfioN` or `/dev/vfio/N:NAME`. */
export function parseKernelSpec(
  spec: Exclude<KernelDeviceSpec, BorrowedDeviceSpec>,
): { cdev: string; iommu: string } | { group: string; device: string; container: string } {
  if (typeof spec !== 'string') {
    if ('cdev' in spec) return { cdev: spec.cdev, iommu: spec.iommu ?? '/dev/iommu' };
    return { group: spec.group, device: spec.device, container: spec.container ?? '/dev/vfio/vfio' };
  }
  const colon = spec.indexOf(':');
  if (colon > 0) return { group: spec.slice(0, colon), device: spec.slice(colon + 1), container: '/dev/vfio/vfio' };
  return { cdev: spec, iommu: '/dev/iommu' };
}

class KernelStream implements DataStream {
  #fd: number;
  readonly #sys: SysCalls;
  constructor(
    fd: number,
    readonly device: string,
    sys: SysCalls,
  ) {
    this.#fd = fd;
    this.#sys = sys;
  }
  get closed(): boolean {
    return this.#fd < 0;
  }
  #live(op: string): number {
    if (this.#fd < 0) throw new VfioError('EBADF', op, this.device, 'data stream already closed');
    return this.#fd;
  }
  async read(into: Uint8Array): Promise<number> {
    return this.#sys.read(this.#live('data_fd.read'), into, 'data_fd.read', this.device);
  }
  async write(from: Uint8Array): Promise<number> {
    return this.#sys.write(this.#live('data_fd.write'), from, 'data_fd.write', this.device);
  }
  async precopyInfo(): Promise<PrecopyInfo> {
    const op = 'VFIO_MIG_GET_PRECOPY_INFO';
    // flags zeroed on input, ignored on output: older drivers (mtty) echo it back.
    const buf = vfio_precopy_info.encode({ argsz: vfio_precopy_info.size, flags: 0 });
    this.#sys.ioctl(this.#live(op), VFIO_MIG_GET_PRECOPY_INFO, buf, op, this.device);
    const info = vfio_precopy_info.decode(buf);
    return { initialBytes: info.initial_bytes, dirtyBytes: info.dirty_bytes };
  }
  async close(): Promise<void> {
    if (this.#fd >= 0) this.#sys.close(this.#fd);
    this.#fd = -1;
  }
}

/**
 * The data_fd stream over a descriptor the caller already holds (an ordinary
 * file or pipe will do): the same read()/write() path without a device, for
 * the benchmark and tests. The stream owns `fd` and closes it.
 */
export function kernelDataStream(fd: number, name: string, sys: SysCalls = linuxSys): DataStream {
  if (!Number.isInteger(fd) || fd < 0)
    throw new VfioError('EBADF', 'kernelDataStream', name, `not a file descriptor: ${fd}`);
  return new KernelStream(fd, name, sys);
}

export class KernelDevice implements V2Device {
  #fd: number;
  #held: number[]; // iommufd or container+group fds that must live as long as the device fd
  #regions: RegionInfo[] | null = null;
  /** The state as of our last GET or SET, for error messages; null after a failed SET. */
  #known: MigState | null = null;

  readonly #borrowed: boolean;
  readonly #sys: SysCalls;
  readonly kind = 'kernel';

  constructor(
    readonly name: string,
    fd: number,
    held: number[],
    borrowed = false,
    sys: SysCalls = linuxSys,
  ) {
    this.#fd = fd;
    this.#held = held;
    this.#borrowed = borrowed;
    this.#sys = sys;
  }

  #live(op: string): number {
    if (this.#fd < 0) throw new VfioError('EBADF', op, this.name, 'device closed');
    return this.#fd;
  }

  #feature(op: string, flags: number, payload?: Uint8Array): Uint8Array {
    const buf = featureBuffer(flags, FEATURE_PAYLOAD);
    if (payload) buf.set(payload, FEATURE_HEADER_SIZE);
    this.#sys.ioctl(this.#live(op), VFIO_DEVICE_FEATURE, buf, op, this.name);
    return buf;
  }

  async migrationFlags(): Promise<number> {
    const op = 'FEATURE_MIGRATION';
    const buf = this.#feature(op, VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIGRATION);
    return Number(vfio_device_feature_migration.decode(buf, FEATURE_HEADER_SIZE).flags);
  }

  async getState(): Promise<MigState> {
    const buf = this.#feature('GET_STATE', VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE);
    this.#known = vfio_device_feature_mig_state.decode(buf, FEATURE_HEADER_SIZE).device_state;
    return this.#known;
  }

  async setState(state: MigState): Promise<DataStream | null> {
    const op = `SET_STATE ${this.#known === null ? '?' : migStateName(this.#known)}->${migStateName(state)}`;
    const payload = vfio_device_feature_mig_state.encode({ device_state: state, data_fd: -1 });
    let buf: Uint8Array;
    try {
      buf = this.#feature(op, VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, payload);
    } catch (e) {
      this.#known = null; // the device may be anywhere on the path now
      // The core answers EINVAL to an arc it has no path for (vfio_mig_get_next_state).
      throw isVfioError(e, 'EINVAL') ? e.withHint('fsm-path') : e;
    }
    this.#known = state;
    const fd = vfio_device_feature_mig_state.decode(buf, FEATURE_HEADER_SIZE).data_fd;
    return fd >= 0 ? new KernelStream(fd, this.name, this.#sys) : null;
  }

  async stopCopySize(): Promise<bigint> {
    const buf = this.#feature('FEATURE_MIG_DATA_SIZE', VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIG_DATA_SIZE);
    return vfio_device_feature_mig_data_size.decode(buf, FEATURE_HEADER_SIZE).stop_copy_length;
  }

  async reset(): Promise<void> {
    this.#sys.ioctl(this.#live('VFIO_DEVICE_RESET'), VFIO_DEVICE_RESET, null, 'VFIO_DEVICE_RESET', this.name);
    this.#known = MigState.RUNNING;
  }

  /** VFIO_DEVICE_GET_INFO, then VFIO_DEVICE_GET_REGION_INFO for each region (retrying with the argsz the kernel asks for). */
  async regions(): Promise<RegionInfo[]> {
    if (this.#regions) return this.#regions;
    const fd = this.#live('VFIO_DEVICE_GET_INFO');
    const info = vfio_device_info.encode({ argsz: vfio_device_info.size });
    this.#sys.ioctl(fd, VFIO_DEVICE_GET_INFO, info, 'VFIO_DEVICE_GET_INFO', this.name);
    const count = vfio_device_info.decode(info).num_regions;
    const out: RegionInfo[] = [];
    for (let index = 0; index < count; index++) {
      let argsz = vfio_region_info.size;
      for (;;) {
        const buf = new Uint8Array(argsz);
        vfio_region_info.encode({ argsz, index }, buf);
        this.#sys.ioctl(fd, VFIO_DEVICE_GET_REGION_INFO, buf, `VFIO_DEVICE_GET_REGION_INFO(${index})`, this.name);
        const need = vfio_region_info.decode(buf).argsz;
        if (need > argsz) {
          argsz = need;
          continue;
        }
        out.push(decodeRegionInfo(buf, this.name, `VFIO_DEVICE_GET_REGION_INFO(${index})`));
        break;
      }
    }
    this.#regions = out;
    return out;
  }

  async #region(index: number, offset: number, length: number, op: string): Promise<RegionInfo> {
    const r = (await this.regions()).find((x) => x.index === index);
    if (!r) throw new VfioError('EINVAL', op, this.name, `no region ${index}`);
    if (offset < 0 || BigInt(offset + length) > r.size)
      throw new VfioError(
        'EINVAL',
        op,
        this.name,
        `[${offset}, ${offset + length}) is outside region ${index} (${r.size} bytes)`,
      );
    return r;
  }

  /** Reads device region `index` through the device fd at the region's offset. */
  async regionRead(index: number, offset: number, length: number): Promise<Uint8Array> {
    const op = `region(${index}).read`;
    const r = await this.#region(index, offset, length, op);
    const buf = new Uint8Array(length);
    const n = this.#sys.pread(this.#live(op), buf, r.offset + BigInt(offset), op, this.name);
    if (n !== length) throw new VfioError('EIO', op, this.name, `short read: ${n} of ${length} bytes`);
    return buf;
  }

  async regionWrite(index: number, offset: number, data: Uint8Array): Promise<void> {
    const op = `region(${index}).write`;
    const r = await this.#region(index, offset, data.length, op);
    const n = this.#sys.pwrite(this.#live(op), data, r.offset + BigInt(offset), op, this.name);
    if (n !== data.length) throw new VfioError('EIO', op, this.name, `short write: ${n} of ${data.length} bytes`);
  }

  /**
   * Closes the device. A device still in a state that holds a data session
   * (PRE_COPY, PRE_COPY_P2P, STOP_COPY, RESUMING) is reset first: the session
   * dies with its data_fd, and mtty (Linux 6.12) keeps the state across
   * close and then dereferences the missing migration file on the next arc
   * out of it (a kernel NULL pointer dereference, reproduced in the test guest).
   * A borrowed device is never reset: its owner still holds it.
   */
  async close(): Promise<void> {
    if (this.#fd < 0) return;
    try {
      const s = this.#borrowed ? null : await this.getState();
      if (s !== null && holdsSession(s)) await this.reset();
    } catch {
      // closing must not fail; the fds are released below either way
    }
    this.#sys.close(this.#fd);
    this.#fd = -1;
    for (const fd of this.#held.reverse()) this.#sys.close(fd);
    this.#held = [];
  }
}

/** @internal The cdev open sequence; exported for the host tests with a fake SysCalls. */
export function openCdev(path: string, iommu: string, sys: SysCalls = linuxSys): KernelDevice {
  const fds: number[] = [];
  try {
    const dev = sys.open(path, 'open');
    fds.push(dev);
    const iommufd = sys.open(iommu, 'open');
    fds.push(iommufd);
    const bind = vfio_device_bind_iommufd.encode({ argsz: vfio_device_bind_iommufd.size, iommufd });
    try {
      sys.ioctl(dev, VFIO_DEVICE_BIND_IOMMUFD, bind, 'VFIO_DEVICE_BIND_IOMMUFD', path);
    } catch (e) {
      if (!isVfioError(e, 'ENOTTY')) throw e;
      throw new VfioError('ENOTTY', 'VFIO_DEVICE_BIND_IOMMUFD', path, 'not a VFIO device (cdev) node', {
        syscall: 'ioctl',
        cause: e,
        hint: 'not-a-device',
      });
    }
    const ioas = iommu_ioas_alloc.encode({ size: iommu_ioas_alloc.size });
    sys.ioctl(iommufd, IOMMU_IOAS_ALLOC, ioas, 'IOMMU_IOAS_ALLOC', iommu);
    const attach = vfio_device_attach_iommufd_pt.encode({
      argsz: vfio_device_attach_iommufd_pt.size,
      pt_id: iommu_ioas_alloc.decode(ioas).out_ioas_id,
    });
    sys.ioctl(dev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, attach, 'VFIO_DEVICE_ATTACH_IOMMUFD_PT', path);
    return new KernelDevice(path, dev, [iommufd], false, sys);
  } catch (e) {
    for (const fd of fds.reverse()) sys.close(fd);
    throw e;
  }
}

/** @internal The group/container open sequence; exported for the host tests with a fake SysCalls. */
export function openGroup(
  group: string,
  device: string,
  containerPath: string,
  sys: SysCalls = linuxSys,
): KernelDevice {
  const name = `${group}:${device}`;
  const fds: number[] = [];
  try {
    const container = sys.open(containerPath, 'open');
    fds.push(container);
    const api = sys.ioctl(container, VFIO_GET_API_VERSION, null, 'VFIO_GET_API_VERSION', containerPath);
    if (api !== VFIO_API_VERSION)
      throw new VfioError('EINVAL', 'VFIO_GET_API_VERSION', containerPath, `unknown VFIO API version ${api}`);
    if (
      sys.ioctlInt(
        container,
        VFIO_CHECK_EXTENSION,
        VFIO_TYPE1v2_IOMMU,
        'VFIO_CHECK_EXTENSION(TYPE1v2)',
        containerPath,
      ) <= 0
    ) {
      throw new VfioError(
        'ENOTTY',
        'VFIO_CHECK_EXTENSION(TYPE1v2)',
        containerPath,
        'the container does not support VFIO_TYPE1v2_IOMMU',
      );
    }
    const g = sys.open(group, 'open');
    fds.push(g);
    const status = vfio_group_status.encode({ argsz: vfio_group_status.size });
    try {
      sys.ioctl(g, VFIO_GROUP_GET_STATUS, status, 'VFIO_GROUP_GET_STATUS', group);
    } catch (e) {
      if (!isVfioError(e, 'ENOTTY')) throw e;
      throw new VfioError('ENOTTY', 'VFIO_GROUP_GET_STATUS', group, 'not a VFIO group node', {
        syscall: 'ioctl',
        cause: e,
        hint: 'not-a-device',
      });
    }
    if (!(vfio_group_status.decode(status).flags & VFIO_GROUP_FLAGS_VIABLE)) {
      throw new VfioError(
        'EBUSY',
        'VFIO_GROUP_GET_STATUS',
        group,
        'group is not viable: every device in it must be bound to a VFIO driver',
      );
    }
    const cfd = new Uint8Array(4);
    new DataView(cfd.buffer).setInt32(0, container, true);
    sys.ioctl(g, VFIO_GROUP_SET_CONTAINER, cfd, 'VFIO_GROUP_SET_CONTAINER', group);
    sys.ioctlInt(container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU, 'VFIO_SET_IOMMU(TYPE1v2)', containerPath);
    let dev: number;
    try {
      dev = sys.ioctl(g, VFIO_GROUP_GET_DEVICE_FD, Buffer.from(`${device}\0`), 'VFIO_GROUP_GET_DEVICE_FD', name);
    } catch (e) {
      if (!isVfioError(e)) throw e;
      // EBUSY: the device is there, but open elsewhere (its cdev, or another group fd).
      const why =
        e.code === 'EBUSY'
          ? `device "${device}" in group ${group} is already open`
          : `no device "${device}" in group ${group}`;
      throw new VfioError(e.code, e.op, name, why, { syscall: 'ioctl', cause: e });
    }
    return new KernelDevice(name, dev, [container, g], false, sys);
  } catch (e) {
    for (const fd of fds.reverse()) sys.close(fd);
    throw e;
  }
}

/**
 * Opens a real VFIO device and checks that it speaks v2 migration (ENOTTY
 * otherwise, with the device closed again). `{fd, name}` wraps a borrowed
 * descriptor instead of opening one.
 */
export async function openKernelDevice(spec: KernelDeviceSpec): Promise<KernelDevice> {
  if (typeof spec === 'object' && 'fd' in spec) return checkMigration(new KernelDevice(spec.name, spec.fd, [], true));
  const s = parseKernelSpec(spec);
  const path = 'cdev' in s ? s.cdev : s.group;
  if (!existsSync(path)) throw new VfioError('ENOENT', 'open', path, 'no such device node');
  assertVfioNode(path, 'cdev' in s ? 'vfio-dev' : 'vfio');
  return checkMigration('cdev' in s ? openCdev(s.cdev, s.iommu) : openGroup(s.group, s.device, s.container));
}

/** Character-device majors by driver name, from /proc/devices (empty where there is none). */
function charMajors(): Map<number, string> {
  const out = new Map<number, string>();
  let text: string;
  try {
    text = readFileSync('/proc/devices', 'utf8');
  } catch {
    return out;
  }
  for (const line of text.split('Block devices:')[0]!.split('\n')) {
    const m = /^\s*(\d+)\s+(\S+)$/.exec(line);
    if (m) out.set(Number(m[1]), m[2]!);
  }
  return out;
}

/**
 * Refuses a path that is not a VFIO node before anything is opened, so the
 * error names the user's path (not /dev/iommu or the container): a cdev
 * node belongs to the "vfio-dev" major, a group node to "vfio".
 */
function assertVfioNode(path: string, driver: 'vfio-dev' | 'vfio'): void {
  const expect = driver === 'vfio-dev' ? '/dev/vfio/devices/vfioN' : '/dev/vfio/N:DEVICE';
  const st = statSync(path);
  if (!st.isCharacterDevice()) {
    throw new VfioError(
      'ENOTTY',
      'open',
      path,
      `not a VFIO device: ${st.isDirectory() ? 'a directory' : 'not a character device'} (expected ${expect})`,
      { hint: 'not-a-device' },
    );
  }
  const majors = charMajors();
  const major = (st.rdev >>> 8) & 0xfff;
  const name = majors.get(major);
  if (majors.size > 0 && name !== driver) {
    throw new VfioError(
      'ENOTTY',
      'open',
      path,
      `not a VFIO device: a ${name ?? `major ${major}`} character device (expected ${expect})`,
      { hint: 'not-a-device' },
    );
  }
}

async function checkMigration(dev: KernelDevice): Promise<KernelDevice> {
  try {
    await dev.migrationFlags();
    await dev.getState(); // so errors can name the state a transition started from
  } catch (e) {
    await dev.close();
    if (isVfioError(e, 'ENOTTY'))
      throw new VfioError('ENOTTY', 'FEATURE_MIGRATION', dev.name, 'device does not support v2 migration', {
        syscall: 'ioctl',
        cause: e,
      });
    throw e;
  }
  return dev;
}
