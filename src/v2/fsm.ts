/**
 * The kernel's combination-transition helper, vfio_mig_get_next_state()
 * (Linux 6.12 drivers/vfio/vfio_main.c), as data plus the skip loop. Pure.
 */
import { VfioError } from '../errors.js';
import { MigFlag, MigState, MIG_STATE_COUNT, migStateName } from './uapi.js';

const { STOP, RUNNING, STOP_COPY, RESUMING, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P, ERROR } = MigState;

/**
 * vfio_from_fsm_table[cur][new]: the next state to step to from `cur` on
 * the way to `new`, before unsupported states are skipped. Rows and columns
 * are in enum order (ERROR, STOP, RUNNING, STOP_COPY, RESUMING, RUNNING_P2P,
 * PRE_COPY, PRE_COPY_P2P).
 */
const FROM_FSM_TABLE: readonly (readonly MigState[])[] = (() => {
  const t: MigState[][] = Array.from({ length: MIG_STATE_COUNT }, () =>
    new Array<MigState>(MIG_STATE_COUNT).fill(ERROR),
  );
  const row = (cur: MigState, next: Partial<Record<MigState, MigState>>) => {
    for (const [target, step] of Object.entries(next)) t[cur]![Number(target)] = step;
  };
  row(STOP, {
    [STOP]: STOP,
    [RUNNING]: RUNNING_P2P,
    [PRE_COPY]: RUNNING_P2P,
    [PRE_COPY_P2P]: RUNNING_P2P,
    [STOP_COPY]: STOP_COPY,
    [RESUMING]: RESUMING,
    [RUNNING_P2P]: RUNNING_P2P,
    [ERROR]: ERROR,
  });
  row(RUNNING, {
    [STOP]: RUNNING_P2P,
    [RUNNING]: RUNNING,
    [PRE_COPY]: PRE_COPY,
    [PRE_COPY_P2P]: RUNNING_P2P,
    [STOP_COPY]: RUNNING_P2P,
    [RESUMING]: RUNNING_P2P,
    [RUNNING_P2P]: RUNNING_P2P,
    [ERROR]: ERROR,
  });
  row(PRE_COPY, {
    [STOP]: RUNNING,
    [RUNNING]: RUNNING,
    [PRE_COPY]: PRE_COPY,
    [PRE_COPY_P2P]: PRE_COPY_P2P,
    [STOP_COPY]: PRE_COPY_P2P,
    [RESUMING]: RUNNING,
    [RUNNING_P2P]: RUNNING,
    [ERROR]: ERROR,
  });
  row(PRE_COPY_P2P, {
    [STOP]: RUNNING_P2P,
    [RUNNING]: RUNNING_P2P,
    [PRE_COPY]: PRE_COPY,
    [PRE_COPY_P2P]: PRE_COPY_P2P,
    [STOP_COPY]: STOP_COPY,
    [RESUMING]: RUNNING_P2P,
    [RUNNING_P2P]: RUNNING_P2P,
    [ERROR]: ERROR,
  });
  row(STOP_COPY, {
    [STOP]: STOP,
    [RUNNING]: STOP,
    [PRE_COPY]: ERROR,
    [PRE_COPY_P2P]: ERROR,
    [STOP_COPY]: STOP_COPY,
    [RESUMING]: STOP,
    [RUNNING_P2P]: STOP,
    [ERROR]: ERROR,
  });
  row(RESUMING, {
    [STOP]: STOP,
    [RUNNING]: STOP,
    [PRE_COPY]: STOP,
    [PRE_COPY_P2P]: STOP,
    [STOP_COPY]: STOP,
    [RESUMING]: RESUMING,
    [RUNNING_P2P]: STOP,
    [ERROR]: ERROR,
  });
  row(RUNNING_P2P, {
    [STOP]: STOP,
    [RUNNING]: RUNNING,
    [PRE_COPY]: RUNNING,
    [PRE_COPY_P2P]: PRE_COPY_P2P,
    [STOP_COPY]: STOP,
    [RESUMING]: STOP,
    [RUNNING_P2P]: RUNNING_P2P,
    [ERROR]: ERROR,
  });
  // The ERROR row stays all ERROR.
  return t;
})();

