/**
 * The one place that knows both backends: a spec names a simulated device
 * (`{ sim: options }`) or a kernel one (a path, `{ cdev }`, `{ group, device }`
 * or a borrowed `{ fd, name }`). Everything else asks the device its `kind`.
 */
import type { DeviceKind, V2Device } from './device.js';
import type { KernelDeviceSpec } from './kernel/kernel-device.js';
import type { SimDeviceOptions } from './sim/sim-device.js';

export type DeviceSpec = KernelDeviceSpec | { sim: SimDeviceOptions };

function isSimSpec(spec: DeviceSpec): spec is { sim: SimDeviceOptions } {
  return typeof spec === 'object' && 'sim' in spec;
}

/** The kind of device openDevice(spec) gives, without opening it. */
export function deviceKindOf(spec: DeviceSpec): DeviceKind {
  return isSimSpec(spec) ? 'sim' : 'kernel';
}

/**
 * Opens the device a spec names; errors are VfioErrors of its backend.
 * Each backend is loaded on first use: a process that opens none (the CLI
 * on its way to execve a VMM) does not pay for loading them.
 */
export async function openDevice(spec: DeviceSpec): Promise<V2Device> {
  if (isSimSpec(spec)) return (await import('./sim/sim-device.js')).createSimDevice(spec.sim);
  return (await import('./kernel/kernel-device.js')).openKernelDevice(spec);
}
