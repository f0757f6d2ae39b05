/**
 * One suite for every V2Device backend: the simulated device runs it on the
 * host, the kernel device runs it inside the test guest against mtty. What
 * it asserts comes from the FSM (migrationPath) and the uAPI, not from the
 * backend under test.
 */
import { describe, expect, it } from 'vitest';
import {
  arcOpensStream,
  isStateSupported,
  loadV1,
  MigState,
  migrationPath,
  openV1Bridge,
  saveV1,
  writeAll,
  type DataStream,
  type V2Device,
} from '../../src/index.js';
import { drain, loadV2, saveV2 } from '../helpers.js';

export interface ContractTarget {
  name: string;
  flags: number;
  /** What read() does at the temporary end of pre-copy. */
  temporaryEnd: 'zero' | 'ENOMSG';
  /** Opens device 'a' or 'b', two devices of one model, each in RUNNING. */
  open(which: 'a' | 'b'): Promise<V2Device>;
  /** Changes device-visible state (a register, a page) in a way `value` identifies. */
  mutate(dev: V2Device, value: number): Promise<void>;
  /** What a resume must reproduce. */
  fingerprint(dev: V2Device): Promise<string>;
}

const S = MigState;

async function withDevice<T>(t: ContractTarget, which: 'a' | 'b', fn: (d: V2Device) => Promise<T>): Promise<T> {
  const dev = await t.open(which);
  try {
    return await fn(dev);
  } finally {
    // Leave it as found: mtty keeps its state across close and reopen.
    await dev.reset();
    await dev.close();
  }
}

