/**
 * Fault injection for the simulated device: what to inject (SimFaults, a
 * plain options object) and the counters that decide when each fault fires
 * (FaultPlan). The device copies the options into a plan, so a caller's
 * object never changes the device behind its back; SimDevice.setFaults()
 * swaps in a new plan with fresh counters.
 */
import type { MigState } from '../uapi.js';

export interface SimArcFault {
  from: MigState;
  to: MigState;
  /** errno name the arc fails with, e.g. 'EIO'. */
  errno: string;
  /** Where the device is left: at `from` (the state reached so far) or ERROR. */
  leave?: 'stay' | 'error';
  /** How many times the fault fires (default: every time). */
  count?: number;
}

export interface SimIoFault {
  /** 'ENOMSG' | 'EINTR' | 'EAGAIN' | 'EIO' | ... */
  errno: string;
  /** Successful calls before the first fault (default 0). */
  after?: number;
  /** Faults in a row (default 1). */
  count?: number;
}

export interface SimFaults {
  failArc?: SimArcFault[];
  /** At most this many bytes per read(). */
  shortRead?: number;
  /** At most this many bytes per write(). */
  shortWrite?: number;
  readErrors?: SimIoFault[];
  writeErrors?: SimIoFault[];
  /** Delay before each read() completes, ms (a slow device). */
  readDelayMs?: number;
  /** Delay before each write() completes, ms (a slow resume). */
  writeDelayMs?: number;
}

/** SimFaults as the device holds them: a frozen copy, so reading them cannot change them. */
export type FrozenFaults = {
  readonly [K in keyof SimFaults]: SimFaults[K] extends Array<infer E> | undefined
    ? ReadonlyArray<Readonly<E>>
    : SimFaults[K];
};

function frozenCopy(faults: SimFaults): FrozenFaults {
  const list = <E extends object>(l: E[] | undefined) =>
    l ? Object.freeze(l.map((e) => Object.freeze({ ...e }))) : undefined;
  const copy: FrozenFaults = {
    ...faults,
    failArc: list(faults.failArc),
    readErrors: list(faults.readErrors),
    writeErrors: list(faults.writeErrors),
  };
  // Absent stays absent, so a copy reads back like the options it came from.
  for (const k of ['failArc', 'readErrors', 'writeErrors'] as const)
    if (copy[k] === undefined) delete (copy as SimFaults)[k];
  return Object.freeze(copy);
}

/** One armed set of faults and how often each may still fire. */
export class FaultPlan {
  readonly faults: FrozenFaults;
  readonly #arcLeft: number[];

  constructor(faults: SimFaults = {}) {
    this.faults = frozenCopy(faults);
    this.#arcLeft = (this.faults.failArc ?? []).map((f) => f.count ?? Infinity);
  }

  /** The fault that fails arc from->to now (one of its firings is used up), or undefined. */
  takeArcFault(from: MigState, to: MigState): Readonly<SimArcFault> | undefined {
    const faults = this.faults.failArc ?? [];
    for (let i = 0; i < faults.length; i++) {
      const f = faults[i]!;
      if (f.from === from && f.to === to && this.#arcLeft[i]! > 0) {
        this.#arcLeft[i]!--;
        return f;
      }
    }
    return undefined;
  }

  /** Fresh read/write fault counters for one data session under this plan. */
  ioCounters(): IoFaultCounters {
    return new IoFaultCounters(this);
  }
}

/**
 * One data session's read and write fault counters: `after` counts that
 * session's successful calls (since the plan was armed, if it was armed
 * while the session was open).
 */
export class IoFaultCounters {
  readonly #readLeft: number[];
  readonly #writeLeft: number[];
  #reads = 0;
  #writes = 0;

  constructor(readonly plan: FaultPlan) {
    this.#readLeft = (plan.faults.readErrors ?? []).map((f) => f.count ?? 1);
    this.#writeLeft = (plan.faults.writeErrors ?? []).map((f) => f.count ?? 1);
  }

  /** The errno the next read() fails with, or undefined to let it run. */
  readFault(): string | undefined {
    return take(this.plan.faults.readErrors, this.#readLeft, this.#reads);
  }

  writeFault(): string | undefined {
    return take(this.plan.faults.writeErrors, this.#writeLeft, this.#writes);
  }

  readDone(): void {
    this.#reads++;
  }

  writeDone(): void {
    this.#writes++;
  }
}

function take(
  faults: ReadonlyArray<Readonly<SimIoFault>> | undefined,
  left: number[],
  calls: number,
): string | undefined {
  const i = (faults ?? []).findIndex((f, j) => calls >= (f.after ?? 0) && left[j]! > 0);
  if (i < 0) return undefined;
  left[i]!--;
  return faults![i]!.errno;
}
