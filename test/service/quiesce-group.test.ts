/**
 * The quiesce group (docs/interposer.md "Quiesce group"): a VMM's devices
 * pass through RUNNING_P2P on the way down and up, as QEMU 8's v2 caller
 * moves them, while each v1 caller keeps reading the state it wrote.
 */
import { describe, expect, it } from 'vitest';
import {
  createSimDevice,
  ForwardingDevice,
  MigState,
  openV1Bridge,
  type DataStream,
  type SimDevice,
  type V2Device,
} from '../../src/index.js';
import { QuiesceGroup } from '../../src/service/quiesce-group.js';
import { readU32, readU64, writeU32, writeU64 } from '../../src/v1/region-access.js';
import { migStateName } from '../../src/v2/uapi.js';
import { saveV2 } from '../helpers.js';

const S = MigState;
const STATE = 0,
  PENDING = 8,
  OFFSET = 16,
  SIZE = 24;

/** Sim devices whose SET_STATE calls land in one shared log, in the order they reach the devices. */
class LoggedSim extends ForwardingDevice {
  declare readonly inner: SimDevice;
  constructor(
    readonly log: string[],
    name: string,
    flags: number,
    seed: number,
  ) {
    super(createSimDevice({ stateSize: 20_000, flags, seed, name }));
  }
  override setState(s: MigState): Promise<DataStream | null> {
    this.log.push(`${this.name} ${migStateName(this.inner.state)}->${migStateName(s)}`);
    return this.inner.setState(s);
  }
}

function logged(log: string[], name: string, flags = 7, seed = 1): LoggedSim {
  return new LoggedSim(log, name, flags, seed);
}

async function member(group: QuiesceGroup, dev: V2Device) {
  const m = group.add(dev, await dev.migrationFlags(), await dev.getState());
  return { m, br: await openV1Bridge(m, { sectionSize: 8192 }) };
}

async function drainV1(br: Awaited<ReturnType<typeof openV1Bridge>>): Promise<Buffer> {
  const parts: Buffer[] = [];
  while ((await readU64(br, PENDING)) > 0n) {
    await readU64(br, OFFSET);
    const n = Number(await readU64(br, SIZE));
    if (n === 0) break;
    parts.push(Buffer.from(await br.read(br.dataOffset, n)));
  }
  return Buffer.concat(parts);
}

