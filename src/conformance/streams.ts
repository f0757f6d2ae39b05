/** streams.*: the data_fd and what read() on it does. */
import { Skip } from './types.js';
import { isVfioError } from '../errors.js';
import { arcOpensStream } from '../v2/fsm.js';
import { MigFlag, MigState, migStateName } from '../v2/uapi.js';
import { writeAll } from '../v2/stream-io.js';
import { errText, READ_CHUNK, type CheckContext } from './context.js';
import { VFIO_H, type Check } from './check.js';
import { describeTransition } from './fsm.js';
import { label, matrix } from './matrix.js';
import type { DataStream } from '../v2/device.js';

const S = MigState;

/** Reads in pre-copy until the temporary end: what the end looked like, and the bytes read. */
export async function readToTemporaryEnd(
  ctx: CheckContext,
  s: DataStream,
  limit: number,
  chunk = READ_CHUNK,
): Promise<{ end: 'ENOMSG' | 'zero' | 'none'; bytes: number }> {
  let bytes = 0;
  while (bytes <= limit) {
    let n: number;
    try {
      n = await s.read(new Uint8Array(chunk));
    } catch (e) {
      if (isVfioError(e, 'ENOMSG')) return { end: 'ENOMSG', bytes };
      if (isVfioError(e, 'EINTR') || isVfioError(e, 'EAGAIN')) continue;
      throw e;
    }
    if (n === 0) return { end: 'zero', bytes };
    bytes += n;
  }
  return { end: 'none', bytes };
}

/** How much pre-copy reading is enough to expect the temporary end: a few times the state. */
export async function precopyLimit(ctx: CheckContext): Promise<number> {
  const size = await ctx.dev.stopCopySize().catch(async () => BigInt((await ctx.reference()).data.length));
  return Math.max(1 << 20, Number(size) * 8);
}

