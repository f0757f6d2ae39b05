/**
 * The native v2 caller's pre-copy ends, however fast the device dirties its
 * data.
 */
import { describe, expect, it } from 'vitest';
import { stringMatching } from '../matchers.js';
import { createSimDevice, loadV2, MigState, saveV2 } from '../../src/index.js';

const MiB = 1 << 20;

async function save(dirtyRatio: number, maxRounds?: number) {
  const dev = createSimDevice({ stateSize: MiB, dirtyRatio, seed: 7 });
  const parts: Uint8Array[] = [];
  const r = await saveV2(dev, (c) => void parts.push(c), { ...(maxRounds ? { maxRounds } : {}) });
  return { dev, r, parts };
}

describe('saveV2 pre-copy', () => {
  it('one round reads at most what was pending when it began', async () => {
    const { r } = await save(0.9, 1);
    expect(r.rounds).toBe(1);
    expect(r.precopyBytes).toBeLessThanOrEqual(MiB + 64 * 1024); // the state plus its page records
    expect(r.converged).toBe(false);
    expect(r.precopyPending).toBeGreaterThan(0n);
  });

  it('a device that dirties nearly as fast as it is read: pre-copy stops and says so, and the state still arrives whole', async () => {
    const { dev, r, parts } = await save(0.99);
    expect(r.converged).toBe(false);
    expect(r.rounds).toBeLessThanOrEqual(2);
    expect(r.bytes).toBeLessThan(4 * MiB);
    const dst = createSimDevice({ stateSize: MiB, seed: 8 });
    await loadV2(dst, parts);
    expect(dst.stateDigest()).toBe(dev.stateDigest());
  });

  it('a device that converges: rounds until nothing is pending', async () => {
    const { r } = await save(1 / 8);
    expect(r.converged).toBe(true);
    expect(r.precopyPending).toBe(0n);
    expect(r.rounds).toBeGreaterThan(1);
  });
});

describe('a device found mid-session', () => {
  it('saveV2 and loadV2 refuse it with EBUSY and step no arc', async () => {
    const dev = createSimDevice({ stateSize: 4096 });
    await dev.setState(MigState.STOP_COPY);
    const arcs = dev.arcs.length;
    await expect(saveV2(dev, () => undefined)).rejects.toMatchObject({
      code: 'EBUSY',
      reason: stringMatching(/STOP_COPY.*--reset/),
    });
    await expect(loadV2(dev, [])).rejects.toMatchObject({ code: 'EBUSY' });
    expect(dev.arcs.length).toBe(arcs);
  });
});

describe('saveV2 reuseBuffer', () => {
  it('reads every chunk, pre-copy and stop-copy, into one buffer and saves the same bytes', async () => {
    const model = { stateSize: 3 * MiB + 5, dirtyRatio: 1 / 8, seed: 7 };
    const want: Uint8Array[] = [];
    await saveV2(createSimDevice(model), (c) => void want.push(c), { chunkSize: 100_000 });
    const got: Buffer[] = [];
    const buffers = new Set<ArrayBufferLike>();
    const r = await saveV2(
      createSimDevice(model),
      (c) => {
        buffers.add(c.buffer);
        got.push(Buffer.from(c)); // the next read overwrites c
      },
      { chunkSize: 100_000, reuseBuffer: true },
    );
    expect(r.rounds).toBeGreaterThan(1);
    expect(buffers.size).toBe(1);
    expect(got.length).toBeGreaterThan(30);
    expect(Buffer.concat(got).equals(Buffer.concat(want))).toBe(true);
  });
});

describe('a save whose taker fails (a closed pipe, a full disk)', () => {
  const failAfter = (n: number) => {
    let seen = 0;
    return () => {
      if (++seen > n) throw Object.assign(new Error('write EPIPE'), { code: 'EPIPE' });
    };
  };
  // Pre-copy (the first chunk) and stop-copy (after every pre-copy chunk: 1 MiB state, 64 KiB chunks, no dirtying).
  for (const [phase, after] of [
    ['pre-copy', 0],
    ['stop-copy', 17],
  ] as const) {
    it(`saveV2, in ${phase}: the session is ended back in the state the save began in, the device usable`, async () => {
      for (const start of [MigState.RUNNING, MigState.STOP]) {
        const dev = createSimDevice({ stateSize: MiB, dirtyRatio: 0 });
        if (start === MigState.STOP) await dev.setState(MigState.STOP);
        await expect(saveV2(dev, failAfter(after), { chunkSize: 64 << 10 })).rejects.toMatchObject({ code: 'EPIPE' });
        expect(await dev.getState()).toBe(start);
        expect((await saveV2(dev, () => undefined)).bytes).toBeGreaterThan(MiB);
      }
    });
  }

  it('a device that failed is left as it is, for the caller to name', async () => {
    const dev = createSimDevice({
      stateSize: MiB,
      faults: { failArc: [{ from: MigState.PRE_COPY_P2P, to: MigState.STOP_COPY, errno: 'EIO', leave: 'error' }] },
    });
    await expect(saveV2(dev, () => undefined)).rejects.toMatchObject({ code: 'EIO' });
    expect(await dev.getState()).toBe(MigState.ERROR);
  });
});
