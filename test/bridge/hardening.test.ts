/**
 * Bridge defects found by randomized outside sequences: stale read-ahead,
 * naks that were not naks, and overlapping accesses. Each test failed before its fix.
 */
import { describe, expect, it } from 'vitest';
import {
  createSimDevice,
  MigState,
  openV1Bridge,
  type DataStream,
  type SimDeviceOptions,
  type V1Bridge,
  type V1TraceEvent,
} from '../../src/index.js';
import { readU32, readU64, writeU32, writeU64 } from '../../src/v1/region-access.js';
import { saveV2 } from '../helpers.js';

const STATE = 0,
  PENDING = 8,
  OFFSET = 16,
  SIZE = 24;
const SECTION = 64 * 1024;

/** A v1 stop-copy save that, as QEMU 7.2 does, treats a failed pending_bytes read as "ask again". */
async function saveTolerant(br: V1Bridge): Promise<Buffer> {
  const parts: Buffer[] = [];
  for (let tries = 0; tries < 10_000; tries++) {
    let pending: bigint;
    try {
      pending = await readU64(br, PENDING);
    } catch {
      continue;
    }
    if (pending === 0n) return Buffer.concat(parts);
    await readU64(br, OFFSET);
    const size = Number(await readU64(br, SIZE));
    parts.push(Buffer.from(await br.read(br.dataOffset, size)));
  }
  throw new Error('save did not end');
}

describe('a failed read-ahead never hands out old bytes again', () => {
  it('EIO on the third data_fd read in 010: the stream arrives whole and in order', async () => {
    const model: SimDeviceOptions = { flags: 1, stateSize: 300_000, seed: 5 };
    const expected = await saveV2(createSimDevice(model), false);
    const dev = createSimDevice({ ...model, faults: { readErrors: [{ errno: 'EIO', after: 2, count: 1 }] } });
    const br = await openV1Bridge(dev, { sectionSize: SECTION });
    await writeU32(br, STATE, 2);
    const got = await saveTolerant(br);
    expect(got.length).toBe(expected.length);
    expect(got.equals(expected)).toBe(true);
  });

  it('a read error after part of a chunk keeps the bytes already read', async () => {
    const model: SimDeviceOptions = { flags: 1, stateSize: 300_000, seed: 6 };
    const expected = await saveV2(createSimDevice(model), false);
    // Short reads make one chunk several reads; the error lands in the middle of one.
    const dev = createSimDevice({
      ...model,
      faults: { shortRead: 10_000, readErrors: [{ errno: 'EIO', after: 9, count: 1 }] },
    });
    const br = await openV1Bridge(dev, { sectionSize: SECTION });
    await writeU32(br, STATE, 2);
    const got = await saveTolerant(br);
    expect(got.equals(expected)).toBe(true);
  });
});

describe('an unwind that cost the session is not a nak', () => {
  it('resume: 100 -> 001 fails at STOP -> RUNNING; the loaded data is gone, so 110, not 100', async () => {
    const model: SimDeviceOptions = { flags: 1, stateSize: 50_000, seed: 8 };
    const stream = await saveV2(createSimDevice(model), false);
    const dev = createSimDevice({
      ...model,
      seed: 9,
      faults: { failArc: [{ from: MigState.STOP, to: MigState.RUNNING, errno: 'EIO', count: 1 }] },
    });
    const br = await openV1Bridge(dev, { sectionSize: SECTION });
    await writeU32(br, STATE, 4);
    await br.write(br.dataOffset, stream);
    await writeU64(br, SIZE, BigInt(stream.length));
    await expect(writeU32(br, STATE, 1)).rejects.toMatchObject({ code: 'EIO' });
    expect(await readU32(br, STATE)).toBe(6);
    // Reset recovers; a fresh load then succeeds.
    await br.reset();
    await writeU32(br, STATE, 4);
    await br.write(br.dataOffset, stream);
    await writeU64(br, SIZE, BigInt(stream.length));
    await writeU32(br, STATE, 1);
    expect(dev.state).toBe(MigState.RUNNING);
  });

  it('save: 010 -> 001 fails at STOP -> RUNNING after one chunk; the stream would restart, so 110', async () => {
    const dev = createSimDevice({
      flags: 1,
      stateSize: 300_000,
      faults: { failArc: [{ from: MigState.STOP, to: MigState.RUNNING, errno: 'EIO', count: 1 }] },
    });
    const br = await openV1Bridge(dev, { sectionSize: SECTION });
    await writeU32(br, STATE, 2);
    await readU64(br, PENDING);
    await readU64(br, OFFSET);
    expect(await readU64(br, SIZE)).toBe(BigInt(SECTION));
    await expect(writeU32(br, STATE, 1)).rejects.toMatchObject({ code: 'EIO' });
    expect(await readU32(br, STATE)).toBe(6);
    expect(await readU64(br, PENDING)).toBe(0n);
  });

  it('a failure that left the device where it started is still a nak', async () => {
    const dev = createSimDevice({
      flags: 1,
      stateSize: 50_000,
      faults: { failArc: [{ from: MigState.RUNNING, to: MigState.STOP, errno: 'EIO', count: 1 }] },
    });
    const br = await openV1Bridge(dev, { sectionSize: SECTION });
    await expect(writeU32(br, STATE, 2)).rejects.toMatchObject({ code: 'EIO' });
    expect(await readU32(br, STATE)).toBe(1);
    await writeU32(br, STATE, 2);
    expect(await readU32(br, STATE)).toBe(2);
  });
});

