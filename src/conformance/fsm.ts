/** fsm.*: SET_STATE against the kernel core's own path computation. */
import { arcOpensStream, isSavingState, migrationPath } from '../v2/fsm.js';
import { MigState, migStateName } from '../v2/uapi.js';
import { writeAll } from '../v2/stream-io.js';
import { VFIO_H, type Check } from './check.js';
import { label, matrix, type Transition } from './matrix.js';

const S = MigState;

export function describeTransition(t: Transition): string {
  const path = t.path ? t.path.map(migStateName).join('>') : 'no path';
  const got = t.error ? `failed ${t.error}` : t.stream ? 'ok, data_fd' : 'ok, no data_fd';
  return `${label(t)} [${path}]: ${got}; GET ${t.after === null ? 'failed' : migStateName(t.after)}`;
}

export const fsmChecks: Check[] = [
  {
    id: 'fsm.paths',
    group: 'fsm',
    title: 'every reachable state to every valid target ends where migrationPath says',
    rule: '"The kernel migration driver must fully transition the device to the new state value before the operation returns to the user." [...] "Refer to vfio_mig_get_next_state() for the result of the algorithm."',
    source: `${VFIO_H}, VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE; src/v2/fsm.ts (vfio_mig_get_next_state)`,
    changesState: true,
    async run(ctx) {
      const valid = (await matrix(ctx)).filter((t) => t.path);
      for (const t of valid) {
        const target: MigState = t.target; // a state: it has a path
        ctx.note(describeTransition(t));
        if (t.error)
          ctx.fail(
            `${label(t)}: failed with ${t.error}; the kernel's path is ${t.path!.map(migStateName).join(' > ')}`,
          );
        else if (t.after !== target)
          ctx.fail(
            `${label(t)}: SET_STATE succeeded but GET says ${t.after === null ? 'nothing (GET failed)' : migStateName(t.after)}`,
          );
      }
      ctx.info(`${valid.length} transitions with a path`);
    },
  },
  {
    id: 'fsm.einval',
    group: 'fsm',
    title: 'STOP_COPY->PRE_COPY(_P2P), unsupported optional states and ERROR as a target are EINVAL',
    rule: '"STOP_COPY -> PRE_COPY, STOP_COPY -> PRE_COPY_P2P: These arcs are not permitted and return error if requested." "ERROR cannot be specified as a device state" "The optional states cannot be used with SET_STATE if the device does not support them." (vfio_mig_get_next_state() returns -EINVAL)',
    source: VFIO_H,
    changesState: true,
    async run(ctx) {
      const refused = (await matrix(ctx)).filter((t) => !t.path);
      for (const t of refused) {
        ctx.note(describeTransition(t));
        if (!t.error)
          ctx.fail(
            `${label(t)}: accepted (${t.stream ? 'with a data_fd' : 'no data_fd'}); there is no such transition`,
          );
        else if (t.error !== 'EINVAL') ctx.fail(`${label(t)}: refused with ${t.error}, not EINVAL`);
      }
      ctx.info(`${refused.length} transitions without a path`);
    },
  },
  {
    id: 'fsm.no-unasked-saving',
    group: 'fsm',
    title: 'a combined transition passes through no saving state it was not asked for',
    rule: '"The path cannot have saving group states as interior arcs, only starting/end states." A driver that passed through one would open (and return) a data session nobody asked for.',
    source: `${VFIO_H}, enum vfio_device_mig_state`,
    changesState: true,
    async run(ctx) {
      const combined = (await matrix(ctx)).filter(
        (t) => t.path && t.path.length > 2 && !arcOpensStream(t.path.at(-2)!, t.path.at(-1)!),
      );
      for (const t of combined) {
        ctx.note(describeTransition(t));
        // Moves inside the saving group (PRE_COPY > PRE_COPY_P2P > STOP_COPY) stay in it by definition.
        const inGroup = isSavingState(t.from) && isSavingState(t.target);
        const interior = inGroup ? [] : t.path!.slice(1, -1).filter(isSavingState);
        // The table itself, for these flags (the kernel's, so this holds unless src/v2/fsm.ts drifted).
        if (interior.length)
          ctx.fail(`${label(t)}: the predicted path passes through ${interior.map(migStateName).join(', ')}`);
        if (t.stream)
          ctx.fail(
            `${label(t)}: returned a data_fd although the transition opens no session; the driver went through a saving state`,
          );
      }
      ctx.info(`${combined.length} combined transitions opening no session`);
    },
  },
  {
    id: 'fsm.failure-state',
    group: 'fsm',
    title: 'after a failed SET_STATE, GET returns a state on the path (not the target) or ERROR',
    rule: '"If this function fails then current device_state may be the original operating state or some other state along the combination transition path." [...] "any transition request can be failed with an errno return and may then move the device_state into ERROR."',
    source: `${VFIO_H}, VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE`,
    changesState: true,
    async run(ctx) {
      const failed = (await matrix(ctx)).filter((t) => t.error);
      const judge = (what: string, path: MigState[], after: MigState | null) => {
        const allowed = path.length > 1 ? path.slice(0, -1) : path;
        if (after === null) ctx.fail(`${what}: GET_STATE failed after the failure`);
        else if (after !== S.ERROR && !allowed.includes(after))
          ctx.fail(
            `${what}: the device is in ${migStateName(after)}, which is not on the path ${path.map(migStateName).join(' > ')} (before the target) nor ERROR`,
          );
      };
      for (const t of failed) {
        ctx.note(describeTransition(t));
        judge(label(t), t.path ?? [t.from], t.after);
      }
      // A failure with a real path: leaving RESUMING with a stream one byte short, which the device must refuse.
      const { data } = await ctx.reference();
      for (const target of [S.RUNNING, S.STOP]) {
        await ctx.settle();
        const r = await ctx.dev.setState(S.RESUMING);
        if (r) await writeAll(r, data.subarray(0, data.length - 1), ctx.dev.name).catch(() => undefined);
        let failedTo = false;
        await ctx.dev.setState(target).catch(() => (failedTo = true));
        const after = await ctx.dev.getState().catch(() => null);
        if (failedTo)
          judge(
            `RESUMING->${migStateName(target)} with a truncated stream`,
            migrationPath(S.RESUMING, target, ctx.flags),
            after,
          );
        else
          ctx.info(
            `RESUMING->${migStateName(target)} with a truncated stream was accepted (resume.bad-streams judges that)`,
          );
      }
      ctx.info(`${failed.length} failed transitions in the matrix, and leaving RESUMING with a truncated stream`);
    },
  },
];
