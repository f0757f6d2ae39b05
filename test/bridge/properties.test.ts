import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { createSimDevice, loadV1, openV1Bridge, saveV1 } from '../../src/index.js';
import { saveV2 } from '../helpers.js';

describe('bridge properties (fast-check)', () => {
  it('any state size, section size, pre-copy choice and resume chunking reproduces the source', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 0, max: 40_000 }),
        fc.constantFrom(4096, 8192, 65536),
        fc.constantFrom(1, 3, 5, 7),
        fc.boolean(),
        fc.integer({ min: 1, max: 9000 }),
        async (stateSize, sectionSize, flags, precopy, chunk) => {
          const a = createSimDevice({ stateSize, flags, seed: 1, dirtyRatio: 0.3 });
          const b = createSimDevice({ stateSize, flags, seed: 2 });
          const parts: Uint8Array[] = [];
          await saveV1(await openV1Bridge(a, { sectionSize }), (c) => void parts.push(c), { precopy });
          const all = Buffer.concat(parts);
          const pieces: Uint8Array[] = [];
          for (let i = 0; i < all.length; i += chunk) pieces.push(all.subarray(i, i + chunk));
          await loadV1(await openV1Bridge(b, { sectionSize }), pieces);
          expect(b.stateDigest()).toBe(a.stateDigest());
        },
      ),
      { numRuns: 60 },
    );
  });

  it('the bridge hands out the device stream byte for byte, whatever the short-read pattern', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 1, max: 30_000 }),
        fc.integer({ min: 1, max: 5000 }),
        async (stateSize, shortRead) => {
          const model = { stateSize, flags: 3, dirtyRatio: 0 };
          const reference = await saveV2(createSimDevice(model), false);
          const dev = createSimDevice({ ...model, faults: { shortRead } });
          const parts: Uint8Array[] = [];
          await saveV1(await openV1Bridge(dev, { sectionSize: 4096 }), (c) => void parts.push(c));
          expect(Buffer.concat(parts)).toEqual(reference);
        },
      ),
      { numRuns: 40 },
    );
  });
});