describe('overlapping accesses are serialized in order', () => {
  const slow: SimDeviceOptions = {
    flags: 1,
    stateSize: 300_000,
    seed: 3,
    faults: { readDelayMs: 2, shortRead: 20_000 },
  };

  it('two overlapping data_offset reads in 010 see one chunk, and nothing is lost', async () => {
    const expected = await saveV2(createSimDevice({ ...slow, faults: {} }), false);
    const br = await openV1Bridge(createSimDevice(slow), { sectionSize: SECTION });
    await writeU32(br, STATE, 2);
    const parts: Buffer[] = [];
    for (;;) {
      const [p1, p2] = await Promise.all([readU64(br, PENDING), readU64(br, PENDING)]);
      expect(p1).toBe(p2);
      if (p1 === 0n) break;
      const [o1, o2] = await Promise.all([readU64(br, OFFSET), readU64(br, OFFSET)]);
      expect([o1, o2]).toEqual([4096n, 4096n]);
      const size = Number(await readU64(br, SIZE));
      expect(size).toBeGreaterThan(0);
      parts.push(Buffer.from(await br.read(br.dataOffset, size)));
    }
    expect(Buffer.concat(parts).equals(expected)).toBe(true);
  });

  it('a data_offset read overlapping a state write or reset() completes before it', async () => {
    // A section larger than the read-ahead, so data_offset reads the data_fd itself.
    const br = await openV1Bridge(createSimDevice(slow), { sectionSize: 4 * SECTION });
    await writeU32(br, STATE, 2);
    await readU64(br, PENDING);
    const [, size] = await Promise.all([readU64(br, OFFSET), readU64(br, SIZE), writeU32(br, STATE, 0)]);
    expect(size).toBe(BigInt(4 * SECTION)); // queued behind data_offset, ahead of the state write
    expect(await readU32(br, STATE)).toBe(0);

    await writeU32(br, STATE, 2);
    await readU64(br, PENDING);
    await Promise.all([readU64(br, OFFSET), br.reset()]);
    expect(await readU32(br, STATE)).toBe(1);
  });

  it('overlapping data_size writes push their chunks whole and in call order', async () => {
    const model: SimDeviceOptions = { flags: 1, stateSize: 100_000, seed: 4 };
    const stream = await saveV2(createSimDevice(model), false);
    const target = createSimDevice({ ...model, seed: 40, faults: { shortWrite: 300 } });
    const br = await openV1Bridge(target, { sectionSize: SECTION });
    await writeU32(br, STATE, 4);
    const pending: Promise<void>[] = [];
    for (let at = 0; at < stream.length; at += 1000) {
      const piece = stream.subarray(at, at + 1000);
      // The caller's order: data into the section, then data_size; none awaited.
      pending.push(br.write(br.dataOffset, piece), writeU64(br, SIZE, BigInt(piece.length)));
    }
    await Promise.all(pending);
    await writeU32(br, STATE, 1);
    expect(target.stateDigest()).toBe(createSimDevice({ ...model }).stateDigest());
  });

  it('the trace attributes each v2 operation to the access that caused it', async () => {
    const events: V1TraceEvent[] = [];
    const br = await openV1Bridge(createSimDevice(slow), { sectionSize: SECTION, trace: (e) => events.push(e) });
    await Promise.all([writeU32(br, STATE, 2), readU64(br, PENDING), readU64(br, OFFSET), readU64(br, SIZE)]);
    expect(events.map((e) => e.field)).toEqual(['device_state', 'pending_bytes', 'data_offset', 'data_size']);
    for (const e of events) expect(Array.isArray(e.v2)).toBe(true);
    expect(events[0]!.v2[0]).toMatch(/^SET_STATE RUNNING->STOP_COPY/);
    expect(events[1]!.v2.every((op) => op.startsWith('read(data_fd') || op.startsWith('FEATURE_MIG_DATA_SIZE'))).toBe(
      true,
    );
    expect(events[3]!.v2).toEqual([]);
  });
});

describe('a device moved outside the bridge (found by racing two bridges on one device)', () => {
  it('010 on a device another owner already holds in STOP_COPY: EBUSY, a nak, never an empty save', async () => {
    const dev = createSimDevice({ flags: 1, stateSize: 50_000 });
    const a = await openV1Bridge(dev, { sectionSize: SECTION });
    const b = await openV1Bridge(dev, { sectionSize: SECTION });
    await writeU32(a, STATE, 2);
    await expect(writeU32(b, STATE, 2)).rejects.toMatchObject({ code: 'EBUSY' });
    expect(await readU32(b, STATE)).toBe(1);
    expect(await readU64(b, PENDING)).toBe(0n);
    // The owner's session is untouched.
    expect(await readU64(a, PENDING)).toBeGreaterThan(0n);
  });

  it('pre-copy after an outside reset: 011 -> 010 would restart the stream, so EBUSY and 110', async () => {
    const dev = createSimDevice({ flags: 5, stateSize: 50_000 });
    const opened: DataStream[] = [];
    const setState = dev.setState.bind(dev);
    dev.setState = async (s) => {
      const st = await setState(s);
      if (st) opened.push(st);
      return st;
    };
    const br = await openV1Bridge(dev, { sectionSize: SECTION });
    await writeU32(br, STATE, 3);
    await readU64(br, PENDING);
    await dev.reset(); // someone else's VFIO_DEVICE_RESET
    await expect(writeU32(br, STATE, 2)).rejects.toMatchObject({ code: 'EBUSY' });
    expect(await readU32(br, STATE)).toBe(6);
    expect(opened.length).toBe(2);
    expect(opened.every((st) => st.closed)).toBe(true);
    await br.reset();
    expect(await readU32(br, STATE)).toBe(1);
  });
});
