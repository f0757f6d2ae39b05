// The bridge's trace on its own (src/bridge/trace-log.ts), and the one rule
// the bridge relies on: a trace hook that throws never fails an access.
import { describe, expect, it } from 'vitest';
import { TraceLog } from '../../src/bridge/trace-log.js';
import { createSimDevice, MigState, openV1Bridge, VfioError, type V1TraceEvent } from '../../src/index.js';

describe('TraceLog', () => {
  it('reports an access with the v2 operations called during it, in order, and nothing called outside one', async () => {
    const events: V1TraceEvent[] = [];
    const log = new TraceLog((e) => events.push(e));
    await log.call('GET_STATE', async () => 2, String); // outside an access: not recorded anywhere
    const out = await log.traced('read', 'pending_bytes', 8, 8, undefined, async () => {
      await log.call(
        'VFIO_MIG_GET_PRECOPY_INFO',
        async () => ({ i: 3 }),
        (r) => `initial ${r.i}`,
      );
      await log.call('VFIO_DEVICE_RESET', async () => undefined);
      return ['result', 42n];
    });
    expect(out).toBe('result');
    expect(events).toEqual([
      {
        op: 'read',
        field: 'pending_bytes',
        offset: 8,
        length: 8,
        value: 42n,
        v2: ['VFIO_MIG_GET_PRECOPY_INFO = initial 3', 'VFIO_DEVICE_RESET'],
      },
    ]);
  });

  it('reports a failed access with the value it was given, the failed operation and its errno, and rethrows', async () => {
    const events: V1TraceEvent[] = [];
    const log = new TraceLog((e) => events.push(e));
    const fail = new VfioError('EIO', 'SET_STATE', 'dev', 'arc failed');
    await expect(
      log.traced('write', 'device_state', 0, 4, 3, async () => {
        await log.call('SET_STATE RUNNING->PRE_COPY', async () => {
          throw fail;
        });
        return [undefined, 3];
      }),
    ).rejects.toBe(fail);
    expect(events).toEqual([
      {
        op: 'write',
        field: 'device_state',
        offset: 0,
        length: 4,
        value: 3,
        v2: ['SET_STATE RUNNING->PRE_COPY ! EIO'],
        error: 'EIO',
      },
    ]);
    // A non-VfioError reads as EIO, and an access without a value reports none.
    await expect(
      log.traced('read', 'data_size', 24, 8, undefined, async () => Promise.reject(new Error('boom'))),
    ).rejects.toThrow('boom');
    expect(events[1]).toEqual({ op: 'read', field: 'data_size', offset: 24, length: 8, v2: [], error: 'EIO' });
  });

  it('without a hook runs the access and records nothing', async () => {
    const log = new TraceLog(undefined);
    let called = 0;
    const out = await log.traced('read', 'reserved', 4, 4, undefined, async () => {
      await log.call('GET_STATE', async () => called++);
      return ['x', 0];
    });
    expect(out).toBe('x');
    expect(called).toBe(1);
    expect(() => log.emit({ op: 'read', field: 'data', offset: 4096, length: 1, v2: [] })).not.toThrow();
  });

  it('a hook that throws fails neither emit nor the access', async () => {
    let seen = 0;
    const log = new TraceLog(() => {
      seen++;
      throw new Error('hook broke');
    });
    expect(await log.traced('read', 'device_state', 0, 4, undefined, async () => ['ok', 1])).toBe('ok');
    expect(() => log.emit({ op: 'write', field: 'data', offset: 4096, length: 1, v2: [] })).not.toThrow();
    expect(seen).toBe(2);
  });
});

describe('a bridge with a throwing trace hook', () => {
  it('still carries out and reports every access: a state change made is not read as failed', async () => {
    const dev = createSimDevice({ stateSize: 8192 });
    let seen = 0;
    const br = await openV1Bridge(dev, {
      sectionSize: 4096,
      trace: () => {
        seen++;
        throw new Error('hook broke');
      },
    });
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, 0b010, true);
    await br.write(0, b); // RUNNING -> STOP_COPY
    expect(br.deviceState).toBe(0b010);
    expect(await dev.getState()).toBe(MigState.STOP_COPY);
    expect(new DataView((await br.read(8, 8)).buffer).getBigUint64(0, true)).toBeGreaterThan(0n);
    await br.read(16, 8);
    expect(await br.read(4096, 16)).toHaveLength(16);
    expect(seen).toBe(4);
  });
});