describe('quiesce group', () => {
  it('down: the first device to stop parks the others in their P2P form first; v1 reads stay what was written', async () => {
    const log: string[] = [];
    const group = new QuiesceGroup();
    const a = await member(group, logged(log, 'A'));
    const b = await member(group, logged(log, 'B', 7, 2));
    await writeU32(a.br, STATE, 3);
    await writeU32(b.br, STATE, 3);
    log.length = 0;
    await writeU32(a.br, STATE, 2);
    expect(log).toEqual(['B PRE_COPY->PRE_COPY_P2P', 'A PRE_COPY->STOP_COPY']);
    expect(await readU32(b.br, STATE)).toBe(3);
    expect(b.m.real).toBe(S.PRE_COPY_P2P);
    await writeU32(b.br, STATE, 2);
    expect(log.slice(2)).toEqual(['B PRE_COPY_P2P->STOP_COPY']);
  });

  it('down: the parked device streams on, and both states arrive whole', async () => {
    const group = new QuiesceGroup();
    const srcA = logged([], 'A', 7, 11);
    const srcB = logged([], 'B', 7, 12);
    const a = await member(group, srcA);
    const b = await member(group, srcB);
    await writeU32(a.br, STATE, 3);
    await writeU32(b.br, STATE, 3);
    const pre = [await drainV1(a.br), await drainV1(b.br)];
    await writeU32(a.br, STATE, 2); // parks B in PRE_COPY_P2P
    const preB2 = await drainV1(b.br); // B's pre-copy goes on while parked
    await writeU32(b.br, STATE, 2);
    const streams = [
      Buffer.concat([pre[0]!, await drainV1(a.br)]),
      Buffer.concat([pre[1]!, preB2, await drainV1(b.br)]),
    ];
    for (const [i, src] of [srcA, srcB].entries()) {
      const dst = createSimDevice({ stateSize: 20_000, seed: 99 });
      const br = await openV1Bridge(dst, { sectionSize: 1 << 20 });
      await writeU32(br, STATE, 4);
      await br.write(br.dataOffset, streams[i]!);
      await writeU64(br, SIZE, BigInt(streams[i]!.length));
      await writeU32(br, STATE, 1);
      expect(dst.stateDigest()).toBe(src.inner.stateDigest());
    }
  });

  it('up: devices asked to run are held in RUNNING_P2P until none is stopped, then all run', async () => {
    const log: string[] = [];
    const group = new QuiesceGroup();
    const a = await member(group, logged(log, 'A'));
    const b = await member(group, logged(log, 'B'));
    for (const x of [a, b]) {
      await writeU32(x.br, STATE, 4);
      const stream = await saveV2(createSimDevice({ stateSize: 20_000, seed: 5 }));
      await x.br.write(x.br.dataOffset, stream.subarray(0, 8192));
      await writeU64(x.br, SIZE, BigInt(Math.min(8192, stream.length)));
      for (let at = 8192; at < stream.length; at += 8192) {
        const piece = stream.subarray(at, at + 8192);
        await x.br.write(x.br.dataOffset, piece);
        await writeU64(x.br, SIZE, BigInt(piece.length));
      }
    }
    log.length = 0;
    await writeU32(a.br, STATE, 1);
    expect(log).toEqual(['A RESUMING->RUNNING_P2P']);
    expect(await readU32(a.br, STATE)).toBe(1);
    await writeU32(b.br, STATE, 1);
    expect(log).toEqual([
      'A RESUMING->RUNNING_P2P',
      'B RESUMING->RUNNING_P2P',
      'A RUNNING_P2P->RUNNING',
      'B RUNNING_P2P->RUNNING',
    ]);
    expect([a.m.real, b.m.real]).toEqual([S.RUNNING, S.RUNNING]);
  });

  it('a device that leaves the group releases the ones held for it', async () => {
    const log: string[] = [];
    const group = new QuiesceGroup();
    const a = await member(group, logged(log, 'A'));
    const b = await member(group, logged(log, 'B'));
    await writeU32(a.br, STATE, 0);
    await writeU32(b.br, STATE, 0);
    await writeU32(a.br, STATE, 1);
    expect(a.m.real).toBe(S.RUNNING_P2P);
    await group.remove(b.m);
    expect(a.m.real).toBe(S.RUNNING);
  });

  it('devices without P2P are moved as asked and hold nobody up; one device alone takes no detour', async () => {
    const log: string[] = [];
    const group = new QuiesceGroup();
    const a = await member(group, logged(log, 'A', 1));
    const b = await member(group, logged(log, 'B', 1));
    await writeU32(a.br, STATE, 0);
    await writeU32(a.br, STATE, 1);
    expect(log).toEqual(['A RUNNING->STOP', 'A STOP->RUNNING']);
    expect(b.m.real).toBe(S.RUNNING);

    const solo = new QuiesceGroup();
    const c = await member(solo, logged(log, 'C'));
    log.length = 0;
    await writeU32(c.br, STATE, 0);
    await writeU32(c.br, STATE, 1);
    expect(log).toEqual(['C RUNNING->STOP', 'C STOP->RUNNING']);
  });

  it('reports each move it makes on its own, with the device that caused it', async () => {
    const events: unknown[] = [];
    const group = new QuiesceGroup((e) => events.push(e));
    const a = await member(group, logged([], 'A'));
    await member(group, logged([], 'B'));
    await writeU32(a.br, STATE, 0);
    expect(events).toEqual([{ device: 'B', cause: 'A', v2: ['SET_STATE RUNNING->RUNNING_P2P'] }]);
  });
});

