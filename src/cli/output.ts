/** Output conventions: data on stdout, diagnostics on stderr, one-line errors, exit codes. */
import type { Writable } from 'node:stream';
import { getSystemErrorMap } from 'node:util';
import { VfioError, asVfioError, errnoOf, hintOf, isVfioError, type ErrorHint } from '../errors.js';
import { V1, v1StateName } from '../v1/uapi.js';
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

const FILE_HINTS: Record<string, string> = {
  EACCES: 'check the permissions of the file and its directory',
  EPERM: 'check the permissions of the file and its directory',
  ENOENT: 'check the file path',
};

/** The steps of opening a kernel device: EBUSY there is another process holding it, which no reset undoes. */
const DEVICE_OPEN_OPS: readonly string[] = [
  'open',
  'VFIO_DEVICE_BIND_IOMMUFD',
  'VFIO_GROUP_SET_CONTAINER',
  'VFIO_GROUP_GET_DEVICE_FD',
];

const V1_STATES_HINT = `v1 device_state values: ${[V1.STOP, V1.RUNNING, V1.SAVING | V1.RUNNING, V1.SAVING, V1.RESUMING].map(v1StateName).join(', ')}, each reachable from each other except 010 -> 011; 110 is the error state, left by \`vfio-mig state DEVICE --reset\``;

/** The words for each hint an error was raised with. */
const HINT_TEXT: Record<ErrorHint, string | undefined> = {
  'not-a-device': undefined, // the reason says what was expected
  'fsm-path': '`vfio-mig fsm` lists the valid transitions',
  // `vfio-mig fsm` is the v2 table: a v1 write is helped by the v1 values instead.
  'v1-states': V1_STATES_HINT,
  'resume-rejected': 'the data does not fit this device: same model and an intact file are needed',
};

function hintFor(e: VfioError): string | undefined {
  const hint = hintOf(e);
  if (hint) return HINT_TEXT[hint];
  if (e.code === 'EBUSY' && DEVICE_OPEN_OPS.includes(e.op))
    return 'another process holds the device or its VFIO group open (a VMM, `vfio-mig serve`, another vfio-mig): it must close it first';
  if (e.code === 'EBUSY' && e.op === 'VFIO_GROUP_GET_STATUS') return undefined; // the reason (group not viable) says what to do
  if (e.details?.file !== undefined) return FILE_HINTS[e.code];
  if (e.op === 'qemu-stream') return undefined; // the reason names the offset or what the stream has
  if (e.op === 'serve' || e.op.endsWith('listen'))
    return e.code === 'EACCES' ? "the socket's directory is not writable for this user" : undefined;
  return e.code === 'EINVAL' ? undefined : HINTS[e.code];
}

/**
 * A Node fs error on a file the user named, as a VfioError on that name.
 * Node's message names the path it tried (a temporary file, a resolved
 * link): only its description ("permission denied") is kept, with what was
 * being done. Anything else goes to asVfioError.
 */
export function fileError(e: unknown, op: string, file: string, doing?: string): VfioError {
  const err = e as NodeJS.ErrnoException;
  if (isVfioError(e) || !(e instanceof Error) || typeof err.code !== 'string' || typeof err.syscall !== 'string')
    return asVfioError(e, op, file);
  const what = (typeof err.errno === 'number' ? getSystemErrorMap().get(err.errno)?.[1] : undefined) ?? err.code;
  try {
    return new VfioError(err.code, op, file, doing ? `${what} while ${doing}` : what, {
      syscall: err.syscall,
      details: { file: err.path ?? file },
      cause: e,
    });
  } catch {
    return asVfioError(e, op, file); // a code that is no errno name
  }
}

/** An error that also says which exit code it deserves; `cause` is the device error behind it, if any. */
export class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode: number,
    cause?: unknown,
  ) {
    super(message, cause === undefined ? undefined : { cause });
  }
}

/** A path that is no VFIO node (a file, /dev/null): the argument is wrong, not the device's migration support. */
function isNotADevice(e: VfioError): boolean {
  return hintOf(e) === 'not-a-device';
}