/** state_flags_table: the migration flags a device needs to support a state. ERROR is never supported. */
const STATE_FLAGS_TABLE: readonly number[] = (() => {
  const t = new Array<number>(MIG_STATE_COUNT).fill(0);
  t[STOP] = MigFlag.STOP_COPY;
  t[RUNNING] = MigFlag.STOP_COPY;
  t[STOP_COPY] = MigFlag.STOP_COPY;
  t[PRE_COPY] = MigFlag.STOP_COPY | MigFlag.PRE_COPY;
  t[PRE_COPY_P2P] = MigFlag.STOP_COPY | MigFlag.P2P | MigFlag.PRE_COPY;
  t[RESUMING] = MigFlag.STOP_COPY;
  t[RUNNING_P2P] = MigFlag.STOP_COPY | MigFlag.P2P;
  t[ERROR] = 0xffffffff; // ~0U
  return t;
})();

/** Whether a device with these migration flags supports `state` (ERROR never is). */
export function isStateSupported(state: number, flags: number): boolean {
  if (!Number.isInteger(state) || state < 0 || state >= MIG_STATE_COUNT) return false;
  const need = STATE_FLAGS_TABLE[state]!;
  return (need & flags) >>> 0 === need >>> 0;
}

function fsmError(cur: number, target: number, reason: string): VfioError {
  return new VfioError(
    'EINVAL',
    `vfio_mig_get_next_state ${migStateName(cur)}->${migStateName(target)}`,
    'fsm',
    reason,
    {
      details: { cur, target },
      hint: 'fsm-path',
    },
  );
}

/**
 * The next single arc a driver takes from `cur` towards `target`, exactly as
 * vfio_mig_get_next_state() computes it for a device with `flags`: unsupported
 * current or target states and any step into ERROR fail with EINVAL; arcs
 * through unsupported optional states are skipped. cur == target returns cur.
 */
export function nextState(cur: MigState, target: MigState, flags: number): MigState {
  if (!isStateSupported(cur, flags))
    throw fsmError(cur, target, `current state not supported by flags 0x${flags.toString(16)}`);
  if (!isStateSupported(target, flags))
    throw fsmError(cur, target, `target state not supported by flags 0x${flags.toString(16)}`);
  let next = FROM_FSM_TABLE[cur]![target]!;
  // Arcs touching optional and unsupported states are skipped over; the
  // ERROR sentinel stops the loop (the 6.12 stable fix for the blocked
  // STOP_COPY -> PRE_COPY(_P2P) arcs, which otherwise spun forever).
  while (next !== ERROR && !isStateSupported(next, flags)) next = FROM_FSM_TABLE[next]![target]!;
  if (next === ERROR) throw fsmError(cur, target, 'no arc leads there');
  return next;
}

/**
 * Every state a driver steps through from `cur` to `target`, both included
 * ([cur] when they are equal). Throws EINVAL like nextState.
 */
export function migrationPath(cur: MigState, target: MigState, flags: number): MigState[] {
  const path = [cur];
  let s = cur;
  while (s !== target) {
    s = nextState(s, target, flags);
    path.push(s);
    if (path.length > MIG_STATE_COUNT + 1) throw fsmError(cur, target, 'path does not converge');
  }
  return path;
}

/** The saving group (PRE_COPY, PRE_COPY_P2P, STOP_COPY) shares one data_fd. */
export function isSavingState(s: MigState): boolean {
  return s === PRE_COPY || s === PRE_COPY_P2P || s === STOP_COPY;
}

/** Whether a device in state `s` has a data session (a saving state, or RESUMING), which lives only as long as its data_fd. */
export function holdsSession(s: MigState): boolean {
  return isSavingState(s) || s === RESUMING;
}

/**
 * Whether the single arc from -> to opens a data session and so returns a
 * new data_fd: entering the saving group from outside it, or entering RESUMING.
 */
export function arcOpensStream(from: MigState, to: MigState): boolean {
  if (to === RESUMING) return from !== RESUMING;
  return isSavingState(to) && !isSavingState(from);
}

/** Whether the single arc from -> to ends the current data session. */
export function arcEndsStream(from: MigState, to: MigState): boolean {
  if (from === RESUMING) return to !== RESUMING;
  return isSavingState(from) && !isSavingState(to);
}
