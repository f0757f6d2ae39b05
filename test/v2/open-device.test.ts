/** openDevice(): the one factory that knows both backends; every device says its kind. */
import { describe, expect, it } from 'vitest';
import { SimDevice, deviceKindOf, openDevice } from '../../src/index.js';

describe('openDevice', () => {
  it('opens a simulated device from { sim } whatever its name', async () => {
    const dev = await openDevice({ sim: { name: '/dev/vfio/devices/vfio0', stateSize: 4096 } });
    expect(dev).toBeInstanceOf(SimDevice);
    expect(dev.kind).toBe('sim');
    await dev.close();
  });
  it('gives any other spec to the kernel backend', async () => {
    await expect(openDevice('/nonexistent/vfio0')).rejects.toMatchObject({
      code: 'ENOENT',
      op: 'open',
      device: '/nonexistent/vfio0',
    });
    await expect(openDevice({ group: '/nonexistent/12', device: 'uuid' })).rejects.toMatchObject({ code: 'ENOENT' });
  });
  it.each([
    [{ sim: {} }, 'sim'],
    ['/dev/vfio/devices/vfio0', 'kernel'],
    ['sim', 'kernel'], // a string is always a path: the CLI parses its own `sim` syntax
    [{ cdev: '/dev/vfio/devices/vfio0' }, 'kernel'],
    [{ fd: 3, name: 'vmm' }, 'kernel'],
  ] as const)('deviceKindOf(%j) is %s', (spec, kind) => {
    expect(deviceKindOf(spec)).toBe(kind);
  });
});
