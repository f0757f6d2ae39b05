/** vfio-mig fsm: the path a transition takes, or the whole table, for a flag set. */
import { isVfioError } from '../errors.js';
import { migrationPath } from '../v2/fsm.js';
import { MigState, migFlagNames, migStateName, parseMigState } from '../v2/uapi.js';
import { isStateSupported } from '../v2/fsm.js';
import { parseFlags } from './open-device.js';
import { CliError, toJson } from './output.js';
import type { CliContext } from './context.js';
import { EXIT } from './exit-codes.js';

export function pathText(path: MigState[]): string {
  return path.map(migStateName).join(' -> ');
}

const SETTABLE = 'STOP, RUNNING, STOP_COPY, RESUMING, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P';

/** A v2 state name; `toSet`: a state `vfio-mig state` may ask for, which ERROR is not (a device only falls into it). */
export function parseStateArg(text: string, toSet = false): MigState {
  const s = parseMigState(text);
  if (s === undefined)
    throw new CliError(`vfio-mig: unknown v2 state "${text}" (${toSet ? SETTABLE : `ERROR, ${SETTABLE}`})`, EXIT.USAGE);
  if (toSet && s === MigState.ERROR)
    throw new CliError(
      `vfio-mig: ERROR cannot be set: a device enters it when a transition fails and leaves it by --reset (states to set: ${SETTABLE})`,
      EXIT.USAGE,
    );
  return s;
}

export function fsmCommand(
  ctx: CliContext,
  from: string | undefined,
  to: string | undefined,
  opts: { flags: string; json?: boolean },
): number {
  const flags = parseFlags(opts.flags);
  if ((from === undefined) !== (to === undefined))
    throw new CliError('vfio-mig: fsm takes both FROM and TO, or neither', EXIT.USAGE);
  const one = (a: MigState, b: MigState) => {
    try {
      return { from: migStateName(a), to: migStateName(b), path: migrationPath(a, b, flags).map(migStateName) };
    } catch (e) {
      if (!isVfioError(e)) throw e; // migrationPath throws only VfioError (EINVAL)
      return { from: migStateName(a), to: migStateName(b), error: e.code, cause: e };
    }
  };
  if (from !== undefined && to !== undefined) {
    const { cause, ...r } = one(parseStateArg(from), parseStateArg(to));
    if (cause && opts.json) throw cause; // the one --json error object, on stderr
    if (opts.json) ctx.log(toJson({ flags, flagNames: migFlagNames(flags), ...r }));
    else
      ctx.log(
        r.path
          ? r.path.join(' -> ')
          : `${r.from} -> ${r.to}: ${r.error} (no such transition with flags ${migFlagNames(flags).join('|')})`,
      );
    return r.path ? EXIT.OK : EXIT.FAILED;
  }
  const states = Object.values(MigState).filter(
    (v): v is MigState => typeof v === 'number' && isStateSupported(v, flags),
  );
  const rows = states.flatMap((a) =>
    states
      .filter((b) => a !== b)
      .map((b) => {
        const { cause: _, ...row } = one(a, b);
        return row;
      }),
  );
  if (opts.json) ctx.log(toJson({ flags, flagNames: migFlagNames(flags), transitions: rows }));
  else {
    ctx.log(`flags 0x${flags.toString(16)} (${migFlagNames(flags).join('|')})`);
    for (const r of rows)
      ctx.log(`${r.from.padEnd(12)} -> ${r.to.padEnd(12)}  ${r.path ? r.path.join(' -> ') : r.error}`);
  }
  return EXIT.OK;
}
