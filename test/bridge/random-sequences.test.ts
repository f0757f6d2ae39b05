/**
 * Random v1 access sequences with random injected faults, serial or two at
 * a time, against the bridge in every mode (hardening issue, reliability).
 * The invariants come from the v1 contract and QEMU's use of it, not from
 * the code: every failure is a VfioError with a positive errno;
 * device_state always reads as a state a v1 driver could be in, or 110;
 * after a reset the device saves and loads byte for byte; no data stream
 * of the device is left open. VFIO_MIG_LONG=1 runs the long profile.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { createSimDevice, isVfioError, loadV1, openV1Bridge, saveV1 } from '../../src/index.js';
import { readU32, readU64, writeU32 } from '../../src/v1/region-access.js';
import { tracked } from '../helpers.js';
import { OFFSET, PENDING, SIZE, STATE, opArb, runOp, type Op } from './v1-ops.js';

const RUNS = process.env.VFIO_MIG_LONG ? 2000 : 150;
const SECTION = 4096;
const SECTION_OPS = opArb({
  states: fc.integer({ min: 0, max: 15 }),
  section: SECTION,
  maxSize: SECTION + 8,
  registerWeight: 3,
});

const faultArb = fc.record({
  arc: fc.option(
    fc.record({
      from: fc.integer({ min: 1, max: 7 }),
      to: fc.integer({ min: 1, max: 7 }),
      leave: fc.constantFrom('stay' as const, 'error' as const),
    }),
    { nil: undefined },
  ),
  readAfter: fc.option(fc.integer({ min: 0, max: 6 }), { nil: undefined }),
});

describe('random v1 sequences with faults', () => {
  it(`keep the v1 contract in every mode (${RUNS} runs)`, async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(1, 3, 5, 7),
        fc.record({ strict: fc.boolean(), resetOnError: fc.boolean(), ndma: fc.boolean(), mmap: fc.boolean() }),
        faultArb,
        fc.array(SECTION_OPS, { maxLength: 40 }),
        fc.boolean(),
        async (flags, mode, fault, ops, concurrent) => {
          const ndma = mode.ndma && (flags & 2) !== 0;
          const dev = createSimDevice({
            stateSize: 20_000,
            flags,
            seed: 3,
            faults: {
              failArc: fault.arc
                ? [{ from: fault.arc.from, to: fault.arc.to, errno: 'EIO', leave: fault.arc.leave, count: 1 }]
                : [],
              readErrors: fault.readAfter !== undefined ? [{ errno: 'EIO', after: fault.readAfter, count: 1 }] : [],
            },
          });
          const t = tracked(dev);
          const br = await openV1Bridge(t, { sectionSize: SECTION, ...mode, ndma });
          // A v1 state (000, 001, 010, 011, 100) or the error state 110; with NDMA, bit 3 may ride along.
          const valid = (v: number) => [0, 1, 2, 3, 4, 6].includes(v & 7) && (v & ~7) === (ndma ? v & 8 : 0);
          const run = (o: Op) => runOp(br, o);
          const check = (r: PromiseSettledResult<unknown>) => {
            if (r.status === 'rejected') {
              expect(isVfioError(r.reason), String(r.reason)).toBe(true);
              if (isVfioError(r.reason)) expect(r.reason.errno).toBeGreaterThan(0); // it is: the line above
            }
          };
          const step = concurrent ? 2 : 1;
          for (let i = 0; i < ops.length; i += step) {
            (await Promise.allSettled(ops.slice(i, i + step).map(run))).forEach(check);
            const now = await readU32(br, STATE);
            expect(valid(now), `device_state ${now}`).toBe(true);
          }

          // Recovery: faults off, reset, then a whole save and load reproduce the device.
          dev.setFaults({});
          await br.reset();
          expect(await readU32(br, STATE)).toBe(1);
          const parts: Uint8Array[] = [];
          await saveV1(br, (c) => void parts.push(c));
          const dst = createSimDevice({ stateSize: 20_000, flags, seed: 4 });
          await loadV1(await openV1Bridge(dst, { sectionSize: SECTION, strict: mode.strict }), parts);
          expect(dst.stateDigest()).toBe(dev.stateDigest());
          await br.close();
          expect(t.streams.every((s) => s.closed)).toBe(true);
        },
      ),
      { numRuns: RUNS },
    );
  }, 120_000);

  it(`a save with random extra, repeated and overlapping register reads and a random read error loses and repeats nothing (${RUNS} runs)`, async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(1, 3, 5, 7),
        fc.integer({ min: 0, max: 60_000 }),
        fc.option(fc.integer({ min: 0, max: 12 }), { nil: undefined }),
        fc.array(fc.constantFrom('pending', 'offset', 'size', 'both-pending', 'both-offset', 'none'), {
          minLength: 1,
          maxLength: 16,
        }),
        async (flags, stateSize, readErrorAfter, noise) => {
          const src = createSimDevice({
            stateSize,
            flags,
            seed: 5,
            dirtyRatio: 0.2,
            faults: {
              readErrors: readErrorAfter === undefined ? [] : [{ errno: 'EIO', after: readErrorAfter, count: 1 }],
            },
          });
          const br = await openV1Bridge(src, { sectionSize: SECTION });
          let k = 0;
          // After data_offset only data_offset and data_size may be re-read: a pending_bytes read ends the chunk (the v1 sequence).
          const extra = async (chunkOpen = false) => {
            const kind = noise[k++ % noise.length];
            if (chunkOpen && (kind === 'pending' || kind === 'both-pending')) return;
            switch (kind) {
              case 'pending':
                return readU64(br, PENDING);
              case 'offset':
                return readU64(br, OFFSET);
              case 'size':
                return readU64(br, SIZE);
              case 'both-pending':
                return Promise.all([readU64(br, PENDING), readU64(br, PENDING)]);
              case 'both-offset':
                return Promise.all([readU64(br, OFFSET), readU64(br, OFFSET)]);
            }
          };
          const parts: Buffer[] = [];
          // QEMU 7.2's loop (a failed register read counts as "ask again"), with the noise between its steps.
          const drain = async (state: number) => {
            await writeU32(br, STATE, state);
            for (let guard = 0; guard < 10_000; guard++) {
              const pending = await readU64(br, PENDING).catch(() => null);
              await extra().catch(() => undefined);
              if (pending === null) continue;
              if (pending === 0n) return;
              if ((await readU64(br, OFFSET).catch(() => null)) === null) continue;
              await extra(true).catch(() => undefined);
              const size = Number(await readU64(br, SIZE));
              if (size > 0) parts.push(Buffer.from(await br.read(br.dataOffset, size)));
              else if (state === 2) return;
            }
            throw new Error('save did not end');
          };
          await drain(3);
          await drain(2);
          await writeU32(br, STATE, 0);
          const dst = createSimDevice({ stateSize, flags, seed: 6 });
          await loadV1(await openV1Bridge(dst, { sectionSize: SECTION }), [Buffer.concat(parts)]);
          expect(dst.stateDigest()).toBe(src.stateDigest());
        },
      ),
      { numRuns: RUNS },
    );
  }, 120_000);
});
