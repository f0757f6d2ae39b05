/**
 * The DEVICE argument: `sim[:key=value,...]` or a kernel device path
 * (/dev/vfio/devices/vfioN, /dev/vfio/N:NAME), parsed into the library's
 * DeviceSpec with usage errors of our own; the library opens it.
 */
import { constants as osConstants } from 'node:os';
import type { V2Device } from '../v2/device.js';
import { nextState } from '../v2/fsm.js';
import { openDevice, type DeviceSpec } from '../v2/open-device.js';
import type { SimDeviceOptions, SimArcFault } from '../v2/sim/sim-device.js';
import { SIM_MAX_STATE_SIZE } from '../v2/sim/limits.js';
import { MIG_FLAGS_ALL, MigFlag, isMigFlagSet, migStateName, parseMigState } from '../v2/uapi.js';
import { CliError } from './output.js';
import { EXIT } from './exit-codes.js';

export const DEVICE_HELP = `DEVICE is one of:
  sim                           the simulated reference device (flags 7, 1 MiB of state)
  sim:key=value,...             with options (each once): flags=7|STOP_COPY+P2P+PRE_COPY,
                                size=4M (K, M, G, T, KiB, ...: powers of 1024; at most 1T),
                                seed=N, profile=mtty, ports=1|2, dirty=0.125, resume-failure=stay|error,
                                fail=FROM:TO:ERRNO[:error] (repeatable with +), short-read=N,
                                short-write=N, read-delay-ms=N,
                                write-delay-ms=N
  /dev/vfio/devices/vfioN       a kernel device through iommufd (cdev)
  /dev/vfio/N:NAME              a kernel device through its VFIO group (NAME: mdev UUID or PCI address)`;

/** The longest delay a Node timer takes (a longer one fires at once). */
const MAX_TIMER_MS = 2 ** 31 - 1;

/** A bad argument: exit 2, as every usage error. */
function usage(what: string, why: string): CliError {
  return new CliError(`vfio-mig: ${what}: ${why}`, EXIT.USAGE);
}

const SIZE_SUFFIXES = 'suffixes K, M, G, T, KiB, MiB, GiB, TiB are powers of 1024';
const DECIMAL_POWER: Record<string, number> = { K: 3, M: 6, G: 9, T: 12 };
const BINARY_UNITS: ReadonlyArray<[string, number]> = [
  ['TiB', 2 ** 40],
  ['GiB', 2 ** 30],
  ['MiB', 2 ** 20],
  ['KiB', 2 ** 10],
];

/**
 * Parses `4096`, `4K`, `1M`, `2GiB`: from `min` to `max` bytes. Sizes are
 * binary; `1MB` is refused, since many read it as 10^6 bytes.
 */
export function parseSize(text: string, what: string, max = Number.MAX_SAFE_INTEGER, min = 0): number {
  const m = /^(\d+)(?:([KMGT])(iB|B)?)?$/i.exec(text.trim());
  if (!m) throw usage(what, `"${text}" is not a size (e.g. 4096, 64K, 1M; ${SIZE_SUFFIXES})`);
  const unit = m[2]?.toUpperCase();
  if (unit && m[3]?.toUpperCase() === 'B') {
    throw usage(
      what,
      `"${text}" is ambiguous (10^${DECIMAL_POWER[unit]} or 2^${(DECIMAL_POWER[unit]! * 10) / 3} bytes?): sizes are binary, write ${m[1]}${m[2]} or ${m[1]}${m[2]}iB (${SIZE_SUFFIXES})`,
    );
  }
  const mult = unit ? 1024 ** ('KMGT'.indexOf(unit) + 1) : 1;
  const n = Number(m[1]) * mult;
  // A limit is named in bytes and, when it is a whole number of one, in the largest binary unit (1 TiB).
  const unitOf = (b: number) => BINARY_UNITS.find(([, u]) => b >= u && b % u === 0);
  const bytes = (b: number) =>
    `${b} byte${b === 1 ? '' : 's'}${unitOf(b) ? `, ${b / unitOf(b)![1]} ${unitOf(b)![0]}` : ''}`;
  if (n > max) throw usage(what, `${text} is more than the largest allowed (${bytes(max)})`);
  if (n < min) throw usage(what, `${text} is less than the smallest allowed (${bytes(min)})`);
  return n;
}

/** Parses `7`, `0x5`, `STOP_COPY+P2P`, `stop_copy,pre_copy`: a set the kernel accepts (STOP_COPY always in it). */
export function parseFlags(text: string, what = '--flags'): number {
  const t = text.trim();
  let flags = 0;
  if (/^(0x[0-9a-f]+|\d+)$/i.test(t)) flags = Number(t);
  else {
    for (const part of t.split(/[+,|]/)) {
      const name = part.trim().toUpperCase().replace(/-/g, '_') as keyof typeof MigFlag;
      if (!(name in MigFlag)) throw usage(what, `unknown migration flag "${part}" (STOP_COPY, P2P, PRE_COPY)`);
      flags |= MigFlag[name];
    }
  }
  if (!isMigFlagSet(flags))
    throw usage(
      what,
      `"${text}" is not a set of migration flags: STOP_COPY (required), P2P and PRE_COPY, e.g. 7 or STOP_COPY+P2P`,
    );
  return flags;
}

