import { describe, expect, it } from 'vitest';
import {
  createSimDevice,
  migrationPath,
  MigState,
  openV1Bridge,
  saveV1,
  loadV1,
  V1_NDMA,
  type V1Bridge,
  type SimDeviceOptions,
  type V1TraceEvent,
  type SimArcFault,
} from '../../src/index.js';
import { readU32, readU64, writeU32, writeU64 } from '../../src/v1/region-access.js';
import { v2TargetFor } from '../../src/bridge/state-map.js';
import { saveV2 } from '../helpers.js';

const S = MigState;
const STATE = 0,
  RESERVED = 4,
  PENDING = 8,
  OFFSET = 16,
  SIZE = 24;

async function bridgeFor(model: SimDeviceOptions = {}, opts = {}) {
  const dev = createSimDevice({ stateSize: 10_000, ...model });
  const br = await openV1Bridge(dev, { sectionSize: 4096, ...opts });
  return { dev, br };
}

/** One v1 save iteration's register reads (pending, data_offset, data_size): the chunk's size. */
async function nextChunk(br: V1Bridge): Promise<bigint> {
  await readU64(br, PENDING);
  await readU64(br, OFFSET);
  return readU64(br, SIZE);
}

/** Puts a fresh bridge into v1 state `v` (000, 001, 010, 011, 100 or 110). */
async function reach(
  v: number,
  opts: { strict?: boolean; resetOnError?: boolean } = {},
  failArc: SimArcFault[] = [],
  flags = 7,
) {
  const errorArc = v === 6 ? [{ from: S.STOP, to: S.STOP_COPY, errno: 'EIO', leave: 'error' as const, count: 1 }] : [];
  const { dev, br } = await bridgeFor({ flags, faults: { failArc: [...errorArc, ...failArc] } }, opts);
  if (v === 6) {
    await expect(writeU32(br, STATE, 2)).rejects.toMatchObject({ code: 'EIO' });
  } else if (v === 4) {
    await writeU32(br, STATE, 4);
    // A valid stream behind it, so leaving RESUMING succeeds.
    const data = await saveV2(createSimDevice({ stateSize: 10_000, seed: 77, flags }));
    for (let i = 0; i < data.length; i += 4096) {
      const piece = data.subarray(i, i + 4096);
      await br.write(br.dataOffset, piece);
      await writeU64(br, SIZE, BigInt(piece.length));
    }
  } else if (v === 2 || v === 3) {
    await writeU32(br, STATE, v);
  } else if (v === 0) {
    await writeU32(br, STATE, 0);
  }
  expect(await readU32(br, STATE)).toBe(v);
  return { dev, br };
}

// Written expectation: Y = accepted, n = EINVAL with state unchanged, '=' = same-state no-op.
//            to: 0 1 2 3 4 5 6 7
const DEFAULT_TABLE: Record<number, string> = {
  0: '= Y Y Y Y n n n',
  1: 'Y = Y Y Y n n n',
  2: 'Y Y = n Y n n n',
  3: 'Y Y Y = Y n n n',
  4: 'Y Y Y Y = n n n',
  6: 'n n n n n n = n',
};
const STRICT_TABLE: Record<number, string> = {
  0: '= Y n n Y n n n',
  1: 'Y = Y Y Y n n n',
  2: 'Y Y = n n n n n',
  3: 'n Y Y = n n n n',
  4: 'Y Y n n = n n n',
  6: 'n n n n n n = n',
};
const V2_FOR: Record<number, MigState> = {
  0: S.STOP,
  1: S.RUNNING,
  2: S.STOP_COPY,
  3: S.PRE_COPY,
  4: S.RESUMING,
  6: S.ERROR,
};

