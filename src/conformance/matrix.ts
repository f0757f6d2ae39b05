/**
 * Every SET_STATE from every reachable state to every target, run once per
 * checker run; fsm.paths, fsm.einval, fsm.no-unasked-saving, fsm.failure-state
 * and streams.data-fd each judge one aspect of it.
 */
import { isStateSupported, migrationPath } from '../v2/fsm.js';
import { MigState, MIG_STATE_COUNT, migStateName } from '../v2/uapi.js';
import { writeAll } from '../v2/stream-io.js';
import { errText, type CheckContext } from './context.js';

const S = MigState;

export interface Transition {
  from: MigState;
  /** 0..MIG_STATE_COUNT: the last one is no state at all. */
  target: number;
  /** migrationPath(from, target, flags), or null when the kernel's helper refuses it. */
  path: MigState[] | null;
  /** errno name when SET_STATE failed. */
  error: string | null;
  stream: boolean;
  /** GET_STATE right after; null when GET failed. */
  after: MigState | null;
}

export function label(t: Pick<Transition, 'from' | 'target'>): string {
  return `${migStateName(t.from)}->${t.target < MIG_STATE_COUNT ? migStateName(t.target) : `state ${t.target}`}`;
}

export function matrix(ctx: CheckContext): Promise<Transition[]> {
  return ctx.once('matrix', async () => {
    const { data } = await ctx.reference();
    const out: Transition[] = [];
    for (let from = S.STOP; Number(from) < MIG_STATE_COUNT; from++) {
      if (!isStateSupported(from, ctx.flags)) continue;
      for (let target = 0; target <= MIG_STATE_COUNT; target++) {
        await ctx.settle();
        if (from !== S.RUNNING) {
          const entered = await ctx.dev.setState(from);
          // From RESUMING the way out runs the device's checks on the data: give it a valid stream.
          if (from === S.RESUMING && entered) await writeAll(entered, data, ctx.dev.name);
        }
        let path: MigState[] | null = null;
        try {
          path = target < MIG_STATE_COUNT ? migrationPath(from, target, ctx.flags) : null;
        } catch {
          path = null;
        }
        const t: Transition = { from, target, path, error: null, stream: false, after: null };
        try {
          t.stream = (await ctx.dev.setState(target)) !== null;
        } catch (e) {
          t.error = errText(e);
        }
        t.after = await ctx.dev.getState().catch(() => null);
        out.push(t);
      }
    }
    await ctx.settle();
    return out;
  });
}
