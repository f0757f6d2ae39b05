/** discovery.*: what the device says about itself. */
import { isVfioError } from '../errors.js';
import { isStateSupported } from '../v2/fsm.js';
import { MigState, isMigFlagSet, migFlagNames, migStateName } from '../v2/uapi.js';
import { errText } from './context.js';
import { VFIO_H, type Check } from './check.js';

const S = MigState;

export const discoveryChecks: Check[] = [
  {
    id: 'discovery.flags',
    group: 'discovery',
    title: 'FEATURE_MIGRATION gives a defined flag combination with STOP_COPY',
    rule: '"at least VFIO_MIGRATION_STOP_COPY must be set. [...] Other combinations of flags have behavior to be defined in the future." (defined: STOP_COPY, +P2P, +PRE_COPY, +P2P+PRE_COPY)',
    source: `${VFIO_H}, struct vfio_device_feature_migration`,
    changesState: false,
    async run(ctx) {
      const flags = await ctx.dev.migrationFlags();
      if (!isMigFlagSet(flags)) ctx.fail(`flags 0x${flags.toString(16)} are not a defined combination (1, 3, 5 or 7)`);
      else ctx.info(`flags ${flags} (${migFlagNames(flags).join('+')})`);
    },
  },
  {
    id: 'discovery.data-size',
    group: 'discovery',
    title: 'MIG_DATA_SIZE answers in every state, or is ENOTTY',
    rule: '"Upon VFIO_DEVICE_FEATURE_GET read back the estimated data length that will be required to complete stop copy. Note: Can be called on each device state."',
    source: `${VFIO_H}, VFIO_DEVICE_FEATURE_MIG_DATA_SIZE`,
    changesState: true,
    async run(ctx) {
      const answers: string[] = [];
      let enotty = 0;
      let visited = 0;
      for (const state of [S.RUNNING, S.STOP, S.STOP_COPY, S.RESUMING, S.RUNNING_P2P, S.PRE_COPY, S.PRE_COPY_P2P]) {
        if (!isStateSupported(state, ctx.flags)) continue;
        await ctx.settle();
        if (state !== S.RUNNING) await ctx.dev.setState(state);
        visited++;
        try {
          const size = await ctx.dev.stopCopySize();
          if (typeof size !== 'bigint' || size < 0n)
            ctx.fail(`${migStateName(state)}: MIG_DATA_SIZE returned ${String(size)}, not a u64`);
          answers.push(`${migStateName(state)} ${size}`);
        } catch (e) {
          if (isVfioError(e, 'ENOTTY')) enotty++;
          else
            ctx.fail(
              `${migStateName(state)}: MIG_DATA_SIZE failed with ${errText(e)} (expected a size, or ENOTTY when the feature is absent)`,
            );
        }
      }
      if (enotty && enotty !== visited)
        ctx.fail(`MIG_DATA_SIZE is ENOTTY in some states only (${enotty} of ${visited})`);
      else if (enotty) ctx.info('MIG_DATA_SIZE is not implemented (ENOTTY in every state)');
      else ctx.info(`sizes: ${answers.join(', ')}`);
    },
  },
];