describe('device_state transitions: every (from, to) pair', () => {
  for (const [mode, table] of [
    ['default', DEFAULT_TABLE],
    ['strict', STRICT_TABLE],
  ] as const) {
    for (const [fromText, row] of Object.entries(table)) {
      const from = Number(fromText);
      it(`${mode}: from ${from.toString(2).padStart(3, '0')}`, async () => {
        const cells = row.split(' ');
        for (let to = 0; to < 8; to++) {
          const { dev, br } = await reach(from, { strict: mode === 'strict' });
          const arcsBefore = dev.arcs.length;
          const cell = cells[to];
          if (cell === 'n') {
            await expect(writeU32(br, STATE, to), `${from}->${to}`).rejects.toMatchObject({ code: 'EINVAL' });
            expect(await readU32(br, STATE)).toBe(from);
            expect(dev.state).toBe(V2_FOR[from]);
            expect(dev.arcs.length).toBe(arcsBefore);
          } else {
            await writeU32(br, STATE, to);
            expect(await readU32(br, STATE), `${from}->${to}`).toBe(to);
            expect(dev.state).toBe(V2_FOR[to]);
            if (cell === '=') expect(dev.arcs.length).toBe(arcsBefore);
          }
        }
      });
    }
  }

  it('virtual pre-copy: 001 -> 011 issues no SET_STATE and reports no pending data', async () => {
    const { dev, br } = await bridgeFor({ flags: 3 });
    await writeU32(br, STATE, 3);
    expect(dev.arcs).toEqual([]);
    expect(dev.state).toBe(S.RUNNING);
    expect(await readU64(br, PENDING)).toBe(0n);
    expect(await readU64(br, OFFSET)).toBe(4096n);
    expect(await readU64(br, SIZE)).toBe(0n);
    await writeU32(br, STATE, 2);
    expect(dev.state).toBe(S.STOP_COPY);
  });

  it('a same-state write keeps the stream and the frozen chunk untouched', async () => {
    const { dev, br } = await bridgeFor();
    await writeU32(br, STATE, 2);
    const size = await nextChunk(br);
    const data = await br.read(br.dataOffset, Number(size));
    const arcs = dev.arcs.length;
    await writeU32(br, STATE, 2);
    expect(dev.arcs.length).toBe(arcs);
    expect(await readU64(br, SIZE)).toBe(size);
    expect(await br.read(br.dataOffset, Number(size))).toEqual(data);
  });
});

describe('access rules', () => {
  const violations: Array<[string, (br: V1Bridge) => Promise<unknown>]> = [
    ['device_state read at width 2', (br) => br.read(0, 2)],
    ['device_state write at width 8', (br) => br.write(0, new Uint8Array(8))],
    ['unaligned pending_bytes read', (br) => br.read(9, 8)],
    ['pending_bytes write', (br) => writeU64(br, PENDING, 5n)],
    ['data_offset write', (br) => writeU64(br, OFFSET, 8192n)],
    ['reserved write', (br) => writeU32(br, RESERVED, 1)],
    ['data_size read at width 4', (br) => br.read(24, 4)],
    ['header straddling read', (br) => br.read(0, 32)],
    ['gap read', (br) => br.read(64, 8)],
    ['gap write', (br) => br.write(100, new Uint8Array(1))],
    ['read past the region end', (br) => br.read(br.size - 4, 8)],
    ['write past the region end', (br) => br.write(br.size, new Uint8Array(1))],
    ['zero-length read', (br) => br.read(br.dataOffset, 0)],
    ['negative offset', (br) => br.read(-8, 8)],
    ['data_size write while saving', (br) => writeU64(br, SIZE, 1n)],
    ['data section write while saving', (br) => br.write(br.dataOffset, new Uint8Array(8).fill(0xee))],
    [
      'data_size larger than the window',
      async (br) => {
        await writeU32(br, STATE, 4);
        return writeU64(br, SIZE, BigInt(br.sectionSize + 1));
      },
    ],
    ['SAVING|RESUMING', (br) => writeU32(br, STATE, 6)],
    ['RESUMING|RUNNING', (br) => writeU32(br, STATE, 5)],
    ['unknown bit 4', (br) => writeU32(br, STATE, 0x11)],
    ['NDMA bit without the ndma option', (br) => writeU32(br, STATE, 1 | V1_NDMA)],
  ];
  it.each(violations)('%s: EINVAL and nothing changes', async (_name, access) => {
    const { dev, br } = await bridgeFor();
    await writeU32(br, STATE, 3);
    const size = await nextChunk(br);
    const window = await br.read(br.dataOffset, br.sectionSize);
    const before = { state: await readU32(br, STATE), v2: dev.state, arcs: dev.arcs.length };
    await expect(access(br)).rejects.toMatchObject({ code: 'EINVAL', errno: 22 });
    const stateNow = await readU32(br, STATE);
    if (stateNow === 4) return; // the data_size case moved to RESUMING on purpose before its violation
    expect({ state: stateNow, v2: dev.state, arcs: dev.arcs.length }).toEqual(before);
    expect(await readU64(br, SIZE)).toBe(size);
    expect(await br.read(br.dataOffset, br.sectionSize)).toEqual(window);
  });

  it('reserved reads 0 and data_offset is page aligned and nonzero', async () => {
    const { br } = await bridgeFor();
    expect(await readU32(br, RESERVED)).toBe(0);
    expect(await readU64(br, OFFSET)).toBe(4096n);
    expect(br.size).toBe(4096 + 4096);
  });

  it('serves the data section at any size and alignment', async () => {
    const { br } = await bridgeFor();
    const data = Uint8Array.from({ length: 100 }, (_, i) => i);
    await br.write(br.dataOffset + 3, data);
    expect(await br.read(br.dataOffset + 3, 100)).toEqual(data);
    expect(await br.read(br.dataOffset + 50, 1)).toEqual(Uint8Array.of(47));
  });

  it('region info: type 3 / subtype 1, read|write, mmap only when enabled', async () => {
    const { br } = await bridgeFor();
    expect(br.regionInfo).toMatchObject({ index: 9, flags: 3, size: 8192n, type: { type: 3, subtype: 1 } });
    expect(br.regionInfo.sparseMmap).toBeUndefined();
    expect(() => br.dataView()).toThrow(expect.objectContaining({ code: 'EINVAL' }));
    const { br: mm } = await bridgeFor({}, { mmap: true });
    expect(mm.regionInfo.flags).toBe(7);
    expect(mm.regionInfo.sparseMmap).toEqual([{ offset: 4096n, size: 4096n }]);
  });
});

