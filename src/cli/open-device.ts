/**
 * The one place that knows both backends: `sim[:key=value,...]` or a
 * kernel device path (/dev/vfio/devices/vfioN, /dev/vfio/N:NAME).
 */
import { VfioError } from '../errors.js';
import type { V2Device } from '../v2/device.js';
import { openKernelDevice } from '../v2/kernel/kernel-device.js';
import { createSimDevice, type SimDeviceOptions, type SimArcFault } from '../v2/sim/sim-device.js';
import { MigFlag, parseMigState } from '../v2/uapi.js';

export const DEVICE_HELP = `DEVICE is one of:
  sim                           the simulated reference device (flags 7, 1 MiB of state)
  sim:key=value,...             with options: flags=7|STOP_COPY+P2P+PRE_COPY, size=4M, seed=N,
                                profile=mtty, ports=1|2, dirty=0.125, resume-failure=stay|error,
                                fail=FROM:TO:ERRNO[:error] (repeatable with +), short-read=N,
                                short-write=N, read-delay-ms=N
  /dev/vfio/devices/vfioN       a kernel device through iommufd (cdev)
  /dev/vfio/N:NAME              a kernel device through its VFIO group (NAME: mdev UUID or PCI address)`;

function usage(spec: string, why: string): VfioError {
  return new VfioError('EINVAL', 'parse device', spec, why);
}

/** Parses `4096`, `4K`, `1M`, `2G`. */
export function parseSize(text: string, what: string): number {
  const m = /^(\d+)([KMG]i?B?)?$/i.exec(text.trim());
  if (!m) throw new VfioError('EINVAL', 'parse size', what, `"${text}" is not a size (e.g. 4096, 64K, 1M)`);
  const unit = (m[2] ?? '').toUpperCase()[0];
  const mult = unit === 'K' ? 1024 : unit === 'M' ? 1024 ** 2 : unit === 'G' ? 1024 ** 3 : 1;
  return Number(m[1]) * mult;
}

/** Parses `7`, `0x5`, `STOP_COPY+P2P`, `stop_copy,pre_copy`. */
export function parseFlags(text: string, what = 'flags'): number {
  const t = text.trim();
  if (/^(0x[0-9a-f]+|\d+)$/i.test(t)) return Number(t);
  let flags = 0;
  for (const part of t.split(/[+,|]/)) {
    const name = part.trim().toUpperCase().replace(/-/g, '_') as keyof typeof MigFlag;
    if (!(name in MigFlag)) throw new VfioError('EINVAL', 'parse flags', what, `unknown migration flag "${part}" (STOP_COPY, P2P, PRE_COPY)`);
    flags |= MigFlag[name];
  }
  return flags;
}

export function parseSimSpec(spec: string): SimDeviceOptions {
  const opts: SimDeviceOptions = { name: spec };
  const rest = spec.slice(3).replace(/^:/, '');
  if (!rest) return opts;
  const faults: NonNullable<SimDeviceOptions['faults']> = {};
  for (const pair of rest.split(',')) {
    const eq = pair.indexOf('=');
    if (eq < 0) throw usage(spec, `"${pair}" is not key=value`);
    const key = pair.slice(0, eq).trim();
    const value = pair.slice(eq + 1).trim();
    const int = () => {
      if (!/^\d+$/.test(value)) throw usage(spec, `${key} must be a whole number (got "${value}")`);
      return Number(value);
    };
    switch (key) {
      case 'flags': opts.flags = parseFlags(value, spec); break;
      case 'size': opts.stateSize = parseSize(value, spec); break;
      case 'seed': opts.seed = int(); break;
      case 'ports': opts.ports = int() === 1 ? 1 : 2; break;
      case 'profile':
        if (value !== 'mtty' && value !== 'default') throw usage(spec, `profile must be mtty or default (got "${value}")`);
        opts.profile = value;
        break;
      case 'dirty': opts.dirtyRatio = Number(value); break;
      case 'resume-failure':
        if (value !== 'stay' && value !== 'error') throw usage(spec, 'resume-failure must be stay or error');
        opts.resumeFailure = value;
        break;
      case 'short-read': faults.shortRead = int(); break;
      case 'short-write': faults.shortWrite = int(); break;
      case 'read-delay-ms': faults.readDelayMs = int(); break;
      case 'fail':
        faults.failArc = value.split('+').map((f) => parseArcFault(spec, f));
        break;
      default:
        throw usage(spec, `unknown sim option "${key}"`);
    }
  }
  opts.faults = faults;
  return opts;
}

function parseArcFault(spec: string, text: string): SimArcFault {
  const [from, to, errno, leave] = text.split(':');
  const f = parseMigState(from ?? '');
  const t = parseMigState(to ?? '');
  if (f === undefined || t === undefined || !errno || !/^E[A-Z0-9]+$/.test(errno)) throw usage(spec, `fail=${text}: expected FROM:TO:ERRNO[:error], e.g. STOP:STOP_COPY:EIO`);
  return { from: f, to: t, errno, leave: leave === 'error' ? 'error' : 'stay' };
}

export async function openDevice(spec: string): Promise<V2Device> {
  if (spec === 'sim' || spec.startsWith('sim:')) return createSimDevice(parseSimSpec(spec));
  if (spec.startsWith('/')) return openKernelDevice(spec);
  throw usage(spec, 'not a device: use sim, sim:key=value,..., /dev/vfio/devices/vfioN or /dev/vfio/N:NAME');
}