export function parseSimSpec(spec: string): SimDeviceOptions {
  if (spec !== 'sim' && !spec.startsWith('sim:'))
    throw usage(spec, 'not a simulated device: give sim or sim:key=value,...');
  const opts: SimDeviceOptions = { name: spec };
  const rest = spec.slice(4);
  if (!rest) return opts;
  const faults: NonNullable<SimDeviceOptions['faults']> = {};
  const seen = new Set<string>();
  for (const pair of rest.split(',')) {
    const eq = pair.indexOf('=');
    if (eq < 0) throw usage(spec, `"${pair}" is not key=value`);
    const key = pair.slice(0, eq).trim();
    const value = pair.slice(eq + 1).trim();
    // The last one winning would hide a typo: each key once (several faults go in one fail=, joined by +).
    if (seen.has(key))
      throw usage(
        spec,
        `${key} is given more than once${key === 'fail' ? ' (join several faults with +: fail=A:B:EIO+C:D:EIO)' : ''}`,
      );
    seen.add(key);
    const int = (max = Number.MAX_SAFE_INTEGER) => {
      const n = /^\d+$/.test(value) ? Number(value) : NaN;
      if (!(n <= max)) throw usage(spec, `${key} must be a whole number from 0 to ${max} (got "${value}")`);
      return n;
    };
    switch (key) {
      case 'flags':
        opts.flags = parseFlags(value, `${spec}: flags`);
        break;
      case 'size':
        opts.stateSize = parseSize(value, `${spec}: size`, SIM_MAX_STATE_SIZE);
        break;
      case 'seed':
        opts.seed = int(0xffff_ffff);
        break; // the sim's seed is a u32
      case 'ports': {
        const n = int();
        if (n !== 1 && n !== 2) throw usage(spec, `ports must be 1 or 2 (got ${value})`);
        opts.ports = n;
        break;
      }
      case 'profile':
        if (value !== 'mtty' && value !== 'default')
          throw usage(spec, `profile must be mtty or default (got "${value}")`);
        opts.profile = value;
        break;
      case 'dirty': {
        const r = Number(value);
        if (value === '' || !(r >= 0 && r < 1))
          throw usage(spec, `dirty must be a ratio in [0, 1) (got "${value}"): at 1 or more pre-copy never converges`);
        opts.dirtyRatio = r;
        break;
      }
      case 'resume-failure':
        if (value !== 'stay' && value !== 'error') throw usage(spec, 'resume-failure must be stay or error');
        opts.resumeFailure = value;
        break;
      case 'short-read':
        faults.shortRead = int();
        break;
      case 'short-write':
        faults.shortWrite = int();
        break;
      case 'read-delay-ms':
        faults.readDelayMs = int(MAX_TIMER_MS);
        break;
      case 'write-delay-ms':
        faults.writeDelayMs = int(MAX_TIMER_MS);
        break;
      case 'fail':
        faults.failArc = value.split('+').map((f) => parseArcFault(spec, f));
        break;
      default:
        throw usage(spec, `unknown sim option "${key}"`);
    }
  }
  // The arc a fault fires on is one step the device takes: check it against the FSM for these flags.
  const flags = opts.flags ?? MIG_FLAGS_ALL; // the sim's default
  for (const f of faults.failArc ?? []) {
    let step: number | null = null;
    try {
      step = nextState(f.from, f.to, flags);
    } catch {
      // no path at all
    }
    if (step !== f.to)
      throw usage(
        spec,
        `fail=${migStateName(f.from)}:${migStateName(f.to)} is not one step of the FSM with flags ${flags}, so it would never fire (\`vfio-mig fsm\` shows the steps)`,
      );
  }
  opts.faults = faults;
  return opts;
}

function parseArcFault(spec: string, text: string): SimArcFault {
  const [from, to, errno, leave] = text.split(':');
  const f = parseMigState(from ?? '');
  const t = parseMigState(to ?? '');
  if (f === undefined || t === undefined || !errno)
    throw usage(spec, `fail=${text}: expected FROM:TO:ERRNO[:error], e.g. STOP:STOP_COPY:EIO`);
  if (!(errno in osConstants.errno)) throw usage(spec, `fail=${text}: unknown errno name "${errno}"`);
  if (leave !== undefined && leave !== 'error') throw usage(spec, `fail=${text}: the fourth part can only be "error"`);
  return { from: f, to: t, errno, leave: leave === 'error' ? 'error' : 'stay' };
}

/** The DEVICE argument as the library's spec; a usage error when it is neither form. */
export function parseDeviceArg(spec: string): DeviceSpec {
  if (spec === 'sim' || spec.startsWith('sim:')) return { sim: parseSimSpec(spec) };
  if (spec.startsWith('/')) return spec;
  throw usage(spec, 'not a device: use sim, sim:key=value,..., /dev/vfio/devices/vfioN or /dev/vfio/N:NAME');
}

export async function openDeviceArg(spec: string): Promise<V2Device> {
  return openDevice(parseDeviceArg(spec));
}