describe('save path', () => {
  it('pending_bytes is stable on repeated reads and has no side effects', async () => {
    const { dev, br } = await bridgeFor({ stateSize: 50_000 });
    await writeU32(br, STATE, 3);
    const p1 = await readU64(br, PENDING);
    const p2 = await readU64(br, PENDING);
    expect(p2).toBe(p1);
    expect(p1).toBeGreaterThan(50_000n);
    await writeU32(br, STATE, 2);
    const q1 = await readU64(br, PENDING);
    expect(await readU64(br, PENDING)).toBe(q1);
    expect(q1).toBeGreaterThan(0n);
    void dev;
  });

  it('pending_bytes is 0 in 001, 000 and 100 rather than an error', async () => {
    for (const v of [1, 0, 4]) {
      const { br } = await reach(v);
      expect(await readU64(br, PENDING)).toBe(0n);
    }
  });

  it('data_offset and data_size stay put within a chunk; data_size never runs past the region', async () => {
    const { br } = await bridgeFor({ stateSize: 30_000 });
    await writeU32(br, STATE, 2);
    let total = 0;
    for (;;) {
      const pending = await readU64(br, PENDING);
      if (pending === 0n) break;
      const off = await readU64(br, OFFSET);
      const size = await readU64(br, SIZE);
      expect(await readU64(br, OFFSET)).toBe(off);
      expect(await readU64(br, SIZE)).toBe(size);
      expect(off + size).toBeLessThanOrEqual(BigInt(br.size));
      expect(size).toBeGreaterThan(0n); // 0 only at the true end, where pending is 0 first
      total += Number(size);
    }
    expect(total).toBe(Number(await createSimDevice({ stateSize: 30_000 }).stopCopySize()));
  });

  it('011 -> 010 in the middle of a chunk keeps the window and the byte order', async () => {
    const model = { stateSize: 40_000, dirtyRatio: 0 };
    const { dev, br } = await bridgeFor(model);
    const ref = await saveV2(createSimDevice({ ...model }), false);
    await writeU32(br, STATE, 3);
    const size = Number(await nextChunk(br));
    const first = await br.read(br.dataOffset, size);
    await writeU32(br, STATE, 2); // mid-chunk: the caller has not asked for pending yet
    expect(dev.state).toBe(S.STOP_COPY);
    expect(Number(await readU64(br, SIZE))).toBe(size);
    expect(await br.read(br.dataOffset, size)).toEqual(first);
    const rest: Uint8Array[] = [];
    for (;;) {
      if ((await readU64(br, PENDING)) === 0n) break;
      await readU64(br, OFFSET);
      const n = Number(await readU64(br, SIZE));
      rest.push(await br.read(br.dataOffset, n));
    }
    expect(Buffer.concat([first, ...rest])).toEqual(ref);
  });

  it('zero-copy view: the chunk is visible in the section without a region read', async () => {
    const { br } = await bridgeFor({}, { mmap: true });
    await writeU32(br, STATE, 2);
    const n = Number(await nextChunk(br));
    expect(br.dataView().subarray(0, n)).toEqual(await br.read(br.dataOffset, n));
  });

  it('readInto: the bytes read() gives, into the buffer of the caller, under the same access rules', async () => {
    const events: V1TraceEvent[] = [];
    const { br } = await bridgeFor({}, { trace: (e: V1TraceEvent) => events.push(e) });
    await writeU32(br, STATE, 2);
    const n = Number(await nextChunk(br));
    const into = new Uint8Array(n + 10).fill(0xee);
    await br.readInto(br.dataOffset + 5, into.subarray(3, 3 + n - 5));
    expect(into.subarray(3, 3 + n - 5)).toEqual(await br.read(br.dataOffset + 5, n - 5));
    expect([...into.subarray(0, 3), ...into.subarray(3 + n - 5)]).toEqual(new Array(15).fill(0xee));
    expect(events.at(-2)).toMatchObject({ op: 'read', field: 'data', offset: br.dataOffset + 5, length: n - 5 });
    const size = new Uint8Array(8);
    await br.readInto(SIZE, size);
    expect(new DataView(size.buffer).getBigUint64(0, true)).toBe(BigInt(n));
    await expect(br.readInto(br.size - 4, new Uint8Array(8))).rejects.toMatchObject({ code: 'EINVAL' });
    await expect(br.readInto(9, new Uint8Array(8))).rejects.toMatchObject({ code: 'EINVAL' });
    await expect(br.readInto(br.dataOffset, new Uint8Array(0))).rejects.toMatchObject({ code: 'EINVAL' });
  });
});

