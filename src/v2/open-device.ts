/**
 * The one place that knows both backends: a spec names a simulated device
 * (`{ sim: options }`) or a kernel one (a path, `{ cdev }`, `{ group, device }`
 * or a borrowed `{ fd, name }`). Everything else asks the device its `kind`.
 */
import type { DeviceKind, V2Device } from './device.js';
import { openKernelDevice, type KernelDeviceSpec } from './kernel/kernel-device.js';
import { createSimDevice, type SimDeviceOptions } from './sim/sim-device.js';

export type DeviceSpec = KernelDeviceSpec | { sim: SimDeviceOptions };

function isSimSpec(spec: DeviceSpec): spec is { sim: SimDeviceOptions } {
  return typeof spec === 'object' && 'sim' in spec;
}

/** The kind of device openDevice(spec) gives, without opening it. */
export function deviceKindOf(spec: DeviceSpec): DeviceKind {
  return isSimSpec(spec) ? 'sim' : 'kernel';
}

/** Opens the device a spec names; errors are VfioErrors of its backend. */
export async function openDevice(spec: DeviceSpec): Promise<V2Device> {
  return isSimSpec(spec) ? createSimDevice(spec.sim) : openKernelDevice(spec);
}