export const streamChecks: Check[] = [
  {
    id: 'streams.data-fd',
    group: 'streams',
    title: 'a data_fd exactly on the transitions that open a session',
    rule: '"If the new_state starts a new data transfer session then the FD associated with that session is returned in data_fd." Sessions start on RUNNING->PRE_COPY, RUNNING_P2P->PRE_COPY_P2P, STOP->STOP_COPY ("will return a new data_fd") and STOP->RESUMING; moves inside the saving group do not.',
    source: `${VFIO_H}, VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE`,
    changesState: true,
    async run(ctx) {
      // Single arcs, and combined ones whose last arc opens the session (the others are fsm.no-unasked-saving's).
      const judged = (await matrix(ctx)).filter(
        (t) => t.path && !t.error && (t.path.length <= 2 || arcOpensStream(t.path.at(-2)!, t.path.at(-1)!)),
      );
      for (const t of judged) {
        ctx.note(describeTransition(t));
        const opens = t.path!.length > 1 && arcOpensStream(t.path!.at(-2)!, t.path!.at(-1)!);
        if (opens && !t.stream) ctx.fail(`${label(t)}: opens a session but returned no data_fd`);
        if (!opens && t.stream) ctx.fail(`${label(t)}: returned a data_fd but opens no session`);
      }
      ctx.info(`${judged.length} transitions judged`);
    },
  },
  {
    id: 'streams.precopy-end',
    group: 'streams',
    title: "pre-copy's temporary end is ENOMSG",
    rule: '"During pre-copy the migration data FD has a temporary "end of stream" that is reached when both initial_bytes and dirty_byte are zero. [...] When read() is done on this temporary end of stream the kernel driver should return ENOMSG from read()."',
    source: `${VFIO_H}, VFIO_MIG_GET_PRECOPY_INFO`,
    changesState: true,
    async run(ctx) {
      const s = await ctx.enterPrecopy('the device has no PRE_COPY');
      const limit = await precopyLimit(ctx);
      let end;
      try {
        end = await readToTemporaryEnd(ctx, s, limit);
      } catch (e) {
        ctx.fail(`a pre-copy read failed with ${errText(e)} before any temporary end`);
        return;
      }
      if (end.end === 'zero')
        ctx.warn(
          `read() returned 0 at the temporary end after ${end.bytes} bytes, not ENOMSG (a caller cannot tell it from the end of the stream; mtty does this)`,
        );
      else if (end.end === 'none')
        ctx.warn(`no temporary end within ${end.bytes} bytes (the device dirties its state as fast as it is read)`);
      else ctx.info(`ENOMSG after ${end.bytes} bytes`);
      const state = await ctx.dev.getState();
      if (state !== S.PRE_COPY) ctx.fail(`reading to the temporary end moved the device to ${migStateName(state)}`);
    },
  },
  {
    id: 'streams.saving-group',
    group: 'streams',
    title: 'one saving session survives PRE_COPY -> PRE_COPY_P2P -> STOP_COPY',
    rule: '"PRE_COPY, PRE_COPY_P2P and STOP_COPY form the "saving group" of states which share a data transfer session. Moving between these states alters what is streamed in session, but does not terminate or otherwise affect the associated fd."',
    source: `${VFIO_H}, enum vfio_device_mig_state`,
    changesState: true,
    async run(ctx) {
      const s = await ctx.enterPrecopy('the device has no PRE_COPY: its saving group is STOP_COPY alone');
      const moves = ctx.has(MigFlag.P2P) ? [S.PRE_COPY_P2P, S.STOP_COPY] : [S.STOP_COPY];
      let bytes = 0;
      for (const m of moves) {
        const first = await s.read(new Uint8Array(64)).catch((e: unknown) => {
          if (isVfioError(e, 'ENOMSG')) return 0;
          throw e;
        });
        bytes += first;
        const again = await ctx.dev.setState(m);
        if (again) ctx.fail(`->${migStateName(m)} inside the saving group returned a new data_fd`);
      }
      try {
        bytes += (await ctx.readToEnd(s, ctx.dev)).length;
      } catch (e) {
        ctx.fail(`the PRE_COPY data_fd did not survive into STOP_COPY: read failed with ${errText(e)}`);
      }
      if (bytes === 0) ctx.fail('the session carried no data at all');
      ctx.info(`${bytes} bytes over one data_fd through ${['PRE_COPY', ...moves.map(migStateName)].join(' > ')}`);
    },
  },
  {
    id: 'streams.stop-copy-end',
    group: 'streams',
    title: 'STOP_COPY ends with read() = 0 and keeps returning 0',
    rule: '"Once in STOP_COPY the migration data FD has a permanent end of stream signaled in the usual way by read() always returning 0"',
    source: `${VFIO_H}, VFIO_MIG_GET_PRECOPY_INFO`,
    changesState: true,
    async run(ctx) {
      await ctx.settle();
      const s = await ctx.dev.setState(S.STOP_COPY);
      if (!s) throw new Skip('STOP->STOP_COPY returned no data_fd (streams.data-fd judges that)');
      const data = await ctx.readToEnd(s, ctx.dev);
      for (let i = 0; i < 3; i++) {
        try {
          const n = await s.read(new Uint8Array(READ_CHUNK));
          if (n !== 0) ctx.fail(`read ${i + 2} after the end returned ${n} bytes, not 0`);
        } catch (e) {
          // ENOMSG is streams.no-enomsg-stop-copy's rule.
          if (!isVfioError(e, 'ENOMSG')) ctx.fail(`read ${i + 2} after the end failed with ${errText(e)}, not 0`);
        }
      }
      const state = await ctx.dev.getState();
      if (state !== S.STOP_COPY) ctx.fail(`reading the stream to its end moved the device to ${migStateName(state)}`);
      ctx.info(`${data.length} bytes, then 0 four times`);
    },
  },
  {
    id: 'streams.no-enomsg-stop-copy',
    group: 'streams',
    title: 'ENOMSG never appears in STOP_COPY',
    rule: '"ENOMSG may not be returned in STOP_COPY."',
    source: `${VFIO_H}, VFIO_MIG_GET_PRECOPY_INFO`,
    changesState: true,
    async run(ctx) {
      // Entered straight, and (with PRE_COPY) at the end of a pre-copy phase: small reads both times.
      for (const via of ctx.has(MigFlag.PRE_COPY) ? [false, true] : [false]) {
        await ctx.settle();
        let s = via ? await ctx.dev.setState(S.PRE_COPY) : null;
        if (s) await readToTemporaryEnd(ctx, s, await precopyLimit(ctx));
        s = (await ctx.dev.setState(S.STOP_COPY)) ?? s;
        if (!s) throw new Skip('no data_fd in STOP_COPY (streams.data-fd judges that)');
        await ctx.readToEnd(s, ctx.dev, 512);
        for (let i = 0; i < 2; i++)
          await s
            .read(new Uint8Array(512))
            .catch((e) =>
              isVfioError(e, 'ENOMSG')
                ? ctx.anomalies.enomsgInStopCopy.push(
                    `${ctx.dev.name}: read after the end of a STOP_COPY stream returned ENOMSG`,
                  )
                : undefined,
            );
      }
      // Other checks' reads count too: they retried the ENOMSG and left the verdict here.
      for (const a of ctx.anomalies.enomsgInStopCopy.slice(0, 5)) ctx.fail(a);
      if (ctx.anomalies.enomsgInStopCopy.length > 5) ctx.fail(`... ${ctx.anomalies.enomsgInStopCopy.length - 5} more`);
      if (!ctx.fails.length) ctx.info('no ENOMSG in any STOP_COPY read of this run');
    },
  },
  {
    id: 'streams.dead-after-end',
    group: 'streams',
    title: 'a data_fd carries nothing more once its session ended',
    rule: '"The STOP_COPY arc will terminate a data transfer session." "The PRE_COPY arc will terminate a data transfer session." "Leaving RESUMING terminates a data transfer session"',
    source: `${VFIO_H}, enum vfio_device_mig_state`,
    changesState: true,
    async run(ctx) {
      const deadRead = async (what: string, s: DataStream) => {
        try {
          const n = await s.read(new Uint8Array(READ_CHUNK));
          if (n > 0) ctx.fail(`${what}: read() on the old data_fd returned ${n} bytes`);
        } catch {
          // any error: the session is gone
        }
      };
      await ctx.settle();
      const sc = await ctx.dev.setState(S.STOP_COPY);
      if (sc) {
        await sc.read(new Uint8Array(16));
        await ctx.dev.setState(S.STOP);
        await deadRead('STOP_COPY->STOP', sc);
      }
      if (ctx.has(MigFlag.PRE_COPY)) {
        await ctx.settle();
        const pc = await ctx.dev.setState(S.PRE_COPY);
        if (pc) {
          await ctx.dev.setState(S.RUNNING);
          await deadRead('PRE_COPY->RUNNING', pc);
        }
      }
      await ctx.settle();
      const { data } = await ctx.reference();
      const r = await ctx.dev.setState(S.RESUMING);
      if (r) {
        await writeAll(r, data, ctx.dev.name);
        await ctx.dev.setState(S.STOP);
        try {
          const n = await r.write(data.subarray(0, Math.min(16, data.length)));
          ctx.fail(`RESUMING->STOP: write() on the old data_fd took ${n} bytes`);
        } catch {
          // refused: the session is gone
        }
      }
      if (!ctx.fails.length)
        ctx.info(
          `old data_fds carry nothing after STOP_COPY->STOP${ctx.has(MigFlag.PRE_COPY) ? ', PRE_COPY->RUNNING' : ''} and RESUMING->STOP`,
        );
    },
  },
];
