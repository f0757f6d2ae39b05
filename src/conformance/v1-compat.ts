/** v1.*: the legacy reference caller through the bridge. */
import { openV1Bridge } from '../bridge/v1-bridge.js';
import { loadV1, saveV1 } from '../v1/reference-caller.js';
import type { DataAccess } from '../v1/region-access.js';
import { MigState, PAGE, migStateName } from '../v2/uapi.js';
import { errText } from './context.js';
import type { Check } from './check.js';

const S = MigState;

export const v1Checks: Check[] = [
  {
    id: 'v1.bridge',
    group: 'v1',
    title: 'the legacy v1 caller saves and loads through the bridge (default and strict mode, bulk and 8-byte access)',
    rule: 'A v1 VMM (QEMU 5.2-7.2) migrates the device through the v1 region the bridge presents: save 001 -> 011 -> 010 -> 000, load 100 -> 001; without pre-copy the v1 stream equals a native v2 save',
    source: 'README.md ("What it does"); docs/decisions.md; docs/conformance.md',
    changesState: true,
    async run(ctx) {
      const { deterministic } = await ctx.reference();
      const combos: Array<[boolean, DataAccess]> = [
        [false, 'bulk'],
        [false, 'qemu'],
        [true, 'bulk'],
        [true, 'qemu'],
      ];
      for (const [strict, access] of combos) {
        const what = `${strict ? 'strict' : 'default'} mode, ${access === 'qemu' ? '8-byte' : 'bulk'} access`;
        await ctx.settleAll();
        // Bulk access with the default 1 MiB section (large reads), 8-byte access with a 4 KiB one (as QEMU without mmap).
        const sectionSize = access === 'bulk' ? 1 << 20 : PAGE;
        try {
          const chunks: Uint8Array[] = [];
          const src = await openV1Bridge(ctx.dev, { strict, sectionSize });
          const saved = await saveV1(src, (c) => void chunks.push(Uint8Array.from(c)), {
            dataAccess: access,
            device: ctx.dev.name,
          });
          await src.close();
          if (saved.finalState !== 0) ctx.fail(`${what}: save ended in v1 state ${saved.finalState}, not 000`);
          const dst = await openV1Bridge(ctx.peer, { strict, sectionSize });
          const loaded = await loadV1(dst, chunks, { dataAccess: access, device: ctx.peer.name });
          await dst.close();
          if (loaded.finalState !== 1) ctx.fail(`${what}: load ended in v1 state ${loaded.finalState}, not 001`);
          if (loaded.bytes !== saved.bytes) ctx.fail(`${what}: loaded ${loaded.bytes} of ${saved.bytes} bytes`);
          const state = await ctx.peer.getState();
          if (state !== S.RUNNING)
            ctx.fail(`${what}: after the load the device is in ${migStateName(state)}, not RUNNING`);
          ctx.note(
            `${what}: saved ${saved.bytes} bytes (${saved.precopyBytes} in pre-copy, ${saved.rounds} rounds), loaded`,
          );
        } catch (e) {
          ctx.fail(
            `${what}: ${errText(e)}${e instanceof Error && 'reason' in e ? ` (${String((e as { reason?: string }).reason)})` : ''}`,
          );
        }
      }
      // Without pre-copy the v1 stream is the stop-copy stream: byte for byte where the device is deterministic.
      // Compared with a native save of the state the device has now (loads above may have changed it).
      await ctx.settleAll();
      const data = await ctx.saveStopCopy();
      await ctx.settleAll();
      const chunks: Uint8Array[] = [];
      const src = await openV1Bridge(ctx.dev, { sectionSize: PAGE });
      await saveV1(src, (c) => void chunks.push(Uint8Array.from(c)), { precopy: false, dataAccess: 'qemu' });
      await src.close();
      const v1 = Buffer.concat(chunks);
      if (deterministic && !v1.equals(data))
        ctx.fail(
          `v1 save without pre-copy: ${v1.length} bytes that differ from the native stop-copy save (${data.length} bytes)`,
        );
      else if (deterministic)
        ctx.info(
          `4 saves and loads through the bridge; without pre-copy the v1 stream equals the native one (${v1.length} bytes)`,
        );
      if (!deterministic && v1.length !== data.length)
        ctx.warn(
          `v1 save without pre-copy: ${v1.length} bytes, the native save ${data.length} (device not deterministic)`,
        );
    },
  },
];
