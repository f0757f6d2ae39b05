import v8 from 'node:v8';
import vm from 'node:vm';
import { describe, expect, it } from 'vitest';
import { chunkPipe } from '../helpers.js';
import { createSimDevice, loadV1, openV1Bridge, saveV1, type SimDeviceOptions } from '../../src/index.js';

const WINDOW = 64 * 1024;

async function roundTrip(
  model: SimDeviceOptions,
  opts: { precopy?: boolean; dataAccess?: 'bulk' | 'qemu'; sectionSize?: number; resumeChunk?: number } = {},
) {
  const a = createSimDevice({ ...model, seed: 101 });
  const b = createSimDevice({ ...model, seed: 202 });
  const sectionSize = opts.sectionSize ?? WINDOW;
  const src = await openV1Bridge(a, { sectionSize });
  const dst = await openV1Bridge(b, { sectionSize });
  const chunks: Uint8Array[] = [];
  const saved = await saveV1(src, (c) => void chunks.push(c), {
    precopy: opts.precopy ?? true,
    dataAccess: opts.dataAccess ?? 'bulk',
  });
  let source: Uint8Array[] = chunks;
  if (opts.resumeChunk) {
    const all = Buffer.concat(chunks);
    source = [];
    for (let i = 0; i < all.length; i += opts.resumeChunk) source.push(all.subarray(i, i + opts.resumeChunk));
  }
  const loaded = await loadV1(dst, source, { dataAccess: opts.dataAccess ?? 'bulk' });
  return { a, b, saved, loaded, chunks };
}

describe('bridge round trip between two simulated devices', () => {
  const sizes = [0, 1, WINDOW - 1, WINDOW, WINDOW + 1, 3 * WINDOW + 7];
  const modes: Array<[string, SimDeviceOptions, boolean]> = [
    ['real pre-copy with dirty data', { flags: 7, dirtyRatio: 0.25 }, true],
    ['virtual pre-copy', { flags: 3 }, true],
    ['no pre-copy', { flags: 7 }, false],
  ];
  for (const [mode, model, precopy] of modes) {
    it.each(sizes)(`${mode}: state size %i`, async (stateSize) => {
      const { a, b, saved, loaded } = await roundTrip({ ...model, stateSize }, { precopy });
      expect(b.stateDigest()).toBe(a.stateDigest());
      expect(loaded.bytes).toBe(saved.bytes);
      expect(saved.finalState).toBe(0);
      expect(loaded.finalState).toBe(1);
      if (mode.startsWith('real') && stateSize > 0) expect(saved.precopyBytes).toBeGreaterThan(stateSize);
      if (!mode.startsWith('real')) expect(saved.precopyBytes).toBe(0);
    });
  }

  it('real pre-copy really re-sends dirtied pages', async () => {
    const { a, b, saved } = await roundTrip({ flags: 7, stateSize: 8 * WINDOW, dirtyRatio: 0.5 });
    expect(saved.precopyBytes).toBeGreaterThan(8 * WINDOW * 1.3);
    expect(b.stateDigest()).toBe(a.stateDigest());
  });

  it('reads and writes the data section 8 bytes at a time, as QEMU v1 without mmap', async () => {
    for (const stateSize of [7, WINDOW + 3]) {
      const { a, b } = await roundTrip({ flags: 7, stateSize }, { dataAccess: 'qemu', sectionSize: 4096 });
      expect(b.stateDigest()).toBe(a.stateDigest());
    }
  });

  it.each([1, 7, 4093, 4096 + 5, WINDOW + 1])('accepts resume chunks of %i bytes', async (resumeChunk) => {
    const { a, b } = await roundTrip({ flags: 7, stateSize: 2 * WINDOW + 11 }, { resumeChunk, sectionSize: 4096 });
    expect(b.stateDigest()).toBe(a.stateDigest());
  });

  it('the mtty profile (0 at the temporary end of pre-copy) round-trips', async () => {
    const { a, b, saved } = await roundTrip({ profile: 'mtty' });
    expect(b.stateDigest()).toBe(a.stateDigest());
    expect(saved.precopyBytes).toBeGreaterThan(0);
  });

  // A memory bound, not a logic check: under mutation testing (instrumented
  // code, one run per mutant) it would take minutes and kill nothing new.
  it.skipIf(process.env.VFIO_MIG_MUTATION === '1')(
    'streams 256 MiB with bounded heap',
    async () => {
      const stateSize = 256 * 1024 * 1024;
      const a = createSimDevice({ stateSize, seed: 1, dirtyRatio: 1 / 64 });
      const b = createSimDevice({ stateSize, seed: 2, dirtyRatio: 1 / 64 });
      const src = await openV1Bridge(a);
      const dst = await openV1Bridge(b);
      const pipe = chunkPipe();
      v8.setFlagsFromString('--expose-gc');
      const gc = vm.runInNewContext('gc') as () => void;
      gc();
      const base = process.memoryUsage().arrayBuffers;
      let peak = 0;
      let chunks = 0;
      let held = 0;
      const sink = async (c: Uint8Array) => {
        await pipe.sink(c);
        if (++chunks % 16 === 0) {
          gc(); // measure what is retained, not garbage awaiting collection
          peak = Math.max(peak, process.memoryUsage().arrayBuffers - base);
          held = Math.max(held, src.heldBytes(), dst.heldBytes());
        }
      };
      const [saved, loaded] = await Promise.all([saveV1(src, sink).finally(pipe.end), loadV1(dst, pipe.source)]);
      expect(saved.bytes).toBeGreaterThan(stateSize);
      expect(loaded.bytes).toBe(saved.bytes);
      expect(b.stateDigest()).toBe(a.stateDigest());
      // Each bridge holds its 1 MiB section and at most one 1 MiB read-ahead.
      expect(chunks).toBeGreaterThan(200);
      expect(held).toBeLessThanOrEqual(2 * src.sectionSize);
      // Everything alive (V8 frees array buffers lazily, so allow slack):
      // far below the 256 MiB a whole-state buffer would take.
      expect(peak).toBeLessThan(64 * 1024 * 1024);
    },
    120_000,
  );
});
