/** Output conventions: data on stdout, diagnostics on stderr, one-line errors, exit codes. */
import type { Writable } from 'node:stream';
import { errnoOf, isVfioError, type VfioError } from '../errors.js';
import type { V2Device } from '../v2/device.js';
import { MigState, migStateName } from '../v2/uapi.js';
import { EXIT } from './exit-codes.js';

const HINTS: Record<string, string> = {
  ENOENT: 'check the device or file path',
  EACCES: 'run as root, or give this user access to the device node',
  EPERM: 'run as root, or give this user access to the device node',
  ENOTTY: 'the device (or kernel) does not support VFIO v2 migration',
  EBUSY: 'the device is in use or mid-migration: reset it with `vfio-mig state DEVICE --reset`',
};

function hintFor(e: { code: string; op: string; reason: string | undefined }): string | undefined {
  if (e.reason?.startsWith('not a VFIO device')) return undefined; // the reason says what was expected
  if (e.op === 'listen' || e.op === 'serve') return e.code === 'EACCES' ? 'the socket\'s directory is not writable for this user' : undefined;
  if (e.code !== 'EINVAL') return HINTS[e.code];
  if (e.reason?.startsWith('resume data rejected')) return 'the data does not fit this device: same model and an intact file are needed';
  if (/^(SET_STATE|v1\.write\(device_state\)|vfio_mig_get_next_state)/.test(e.op)) return '`vfio-mig fsm` lists the valid transitions';
  return undefined;
}

/** An error that also says which exit code it deserves; `cause` is the device error behind it, if any. */
export class CliError extends Error {
  constructor(message: string, readonly exitCode: number, cause?: unknown) {
    super(message, cause === undefined ? undefined : { cause });
  }
}

export function exitCodeFor(e: unknown): number {
  if (e instanceof CliError) return e.exitCode;
  if (isVfioError(e)) {
    if (e.code === 'ENOTTY' || e.code === 'EOPNOTSUPP') return EXIT.NO_MIGRATION;
    if (e.code === 'EACCES' || e.code === 'EPERM') return EXIT.PERMISSION;
  }
  return EXIT.FAILED;
}

/**
 * An operation on `dev` failed with `e`: the error line, where the device is
 * now, then `detail`; exit 5 when that is ERROR (README "Exit codes").
 */
export async function failedOn(dev: V2Device, e: unknown, detail = ''): Promise<CliError> {
  const line = e instanceof CliError ? e.message : errorLine(e);
  const cause = e instanceof CliError && e.cause !== undefined ? e.cause : e; // the device error, for --json
  try {
    const now = await dev.getState();
    return new CliError(`${line}; the device is now in ${migStateName(now)}${detail}`, now === MigState.ERROR ? EXIT.DEVICE_LEFT_BAD : exitCodeFor(e), cause);
  } catch (ge) {
    return new CliError(`${line}; the device's state is unknown (${errorLine(ge).replace(/^vfio-mig: /, '')})${detail}`, exitCodeFor(e), cause);
  }
}

/** One line naming the operation, the device, the errno and what to do. */
export function errorLine(e: unknown): string {
  if (isVfioError(e)) {
    const hint = hintFor(e);
    return `vfio-mig: ${e.message}${hint ? ` (${hint})` : ''}`;
  }
  return `vfio-mig: ${e instanceof Error ? e.message : String(e)}`;
}

/** JSON with u64 values as decimal strings (JSON has no bigint). */
export function toJson(value: unknown): string {
  return JSON.stringify(value, (_k, v) => (typeof v === 'bigint' ? v.toString() : v));
}

/**
 * The one error object of --json, alone on stderr: the errno name and number
 * (EINVAL for usage errors, EIO where nothing more precise is known), the
 * operation and device when a device error is behind it, the message as
 * the text output would print it, and the exit code.
 */
export function errorJson(e: unknown, exit: number): { error: Record<string, unknown> } {
  const dev: VfioError | null = isVfioError(e) ? e : e instanceof CliError && isVfioError(e.cause) ? e.cause : null;
  const code = dev?.code ?? (exit === EXIT.USAGE ? 'EINVAL' : 'EIO');
  const message = (e instanceof CliError ? e.message : errorLine(e)).replace(/^vfio-mig( \w+)?: /, '');
  return { error: { code, errno: dev?.errno ?? errnoOf(code), op: dev?.op ?? null, device: dev?.device ?? null, message, exit } };
}

/** Progress goes to stderr whenever stderr is a terminal (curl's rule: `save -o - | ssh ...` shows it too). */
export function progressEnabled(stderr: Writable & { isTTY?: boolean }): boolean {
  return Boolean(stderr.isTTY);
}

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = -1;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${v.toFixed(1)} ${units[u]}`;
}

/**
 * `total`: the byte count when it is known (a state file's header), or
 * MIG_DATA_SIZE's estimate (shown with "~" and never as 100 % before the end).
 */
export function progressReporter(stderr: Writable & { isTTY?: boolean }, label: string, total?: { bytes: bigint; estimate: boolean } | null): ((phase: string, bytes: number) => void) & { done(): void } {
  const started = Date.now();
  let last = 0;
  const on = progressEnabled(stderr);
  const fn = (phase: string, bytes: number) => {
    const now = Date.now();
    if (!on || now - last < 100) return;
    last = now;
    const rate = bytes / Math.max(0.001, (now - started) / 1000);
    stderr.write(`\r${label} ${phase}: ${formatBytes(bytes)}${percentOf(bytes, total)} at ${formatBytes(rate)}/s   `);
  };
  return Object.assign(fn, {
    done() {
      if (on && last) stderr.write('\n');
    },
  });
}

function percentOf(bytes: number, total?: { bytes: bigint; estimate: boolean } | null): string {
  if (!total || total.bytes <= 0n) return '';
  const pct = Math.floor((bytes * 100) / Number(total.bytes));
  return total.estimate ? ` (~${Math.min(pct, 99)}% of ~${formatBytes(Number(total.bytes))})` : ` (${Math.min(pct, 100)}%)`;
}
