import { describe, expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import {
  createSimDevice,
  isStateSupported,
  migrationPath,
  MigState,
  readSome,
  SIM_ARCS_KEPT,
  writeAll,
  type SimFaults,
} from '../../src/index.js';
import { drain, loadV2, saveV2 } from '../helpers.js';
import { stringContaining } from '../matchers.js';

const S = MigState;

describe('sim device: streams', () => {
  it('returns a stream exactly on the transitions whose last arc opens a session', async () => {
    for (const flags of [1, 3, 5, 7]) {
      for (let i = 1; i < 8; i++) {
        for (let j = 1; j < 8; j++) {
          const from: MigState = i,
            to: MigState = j;
          if (!isStateSupported(from, flags) || !isStateSupported(to, flags)) continue;
          const dev = createSimDevice({ flags, stateSize: 100 });
          const entered = await dev.setState(from);
          // Leaving RESUMING needs a valid stream behind it.
          if (from === S.RESUMING)
            await writeAll(entered!, await saveV2(createSimDevice({ flags, stateSize: 100 })), dev.name);
          let path: MigState[];
          try {
            path = migrationPath(from, to, flags);
          } catch {
            await expect(dev.setState(to)).rejects.toMatchObject({ code: 'EINVAL' });
            expect(dev.state).toBe(from);
            continue;
          }
          const last = path.length > 1 ? [path.at(-2)!, to] : null;
          const opens =
            last !== null &&
            (to === S.RESUMING ||
              ([S.PRE_COPY, S.PRE_COPY_P2P, S.STOP_COPY].includes(to) &&
                ![S.PRE_COPY, S.PRE_COPY_P2P, S.STOP_COPY].includes(last[0]!)));
          const stream = await dev.setState(to);
          expect(stream !== null, `flags ${flags} ${S[from]}->${S[to]}`).toBe(opens);
          expect(dev.state).toBe(to);
        }
      }
    }
  });

  it('keeps the same stream across PRE_COPY -> STOP_COPY, pre-copy bytes first', async () => {
    const dev = createSimDevice({ stateSize: 64 * 1024, seed: 3 });
    const s = await dev.setState(S.PRE_COPY);
    const first = await drain(s!, 1000);
    expect(await dev.setState(S.STOP_COPY)).toBeNull();
    const rest = await drain(s!);
    expect(first.length).toBeGreaterThan(64 * 1024);
    expect(rest.length).toBeGreaterThan(0);
    const b = createSimDevice({ stateSize: 64 * 1024, seed: 4 });
    await loadV2(b, Buffer.concat([first, rest]));
    expect(b.stateDigest()).toBe(dev.stateDigest());
  });

  it('ends a saving stream with 0, and the same read returns 0 again', async () => {
    const dev = createSimDevice({ stateSize: 10 });
    const s = await dev.setState(S.STOP_COPY);
    await drain(s!);
    expect(await s!.read(new Uint8Array(10))).toBe(0);
  });

  it('reports a temporary end of pre-copy with ENOMSG (default) and 0 (mtty profile)', async () => {
    const dev = createSimDevice({ stateSize: 10 });
    const s = await dev.setState(S.PRE_COPY);
    await s!.read(new Uint8Array(1 << 16));
    await expect(s!.read(new Uint8Array(16))).rejects.toMatchObject({ code: 'ENOMSG', errno: 42 });
    const m = createSimDevice({ profile: 'mtty' });
    const ms = await m.setState(S.PRE_COPY);
    expect(await ms!.read(new Uint8Array(1 << 16))).toBeGreaterThan(0);
    expect(await ms!.read(new Uint8Array(16))).toBe(0);
    expect(m.state).toBe(S.PRE_COPY);
  });

  it('round-trips into a second device of the same model with another seed', async () => {
    for (const stateSize of [0, 1, 4095, 4096, 4097, 3 * 4096 + 7, 300_000]) {
      const a = createSimDevice({ stateSize, seed: 11 });
      const b = createSimDevice({ stateSize, seed: 12 });
      if (stateSize > 0) expect(b.stateDigest()).not.toBe(a.stateDigest());
      await loadV2(b, await saveV2(a));
      expect(b.stateDigest(), `size ${stateSize}`).toBe(a.stateDigest());
      expect(b.state).toBe(S.RUNNING);
    }
  });

  it('dirties state while running so pre-copy reports dirty bytes', async () => {
    const dev = createSimDevice({ stateSize: 256 * 1024 });
    const s = await dev.setState(S.PRE_COPY);
    const before = await s!.precopyInfo();
    expect(before.dirtyBytes).toBe(0n);
    expect(before.initialBytes).toBeGreaterThan(256n * 1024n);
    await s!.read(new Uint8Array(128 * 1024));
    const mid = await s!.precopyInfo();
    expect(mid.dirtyBytes).toBeGreaterThan(0n);
    expect(mid.initialBytes).toBeLessThan(before.initialBytes);
  });

  it('answers PRECOPY_INFO with EINVAL outside PRE_COPY states', async () => {
    const dev = createSimDevice({ stateSize: 100 });
    const s = await dev.setState(S.PRE_COPY);
    await dev.setState(S.STOP_COPY);
    await expect(s!.precopyInfo()).rejects.toMatchObject({ code: 'EINVAL' });
    const r = await createSimDevice({ stateSize: 100 }).setState(S.RESUMING);
    await expect(r!.precopyInfo()).rejects.toMatchObject({ code: 'EINVAL' });
  });

  it('reports MIG_DATA_SIZE as the whole stream, then what is left', async () => {
    const dev = createSimDevice({ stateSize: 5000 });
    const total = await dev.stopCopySize();
    const s = await dev.setState(S.STOP_COPY);
    const data = await drain(s!);
    expect(BigInt(data.length)).toBe(total);
    expect(await dev.stopCopySize()).toBe(0n);
  });
});

describe('sim device: resume validation', () => {
  const model = { stateSize: 10_000 };
  async function stream() {
    return saveV2(createSimDevice({ ...model, seed: 1 }));
  }
  const cases: Array<[string, (d: Buffer) => Buffer | Promise<Buffer>]> = [
    ['empty', () => Buffer.alloc(0)],
    ['truncated header', (d) => d.subarray(0, 20)],
    ['truncated body', (d) => d.subarray(0, d.length - 100)],
    ['truncated end record', (d) => d.subarray(0, d.length - 1)],
    [
      'corrupt byte',
      (d) => {
        const c = Buffer.from(d);
        c[500] = c[500]! ^ 0xff;
        return c;
      },
    ],
    ['trailing garbage', (d) => Buffer.concat([d, Buffer.from('xx')])],
    ['garbage', () => Buffer.alloc(2000, 0x41)],
    ['foreign model', async () => saveV2(createSimDevice({ stateSize: 10_001 }))],
    ['foreign profile', async () => saveV2(createSimDevice({ ...model, flags: 3 }))],
  ];
  it.each(cases)('rejects %s data with EINVAL on leaving RESUMING, state stays RESUMING', async (_name, mutate) => {
    const data = await mutate(await stream());
    const b = createSimDevice({ ...model, seed: 2 });
    const digest = b.stateDigest();
    await expect(loadV2(b, data)).rejects.toMatchObject({ code: 'EINVAL', op: 'SET_STATE RESUMING->RUNNING' });
    expect(b.state).toBe(S.RESUMING);
    expect(b.stateDigest()).toBe(digest);
  });

  it('goes to ERROR on a bad resume when resumeFailure is error, and reset recovers', async () => {
    const b = createSimDevice({ ...model, resumeFailure: 'error' });
    await expect(loadV2(b, Buffer.alloc(10))).rejects.toMatchObject({ code: 'EINVAL' });
    expect(await b.getState()).toBe(S.ERROR);
    await expect(b.setState(S.RUNNING)).rejects.toMatchObject({ code: 'EINVAL' });
    await b.reset();
    expect(await b.getState()).toBe(S.RUNNING);
    await loadV2(b, await stream());
  });

  it('mtty profile answers a bad header with EFAULT at write time', async () => {
    const b = createSimDevice({ profile: 'mtty' });
    const s = await b.setState(S.RESUMING);
    await expect(s!.write(Buffer.alloc(40, 1))).rejects.toMatchObject({ code: 'EFAULT' });
  });
});

describe('sim device: fault injection', () => {
  it('fails an arc and stays at the state reached so far', async () => {
    const dev = createSimDevice({ faults: { failArc: [{ from: S.STOP, to: S.STOP_COPY, errno: 'EIO', count: 1 }] } });
    await expect(dev.setState(S.STOP_COPY)).rejects.toMatchObject({ code: 'EIO', errno: 5 });
    expect(dev.state).toBe(S.STOP);
    expect(await dev.setState(S.STOP_COPY)).not.toBeNull();
  });

  it('fails an arc into ERROR; reset recovers and closes streams', async () => {
    const dev = createSimDevice({
      faults: { failArc: [{ from: S.PRE_COPY_P2P, to: S.STOP_COPY, errno: 'ENOMEM', leave: 'error' }] },
    });
    const s = await dev.setState(S.PRE_COPY);
    await expect(dev.setState(S.STOP_COPY)).rejects.toMatchObject({ code: 'ENOMEM' });
    expect(dev.state).toBe(S.ERROR);
    await expect(s!.read(new Uint8Array(10))).rejects.toMatchObject({ code: 'ENODEV' });
    await dev.reset();
    expect(dev.state).toBe(S.RUNNING);
  });

  it('short reads and writes still round-trip', async () => {
    const a = createSimDevice({ stateSize: 20_000, faults: { shortRead: 7 } });
    const b = createSimDevice({ stateSize: 20_000, seed: 5, faults: { shortWrite: 13 } });
    const s = await a.setState(S.STOP_COPY);
    expect(await s!.read(new Uint8Array(100))).toBe(7);
    const r = await b.setState(S.RESUMING);
    expect(await r!.write(new Uint8Array(100))).toBe(13);
    await b.reset();
    await a.reset();
    await loadV2(b, await saveV2(a));
    expect(b.stateDigest()).toBe(a.stateDigest());
  });

  it('injects ENOMSG, EINTR and EAGAIN on reads after a number of calls', async () => {
    const dev = createSimDevice({
      stateSize: 100_000,
      faults: {
        readErrors: [
          { errno: 'ENOMSG', after: 1 },
          { errno: 'EINTR', after: 2, count: 2 },
          { errno: 'EAGAIN', after: 2 },
        ],
      },
    });
    const s = await dev.setState(S.PRE_COPY);
    const buf = new Uint8Array(100);
    expect(await s!.read(buf)).toBe(100);
    await expect(s!.read(buf)).rejects.toMatchObject({ code: 'ENOMSG' });
    expect(await s!.read(buf)).toBe(100);
    await expect(s!.read(buf)).rejects.toMatchObject({ code: 'EINTR' });
    await expect(s!.read(buf)).rejects.toMatchObject({ code: 'EINTR' });
    await expect(s!.read(buf)).rejects.toMatchObject({ code: 'EAGAIN' });
    expect(await readSome(s!, buf)).toBe(100);
  });

  it('injects write errors; writeAll retries EINTR', async () => {
    const dev = createSimDevice({
      stateSize: 100,
      faults: {
        writeErrors: [
          { errno: 'EINTR', count: 3 },
          { errno: 'EIO', after: 1 },
        ],
      },
    });
    const r = await dev.setState(S.RESUMING);
    await writeAll(r!, new Uint8Array(10), dev.name);
    await expect(r!.write(new Uint8Array(10))).rejects.toMatchObject({ code: 'EIO' });
  });

  it('copies its fault options: editing the object afterwards changes nothing, and the armed faults cannot be edited', async () => {
    const faults: SimFaults = { failArc: [{ from: S.RUNNING, to: S.STOP, errno: 'EIO', count: 0 }] };
    const dev = createSimDevice({ flags: 1, stateSize: 1000, faults });
    faults.failArc![0]!.count = 1;
    faults.failArc!.push({ from: S.STOP, to: S.RUNNING, errno: 'EIO' });
    faults.readErrors = [{ errno: 'EIO' }];
    await dev.setState(S.STOP);
    await dev.setState(S.RUNNING);
    expect(await (await dev.setState(S.STOP_COPY))!.read(new Uint8Array(10))).toBe(10);
    expect(dev.faults).toEqual({ failArc: [{ from: S.RUNNING, to: S.STOP, errno: 'EIO', count: 0 }] });
    // Frozen: a test that still edits them in place fails loudly instead of silently testing nothing.
    expect(() => ((dev.faults.failArc![0] as { count?: number }).count = 1)).toThrow(TypeError);
    expect(() => (dev.faults as SimFaults).failArc!.push({ from: S.STOP, to: S.RUNNING, errno: 'EIO' })).toThrow(
      TypeError,
    );
  });

  it('setFaults() arms new faults with fresh counts and copies them', async () => {
    const once = { from: S.RUNNING, to: S.STOP, errno: 'EIO', count: 1 };
    const dev = createSimDevice({ flags: 1, faults: { failArc: [once] } });
    await expect(dev.setState(S.STOP)).rejects.toMatchObject({ code: 'EIO' });
    await dev.setState(S.STOP); // used up
    await dev.setState(S.RUNNING);
    const armed: SimFaults = { failArc: [once, { from: S.STOP, to: S.RUNNING, errno: 'EBUSY', leave: 'error' }] };
    dev.setFaults(armed);
    armed.failArc = [];
    await expect(dev.setState(S.STOP)).rejects.toMatchObject({ code: 'EIO' }); // its count starts again
    await dev.setState(S.STOP);
    await expect(dev.setState(S.RUNNING)).rejects.toMatchObject({ code: 'EBUSY' });
    expect(dev.state).toBe(S.ERROR);
    dev.setFaults({});
    expect(dev.faults).toEqual({});
    await dev.reset();
    await dev.setState(S.STOP);
    await dev.setState(S.RUNNING);
    expect(dev.state).toBe(S.RUNNING);
  });

  it('setFaults() reaches an open stream: read faults disarmed at once, new ones counted from its next call', async () => {
    const dev = createSimDevice({ stateSize: 100_000, faults: { readErrors: [{ errno: 'EIO', after: 1, count: 5 }] } });
    const s = await dev.setState(S.STOP_COPY);
    const buf = new Uint8Array(100);
    expect(await s!.read(buf)).toBe(100);
    await expect(s!.read(buf)).rejects.toMatchObject({ code: 'EIO' });
    dev.setFaults({});
    expect(await s!.read(buf)).toBe(100);
    dev.setFaults({ readErrors: [{ errno: 'EAGAIN', after: 2 }], shortRead: 7 });
    expect(await s!.read(buf)).toBe(7);
    expect(await s!.read(buf)).toBe(7);
    await expect(s!.read(buf)).rejects.toMatchObject({ code: 'EAGAIN' });
    expect(await s!.read(buf)).toBe(7);
  });

  it('delays reads', async () => {
    const dev = createSimDevice({ stateSize: 100, faults: { readDelayMs: 50 } });
    const s = await dev.setState(S.STOP_COPY);
    // Timers fire in the order they expire: one of 40 ms set first fires before the delayed read ends.
    const order: string[] = [];
    const timer = new Promise<void>((r) => setTimeout(() => r(void order.push('timer 40 ms')), 40));
    await s!.read(new Uint8Array(10)).then(() => order.push('read'));
    await timer;
    expect(order).toEqual(['timer 40 ms', 'read']);
  });
});

describe('sim device: what tests observe', () => {
  it('logs the arcs it ran, keeping the last SIM_ARCS_KEPT so a long-lived device stays small', async () => {
    const dev = createSimDevice({ stateSize: 100 });
    await dev.setState(S.STOP_COPY);
    expect(dev.arcs).toEqual([
      [S.RUNNING, S.RUNNING_P2P],
      [S.RUNNING_P2P, S.STOP],
      [S.STOP, S.STOP_COPY],
    ]);
    (dev.arcs as Array<[MigState, MigState]>).length = 0; // a copy: the log is not touched
    expect(dev.arcs.length).toBe(3);
    await dev.setState(S.STOP);
    for (let i = 0; i < SIM_ARCS_KEPT; i++) await dev.setState(i % 2 ? S.STOP : S.RUNNING_P2P);
    expect(dev.arcs.length).toBe(SIM_ARCS_KEPT);
    expect(dev.arcs[0]).toEqual([S.STOP, S.RUNNING_P2P]); // the STOP_COPY arcs have aged out
    expect(dev.arcs.at(-1)).toEqual([S.RUNNING_P2P, S.STOP]);
  });

  it('resets to its initial content, or keeps its state with resetKeepsState (as mtty does)', async () => {
    for (const resetKeepsState of [false, true]) {
      const dev = createSimDevice({ stateSize: 50_000, seed: 4, resetKeepsState });
      const initial = dev.stateDigest();
      dev.runFor(5);
      const changed = dev.stateDigest();
      expect(changed).not.toBe(initial);
      await dev.setState(S.STOP);
      await dev.reset();
      expect(dev.state).toBe(S.RUNNING);
      expect(dev.stateDigest()).toBe(resetKeepsState ? changed : initial);
    }
  });

  it('content is a copy: editing it does not change the device', () => {
    const dev = createSimDevice({ stateSize: 50_000 });
    const before = dev.stateDigest();
    dev.content.versions.fill(9);
    expect(dev.content.versions.every((v) => v === 0)).toBe(true);
    expect(dev.stateDigest()).toBe(before);
  });
});

describe('sim device: session lifetime', () => {
  it('no stream stays readable or writable after its session ends', async () => {
    const dev = createSimDevice({ stateSize: 100 });
    const s = await dev.setState(S.STOP_COPY);
    await dev.setState(S.STOP);
    await expect(s!.read(new Uint8Array(10))).rejects.toMatchObject({ code: 'ENODEV' });
    const r = await dev.setState(S.RESUMING);
    await dev.reset();
    await expect(r!.write(new Uint8Array(10))).rejects.toMatchObject({ code: 'ENODEV' });
    const p = await dev.setState(S.PRE_COPY);
    await dev.setState(S.RUNNING);
    await expect(p!.read(new Uint8Array(10))).rejects.toMatchObject({ code: 'ENODEV' });
    await expect(p!.precopyInfo()).rejects.toMatchObject({ code: 'ENODEV' });
  });

  it('a closed stream answers EBADF', async () => {
    const dev = createSimDevice({ stateSize: 100 });
    const s = await dev.setState(S.STOP_COPY);
    await s!.close();
    await expect(s!.read(new Uint8Array(1))).rejects.toMatchObject({ code: 'EBADF' });
  });

  it('rejects states outside 0..7 and ERROR as a target', async () => {
    const dev = createSimDevice();
    await expect(dev.setState(8 as MigState)).rejects.toMatchObject({ code: 'EINVAL' });
    await expect(dev.setState(S.ERROR)).rejects.toMatchObject({ code: 'EINVAL' });
    expect(dev.state).toBe(S.RUNNING);
  });

  it('rejects flag sets without STOP_COPY', () => {
    expect(() => createSimDevice({ flags: 2 })).toThrow(expect.objectContaining({ code: 'EINVAL' }));
  });
});

describe('sim device: whole runs of pages per call', () => {
  // Streams read in one large buffer take the whole-record paths; buffers
  // smaller than one record (16 + 4096 bytes) take the byte-at-a-time paths.
  const sizes = [1, 7, 4111, 4112, 4113, 3 * 4112 + 5, 1 << 20];
  async function readAll(dev: ReturnType<typeof createSimDevice>, size: number, precopy: boolean): Promise<Buffer> {
    const parts: Buffer[] = [];
    const buf = new Uint8Array(size);
    const s = await dev.setState(precopy ? S.PRE_COPY : S.STOP_COPY);
    if (precopy) {
      // Half the pre-copy data while the device runs and dirties pages, then the rest in stop-copy.
      for (let got = 0; got < 120_000;) {
        const n = await s!.read(buf.subarray(0, Math.min(size, 120_000 - got)));
        parts.push(Buffer.from(buf.subarray(0, n)));
        got += n;
      }
      await dev.setState(S.STOP_COPY);
    }
    for (let n; (n = await s!.read(buf)) > 0;) parts.push(Buffer.from(buf.subarray(0, n)));
    return Buffer.concat(parts);
  }

  it('produces the same bytes whatever the read size, with dirtied and partial pages', async () => {
    for (const precopy of [false, true]) {
      const model = { stateSize: 300_123, seed: 11, dirtyRatio: 1 / 4 };
      const want = await readAll(createSimDevice(model), 1, precopy);
      for (const size of sizes) {
        const dev = createSimDevice(model);
        expect((await readAll(dev, size, precopy)).equals(want), `read size ${size}, precopy ${precopy}`).toBe(true);
      }
    }
  });

  it('keeps the stream format: the bytes of a fixed device are those the page-at-a-time producer gave', async () => {
    // sha256 of this stream as produced before whole-run reads existed (one record per loop step).
    const dev = createSimDevice({ stateSize: 300_123, seed: 11 });
    dev.runFor(40);
    const data = await readAll(dev, 1 << 20, false);
    expect(createHash('sha256').update(data).digest('hex')).toBe(
      '8701669467394f1b25bb55d78bd45ffa17ba8ca809588d3a9158d3ac0c84f73f',
    );
  });

  it('accepts a stream written in any piece size, and rejects the same damage with the same reason', async () => {
    const model = { stateSize: 50_000 + 17 };
    const good = await saveV2(createSimDevice({ ...model, seed: 1 }), false);
    const corrupt = Buffer.from(good);
    corrupt[32 + 5 * 4112 + 100] = corrupt[32 + 5 * 4112 + 100]! ^ 1; // inside page 5's data
    const badRecord = Buffer.from(good);
    badRecord.writeUInt32LE(999, 32 + 3 * 4112 + 4); // page 3's record names a page past the end
    const cases: Array<[Buffer, string | null]> = [
      [good, null],
      [corrupt, 'page 5 content does not match its record'],
      [badRecord, 'bad record (kind 1, page 999, length 4096)'],
      [good.subarray(0, good.length - 16), 'no end record'],
      [Buffer.concat([good.subarray(0, 32 + 4112), good.subarray(32 + 2 * 4112)]), 'incomplete: 12 of 13 pages'],
    ];
    for (const [data, why] of cases) {
      for (const piece of sizes) {
        const b = createSimDevice({ ...model, seed: 2 });
        const r = await b.setState(S.RESUMING);
        for (let at = 0; at < data.length; at += piece) await writeAll(r!, data.subarray(at, at + piece), b.name);
        const done = b.setState(S.RUNNING);
        if (why === null) {
          await done;
          expect(b.stateDigest(), `piece ${piece}`).toBe(createSimDevice({ ...model, seed: 1 }).stateDigest());
        } else {
          await expect(done, `piece ${piece}`).rejects.toMatchObject({ code: 'EINVAL', reason: stringContaining(why) });
        }
      }
    }
  });
});

describe('sim device: stateDigest(pause)', () => {
  it('gives the synchronous digest, pausing after every 256 pages, and ends with EBADF once the device is closed', async () => {
    const dev = createSimDevice({ stateSize: 1000 * 4096 + 5, seed: 9 });
    dev.runFor(50);
    let pauses = 0;
    expect(await dev.stateDigest(async () => void pauses++)).toBe(dev.stateDigest());
    expect(pauses).toBe(3); // 1001 pages: after pages 256, 512 and 768
    const closing = dev.stateDigest(() => dev.close());
    await expect(closing).rejects.toMatchObject({ code: 'EBADF', op: 'stateDigest' });
  });
});
