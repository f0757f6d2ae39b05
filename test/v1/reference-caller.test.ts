/**
 * The v1 reference caller (src/v1/reference-caller.ts), the save and resume
 * loops of a v1 VMM, over the bridge on a simulated device: its pre-copy
 * rounds, its reused read buffer, and what it leaves behind when the taker
 * of the data fails. The bridge's own tests drive it too (test/bridge/).
 */
import { describe, expect, it } from 'vitest';
import { createSimDevice, loadV1, MigState, openV1Bridge, saveV1, type SimDeviceOptions } from '../../src/index.js';

const MiB = 1 << 20;
const WINDOW = 64 * 1024;

describe('v1 pre-copy rounds are passes, as in saveV2', () => {
  it('a round reads what was pending when it began: the whole state in a few rounds, not one section per round', async () => {
    const model = { flags: 7, stateSize: 64 * WINDOW, dirtyRatio: 0.05 };
    const a = createSimDevice({ ...model, seed: 101 });
    const b = createSimDevice({ ...model, seed: 202 });
    const chunks: Uint8Array[] = [];
    const saved = await saveV1(await openV1Bridge(a, { sectionSize: WINDOW }), (c) => void chunks.push(c));
    await loadV1(await openV1Bridge(b, { sectionSize: WINDOW }), chunks);
    expect(saved.precopyBytes).toBeGreaterThanOrEqual(64 * WINDOW); // all of it went in pre-copy
    expect(saved.rounds).toBeGreaterThan(0);
    expect(saved.rounds).toBeLessThan(10);
    expect(saved.converged).toBe(true);
    expect(b.stateDigest()).toBe(a.stateDigest());
  });

  it('a device that dirties nearly as fast as it is read: pre-copy stops, says so, and the state still arrives whole', async () => {
    const a = createSimDevice({ flags: 7, stateSize: 16 * WINDOW, dirtyRatio: 0.95, seed: 1 });
    const b = createSimDevice({ flags: 7, stateSize: 16 * WINDOW, dirtyRatio: 0.95, seed: 2 });
    const chunks: Uint8Array[] = [];
    const saved = await saveV1(await openV1Bridge(a, { sectionSize: WINDOW }), (c) => void chunks.push(c), {
      maxRounds: 5,
    });
    expect(saved.rounds).toBeLessThanOrEqual(5);
    expect(saved.converged).toBe(false);
    expect(saved.precopyPending).toBeGreaterThan(0n);
    await loadV1(await openV1Bridge(b, { sectionSize: WINDOW }), chunks);
    expect(b.stateDigest()).toBe(a.stateDigest());
  });
});

describe('saveV1 reuseBuffer', () => {
  async function bridgeFor(model: SimDeviceOptions) {
    const dev = createSimDevice({ stateSize: 10_000, ...model });
    return { dev, br: await openV1Bridge(dev, { sectionSize: 4096 }) };
  }

  it('every chunk read into one buffer, the same bytes, in bulk and 8-byte access', async () => {
    const model = { stateSize: 50_000, seed: 4, dirtyRatio: 1 / 8 };
    for (const dataAccess of ['bulk', 'qemu'] as const) {
      const want: Uint8Array[] = [];
      await saveV1((await bridgeFor(model)).br, (c) => void want.push(c), { dataAccess });
      const { dev, br } = await bridgeFor(model);
      const got: Buffer[] = [];
      const buffers = new Set<ArrayBufferLike>();
      await saveV1(
        br,
        (c) => {
          buffers.add(c.buffer);
          got.push(Buffer.from(c)); // the next chunk overwrites c
        },
        { reuseBuffer: true, dataAccess },
      );
      expect(buffers.size, dataAccess).toBe(1);
      expect(got.length).toBeGreaterThan(10);
      expect(Buffer.concat(got).equals(Buffer.concat(want)), dataAccess).toBe(true);
      const b = createSimDevice({ ...model, seed: 5 });
      await loadV1(await openV1Bridge(b, { sectionSize: 4096 }), [Buffer.concat(got)]);
      expect(b.stateDigest(), dataAccess).toBe(dev.stateDigest());
    }
  });
});

describe('a save whose taker fails (a closed pipe, a full disk)', () => {
  it('device_state back to 001 (QEMU clears SAVING on a failed migration), the v2 session ended', async () => {
    let seen = 0;
    const failAfter3 = () => {
      if (++seen > 3) throw Object.assign(new Error('write EPIPE'), { code: 'EPIPE' });
    };
    const dev = createSimDevice({ stateSize: MiB, dirtyRatio: 0 });
    const bridge = await openV1Bridge(dev, { sectionSize: 64 << 10 });
    await expect(saveV1(bridge, failAfter3)).rejects.toMatchObject({ code: 'EPIPE' });
    expect(bridge.deviceState).toBe(1);
    expect(await dev.getState()).toBe(MigState.RUNNING);
    expect((await saveV1(bridge, () => undefined)).bytes).toBeGreaterThan(MiB);
  });
});