describe('quiesce group: the cases around the two rules', () => {
  it('a running member moving on to PRE_COPY is not asked to run again: not held while another is stopped', async () => {
    const log: string[] = [];
    const group = new QuiesceGroup();
    const b = await member(group, logged(log, 'B'));
    await writeU32(b.br, STATE, 0);
    const a = await member(group, logged(log, 'A')); // joins running, after B stopped: not parked
    log.length = 0;
    await writeU32(a.br, STATE, 3);
    expect(log).toEqual(['A RUNNING->PRE_COPY']);
    expect(a.m.parked).toBe(false);
  });

  it('a stopped member without P2P holds nobody: P2P members asked to run all run', async () => {
    const group = new QuiesceGroup();
    const a = await member(group, logged([], 'A'));
    const b = await member(group, logged([], 'B'));
    const c = await member(group, logged([], 'C', 1));
    for (const x of [c, a, b]) await writeU32(x.br, STATE, 0);
    await writeU32(a.br, STATE, 1);
    expect(a.m.real).toBe(S.RUNNING_P2P); // B is still stopped
    await writeU32(b.br, STATE, 1);
    expect([a.m.real, b.m.real, c.m.real]).toEqual([S.RUNNING, S.RUNNING, S.STOP]);
    expect([a.m.parked, b.m.parked]).toEqual([false, false]);
  });

  it('a member parked in PRE_COPY_P2P reads PRE_COPY, and moves on to PRE_COPY when released', async () => {
    const log: string[] = [];
    const group = new QuiesceGroup();
    const a = await member(group, logged(log, 'A'));
    const b = await member(group, logged(log, 'B'));
    await writeU32(a.br, STATE, 0);
    await writeU32(b.br, STATE, 0);
    await writeU32(a.br, STATE, 3);
    expect(a.m.real).toBe(S.PRE_COPY_P2P);
    expect(a.m.visible).toBe(S.PRE_COPY);
    expect(await readU32(a.br, STATE)).toBe(3);
    await writeU32(b.br, STATE, 1);
    expect(a.m.real).toBe(S.PRE_COPY);
    expect(log.slice(-2)).toEqual(['A PRE_COPY_P2P->PRE_COPY', 'B RUNNING_P2P->RUNNING']);
  });

  it('reports a member held on the way up, and the release', async () => {
    const events: unknown[] = [];
    const group = new QuiesceGroup((e) => events.push(e));
    const a = await member(group, logged([], 'A'));
    const b = await member(group, logged([], 'B'));
    await writeU32(a.br, STATE, 0);
    await writeU32(b.br, STATE, 0);
    events.length = 0;
    await writeU32(a.br, STATE, 1);
    expect(events).toEqual([
      { device: 'A', cause: 'A', v2: ['SET_STATE STOP->RUNNING_P2P (held until every device is up)'] },
    ]);
    await writeU32(b.br, STATE, 1);
    expect(events.slice(1)).toEqual([
      { device: 'B', cause: 'B', v2: ['SET_STATE STOP->RUNNING_P2P (held until every device is up)'] },
      { device: 'A', cause: 'B', v2: ['SET_STATE RUNNING_P2P->RUNNING'] },
      { device: 'B', cause: 'B', v2: ['SET_STATE RUNNING_P2P->RUNNING'] },
    ]);
  });

  it("a member the group fails to park is reported with the errno, and the caller's own move goes on", async () => {
    const events: unknown[] = [];
    const group = new QuiesceGroup((e) => events.push(e));
    const a = await member(group, logged([], 'A'));
    const bDev = logged([], 'B');
    bDev.inner.setFaults({ failArc: [{ from: S.RUNNING, to: S.RUNNING_P2P, errno: 'EIO' }] });
    const b = await member(group, bDev);
    await writeU32(a.br, STATE, 0);
    expect(events).toEqual([{ device: 'B', cause: 'A', v2: ['SET_STATE RUNNING->RUNNING_P2P ! EIO'] }]);
    expect(a.m.real).toBe(S.STOP);
    expect(b.m.real).toBe(S.RUNNING); // where the failed arc left it, read back from the device
    expect(b.m.parked).toBe(false);
  });

  it('a failed move leaves the member where the device says it is (ERROR), and the group serves the next', async () => {
    const group = new QuiesceGroup();
    const aDev = logged([], 'A');
    aDev.inner.setFaults({ failArc: [{ from: S.RUNNING_P2P, to: S.STOP, errno: 'EIO', leave: 'error', count: 1 }] });
    const a = await member(group, aDev);
    await expect(a.m.setState(S.STOP)).rejects.toThrow(/EIO/);
    expect(a.m.real).toBe(S.ERROR);
    await a.m.reset();
    expect([a.m.real, a.m.parked, await a.m.getState()]).toEqual([S.RUNNING, false, S.RUNNING]);
    await a.m.setState(S.STOP);
    expect(a.m.real).toBe(S.STOP);
  });

  it('a non-VfioError from a parked move is reported as text', async () => {
    const events: { v2: string[] }[] = [];
    const group = new QuiesceGroup((e) => events.push(e));
    const a = await member(group, logged([], 'A'));
    const bDev = logged([], 'B');
    const b = await member(group, bDev);
    bDev.setState = () => Promise.reject(new Error('odd failure'));
    await writeU32(a.br, STATE, 0);
    expect(events[0]!.v2).toEqual(['SET_STATE RUNNING->RUNNING_P2P ! Error: odd failure']);
    expect(b.m.real).toBe(S.RUNNING);
  });

  it('a parked member whose device was moved behind its back reports the real state, no longer parked', async () => {
    const group = new QuiesceGroup();
    const aDev = logged([], 'A');
    const a = await member(group, aDev);
    const b = await member(group, logged([], 'B'));
    await writeU32(a.br, STATE, 0);
    await writeU32(b.br, STATE, 0);
    await writeU32(a.br, STATE, 1);
    expect(a.m.parked).toBe(true);
    expect(await a.m.getState()).toBe(S.RUNNING); // still parked: what its caller asked
    await aDev.inner.setState(S.STOP); // behind the group's back
    expect(await a.m.getState()).toBe(S.STOP);
    expect(a.m.parked).toBe(false);
  });

  it('a reset parked member is RUNNING and not parked', async () => {
    const group = new QuiesceGroup();
    const a = await member(group, logged([], 'A'));
    const b = await member(group, logged([], 'B'));
    await writeU32(a.br, STATE, 0);
    await writeU32(b.br, STATE, 0);
    await writeU32(a.br, STATE, 1);
    await a.m.reset();
    expect([a.m.real, a.m.parked, a.m.visible]).toEqual([S.RUNNING, false, S.RUNNING]);
    expect(group.size).toBe(2);
    await group.remove(a.m);
    expect(group.size).toBe(1);
  });
});

