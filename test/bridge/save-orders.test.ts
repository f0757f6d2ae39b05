/**
 * Random orders of header reads and random data_fd read faults on the save
 * window (issue #19). A caller that takes each chunk whose data_size it
 * read gets, at any moment, exactly a prefix of the device's stream, never
 * one with a hole; in stop-copy pending_bytes is 0 exactly when every byte
 * was handed out; and a caller that goes on after errors gets it all.
 * VFIO_MIG_LONG=1 runs the long profile.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  createSimDevice,
  isVfioError,
  loadV1,
  openV1Bridge,
  type SimDeviceOptions,
  type V1Bridge,
} from '../../src/index.js';
import { readU64, writeU32 } from '../../src/v1/region-access.js';
import { saveV2 } from '../helpers.js';
import { OFFSET, PENDING, SIZE, STATE } from './v1-ops.js';

const RUNS = process.env.VFIO_MIG_LONG ? 1500 : 120;

type Access = 'pending' | 'offset' | 'size' | 'data' | 'wdata';
const accessArb = fc.array(fc.constantFrom<Access>('pending', 'offset', 'size', 'size', 'data', 'wdata'), {
  maxLength: 60,
});
const faultsArb = fc.array(
  fc.record({
    errno: fc.constantFrom('EIO', 'EFAULT'),
    after: fc.integer({ min: 0, max: 20 }),
    count: fc.integer({ min: 1, max: 3 }),
  }),
  { maxLength: 3 },
);

/**
 * A v1 caller in any order of accesses: it takes a chunk (data_size bytes of
 * the section) at the first data_size read that gives more than 0 since its
 * last pending_bytes read, which is when the bridge counts it handed out.
 */
class Caller {
  readonly parts: Buffer[] = [];
  taken = 0;
  #window = false;
  constructor(readonly br: V1Bridge) {}

  /** One access; returns pending_bytes when it read one, undefined otherwise or on an error. */
  async run(a: Access): Promise<bigint | undefined> {
    const br = this.br;
    try {
      switch (a) {
        case 'pending':
          this.#window = false; // a pending_bytes read ends the chunk even when it fails
          return await readU64(br, PENDING);
        case 'offset':
          await readU64(br, OFFSET);
          return;
        case 'size': {
          const size = Number(await readU64(br, SIZE));
          if (size > 0 && !this.#window) {
            this.#window = true;
            this.parts.push(Buffer.from(await br.read(br.dataOffset, size)));
            this.taken += size;
          }
          return;
        }
        case 'data':
          await br.read(br.dataOffset, 1 + (this.taken % br.sectionSize));
          return;
        case 'wdata':
          await expect(br.write(br.dataOffset, new Uint8Array(8).fill(0xee))).rejects.toMatchObject({ code: 'EINVAL' });
          return;
      }
    } catch (e) {
      if (!isVfioError(e)) throw e;
      expect(e.errno).toBeGreaterThan(0);
    }
  }

  /** QEMU 7.2's loop, a failed read meaning "ask again", until pending_bytes is 0. */
  async drain(): Promise<void> {
    for (let guard = 0; guard < 10_000; guard++) {
      const pending = await this.run('pending');
      if (pending === 0n) return;
      if (pending === undefined) continue;
      await this.run('offset');
      await this.run('size');
    }
    throw new Error('save did not end');
  }

  get stream(): Buffer {
    return Buffer.concat(this.parts);
  }
}

describe('save window: random access orders and read faults', () => {
  it(`stop-copy: a prefix at every step, pending_bytes 0 exactly at the end, all of it after a drain (${RUNS} runs)`, async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(1, 3, 5, 7),
        fc.integer({ min: 0, max: 40_000 }),
        fc.constantFrom(4096, 8192, 65536),
        fc.option(fc.integer({ min: 1, max: 5000 }), { nil: undefined }),
        faultsArb,
        accessArb,
        async (flags, stateSize, sectionSize, shortRead, readErrors, accesses) => {
          const model: SimDeviceOptions = { flags, stateSize, seed: 7, dirtyRatio: 0 };
          const reference = await saveV2(createSimDevice(model), false);
          const dev = createSimDevice({ ...model, faults: { readErrors, ...(shortRead ? { shortRead } : {}) } });
          const caller = new Caller(await openV1Bridge(dev, { sectionSize }));
          await writeU32(caller.br, STATE, 2);
          for (const a of accesses) {
            const pending = await caller.run(a);
            expect(reference.subarray(0, caller.taken).equals(caller.stream), 'a prefix of the stream').toBe(true);
            if (pending !== undefined)
              expect(
                pending === 0n,
                `pending_bytes ${pending} with ${caller.taken} of ${reference.length} handed out`,
              ).toBe(caller.taken === reference.length);
          }
          await caller.drain();
          expect(caller.stream.length).toBe(reference.length);
          expect(caller.stream.equals(reference)).toBe(true);
        },
      ),
      { numRuns: RUNS },
    );
  }, 120_000);

  it(`pre-copy then stop-copy in random orders: the chunks handed out load into an equal device (${RUNS} runs)`, async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(5, 7),
        fc.integer({ min: 0, max: 40_000 }),
        fc.constantFrom(4096, 65536),
        faultsArb,
        accessArb,
        accessArb,
        async (flags, stateSize, sectionSize, readErrors, precopy, stopcopy) => {
          const src = createSimDevice({ flags, stateSize, seed: 8, dirtyRatio: 0.2, faults: { readErrors } });
          const caller = new Caller(await openV1Bridge(src, { sectionSize }));
          await writeU32(caller.br, STATE, 3);
          for (const a of precopy) await caller.run(a);
          await writeU32(caller.br, STATE, 2);
          for (const a of stopcopy) await caller.run(a);
          await caller.drain();
          await writeU32(caller.br, STATE, 0);
          const dst = createSimDevice({ flags, stateSize, seed: 9 });
          await loadV1(await openV1Bridge(dst, { sectionSize }), [caller.stream]);
          expect(dst.stateDigest()).toBe(src.stateDigest());
        },
      ),
      { numRuns: RUNS },
    );
  }, 120_000);
});