/**
 * Every arc the bridge's v1 transitions make a device run, for each flag
 * set: [flags, v1 from, v1 to, arc from, arc to], derived from the written
 * transition table and the FSM path of the mapped v2 states.
 */
function bridgeArcs(): Array<[number, number, number, MigState, MigState]> {
  const out: Array<[number, number, number, MigState, MigState]> = [];
  for (const flags of [1, 3, 5, 7]) {
    for (const [fromText, row] of Object.entries(DEFAULT_TABLE)) {
      const from = Number(fromText);
      if (from === 6) continue;
      row.split(' ').forEach((cell, to) => {
        if (cell !== 'Y') return;
        const path = migrationPath(v2TargetFor(from, flags), v2TargetFor(to, flags), flags);
        for (let i = 0; i + 1 < path.length; i++) out.push([flags, from, to, path[i]!, path[i + 1]!]);
      });
    }
  }
  return out;
}

const SAVING_STATES: MigState[] = [S.PRE_COPY, S.PRE_COPY_P2P, S.STOP_COPY];
/** The device stopped at `at` on its way out of `start`: did the data session of `start` end there? */
function costsSession(start: MigState, at: MigState): boolean {
  if (SAVING_STATES.includes(start)) return !SAVING_STATES.includes(at);
  return start === S.RESUMING && at !== S.RESUMING;
}