describe('quiesce group: what each member is told and keeps', () => {
  it('a member moving between running states parks nobody', async () => {
    const log: string[] = [];
    const group = new QuiesceGroup();
    const a = await member(group, logged(log, 'A'));
    await member(group, logged(log, 'B'));
    log.length = 0;
    await writeU32(a.br, STATE, 3);
    expect(log).toEqual(['A RUNNING->PRE_COPY']);
  });

  it('a member parked on the way down moves back up when the one that stopped runs again', async () => {
    const group = new QuiesceGroup();
    const a = await member(group, logged([], 'A'));
    const b = await member(group, logged([], 'B'));
    await writeU32(a.br, STATE, 0);
    expect(b.m.real).toBe(S.RUNNING_P2P);
    await writeU32(a.br, STATE, 1);
    expect([a.m.real, b.m.real, b.m.parked]).toEqual([S.RUNNING, S.RUNNING, false]);
  });

  it('a member without P2P asked to run is never held, though a P2P member is stopped', async () => {
    const log: string[] = [];
    const group = new QuiesceGroup();
    const a = await member(group, logged(log, 'A'));
    const c = await member(group, logged(log, 'C', 1));
    await writeU32(a.br, STATE, 0);
    await writeU32(c.br, STATE, 0);
    log.length = 0;
    await writeU32(c.br, STATE, 1);
    expect(log).toEqual(['C STOP->RUNNING']);
    expect(c.m.parked).toBe(false);
  });

  it('without an event listener, a failed park still lets the caller stop', async () => {
    const group = new QuiesceGroup();
    const a = await member(group, logged([], 'A'));
    const bDev = logged([], 'B');
    bDev.inner.setFaults({ failArc: [{ from: S.RUNNING, to: S.RUNNING_P2P, errno: 'EIO' }] });
    await member(group, bDev);
    await writeU32(a.br, STATE, 0);
    expect(a.m.real).toBe(S.STOP);
  });

  it('a new member is where it was added, not parked', () => {
    const group = new QuiesceGroup();
    const m = group.add(createSimDevice({ stateSize: 4096 }), 7, S.RUNNING);
    expect([m.real, m.visible, m.parked]).toEqual([S.RUNNING, S.RUNNING, false]);
  });

  it('a failed move whose state cannot be read either leaves the member in ERROR', async () => {
    const group = new QuiesceGroup();
    const dead = new (class extends ForwardingDevice {
      override setState(): Promise<DataStream | null> {
        return Promise.reject(new Error('gone'));
      }
      override getState(): Promise<MigState> {
        return Promise.reject(new Error('gone'));
      }
    })(createSimDevice({ stateSize: 4096 }));
    const m = group.add(dead, 7, S.RUNNING);
    await expect(m.setState(S.STOP)).rejects.toThrow('gone');
    expect(m.real).toBe(S.ERROR);
  });
});
