/** precopy.*: VFIO_MIG_GET_PRECOPY_INFO. */
import { Skip } from './types.js';
import { isVfioError } from '../errors.js';
import { MigFlag, MigState } from '../v2/uapi.js';
import { errText } from './context.js';
import { VFIO_H, type Check } from './check.js';
import { precopyLimit } from './streams.js';

const S = MigState;
const PRECOPY_SOURCE = `${VFIO_H}, VFIO_MIG_GET_PRECOPY_INFO`;

export const precopyChecks: Check[] = [
  {
    id: 'precopy.info-einval',
    group: 'precopy',
    title: 'PRECOPY_INFO is EINVAL outside the PRE_COPY states',
    rule: '"This ioctl is valid only in PRE_COPY states and kernel driver should return -EINVAL from any other migration state."',
    source: PRECOPY_SOURCE,
    changesState: true,
    async run(ctx) {
      const pre = ctx.has(MigFlag.PRE_COPY);
      const expect = async (what: string, call: () => Promise<unknown>, alsoOk: string[]) => {
        try {
          await call();
          ctx.fail(`${what}: PRECOPY_INFO answered; it must be EINVAL there`);
        } catch (e) {
          const code = errText(e);
          if (code === 'EINVAL') return;
          if (alsoOk.includes(code))
            ctx.warn(
              `${what}: PRECOPY_INFO is ${code}, not EINVAL (a data_fd with no ioctl at all; mtty's resuming fd)`,
            );
          else ctx.fail(`${what}: PRECOPY_INFO failed with ${code}, not EINVAL`);
        }
      };
      await ctx.settle();
      // A device without PRE_COPY may have no ioctl on its data_fd at all: ENOTTY is then as good as EINVAL.
      const noIoctl = pre ? [] : ['ENOTTY'];
      if (pre) {
        const s = await ctx.dev.setState(S.PRE_COPY);
        await ctx.dev.setState(S.STOP_COPY);
        if (s) await expect('PRE_COPY data_fd, now in STOP_COPY', () => s.precopyInfo(), noIoctl);
        await ctx.settle();
      }
      const sc = await ctx.dev.setState(S.STOP_COPY);
      if (sc) await expect('STOP_COPY data_fd', () => sc.precopyInfo(), noIoctl);
      await ctx.settle();
      const r = await ctx.dev.setState(S.RESUMING);
      // A resuming fd has no PRE_COPY meaning; ENOTTY from an fd without ioctls is a deviation, not a failure.
      if (r) await expect('RESUMING data_fd', () => r.precopyInfo(), ['ENOTTY']);
      if (!ctx.fails.length && !ctx.warns.length)
        ctx.info(`EINVAL on ${pre ? 'a pre-copy data_fd in STOP_COPY, ' : ''}a STOP_COPY and a RESUMING data_fd`);
    },
  },
  {
    id: 'precopy.info-mandatory',
    group: 'precopy',
    title: 'PRECOPY_INFO answers in PRE_COPY and PRE_COPY_P2P when PRE_COPY is advertised',
    rule: '"Support for this ioctl is mandatory if a driver claims to support VFIO_MIGRATION_PRE_COPY." "This field [initial_bytes] should have a non-zero initial value"',
    source: PRECOPY_SOURCE,
    changesState: true,
    async run(ctx) {
      if (!ctx.has(MigFlag.PRE_COPY)) throw new Skip('the device does not advertise PRE_COPY');
      const entries: Array<[MigState, MigState[]]> = [[S.PRE_COPY, []]];
      // PRE_COPY_P2P entered on its own arc (RUNNING_P2P -> PRE_COPY_P2P), so this check owns its session.
      if (ctx.has(MigFlag.P2P)) entries.push([S.PRE_COPY_P2P, [S.RUNNING_P2P]]);
      for (const [state, via] of entries) {
        await ctx.settle();
        for (const v of via) await ctx.dev.setState(v);
        const s = await ctx.dev.setState(state);
        if (!s) throw new Skip(`no data_fd on entering ${MigState[state]} (streams.data-fd judges that)`);
        try {
          const info = await s.precopyInfo();
          ctx.info(`${MigState[state]}: initial ${info.initialBytes}, dirty ${info.dirtyBytes}`);
          if (info.initialBytes === 0n)
            ctx.warn(
              `${MigState[state]}: initial_bytes is 0 on a fresh session ("should have a non-zero initial value")`,
            );
        } catch (e) {
          ctx.fail(`${MigState[state]}: PRECOPY_INFO failed with ${errText(e)}`);
        }
      }
    },
  },
  {
    id: 'precopy.initial-no-grow',
    group: 'precopy',
    title: 'initial_bytes does not grow while pre-copy data is read',
    rule: '"The initial_bytes field indicates the amount of initial precopy data available from the device. This field should have a non-zero initial value and decrease as migration data is read from the device."',
    source: PRECOPY_SOURCE,
    changesState: true,
    async run(ctx) {
      const s = await ctx.enterPrecopy('the device does not advertise PRE_COPY');
      let info;
      try {
        info = await s.precopyInfo();
      } catch (e) {
        throw new Skip(`PRECOPY_INFO failed with ${errText(e)} (precopy.info-mandatory judges that)`);
      }
      const first = info.initialBytes;
      // About 32 reads to drain the initial data, at least 1 byte each.
      const piece = Math.max(1, Math.min(1 << 20, Number(first / 32n)));
      let prev = first;
      let bytes = 0;
      const limit = await precopyLimit(ctx);
      while (prev > 0n && bytes < limit) {
        let n: number;
        try {
          n = await s.read(new Uint8Array(piece));
        } catch (e) {
          if (isVfioError(e, 'ENOMSG')) break;
          throw e;
        }
        if (n === 0) break;
        bytes += n;
        const now = (await s.precopyInfo()).initialBytes;
        if (now > prev) ctx.fail(`initial_bytes grew from ${prev} to ${now} after ${bytes} bytes were read`);
        prev = now;
      }
      ctx.info(`initial_bytes ${first} -> ${prev} over ${bytes} bytes read`);
      // Abandon the session: a reset in settle ends it.
    },
  },
];
