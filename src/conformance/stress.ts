/** stress.cycles: many save/resume/reset cycles, state and fds checked after each. */
import { MigFlag, MigState, migStateName } from '../v2/uapi.js';
import { errText, openFdCount } from './context.js';
import { VFIO_H, type Check } from './check.js';
import { readToTemporaryEnd, precopyLimit } from './streams.js';

const S = MigState;

export const stressChecks: Check[] = [
  {
    id: 'stress.cycles',
    group: 'stress',
    title: 'save/resume/reset cycles leave the device RUNNING and no fd behind (--cycles)',
    rule: '"The user is responsible to close this FD when it is finished." and "To recover from ERROR VFIO_DEVICE_RESET must be used to return the device_state back to RUNNING.", over and over: every cycle ends where the FSM says, with as many fds open as before',
    source: `${VFIO_H}; docs/conformance.md`,
    changesState: true,
    async run(ctx) {
      const { deterministic } = await ctx.reference();
      await ctx.settleAll();
      const fds = openFdCount();
      let size: number | null = null;
      let failures = 0;
      const fail = (cycle: number, msg: string) => {
        if (++failures <= 5) ctx.fail(`cycle ${cycle}: ${msg}`);
      };
      for (let c = 1; c <= ctx.cycles; c++) {
        // Odd cycles with pre-copy where the device has it, even ones straight to STOP_COPY.
        const precopy = ctx.has(MigFlag.PRE_COPY) && c % 2 === 1;
        try {
          let s = precopy ? await ctx.dev.setState(S.PRE_COPY) : null;
          const head = s ? (await readToTemporaryEnd(ctx, s, await precopyLimit(ctx))).bytes : 0;
          s = (await ctx.dev.setState(S.STOP_COPY)) ?? s;
          if (!s) throw new Error('no data_fd');
          // Without pre-copy this is the whole stream; after pre-copy only its tail (not resumed).
          const data = await ctx.readToEnd(s, ctx.dev);
          await ctx.dev.setState(S.STOP);
          await s.close();
          if (!precopy) {
            if (size === null) size = data.length;
            else if (deterministic && data.length !== size)
              fail(c, `stop-copy save of ${data.length} bytes, the first was ${size}`);
            await ctx.resume(ctx.peer, data);
          }
          const src = await ctx.dev.getState();
          if (src !== S.STOP && !(ctx.samePeer && !precopy))
            fail(c, `source in ${migStateName(src)} after the save, not STOP`);
          const dst = await ctx.peer.getState();
          if (!precopy && dst !== S.RUNNING)
            fail(c, `${ctx.samePeer ? 'device' : 'peer'} in ${migStateName(dst)} after the resume, not RUNNING`);
          ctx.note(
            `cycle ${c}: ${precopy ? `pre-copy ${head} + ` : ''}${data.length} bytes${precopy ? '' : ', resumed'}`,
          );
          await ctx.dev.reset();
          if ((await ctx.dev.getState()) !== S.RUNNING) fail(c, 'not RUNNING after VFIO_DEVICE_RESET');
          await ctx.settleAll();
        } catch (e) {
          fail(c, `failed: ${errText(e)}`);
          await ctx.settleAll();
        }
        // A simulated device never waits on I/O: give signal handlers (Ctrl-C) their turn.
        await new Promise((r) => setImmediate(r));
        const now = openFdCount();
        if (fds !== null && now !== null && now > fds)
          fail(c, `${now - fds} more fds open than before the first cycle`);
      }
      if (failures > 5) ctx.fail(`... ${failures - 5} more failures`);
      ctx.info(
        `${ctx.cycles} cycles${fds === null ? ' (fd count not available here)' : `, open fds stayed at ${fds}`}`,
      );
    },
  },
];
