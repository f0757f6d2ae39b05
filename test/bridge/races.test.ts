/**
 * Random races (hardening issue, reliability: concurrency). Two callers
 * issue random v1 accesses on one bridge at random moments, against a slow
 * device, so their accesses overlap. A v1 driver serializes region accesses
 * under its state mutex, so the outcome must be exactly that of the same
 * accesses run one after another in the order they were issued: the same
 * values, the same errors, the same v2 operations, the same device. A
 * second test races two bridges on one device: whatever they do to each
 * other, a save that one of them completes is whole, never an interleaving
 * or an empty stream. VFIO_MIG_LONG=1 runs the long profile.
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
  type V1TraceEvent,
} from '../../src/index.js';
import { readU32, readU64, writeU32 } from '../../src/v1/region-access.js';
import { OFFSET, PENDING, SIZE, STATE, opArb, runOp, type Op } from './v1-ops.js';

const RUNS = process.env.VFIO_MIG_LONG ? 1000 : 60;
const SECTION = 4096;
const RACE_OPS = opArb({
  states: fc.constantFrom(0, 1, 2, 3, 4),
  section: SECTION,
  maxSize: SECTION,
  registerWeight: 6,
});

/** What an access came to: its value, or its errno name. */
const outcome = (r: PromiseSettledResult<unknown>) =>
  r.status === 'fulfilled' ? { ok: r.value } : { error: isVfioError(r.reason) ? r.reason.code : String(r.reason) };

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

describe('random races on one bridge', () => {
  it(`two callers at random moments come out as the same accesses one after another, in issue order (${RUNS} runs)`, async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(1, 3, 5, 7),
        fc.array(RACE_OPS, { minLength: 1, maxLength: 25 }),
        fc.array(RACE_OPS, { minLength: 1, maxLength: 25 }),
        fc.array(fc.integer({ min: 0, max: 3 }), { minLength: 50, maxLength: 50 }),
        async (flags, opsA, opsB, pauses) => {
          // Slow, short reads and writes: one access spans several timer ticks.
          const model: SimDeviceOptions = {
            stateSize: 30_000,
            flags,
            seed: 9,
            dirtyRatio: 0.1,
            faults: { readDelayMs: 1, writeDelayMs: 1, shortRead: 1500, shortWrite: 1500 },
          };
          const raced = createSimDevice(model);
          const racedEvents: V1TraceEvent[] = [];
          const br = await openV1Bridge(raced, { sectionSize: SECTION, trace: (e) => racedEvents.push(e) });
          const issued: Op[] = [];
          const settled: Promise<PromiseSettledResult<unknown>>[] = [];
          let p = 0;
          // Each caller issues its next access after a random pause, without waiting for the last one.
          const caller = async (ops: Op[]) => {
            for (const o of ops) {
              await sleep(pauses[p++ % pauses.length]!);
              issued.push(o);
              settled.push(
                runOp(br, o).then(
                  (value) => ({ status: 'fulfilled' as const, value }),
                  (reason: unknown) => ({ status: 'rejected' as const, reason }),
                ),
              );
            }
          };
          await Promise.all([caller(opsA), caller(opsB)]);
          const racedOutcomes = (await Promise.all(settled)).map(outcome);

          const serial = createSimDevice(model);
          const serialEvents: V1TraceEvent[] = [];
          const ref = await openV1Bridge(serial, { sectionSize: SECTION, trace: (e) => serialEvents.push(e) });
          const serialOutcomes = [];
          for (const o of issued)
            serialOutcomes.push(
              outcome(
                await runOp(ref, o).then(
                  (value) => ({ status: 'fulfilled' as const, value }),
                  (reason: unknown) => ({ status: 'rejected' as const, reason }),
                ),
              ),
            );

          expect(racedOutcomes).toEqual(serialOutcomes);
          expect(racedEvents).toEqual(serialEvents);
          expect(await readU32(br, STATE)).toBe(await readU32(ref, STATE));
          expect(raced.state).toBe(serial.state);
          expect(raced.stateDigest()).toBe(serial.stateDigest());
          await br.close();
          await ref.close();
        },
      ),
      { numRuns: RUNS },
    );
  }, 300_000);
});

describe('two bridges on one device', () => {
  /** QEMU 7.2's stop-copy loop on one bridge; a failed access ends it (no retry: the other bridge may have reset). */
  async function save(br: V1Bridge, pause: () => Promise<void>): Promise<Buffer> {
    const parts: Buffer[] = [];
    // From running, as QEMU starts a save (a repeated 010 is a same-state write and saves nothing).
    await writeU32(br, STATE, 1);
    await writeU32(br, STATE, 2);
    for (;;) {
      await pause();
      if ((await readU64(br, PENDING)) === 0n) return Buffer.concat(parts);
      await readU64(br, OFFSET);
      const size = Number(await readU64(br, SIZE));
      await pause();
      parts.push(Buffer.from(await br.read(br.dataOffset, size)));
    }
  }

  it(`racing saves and resets: every save that completes loads into a fresh device and reproduces the source (${RUNS} runs)`, async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(1, 3, 5, 7),
        fc.array(fc.integer({ min: 0, max: 3 }), { minLength: 20, maxLength: 20 }),
        fc.array(fc.constantFrom('save', 'reset', 'stop', 'run'), { minLength: 1, maxLength: 4 }),
        async (flags, pauses, other) => {
          const model: SimDeviceOptions = {
            stateSize: 40_000,
            flags,
            seed: 12,
            faults: { readDelayMs: 1, shortRead: 3000 },
          };
          const dev = createSimDevice(model);
          const a = await openV1Bridge(dev, { sectionSize: SECTION });
          const b = await openV1Bridge(dev, { sectionSize: SECTION });
          let p = 0;
          const pause = () => sleep(pauses[p++ % pauses.length]!);
          const saves: Buffer[] = [];
          const results = await Promise.allSettled([
            save(a, pause).then((s) => void saves.push(s)),
            (async () => {
              for (const what of other) {
                await pause();
                if (what === 'save') saves.push(await save(b, pause));
                else if (what === 'reset') await b.reset();
                else await writeU32(b, STATE, what === 'stop' ? 0 : 1);
              }
              return null;
            })(),
          ]);
          for (const r of results)
            if (r.status === 'rejected') expect(isVfioError(r.reason), String(r.reason)).toBe(true);
          // A completed save, by either bridge, is a whole stream of the device (which never runs in between here).
          for (const saved of saves) {
            const dst = createSimDevice({ stateSize: 40_000, flags, seed: 13 });
            await loadV1(await openV1Bridge(dst, { sectionSize: SECTION }), [saved]);
            expect(dst.stateDigest()).toBe(dev.stateDigest());
          }
        },
      ),
      { numRuns: RUNS },
    );
  }, 300_000);
});