export function deviceContract(t: ContractTarget): void {
  describe(`${t.name}: v2 device contract`, () => {
    it('reports its migration flags and starts RUNNING', async () => {
      await withDevice(t, 'a', async (d) => {
        expect(await d.migrationFlags()).toBe(t.flags);
        expect(await d.getState()).toBe(S.RUNNING);
      });
    });

    it('takes every SET_STATE from every reachable state as nextState/migrationPath predict', async () => {
      const valid = await withDevice(t, 'b', (b) => saveV2(b));
      await withDevice(t, 'a', async (d) => {
        let cases = 0;
        for (let from = 1; from < 8; from++) {
          if (!isStateSupported(from, t.flags)) continue;
          for (let target = 0; target <= 8; target++) {
            await d.reset();
            const entered = from === S.RUNNING ? null : await d.setState(from);
            if (from === S.RESUMING) await writeAll(entered!, valid, d.name);
            let path: MigState[] | null = null;
            try {
              path = target < 8 ? migrationPath(from, target, t.flags) : null;
            } catch {
              path = null;
            }
            const label = `${S[from]} -> ${S[target] ?? target}`;
            if (!path) {
              await expect(d.setState(target), label).rejects.toMatchObject({ code: 'EINVAL', errno: 22 });
              expect(await d.getState(), label).toBe(from);
            } else {
              const stream = await d.setState(target);
              const opens = path.length > 1 && arcOpensStream(path.at(-2)!, target);
              expect(stream !== null, `${label}: stream`).toBe(opens);
              expect(await d.getState(), label).toBe(target);
              await stream?.close();
            }
            await entered?.close();
            cases++;
          }
        }
        expect(cases).toBeGreaterThanOrEqual(36);
        await d.reset();
      });
    });

    it('answers PRECOPY_INFO in PRE_COPY and EINVAL outside it', async () => {
      if (!(t.flags & 4)) return;
      await withDevice(t, 'a', async (d) => {
        const s = (await d.setState(S.PRE_COPY))!;
        const info = await s.precopyInfo();
        expect(info.initialBytes).toBeGreaterThan(0n);
        expect(typeof info.dirtyBytes).toBe('bigint');
        await d.setState(S.STOP_COPY);
        await expect(s.precopyInfo()).rejects.toMatchObject({ code: 'EINVAL' });
        await s.close();
        await d.setState(S.STOP);
        const r = (await d.setState(S.RESUMING))!;
        // A resuming fd has no PRE_COPY semantics: EINVAL, or ENOTTY where it has no ioctls at all (mtty).
        await expect(r.precopyInfo()).rejects.toMatchObject({ code: expect.stringMatching(/^(EINVAL|ENOTTY)$/) });
        await r.close();
        await d.reset();
      });
    });

    it('reaches the temporary end of pre-copy without leaving PRE_COPY', async () => {
      if (!(t.flags & 4)) return;
      await withDevice(t, 'a', async (d) => {
        const s = (await d.setState(S.PRE_COPY))!;
        const first = await drain(s);
        expect(first.length).toBeGreaterThan(0);
        const buf = new Uint8Array(64);
        if (t.temporaryEnd === 'zero') expect(await s.read(buf)).toBe(0);
        else await expect(s.read(buf)).rejects.toMatchObject({ code: 'ENOMSG' });
        expect(await d.getState()).toBe(S.PRE_COPY);
        expect((await s.precopyInfo()).initialBytes).toBe(0n);
        await s.close();
        await d.reset();
      });
    });

    it('reports MIG_DATA_SIZE as the size of a fresh stop-copy stream', async () => {
      await withDevice(t, 'a', async (d) => {
        const size = await d.stopCopySize();
        expect(size).toBeGreaterThan(0n);
        const s = (await d.setState(S.STOP_COPY))!;
        expect(BigInt((await drain(s)).length)).toBe(size);
        await s.close();
        await d.reset();
      });
    });

    it('leaves no stream readable after its session ends', async () => {
      await withDevice(t, 'a', async (d) => {
        const s = (await d.setState(S.STOP_COPY))!;
        await d.setState(S.STOP);
        await expect(s.read(new Uint8Array(16))).rejects.toMatchObject({ code: 'ENODEV' });
        await s.close();
        const r = (await d.setState(S.RESUMING))!;
        await d.reset();
        await expect(r.write(new Uint8Array(16))).rejects.toMatchObject({ code: 'ENODEV' });
        await r.close();
      });
    });

    /** Opens A and B, gives them different state, runs `move`, and checks B now holds A's (after the save). */
    async function moveAtoB(move: (a: V2Device, b: V2Device) => Promise<void>): Promise<void> {
      const a = await t.open('a');
      const b = await t.open('b');
      try {
        await t.mutate(a, 0x5a);
        await t.mutate(b, 0x11);
        expect(await t.fingerprint(b)).not.toBe(await t.fingerprint(a));
        await move(a, b);
        expect(await b.getState()).toBe(S.RUNNING);
        // A's state after the save: a running device may change while pre-copying.
        expect(await t.fingerprint(b)).toBe(await t.fingerprint(a));
      } finally {
        await a.reset();
        await b.reset();
        await a.close();
        await b.close();
      }
    }

    it('saves A and resumes B through the v2 API: B holds A\'s state', () =>
      moveAtoB(async (a, b) => loadV2(b, await saveV2(a))));

    it('saves A and resumes B through the bridge with the legacy v1 caller', () =>
      moveAtoB(async (a, b) => {
        const chunks: Uint8Array[] = [];
        const saved = await saveV1(await openV1Bridge(a, { sectionSize: 4096 }), (c) => void chunks.push(c), { dataAccess: 'qemu' });
        expect(saved.finalState).toBe(0);
        const loaded = await loadV1(await openV1Bridge(b, { sectionSize: 4096 }), chunks, { dataAccess: 'qemu' });
        expect(loaded.finalState).toBe(1);
        expect(loaded.bytes).toBe(saved.bytes);
      }));

    it('refuses garbage and truncated resumes; reset recovers', async () => {
      const valid = await withDevice(t, 'a', (a) => saveV2(a));
      await withDevice(t, 'b', async (b) => {
        for (const bad of [Buffer.alloc(valid.length, 0x41), valid.subarray(0, valid.length - 1), Buffer.alloc(0)]) {
          const r = (await b.setState(S.RESUMING)) as DataStream;
          let failed: unknown = null;
          try {
            await writeAll(r, bad, b.name);
            await b.setState(S.RUNNING);
          } catch (e) {
            failed = e;
          }
          expect(failed, `${bad.length} bytes`).toMatchObject({ code: expect.stringMatching(/^E/) });
          expect(await b.getState()).not.toBe(S.RUNNING);
          await r.close();
          await b.reset();
          expect(await b.getState()).toBe(S.RUNNING);
        }
        await loadV2(b, valid);
        expect(await b.getState()).toBe(S.RUNNING);
      });
    });
  });
}