describe('failure handling', () => {
  const arcs = bridgeArcs();
  const outcomes = [
    ['stay', {}, 'nak'],
    ['error', {}, '110'],
    ['error', { resetOnError: true }, '001'],
  ] as const;
  it('covers every arc of every flag set', () => {
    expect(arcs.length).toBeGreaterThan(100);
    expect(new Set(arcs.map(([f, , , a, b]) => `${f}:${a}>${b}`)).size).toBeGreaterThan(30);
  });
  for (const [leave, opts, expected] of outcomes) {
    it.each(arcs)(
      `leave=${leave}${'resetOnError' in opts ? ', resetOnError' : ''}: flags %i, v1 %i -> %i, fault on arc %i->%i gives ${expected}`,
      async (flags, from, to, a, b) => {
        const fault = { from: a, to: b, errno: 'EIO', leave, count: 1 };
        // Reach `from` first without the fault, then arm it for this transition (every count fresh).
        const { dev, br } = await reach(from, opts, [], flags);
        dev.setFaults({ failArc: [...(dev.faults.failArc ?? []), fault] });
        expect(await readU32(br, STATE)).toBe(from);
        const err = await writeU32(br, STATE, to).then(
          () => null,
          (e: unknown) => e,
        );
        expect(err).toMatchObject({ code: 'EIO', errno: 5, details: { from: a, to: b } });
        const now = await readU32(br, STATE);
        if (expected === 'nak' && costsSession(v2TargetFor(from, flags), a)) {
          expect(now).toBe(6); // an unwind would open a new session: not a nak (decisions #13)
        } else if (expected === 'nak') {
          expect(now).toBe(from);
          expect(dev.state).toBe(v2TargetFor(from, flags)); // unwound: the device is where v1 says
        }
        if (expected === '110') expect(now).toBe(6);
        if (expected === '001') {
          expect(now).toBe(1);
          expect(dev.state).toBe(S.RUNNING); // really reset, not only reported so
        }
        // The device is usable again after a reset through the bridge.
        await br.reset();
        expect(await readU32(br, STATE)).toBe(1);
        const chunks: Uint8Array[] = [];
        await saveV1(br, (c) => void chunks.push(c));
        const dst = createSimDevice({ stateSize: 10_000, seed: 9, flags });
        await loadV1(await openV1Bridge(dst, { sectionSize: 4096 }), chunks);
        expect(dst.stateDigest()).toBe(dev.stateDigest());
      },
    );
  }

  it('a stream error while preparing a chunk fails the read and leaves the state alone', async () => {
    const { br } = await bridgeFor({ faults: { readErrors: [{ errno: 'EIO' }] } });
    await writeU32(br, STATE, 2);
    await expect(readU64(br, PENDING)).rejects.toMatchObject({ code: 'EIO' });
    expect(await readU32(br, STATE)).toBe(2);
    expect(await readU64(br, PENDING)).toBeGreaterThan(0n);
  });

  it('a bad resume naks 100 -> 001 and the device stays RESUMING (mtty-like)', async () => {
    const { dev, br } = await bridgeFor();
    await writeU32(br, STATE, 4);
    await br.write(br.dataOffset, new Uint8Array(100).fill(7));
    await writeU64(br, SIZE, 100n);
    await expect(writeU32(br, STATE, 1)).rejects.toMatchObject({ code: 'EINVAL' });
    expect(await readU32(br, STATE)).toBe(4);
    expect(dev.state).toBe(S.RESUMING);
  });

  it('reset through the bridge: 001, buffers dropped, stream closed', async () => {
    const { dev, br } = await bridgeFor();
    await writeU32(br, STATE, 2);
    expect(await nextChunk(br)).toBeGreaterThan(0n);
    await br.reset();
    expect(await readU32(br, STATE)).toBe(1);
    expect(dev.state).toBe(S.RUNNING);
    expect(await readU64(br, SIZE)).toBe(0n);
    expect(await readU64(br, PENDING)).toBe(0n);
    expect(br.heldBytes()).toBe(br.sectionSize);
  });
});

describe('NDMA extension and trace', () => {
  it('maps RUNNING|NDMA to RUNNING_P2P and SAVING|RUNNING|NDMA to PRE_COPY_P2P', async () => {
    const { dev, br } = await bridgeFor({}, { ndma: true });
    await writeU32(br, STATE, 1 | V1_NDMA);
    expect(dev.state).toBe(S.RUNNING_P2P);
    await writeU32(br, STATE, 3 | V1_NDMA);
    expect(dev.state).toBe(S.PRE_COPY_P2P);
    await writeU32(br, STATE, 2 | V1_NDMA);
    expect(dev.state).toBe(S.STOP_COPY);
    expect(await readU32(br, STATE)).toBe(2 | V1_NDMA);
  });

  it('refuses NDMA on a device without P2P', async () => {
    const dev = createSimDevice({ flags: 5 });
    await expect(openV1Bridge(dev, { ndma: true })).rejects.toMatchObject({ code: 'EINVAL' });
  });

  it('traces each v1 access with the v2 operations it caused', async () => {
    const events: V1TraceEvent[] = [];
    const dev = createSimDevice({ stateSize: 100 });
    const br = await openV1Bridge(dev, { sectionSize: 4096, trace: (e) => events.push(e) });
    await writeU32(br, STATE, 2);
    await readU64(br, PENDING);
    await readU64(br, OFFSET);
    await writeU32(br, STATE, 6).catch(() => undefined);
    expect(events[0]).toMatchObject({
      op: 'write',
      field: 'device_state',
      value: 2,
      v2: ['SET_STATE RUNNING->STOP_COPY = data_fd'],
    });
    expect(events[1]!.field).toBe('pending_bytes');
    // pending_bytes in stop-copy reads ahead until the end of stream is known.
    expect(events[1]!.v2).toEqual(['read(data_fd, 4096) = 164', 'read(data_fd, 3932) = 0']);
    expect(events[1]!.value).toBe(164n);
    expect(events[3]).toMatchObject({ field: 'device_state', error: 'EINVAL', v2: [] });
  });
});
