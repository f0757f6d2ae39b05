/**
 * What a new user hit (issue #19, part 2): misleading hints and exit codes,
 * a save into a closed stdout reported as a success, doubled JSON, raw
 * numbers. Each test failed before its fix.
 */
import { describe, expect, it } from 'vitest';
import { VfioError } from '../../src/errors.js';
import { errorLine } from '../../src/cli/output.js';
import { openCdev, openGroup } from '../../src/v2/kernel/kernel-device.js';
import type { SysCalls } from '../../src/v2/kernel/sys.js';
import * as uapi from '../../src/v2/uapi.js';

/** A kernel where the device is open in another process: EBUSY where the kernel gives it. */
function busyKernel(where: 'bind' | 'group-open' | 'get-device-fd'): SysCalls {
  let fd = 10;
  const busy = (op: string, device: string, syscall: string) => VfioError.fromErrno(16, op, device, syscall);
  return {
    open(path, op) {
      if (where === 'group-open' && path === '/dev/vfio/12') throw busy(op, path, 'open');
      return fd++;
    },
    close() {},
    ioctl(_fd, request, arg, op, device) {
      if (where === 'bind' && request === uapi.VFIO_DEVICE_BIND_IOMMUFD) throw busy(op, device, 'ioctl');
      if (where === 'get-device-fd' && request === uapi.VFIO_GROUP_GET_DEVICE_FD) throw busy(op, device, 'ioctl');
      if (request === uapi.VFIO_GROUP_GET_STATUS) new DataView(arg!.buffer, arg!.byteOffset).setUint32(4, uapi.VFIO_GROUP_FLAGS_VIABLE, true);
      return 0;
    },
    ioctlInt: () => 1,
    read: async () => 0,
    write: async () => 0,
    pread: () => 0,
    pwrite: () => 0,
  };
}

describe('EBUSY opening a device another process holds', () => {
  it.each([
    ['cdev bind', () => openCdev('/dev/vfio/devices/vfio0', '/dev/iommu', busyKernel('bind'))],
    ['group open', () => openGroup('/dev/vfio/12', 'uuid-1', '/dev/vfio/vfio', busyKernel('group-open'))],
    ['group get-device-fd', () => openGroup('/dev/vfio/12', 'uuid-1', '/dev/vfio/vfio', busyKernel('get-device-fd'))],
  ])('%s: says another process holds it, never "reset it" (a reset cannot take it over)', (_name, open) => {
    let err: unknown;
    try {
      open();
    } catch (e) {
      err = e;
    }
    expect(err).toMatchObject({ code: 'EBUSY' });
    const line = errorLine(err);
    expect(line).toContain('another process holds the device or its VFIO group open');
    expect(line).not.toMatch(/reset|no device/);
  });

  it('EBUSY from a device mid-migration still points at the reset', () => {
    const e = new VfioError('EBUSY', 'openV1Bridge', 'sim', 'device is in STOP_COPY, which has no v1 value without its data session; reset it first');
    expect(errorLine(e)).toContain('vfio-mig state DEVICE --reset');
  });
});
