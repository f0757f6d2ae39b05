import { constants } from 'node:os';

const ERRNO = constants.errno as Record<string, number>;
const NAME_BY_NUMBER = new Map<number, string>(Object.entries(ERRNO).map(([name, num]) => [num, name]));

/**
 * What a caller can do about an error, as a stable key set where the error
 * is raised (`details.hint`), so no caller parses a message:
 * - not-a-device: the path is no VFIO node (a wrong argument, not a device's fault);
 * - fsm-path: the device has no path for the transition asked (see vfio_mig_get_next_state);
 * - v1-states: a v1 device_state value or transition the v1 protocol does not allow;
 * - resume-rejected: the device refused the resume data (another model, a damaged stream).
 */
export type ErrorHint = 'not-a-device' | 'fsm-path' | 'v1-states' | 'resume-rejected';

export interface VfioErrorOptions {
  /** The syscall that produced the errno, when the kernel did. */
  syscall?: string;
  /** Structured context: states, offsets, lengths, file names. */
  details?: Record<string, unknown>;
  /** Stored as `details.hint`. */
  hint?: ErrorHint;
  cause?: unknown;
}

/**
 * The one error class of the library. `code` is the errno name callers switch
 * on; `errno` is the positive number as in the kernel headers and
 * `os.constants.errno` (Node's own fs errors carry negative libuv numbers).
 */
export class VfioError extends Error {
  override readonly name = 'VfioError';
  readonly code: string;
  readonly errno: number;
  readonly op: string;
  readonly device: string;
  readonly reason: string | undefined;
  readonly syscall: string | undefined;
  readonly details: Record<string, unknown> | undefined;

  constructor(code: string, op: string, device: string, reason?: string, options: VfioErrorOptions = {}) {
    const errno = ERRNO[code];
    if (errno === undefined) throw new TypeError(`unknown errno name ${code}`);
    super(`${op} on ${device}: ${code} (${errno})${reason ? `: ${reason}` : ''}`, { cause: options.cause });
    this.code = code;
    this.errno = errno;
    this.op = op;
    this.device = device;
    this.reason = reason;
    this.syscall = options.syscall;
    this.details = options.hint ? { ...options.details, hint: options.hint } : options.details;
  }

  /** The same error with a hint added (a layer that knows what a lower one's errno means). */
  withHint(hint: ErrorHint): VfioError {
    return new VfioError(this.code, this.op, this.device, this.reason, {
      syscall: this.syscall,
      details: this.details,
      hint,
      cause: this,
    });
  }

  /** From a positive errno returned by a syscall. */
  static fromErrno(errno: number, op: string, device: string, syscall: string, reason?: string): VfioError {
    const code = NAME_BY_NUMBER.get(errno) ?? 'EIO';
    return new VfioError(code, op, device, reason, { syscall, details: errno === ERRNO[code] ? undefined : { errno } });
  }
}

/** Wraps any error (a Node fs error, say) as a VfioError; VfioErrors pass through unchanged. */
export function asVfioError(e: unknown, op: string, device: string): VfioError {
  if (e instanceof VfioError) return e;
  const code = (e as NodeJS.ErrnoException)?.code;
  const known = code !== undefined && ERRNO[code] !== undefined;
  return new VfioError(known ? code : 'EIO', op, device, e instanceof Error ? e.message : String(e), { cause: e });
}

export function isVfioError(e: unknown, code?: string): e is VfioError {
  return e instanceof VfioError && (code === undefined || e.code === code);
}

/** The hint an error was raised with, if any. */
export function hintOf(e: unknown): ErrorHint | undefined {
  return isVfioError(e) ? (e.details?.hint as ErrorHint | undefined) : undefined;
}

/** The errno number for a name, from os.constants (never a hand-typed table). */
export function errnoOf(code: string): number {
  const n = ERRNO[code];
  if (n === undefined) throw new TypeError(`unknown errno name ${code}`);
  return n;
}
