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
  /** Requests read from a connection and not yet answered; above it the service stops reading (default 4). */
  maxQueuedRequests: number;
  /** Bytes of replies written and not yet taken by the peer; above it the service stops reading (default 64 KiB). */
  maxUnsentBytes: number;
  /** A connection that has not said HELLO by then is closed (default 10 s). */
  helloTimeoutMs: number;
  /** Log lines one connection may cause (default 8); then one line saying the rest are dropped. */
  logLinesPerConnection: number;
}

export const DEFAULT_LIMITS: ServiceLimits = {
  maxConnections: 512,
  maxConnectionsPerUid: 128,
  maxQueuedRequests: 4,
  maxUnsentBytes: 64 << 10,
  helloTimeoutMs: 10_000,
  logLinesPerConnection: 8,
};

/** Counts open connections per uid; `admit` says why one is refused, or null. */
export class ConnectionCount {
  readonly #perUid = new Map<number, number>();
  #total = 0;
  constructor(readonly limits: Pick<ServiceLimits, 'maxConnections' | 'maxConnectionsPerUid'>) {}

  admit(uid: number): string | null {
    if (this.#total >= this.limits.maxConnections) return `${this.#total} connections are open (at most ${this.limits.maxConnections})`;
    const n = this.#perUid.get(uid) ?? 0;
    if (n >= this.limits.maxConnectionsPerUid) return `uid ${uid} has ${n} connections open (at most ${this.limits.maxConnectionsPerUid})`;
    this.#perUid.set(uid, n + 1);
    this.#total++;
    return null;
  }

  release(uid: number): void {
    const n = (this.#perUid.get(uid) ?? 0) - 1;
    if (n > 0) this.#perUid.set(uid, n);
    else this.#perUid.delete(uid);
    this.#total--;
  }
}

/**
 * Text a client chose (a device name), made safe for one log line:
 * control characters, quotes and backslashes escaped, at most 128 characters.
 */
export function escapeForLog(text: string): string {
  const cut = text.length > 128 ? `${text.slice(0, 128)}...` : text;
  // eslint-disable-next-line no-control-regex
  return cut.replace(/[\u0000-\u001f\u007f-\u009f\\"]/g, (c) => (c === '\\' || c === '"' ? `\\${c}` : `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`));
}

/** A log for one connection that writes at most `budget` lines, then says once that it stops. */
export function limitedLog(log: ((line: string) => void) | undefined, budget: number, who: () => string): (line: string) => void {
  let left = budget;
  return (line) => {
    if (!log || left < 0) return;
    if (left-- > 0) log(line);
    else log(`${who()}: more than ${budget} log lines from this connection; the rest are dropped`);
  };
}