export function exitCodeFor(e: unknown): number {
  if (e instanceof CliError) return e.exitCode;
  if (isVfioError(e)) {
    if (isNotADevice(e)) return EXIT.USAGE;
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
    return new CliError(
      `${line}; the device is now in ${migStateName(now)}${detail}`,
      now === MigState.ERROR ? EXIT.DEVICE_LEFT_BAD : exitCodeFor(e),
      cause,
    );
  } catch (ge) {
    return new CliError(
      `${line}; the device's state is unknown (${errorLine(ge).replace(/^vfio-mig: /, '')})${detail}`,
      exitCodeFor(e),
      cause,
    );
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

/**
 * A reader that went away (`vfio-mig --help | head -1`) is not a failure of
 * the run: what is still written to `stream` is dropped and the exit status
 * stays the command's own (0 for help, 2 for a usage error), the same
 * whether or not the reader left before the write. Data a command must
 * deliver (`save -o -`) still fails it: its own writes see the error too.
 */
export function dropOutputOnClosedPipe(stream: NodeJS.EventEmitter): void {
  stream.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code !== 'EPIPE') throw e; // as without this listener
  });
}

/** JSON with u64 values as decimal strings (JSON has no bigint). */
export function toJson(value: unknown): string {
  return JSON.stringify(value, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v));
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
  return {
    error: {
      code,
      errno: dev?.errno ?? errnoOf(code),
      op: dev?.op ?? null,
      device: dev?.device ?? null,
      message,
      exit,
    },
  };
}

/** Progress goes to stderr whenever stderr is a terminal (curl's rule: `save -o - | ssh ...` shows it too). */
export function progressEnabled(stderr: Writable & { isTTY?: boolean }): boolean {
  return Boolean(stderr.isTTY);
}

/** `1 pre-copy round`, `3 pre-copy rounds`. */
export function countOf(n: number, noun: string): string {
  return `${n} ${noun}${n === 1 ? '' : 's'}`;
}

export function formatBytes(n: number): string {
  if (n < 1024) return `${Math.round(n)} B`; // a rate is a fraction
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
 * Lines are redrawn in place (`\r`); `done(bytes)` draws the finished total
 * in place of the last estimate and ends the line, `done()` (a failure)
 * only ends it.
 */
export function progressReporter(
  stderr: Writable & { isTTY?: boolean },
  label: string,
  total?: { bytes: bigint; estimate: boolean } | null,
): ((phase: string, bytes: number) => void) & { done(finished?: number): void } {
  const started = Date.now();
  let last = 0;
  let width = 0;
  const on = progressEnabled(stderr);
  const rate = (bytes: number, now: number) => formatBytes(bytes / Math.max(0.001, (now - started) / 1000));
  // Padded to the width of the line it replaces.
  const draw = (text: string) => {
    stderr.write(`\r${text.padEnd(width)}`);
    width = text.length;
  };
  const fn = (phase: string, bytes: number) => {
    const now = Date.now();
    if (!on || now - last < 100) return;
    last = now;
    draw(`${label} ${phase}: ${formatBytes(bytes)}${percentOf(bytes, total)} at ${rate(bytes, now)}/s`);
  };
  return Object.assign(fn, {
    done(finished?: number) {
      if (!on || !last) return;
      const now = Date.now();
      if (finished !== undefined)
        draw(
          `${label} done: ${formatBytes(finished)}${total && !total.estimate ? ' (100%)' : ''} in ${((now - started) / 1000).toFixed(1)} s at ${rate(finished, now)}/s`,
        );
      stderr.write('\n');
    },
  });
}

function percentOf(bytes: number, total?: { bytes: bigint; estimate: boolean } | null): string {
  if (!total || total.bytes <= 0n) return '';
  const pct = Math.floor((bytes * 100) / Number(total.bytes));
  return total.estimate
    ? ` (~${Math.min(pct, 99)}% of ~${formatBytes(Number(total.bytes))})`
    : ` (${Math.min(pct, 100)}%)`;
}
