/**
 * The state-file loader under random damage (hardening issue, reliability):
 * truncated, corrupted, padded or spliced files are refused with EINVAL
 * naming the file, before any device is opened. Only the header's
 * informational fields (protocol byte, source flags) are outside the
 * checksum: a change there that still reads as a valid value passes, and
 * the stream it carries is the original, byte for byte.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { verifyStateFile } from '../../src/cli/load.js';
import {
  HEADER_SIZE,
  checkedStream,
  decodeHeader,
  encodeHeader,
  encodeTrailer,
  newHash,
} from '../../src/cli/state-file.js';

const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-fuzz-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const RUNS = Number(process.env.VFIO_MIG_FUZZ_RUNS ?? 300);

/** `streamed`: as saved to a pipe, the header without the byte count. */
function stateFile(stream: Buffer, streamed = false): Buffer {
  const hash = newHash().update(stream).digest();
  return Buffer.concat([
    encodeHeader({ protocol: 'v2', flags: 7, byteCount: streamed ? null : BigInt(stream.length) }),
    stream,
    encodeTrailer(BigInt(stream.length), hash),
  ]);
}

/** What the loader makes of `file` read in pieces cut at `cuts`: the stream it passes on, or its error. */
async function verdict(file: Buffer, cuts: number[]): Promise<{ stream?: Buffer; error?: string }> {
  try {
    const h = decodeHeader(file.subarray(0, HEADER_SIZE), 'f');
    const rest = file.subarray(HEADER_SIZE);
    const at = [...new Set(cuts.map((c) => c % (rest.length + 1)))].sort((a, b) => a - b);
    const pieces = [0, ...at, rest.length].slice(1).map((end, i, ends) => rest.subarray(i ? ends[i - 1] : 0, end));
    const out: Buffer[] = [];
    for await (const c of checkedStream(
      (async function* () {
        yield* pieces;
      })(),
      h,
      'f',
    ))
      out.push(Buffer.from(c));
    return { stream: Buffer.concat(out) };
  } catch (e) {
    return { error: (e as Error).message };
  }
}

type Damage =
  | { kind: 'truncate'; at: number }
  | { kind: 'flip'; at: number; xor: number }
  | { kind: 'append'; bytes: Uint8Array }
  | { kind: 'cut'; at: number; n: number };

const damage: fc.Arbitrary<Damage> = fc.oneof(
  fc.record({ kind: fc.constant('truncate' as const), at: fc.nat() }),
  fc.record({ kind: fc.constant('flip' as const), at: fc.nat(), xor: fc.integer({ min: 1, max: 255 }) }),
  fc.record({ kind: fc.constant('append' as const), bytes: fc.uint8Array({ minLength: 1, maxLength: 64 }) }),
  fc.record({ kind: fc.constant('cut' as const), at: fc.nat(), n: fc.integer({ min: 1, max: 64 }) }),
);

function apply(file: Buffer, d: Damage): Buffer {
  const out = Buffer.from(file);
  switch (d.kind) {
    case 'truncate':
      return out.subarray(0, d.at % out.length);
    case 'flip':
      out[d.at % out.length]! ^= d.xor;
      return out;
    case 'append':
      return Buffer.concat([out, d.bytes]);
    case 'cut': {
      const at = d.at % out.length;
      return Buffer.concat([out.subarray(0, at), out.subarray(at + d.n)]);
    }
  }
}

/**
 * A flip of the protocol byte (@10) or the source flags (@12..15): outside the checksum by design.
 * `at` is taken modulo the file's length, as apply() does.
 */
const informational = (d: Damage, length: number) => d.kind === 'flip' && [10, 12, 13, 14, 15].includes(d.at % length);

describe('state file loader, fuzzed', () => {
  it('every single-bit flip of the header is refused, but in the informational fields when the value stays valid', async () => {
    const good = stateFile(Buffer.from('device bytes'));
    const passed: string[] = [];
    for (let at = 0; at < 32; at++) {
      for (let bit = 0; bit < 8; bit++) {
        const file = join(dir, `h${at}-${bit}.vfio`);
        writeFileSync(file, apply(good, { kind: 'flip', at, xor: 1 << bit }));
        if (
          await verifyStateFile(file).then(
            () => true,
            () => false,
          )
        )
          passed.push(`${at}:${bit}`);
      }
    }
    // Flags 7 becomes 5 or 3: still a valid flag set. Every other bit of the header, reserved bytes included, is refused.
    expect(passed).toEqual(['12:1', '12:2']);
  });

  it(`refuses every damaged file with EINVAL naming it (${RUNS} runs)`, async () => {
    let n = 0;
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ minLength: 0, maxLength: 4096 }), damage, async (bytes, d) => {
        const file = join(dir, `f${n++}.vfio`);
        const intact = stateFile(Buffer.from(bytes));
        writeFileSync(file, apply(intact, d));
        const err = await verifyStateFile(file).then(
          () => null,
          (e: unknown) => e,
        );
        if (err === null) expect(informational(d, intact.length)).toBe(true);
        else expect(err).toMatchObject({ code: 'EINVAL', device: file });
      }),
      { numRuns: RUNS },
    );
  });

  it(`a file and a pipe get one verdict however the input is cut into reads, either header kind (${RUNS} runs)`, async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.uint8Array({ minLength: 0, maxLength: 2048 }),
        fc.boolean(),
        fc.option(damage, { nil: undefined }),
        fc.array(fc.nat(), { maxLength: 12 }),
        async (bytes, streamed, d, cuts) => {
          const intact = stateFile(Buffer.from(bytes), streamed);
          const file = d ? apply(intact, d) : intact;
          const whole = await verdict(file, []);
          expect(await verdict(file, cuts)).toEqual(whole);
          if (whole.error === undefined) {
            expect(d === undefined || informational(d, intact.length)).toBe(true);
            expect(whole.stream!.equals(Buffer.from(bytes))).toBe(true);
          }
        },
      ),
      { numRuns: RUNS },
    );
  });

  it('an intact file passes', async () => {
    const file = join(dir, 'ok.vfio');
    writeFileSync(file, stateFile(Buffer.from('device bytes')));
    await expect(verifyStateFile(file)).resolves.toBeUndefined();
  });
});
