/**
 * What one client may cost a shared service: connections (per uid and in
 * all), requests queued on a connection, time before HELLO, and log lines.
 * docs/interposer.md#trust-model says why each bound is there.
 */

export interface ServiceLimits {
  /** Connections open at once, from all clients (default 512). */
  maxConnections: number;
  /** Connections open at once from one uid (default 128: one per bridged device, and libvirt runs every VM as one uid). */
  maxConnectionsPerUid: number;
  /** Connections open at once from one process (default 32 devices per VMM): a VMM sandboxed from forking (libvirt's default) cannot take its uid's whole share. */
  maxConnectionsPerProcess: number;
  /** Requests read from a connection and not yet answered; above it the service stops reading (default 4). */
  maxQueuedRequests: number;
  /** Bytes of replies written and not yet taken by the peer; above it the service stops reading (default 64 KiB). */
  maxUnsentBytes: number;
  /** A connection not bridged by then (HELLO and SECTION, which the interposer sends at once) is closed (default 5 s). */
  helloTimeoutMs: number;
  /** Log lines one connection may cause (default 8); then one line saying the rest are dropped. */
  logLinesPerConnection: number;
}

/** The data section a bridged device gets (4 MiB): a few header round trips per MiB of state. */
export const SERVICE_SECTION_SIZE = 4 << 20;

export const DEFAULT_LIMITS: ServiceLimits = {
  maxConnections: 512,
  maxConnectionsPerUid: 128,
  maxConnectionsPerProcess: 32,
  maxQueuedRequests: 4,
  maxUnsentBytes: 64 << 10,
  helloTimeoutMs: 5_000,
  logLinesPerConnection: 8,
};

/** Counts open connections per uid and per process; `admit` says why one is refused, or null. */
export class ConnectionCount {
  readonly #perUid = new Map<number, number>();
  readonly #perProcess = new Map<string, number>();
  #total = 0;
  constructor(
    readonly limits: Pick<ServiceLimits, 'maxConnections' | 'maxConnectionsPerUid' | 'maxConnectionsPerProcess'>,
  ) {}

  admit(uid: number, process: string): string | null {
    if (this.#total >= this.limits.maxConnections)
      return `${this.#total} connections are open (at most ${this.limits.maxConnections})`;
    const u = this.#perUid.get(uid) ?? 0;
    if (u >= this.limits.maxConnectionsPerUid)
      return `uid ${uid} has ${u} connections open (at most ${this.limits.maxConnectionsPerUid})`;
    const p = this.#perProcess.get(process) ?? 0;
    if (p >= this.limits.maxConnectionsPerProcess)
      return `the process has ${p} connections open (at most ${this.limits.maxConnectionsPerProcess})`;
    this.#perUid.set(uid, u + 1);
    this.#perProcess.set(process, p + 1);
    this.#total++;
    return null;
  }

  release(uid: number, process: string): void {
    decrement(this.#perUid, uid);
    decrement(this.#perProcess, process);
    this.#total--;
  }
}

function decrement<K>(counts: Map<K, number>, key: K): void {
  const n = (counts.get(key) ?? 0) - 1;
  if (n > 0) counts.set(key, n);
  else counts.delete(key);
}

/**
 * Text a client chose (a device name), made safe for one log line: only
 * printable ASCII passes; anything else (newlines, escapes, bidi and line
 * separators), quotes and backslashes are escaped, at most 128 characters.
 * Callers print it in quotes, so it cannot pass for the start of a line.
 */
export function escapeForLog(text: string): string {
  const cut = text.length > 128 ? `${text.slice(0, 128)}...` : text;
  return cut.replace(/[^\x20-\x7e]|["\\]/gu, (c) => {
    if (c === '\\' || c === '"') return `\\${c}`;
    const code = c.codePointAt(0)!;
    return code < 0x100 ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u{${code.toString(16)}}`;
  });
}

/** A log for one connection that writes at most `budget` lines, then says once that it stops. */
export function limitedLog(
  log: ((line: string) => void) | undefined,
  budget: number,
  who: () => string,
): (line: string) => void {
  let left = budget;
  return (line) => {
    if (!log || left < 0) return;
    if (left-- > 0) log(line);
    else log(`${who()}: more than ${budget} log lines from this connection; the rest are dropped`);
  };
}

/**
 * A log shared by every client that is not bridged (yet): a burst of
 * `burst` lines, then one a second, and the count of those dropped, so no
 * flood of connections can flood the log.
 */
export function sharedLog(
  log: ((line: string) => void) | undefined,
  burst = 10,
  now: () => number = Date.now,
): (line: string) => void {
  let tokens = burst;
  let last = now();
  let dropped = 0;
  return (line) => {
    const t = now();
    tokens = Math.min(burst, tokens + (t - last) / 1000);
    last = t;
    if (tokens < 1) {
      dropped++;
      return;
    }
    tokens--;
    log?.(dropped ? `${line} (${dropped} lines from clients not bridged were dropped before this one)` : line);
    dropped = 0;
  };
}
