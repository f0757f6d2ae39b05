/**
 * The bridge service's side of one connection (src/service/bridge-service.ts),
 * request by request: what each request is answered, which broken ones end
 * the connection and which leave it serving, what the bridged session
 * reports, and in what state the device is left when the session ends.
 * The VMM is a raw client (test/service/wire-client.ts) on a simulated device.
 */
import koffi from 'koffi';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { existsSync, rmSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import {
  ForwardingDevice,
  MigState,
  VfioError,
  createSimDevice,
  type SimDevice,
  type SimDeviceOptions,
  type V2Device,
} from '../../src/index.js';
import { listenUnix } from '../../src/service/listen.js';
import {
  BridgeService,
  startBridgeService,
  type BridgeServiceOptions,
  type ServiceTraceEvent,
} from '../../src/service/bridge-service.js';
import {
  MAX_REQUEST_PAYLOAD,
  WireOp,
  vmw_bye,
  vmw_hello_reply,
  vmw_region,
  vmw_request,
  type StatusReply,
} from '../../src/service/wire.js';
import {
  VFIO_REGION_SUBTYPE_MIGRATION_DEPRECATED,
  VFIO_REGION_TYPE_MIGRATION_DEPRECATED,
  type RegionInfo,
} from '../../src/v2/uapi.js';
import { linuxPeerSys, type PeerCredentials, type PeerSysCalls } from '../../src/v2/kernel/sys.js';
import { F_SEAL_GROW, F_SEAL_SHRINK, WireClient, closeMemfd, memfd, u32 } from './wire-client.js';

const EINVAL = 22;
const EPROTO = 71;
const EAGAIN = 11;
const SECTION = 1 << 20;
const REGIONS = 9;
const STATE = 0n; // v1 device_state
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

let svc: BridgeService | null = null;
const logs: string[] = [];
const memfds: number[] = [];
afterEach(async () => {
  await svc?.close();
  svc = null;
  logs.length = 0;
  while (memfds.length) closeMemfd(memfds.pop()!);
});

const sim = (o: SimDeviceOptions = {}) => createSimDevice({ stateSize: 64 << 10, seed: 1, ...o });

async function serve(opts: Partial<BridgeServiceOptions> = {}): Promise<BridgeService> {
  svc = await startBridgeService({
    socketPath: join(tmpdir(), `vfio-mig-proto-${Math.random().toString(36).slice(2)}.sock`),
    sectionSize: SECTION,
    openDevice: async () => sim(),
    log: (l) => logs.push(l),
    ...opts,
  });
  return svc;
}

function section(): Uint8Array {
  const fd = memfd(SECTION, F_SEAL_SHRINK | F_SEAL_GROW);
  memfds.push(fd);
  return u32(fd);
}

async function bridged(s: BridgeService): Promise<WireClient> {
  const c = await WireClient.connect(s.socketPath);
  c.hello(process.pid, 0);
  expect(vmw_hello_reply.decode((await c.reply())!.payload).bridged).toBe(1);
  c.send(WireOp.SECTION, section());
  expect((await c.reply())?.result).toBe(0);
  return c;
}

const le32 = (n: number) => u32(n);
async function readState(c: WireClient): Promise<number> {
  c.send(WireOp.READ, new Uint8Array(0), STATE, 4);
  return (await c.reply())!.payload.readUInt32LE(0);
}
async function writeState(c: WireClient, v1: number): Promise<number> {
  c.send(WireOp.WRITE, le32(v1), STATE, 4);
  return (await c.reply())!.result;
}
const until = async (cond: () => boolean) => {
  for (let i = 0; i < 200 && !cond(); i++) await sleep(10);
};

/** The connection is answered `result` with `why`, then closed without another reply. */
async function refusedAndClosed(c: WireClient, result: number, why: RegExp | string): Promise<void> {
  const r = await c.reply();
  expect(r?.result).toBe(result);
  expect(r?.payload.toString()).toMatch(why);
  c.send(WireOp.READ, new Uint8Array(0), STATE, 4);
  expect(await c.reply()).toBeNull();
}

describe('handshake', () => {
  it('HELLO is answered with the section size; SECTION with the v1 region placed after the VMM’s regions', async () => {
    const s = await serve();
    const c = await WireClient.connect(s.socketPath);
    c.hello(process.pid, 0, 'dev0', REGIONS);
    const h = vmw_hello_reply.decode((await c.reply())!.payload);
    expect(h).toMatchObject({ bridged: 1, section_size: BigInt(SECTION) });
    c.send(WireOp.SECTION, section());
    const r = await c.reply();
    expect(r?.result).toBe(0);
    const region = vmw_region.decode(r!.payload);
    expect(region).toMatchObject({
      index: REGIONS,
      info_len: r!.payload.length - vmw_region.size,
      region_offset: BigInt(REGIONS) << 40n,
      data_offset: 4096n,
      section_size: BigInt(SECTION),
    });
    expect(region.region_size).toBe(4096n + BigInt(SECTION));
    expect(s.sessions).toBe(1);
    expect(logs.some((l) => /bridged: v1 region 9, data section 1048576 bytes/.test(l))).toBe(true);
    c.close();
  });

  it('a short HELLO is a protocol error', async () => {
    const s = await serve();
    const c = await WireClient.connect(s.socketPath);
    c.send(WireOp.HELLO, new Uint8Array(8));
    await refusedAndClosed(c, -EPROTO, /HELLO of 8 bytes \(at least 16\)/);
  });

  it('a second SECTION is out of order and ends the connection', async () => {
    const s = await serve();
    const c = await bridged(s);
    c.send(WireOp.SECTION, section());
    await refusedAndClosed(c, -EPROTO, /SECTION out of order/);
    expect(logs.some((l) => /protocol error: .*SECTION out of order/.test(l))).toBe(true);
  });

  it('a HELLO without a name is named by its fd', async () => {
    const s = await serve({
      openDevice: async () => {
        throw new VfioError('EIO', 'open', 'x', 'the device is gone');
      },
    });
    const c = await WireClient.connect(s.socketPath);
    c.hello(process.pid, 5, '');
    const r = await c.reply();
    expect(r?.result).toBe(0);
    expect(vmw_hello_reply.decode(r!.payload).bridged).toBe(0);
    // Not ENOTTY: the reason as it is, with no claim about migration support.
    expect(r!.payload.subarray(vmw_hello_reply.size).toString()).toBe('open on x: EIO (5): the device is gone');
    await c.gone;
    expect(logs).toEqual([
      `"device fd 5" (VMM pid ${process.pid}) is not bridged: open on x: EIO (5): the device is gone`,
    ]);
  });

  it('a device without v2 migration (ENOTTY) is not bridged, and told so', async () => {
    const s = await serve({
      openDevice: async () => {
        throw new VfioError('ENOTTY', 'VFIO_DEVICE_FEATURE', 'x');
      },
    });
    const c = await WireClient.connect(s.socketPath);
    c.hello(process.pid, 0);
    const r = await c.reply();
    expect(vmw_hello_reply.decode(r!.payload).bridged).toBe(0);
    expect(r!.payload.subarray(vmw_hello_reply.size).toString()).toMatch(/^no v2 migration support \(.*ENOTTY/);
    await c.gone;
  });

  it('a device that already has a v1 migration region is left alone and closed', async () => {
    class V1Already extends ForwardingDevice {
      closed = false;
      override regions(): Promise<RegionInfo[]> {
        return Promise.resolve([
          { index: 0, flags: 0, size: 4096n, offset: 0n },
          {
            index: 9,
            flags: 0,
            size: 4096n,
            offset: 9n << 40n,
            type: { type: VFIO_REGION_TYPE_MIGRATION_DEPRECATED, subtype: VFIO_REGION_SUBTYPE_MIGRATION_DEPRECATED },
          },
        ]);
      }
      override close(): Promise<void> {
        this.closed = true;
        return super.close();
      }
    }
    const dev = new V1Already(sim());
    const s = await serve({ openDevice: async () => dev });
    const c = await WireClient.connect(s.socketPath);
    c.hello(process.pid, 0);
    const r = await c.reply();
    expect(vmw_hello_reply.decode(r!.payload).bridged).toBe(0);
    expect(r!.payload.subarray(vmw_hello_reply.size).toString()).toBe('it already has a v1 migration region');
    await c.gone;
    expect(dev.closed).toBe(true);
  });

  it('a device with other typed regions, or whose regions cannot be read, is bridged', async () => {
    class Typed extends ForwardingDevice {
      constructor(
        inner: V2Device,
        readonly list: () => Promise<RegionInfo[]>,
      ) {
        super(inner);
      }
      override regions(): Promise<RegionInfo[]> {
        return this.list();
      }
    }
    const other = { index: 9, flags: 0, size: 4096n, offset: 0n };
    for (const list of [
      async () => [{ ...other, type: { type: VFIO_REGION_TYPE_MIGRATION_DEPRECATED, subtype: 99 } }],
      async () => [{ ...other, type: { type: 99, subtype: VFIO_REGION_SUBTYPE_MIGRATION_DEPRECATED } }],
      async (): Promise<RegionInfo[]> => {
        throw new VfioError('EIO', 'VFIO_DEVICE_GET_REGION_INFO', 'x');
      },
    ]) {
      const s = await serve({ openDevice: async () => new Typed(sim(), list) });
      (await bridged(s)).close();
      await svc!.close();
      svc = null;
    }
  });
});

describe('region accesses', () => {
  it('before the device is bridged, a protocol error', async () => {
    const s = await serve();
    const c = await WireClient.connect(s.socketPath);
    c.send(WireOp.WRITE, le32(0), STATE, 4);
    await refusedAndClosed(c, -EPROTO, /region access before the device was bridged/);
    expect(logs).toEqual([
      expect.stringMatching(
        new RegExp(
          `^"connection from pid ${process.pid}" \\(VMM pid ${process.pid}\\) could not be bridged: .*region access before`,
        ),
      ),
    ]);
  });

  it('are carried to the bridge: a WRITE of device_state moves the device, a READ gives it back', async () => {
    const dev = sim();
    const s = await serve({ openDevice: async () => dev });
    const c = await bridged(s);
    expect(await readState(c)).toBe(1);
    expect(await writeState(c, 0)).toBe(0);
    expect(await dev.getState()).toBe(MigState.STOP);
    expect(await readState(c)).toBe(0);
    c.close();
  });

  it(`a READ of ${MAX_REQUEST_PAYLOAD} bytes is served; one byte more is EINVAL and the connection serves on`, async () => {
    const s = await serve();
    const c = await bridged(s);
    c.send(WireOp.READ, new Uint8Array(0), 4096n, MAX_REQUEST_PAYLOAD);
    const r = await c.reply();
    expect(r?.result).toBe(0);
    expect(r?.payload.length).toBe(MAX_REQUEST_PAYLOAD);
    c.send(WireOp.READ, new Uint8Array(0), 4096n, MAX_REQUEST_PAYLOAD + 1);
    expect((await c.reply())?.result).toBe(-EINVAL);
    expect(await readState(c)).toBe(1);
    c.close();
  });

  it('an offset past 2^53 is EINVAL, exactly, for READ and WRITE; the connection serves on', async () => {
    const s = await serve();
    const c = await bridged(s);
    const past = BigInt(Number.MAX_SAFE_INTEGER) + 1n;
    c.send(WireOp.READ, new Uint8Array(0), past, 4);
    let r = await c.reply();
    expect(r?.result).toBe(-EINVAL);
    expect(r?.payload.toString()).toBe(`serve: READ on ${sim().name}: EINVAL (22): offset ${past} is past the region`);
    c.send(WireOp.WRITE, le32(0), past, 4);
    r = await c.reply();
    expect(r?.result).toBe(-EINVAL);
    expect(r?.payload.toString()).toBe(`serve: WRITE on ${sim().name}: EINVAL (22): offset ${past} is past the region`);
    // At 2^53 - 1 the offset reaches the bridge, which refuses it as its own.
    c.send(WireOp.READ, new Uint8Array(0), past - 1n, 4);
    r = await c.reply();
    expect(r?.result).toBeLessThan(0);
    expect(r?.payload.toString()).not.toMatch(/is past the region/);
    expect(await readState(c)).toBe(1);
    c.close();
  });

  it('a WRITE whose length is not its payload’s is a protocol error', async () => {
    const s = await serve();
    const c = await bridged(s);
    c.send(WireOp.WRITE, le32(0), STATE, 8);
    await refusedAndClosed(c, -EPROTO, /a write of 8 bytes carries 4/);
  });

  it('an unknown request is a protocol error', async () => {
    const s = await serve();
    const c = await bridged(s);
    c.send(9);
    await refusedAndClosed(c, -EPROTO, /unknown request 9/);
  });

  it('a request claiming more payload than any may have is answered once, and nothing after it is read', async () => {
    const s = await serve();
    const c = await bridged(s);
    c.send(WireOp.READ, new Uint8Array(0), STATE, 4, MAX_REQUEST_PAYLOAD + 1);
    await refusedAndClosed(c, -EPROTO, `request payload of ${MAX_REQUEST_PAYLOAD + 1} bytes`);
    expect(logs.some((l) => /protocol error: serve on .*EPROTO.*request payload/.test(l))).toBe(true);
  });

  it('a broken request behind one in progress is answered once, after it', async () => {
    let open!: () => void;
    const gate = new Promise<void>((r) => (open = r));
    let reached!: () => void;
    const held = new Promise<void>((r) => (reached = r));
    class Held extends ForwardingDevice {
      override async setState(state: MigState) {
        reached();
        await gate;
        return this.inner.setState(state);
      }
    }
    const s = await serve({ openDevice: async () => new Held(sim()) });
    const c = await bridged(s);
    // One write: the service reads both at once, and has parsed the broken header once the first is in the device.
    c.sock.cork();
    c.send(WireOp.WRITE, le32(0), STATE, 4);
    c.send(WireOp.READ, new Uint8Array(0), STATE, 4, MAX_REQUEST_PAYLOAD + 1);
    c.sock.uncork();
    await held;
    expect(logs.filter((l) => /protocol error/.test(l))).toEqual([]); // not answered before the write
    open();
    expect((await c.reply())?.result).toBe(0);
    await refusedAndClosed(c, -EPROTO, `request payload of ${MAX_REQUEST_PAYLOAD + 1} bytes`);
    await until(() => s.sessions === 0);
    expect(logs.filter((l) => /protocol error/.test(l))).toHaveLength(1);
  });

  it('trace events name the VMM and the device', async () => {
    const events: ServiceTraceEvent[] = [];
    const s = await serve({ trace: (e) => events.push(e) });
    const c = await bridged(s);
    await readState(c);
    c.close();
    expect(events.length).toBeGreaterThan(0);
    expect(events[0]).toMatchObject({ kind: 'access', vmm: process.pid, device: sim().name });
  });
});

describe('BYE', () => {
  it('before HELLO, or shorter than its struct, is a protocol error', async () => {
    const s = await serve();
    const early = await WireClient.connect(s.socketPath);
    early.send(WireOp.BYE, new Uint8Array(vmw_bye.size));
    await refusedAndClosed(early, -EPROTO, /BYE before HELLO/);
    const short = await bridged(s);
    short.send(WireOp.BYE, new Uint8Array(vmw_bye.size - 1));
    await refusedAndClosed(short, -EPROTO, `BYE of ${vmw_bye.size - 1} bytes (${vmw_bye.size} expected)`);
  });

  it('ends the session: answered, closed, and its counts kept in `finished` and logged', async () => {
    const s = await serve();
    const c = await bridged(s);
    await readState(c);
    await readState(c);
    c.send(WireOp.BYE, vmw_bye.encode({ data_reads: 5n, data_writes: 6n, data_mmaps: 7n }));
    expect((await c.reply())?.result).toBe(0);
    await c.gone;
    await until(() => s.finished.length > 0);
    expect(s.sessions).toBe(0);
    expect(s.finished).toEqual([
      { device: sim().name, vmm: process.pid, headerAccesses: 2, dataReads: 5n, dataWrites: 6n, dataMmaps: 7n },
    ]);
    expect(logs.at(-1)).toBe(
      `${sim().name} (VMM pid ${process.pid}) done: the VMM closed the device; 2 header accesses over the socket, 5 data reads, 6 data writes and 7 mmaps from shared memory`,
    );
  });

  it('after HELLO but before SECTION, ends the connection with nothing counted', async () => {
    const s = await serve();
    const c = await WireClient.connect(s.socketPath);
    c.hello(process.pid, 0);
    await c.reply();
    c.send(WireOp.BYE, new Uint8Array(vmw_bye.size));
    expect((await c.reply())?.result).toBe(0);
    await c.gone;
    await until(() => s.sessions === 0);
    expect(s.sessions).toBe(0);
    expect(s.finished).toEqual([]);
    expect(logs.filter((l) => /could not return/.test(l))).toEqual([]);
  });
});

describe('the device when the session ends', () => {
  it('left mid-session (STOP_COPY) by a VMM that went away: reset to RUNNING, with a line saying so', async () => {
    const dev = sim();
    const s = await serve({ openDevice: async () => dev });
    const c = await bridged(s);
    expect(await writeState(c, 2)).toBe(0); // _SAVING: STOP_COPY
    expect(await dev.getState()).toBe(MigState.STOP_COPY);
    c.close();
    await until(() => s.sessions === 0);
    expect(dev.state).toBe(MigState.RUNNING);
    expect(
      logs.some(
        (l) => l === `${dev.name}: the VMM closed the connection while the device was in STOP_COPY: reset to RUNNING`,
      ),
    ).toBe(true);
  });

  it('in ERROR: reset to RUNNING', async () => {
    const dev = sim({
      flags: 1, // no P2P: RUNNING -> STOP is one arc
      faults: { failArc: [{ from: MigState.RUNNING, to: MigState.STOP, errno: 'EIO', leave: 'error' }] },
    });
    const s = await serve({ openDevice: async () => dev });
    const c = await bridged(s);
    expect(await writeState(c, 0)).toBeLessThan(0);
    expect(dev.state).toBe(MigState.ERROR);
    c.close();
    await until(() => s.sessions === 0);
    expect(dev.state).toBe(MigState.RUNNING);
    expect(logs.some((l) => /while the device was in ERROR: reset to RUNNING/.test(l))).toBe(true);
  });

  it('in STOP (a completed save) or RUNNING: left there, no reset', async () => {
    for (const v1 of [0, 1]) {
      const dev = sim();
      let resets = 0;
      const counted = new (class extends ForwardingDevice {
        override reset() {
          resets++;
          return super.reset();
        }
      })(dev);
      const s = await serve({ openDevice: async () => counted });
      const c = await bridged(s);
      await writeState(c, v1);
      c.close();
      await until(() => s.sessions === 0);
      expect(dev.state).toBe(v1 ? MigState.RUNNING : MigState.STOP);
      expect(resets).toBe(0);
      await svc!.close();
      svc = null;
    }
  });

  it('a device whose state cannot be read at the end: one line saying it could not be returned', async () => {
    const dev = sim();
    let broken = false;
    const flaky = new (class extends ForwardingDevice {
      override getState() {
        return broken ? Promise.reject(new VfioError('EIO', 'GET_STATE', 'x')) : super.getState();
      }
    })(dev);
    const s = await serve({ openDevice: async () => flaky });
    const c = await bridged(s);
    broken = true;
    c.close();
    await until(() => s.sessions === 0);
    expect(s.sessions).toBe(0);
    expect(
      logs.some((l) => /the VMM closed the connection; could not return the device to RUNNING: .*EIO/.test(l)),
    ).toBe(true);
  });

  it('the service stopping ends every session, then removes its socket', async () => {
    const devs: SimDevice[] = [];
    const s = await serve({
      openDevice: async () => {
        devs.push(sim());
        return devs.at(-1)!;
      },
    });
    const a = await bridged(s);
    const b = await bridged(s);
    expect(await writeState(a, 2)).toBe(0);
    expect(s.sessions).toBe(2);
    await s.close();
    svc = null;
    await Promise.all([a.gone, b.gone]);
    expect(s.sessions).toBe(0);
    expect(existsSync(s.socketPath)).toBe(false);
    expect(devs.map((d) => d.state)).toEqual([MigState.RUNNING, MigState.RUNNING]);
    expect(logs.some((l) => /the service is stopping while the device was in STOP_COPY/.test(l))).toBe(true);
  });
});

describe('one quiesce group per VMM process', () => {
  it('devices of one process are quiesced together; a device that leaves does not split the group', async () => {
    const events: ServiceTraceEvent[] = [];
    const names = ['A', 'B', 'C'];
    const s = await serve({
      openDevice: async () => sim({ flags: 7, name: names.shift()! }),
      trace: (e) => void (e.kind === 'group' && events.push(e)),
    });
    const a = await bridged(s);
    const b = await bridged(s);
    b.send(WireOp.BYE, new Uint8Array(vmw_bye.size));
    await b.reply();
    await b.gone;
    await until(() => s.sessions === 1);
    const c = await bridged(s);
    expect(await writeState(a, 0)).toBe(0);
    expect(events).toEqual([
      { kind: 'group', vmm: process.pid, device: 'C', cause: 'A', v2: ['SET_STATE RUNNING->RUNNING_P2P'] },
    ]);
    a.close();
    c.close();
  });

  it('a device parked for another is returned to RUNNING when its VMM leaves; one that leaves releases the others', async () => {
    const devs: SimDevice[] = [];
    const s = await serve({
      openDevice: async () => {
        devs.push(sim({ flags: 7 }));
        return devs.at(-1)!;
      },
    });
    const a = await bridged(s);
    const b = await bridged(s);
    expect(await writeState(a, 0)).toBe(0);
    expect(devs[1]!.state).toBe(MigState.RUNNING_P2P); // B parked while A stops
    b.close();
    await until(() => s.sessions === 1);
    expect(devs[1]!.state).toBe(MigState.RUNNING);

    const c = await bridged(s);
    expect(await writeState(c, 0)).toBe(0);
    expect(await writeState(a, 1)).toBe(0);
    expect(devs[0]!.state).toBe(MigState.RUNNING_P2P); // held: C is stopped
    c.close();
    await until(() => s.sessions === 1);
    expect(devs[0]!.state).toBe(MigState.RUNNING); // released when C left the group
    a.close();
  });
});

describe('the quiesce groups held', () => {
  it('one per process with a bridged device, deleted when its last session ends', async () => {
    const s = await serve({ openDevice: async () => sim({ flags: 7 }) });
    const hello = await WireClient.connect(s.socketPath);
    hello.hello(process.pid, 0);
    await hello.reply();
    expect(s.quiesceGroups).toBe(0); // none before a device is bridged
    const a = await bridged(s);
    const b = await bridged(s);
    expect(s.quiesceGroups).toBe(1); // one for both devices of this process
    a.close();
    await until(() => s.sessions === 2);
    expect(s.quiesceGroups).toBe(1); // b still in it
    b.close();
    hello.close();
    await until(() => s.sessions === 0);
    expect(s.sessions).toBe(0);
    expect(s.quiesceGroups).toBe(0);
  });

  it('a device bridged while the last other one leaves joins the group the next ones join', async () => {
    // B's SECTION is held in its device's state read while A's session ends (A's group empties and is deleted).
    let hold: { reached: () => void; go: Promise<void> } | null = null;
    class Held extends ForwardingDevice {
      override async getState(): Promise<MigState> {
        const h = hold;
        hold = null;
        if (h) {
          h.reached();
          await h.go;
        }
        return this.inner.getState();
      }
    }
    const events: ServiceTraceEvent[] = [];
    const names = ['A', 'B', 'C'];
    const s = await serve({
      openDevice: async () => new Held(sim({ flags: 7, name: names.shift()! })),
      trace: (e) => void (e.kind === 'group' && events.push(e)),
    });
    const a = await bridged(s);
    const b = await WireClient.connect(s.socketPath);
    b.hello(process.pid, 0);
    expect(vmw_hello_reply.decode((await b.reply())!.payload).bridged).toBe(1);
    let go!: () => void;
    const reached = new Promise<void>((r) => {
      hold = { reached: r, go: new Promise<void>((g) => (go = g)) };
    });
    b.send(WireOp.SECTION, section());
    await reached;
    a.close();
    await until(() => s.sessions === 1);
    expect(s.sessions).toBe(1);
    go();
    expect((await b.reply())?.result).toBe(0);
    const c = await bridged(s);
    expect(s.quiesceGroups).toBe(1);
    expect(await writeState(b, 0)).toBe(0); // B stops: C, in B's group, is parked first
    expect(events).toEqual([
      { kind: 'group', vmm: process.pid, device: 'C', cause: 'B', v2: ['SET_STATE RUNNING->RUNNING_P2P'] },
    ]);
    b.close();
    c.close();
  });
});

describe('STATUS', () => {
  const dup = koffi.load('libc.so.6').func('int dup(int fd)');
  const FAKE_PIDFD = 100000; // never a real descriptor

  /** STATUS alone on its connection: the answer, then the connection closes. */
  async function status(s: BridgeService): Promise<StatusReply> {
    const q = await WireClient.connect(s.socketPath);
    q.send(WireOp.STATUS, new Uint8Array(0));
    const r = await q.reply();
    expect(r?.result).toBe(0);
    expect(await q.reply()).toBeNull();
    return JSON.parse(r!.payload.toString()) as StatusReply;
  }

  /**
   * A VMM of another user: a process running as nobody (setpriv), which the
   * fake kernel below names as the peer of the next connection; its
   * descriptors are taken from this process (the test holds them).
   */
  async function otherUser(use: (sys: PeerSysCalls, next: (c: PeerCredentials) => void, pid: number) => Promise<void>) {
    const child = spawn('setpriv', ['--reuid', '65534', '--regid', '65534', '--clear-groups', 'sleep', '60']);
    await new Promise((r) => child.once('spawn', r));
    const pid = child.pid!;
    try {
      for (let i = 0; i < 100 && !readFileSync(`/proc/${pid}/status`, 'utf8').includes('sleep'); i++) await sleep(10);
      let as: PeerCredentials | null = null;
      const sys: PeerSysCalls = {
        ...linuxPeerSys,
        peerCredentials: (fd, op, device) => {
          const c = as ?? linuxPeerSys.peerCredentials(fd, op, device);
          as = null;
          return c;
        },
        peerPidfd: (fd, p, op, device) => (p === pid ? FAKE_PIDFD : linuxPeerSys.peerPidfd(fd, p, op, device)),
        pidfdPid: (pidfd) => (pidfd === FAKE_PIDFD ? pid : linuxPeerSys.pidfdPid(pidfd)),
        pidfdGetfd: (pidfd, fd, op, device) =>
          pidfd === FAKE_PIDFD ? (dup(fd) as number) : linuxPeerSys.pidfdGetfd(pidfd, fd, op, device),
        close: (fd) => void (fd !== FAKE_PIDFD && linuxPeerSys.close(fd)),
      };
      await use(sys, (c) => (as = c), pid);
    } finally {
      child.kill();
    }
  }

  it.skipIf(process.getuid?.() !== 0)(
    "answers root every user's bridged sessions and another user only its own; never a connection not bridged",
    async () => {
      await otherUser(async (sys, next, pid) => {
        const nobody = { pid, uid: 65534, gid: 65534 };
        const s = await serve({ sys, openDevice: async (h) => sim({ name: h.name }) });
        const mine = await WireClient.connect(s.socketPath);
        mine.hello(process.pid, 0, 'root-dev');
        await mine.reply();
        mine.send(WireOp.SECTION, section());
        expect((await mine.reply())?.result).toBe(0);
        expect(await readState(mine)).toBe(1);
        expect(await readState(mine)).toBe(1);
        next(nobody);
        const theirs = await WireClient.connect(s.socketPath);
        theirs.hello(pid, 0, 'nobody-dev');
        expect(vmw_hello_reply.decode((await theirs.reply())!.payload).bridged).toBe(1);
        theirs.send(WireOp.SECTION, section());
        expect((await theirs.reply())?.result).toBe(0);
        const unbridged = await WireClient.connect(s.socketPath);
        unbridged.hello(process.pid, 0, 'hello-only');
        await unbridged.reply();
        expect(s.sessions).toBe(3);

        const rootDev = { vmm: process.pid, uid: 0, device: 'root-dev', headerAccesses: 2 };
        const nobodyDev = { vmm: pid, uid: 65534, device: 'nobody-dev', headerAccesses: 0 };
        expect(await status(s)).toEqual({ uid: 0, sessions: [rootDev, nobodyDev] });
        next(nobody);
        expect(await status(s)).toEqual({ uid: 65534, sessions: [nobodyDev] });
        next({ pid, uid: 1000, gid: 1000 });
        expect(await status(s)).toEqual({ uid: 1000, sessions: [] });
        for (const c of [mine, theirs, unbridged]) c.close();
      });
    },
  );

  it('leaves out a session that is ending', async () => {
    let gate: Promise<void> | null = null;
    class Held extends ForwardingDevice {
      override async getState(): Promise<MigState> {
        if (gate) await gate;
        return this.inner.getState();
      }
    }
    const s = await serve({ openDevice: async () => new Held(sim()) });
    const c = await bridged(s);
    expect((await status(s)).sessions).toHaveLength(1);
    let open!: () => void;
    gate = new Promise<void>((r) => (open = r));
    c.close(); // the session's end waits in the device's state read
    await c.gone;
    try {
      expect(s.sessions).toBe(1);
      expect(await status(s)).toEqual({ uid: 0, sessions: [] });
    } finally {
      open();
    }
    await until(() => s.sessions === 0);
    expect(s.sessions).toBe(0);
  });

  it('on a device connection is a protocol error that ends it', async () => {
    const s = await serve();
    const c = await WireClient.connect(s.socketPath);
    c.hello(process.pid, 0);
    await c.reply();
    c.send(WireOp.STATUS, new Uint8Array(0));
    await refusedAndClosed(c, -EPROTO, /STATUS on a device connection/);
  });
});

describe('connection limits', () => {
  it('connections over the total cap are refused with the reason, and counted back when they close', async () => {
    const s = await serve({ limits: { maxConnections: 2 } });
    const held = [await WireClient.connect(s.socketPath), await WireClient.connect(s.socketPath)];
    const third = await WireClient.connect(s.socketPath);
    const r = await third.reply();
    expect(r?.result).toBe(-EAGAIN);
    expect(r?.payload.toString()).toBe('the bridge service is full: 2 connections are open (at most 2)');
    await third.gone;
    held[0]!.close();
    await held[0]!.gone;
    await until(() => s.sessions === 1);
    (await bridged(s)).close();
    held[1]!.close();
  });
});

describe('the connected process', () => {
  it('a bridged session outlives the HELLO timeout', async () => {
    const s = await serve({ limits: { helloTimeoutMs: 100 } });
    const c = await bridged(s);
    await sleep(300);
    expect(await readState(c)).toBe(1);
    expect(s.sessions).toBe(1);
    c.close();
  });

  it('a peer whose credentials cannot be read is dropped at once, with a line', async () => {
    const sys: PeerSysCalls = {
      ...linuxPeerSys,
      peerCredentials: (_fd, op, device) => {
        throw new VfioError('EINVAL', op, device, 'no credentials');
      },
    };
    const s = await serve({ sys });
    const c = await WireClient.connect(s.socketPath);
    expect(await c.reply()).toBeNull();
    await c.gone;
    expect(s.sessions).toBe(0);
    expect(logs).toEqual(['serve: connect on socket: EINVAL (22): no credentials']);
  });

  it('a request that arrives after the connected process exited is not served: the session ends', async () => {
    let gone = false;
    const sys: PeerSysCalls = { ...linuxPeerSys, pidfdPid: (fd) => (gone ? -1 : linuxPeerSys.pidfdPid(fd)) };
    const dev = sim();
    const s = await serve({ sys, openDevice: async () => dev });
    const c = await bridged(s);
    expect(await writeState(c, 2)).toBe(0);
    gone = true;
    c.send(WireOp.READ, new Uint8Array(0), STATE, 4);
    expect(await c.reply()).toBeNull();
    await until(() => s.sessions === 0);
    expect(dev.state).toBe(MigState.RUNNING);
    expect(logs.some((l) => l.includes(`VMM process ${process.pid} exited while the device was in STOP_COPY`))).toBe(
      true,
    );
  });

  it("the service's bridge options reach every device's bridge (resetOnError)", async () => {
    const dev = sim({
      flags: 1,
      faults: { failArc: [{ from: MigState.RUNNING, to: MigState.STOP, errno: 'EIO', leave: 'error' }] },
    });
    const s = await serve({ openDevice: async () => dev, bridge: { resetOnError: true } });
    const c = await bridged(s);
    expect(await writeState(c, 0)).toBeLessThan(0);
    expect(dev.state).toBe(MigState.RUNNING); // reset by the bridge, not left in ERROR
    c.close();
  });
});

describe('what a client can make the service hold', () => {
  it('a client that does not take its replies is no longer read: its requests stay in its own socket', async () => {
    const s = await serve();
    const c = await bridged(s);
    c.sock.pause();
    // Replies enough to fill the way back, then 600 KiB of requests: far past what the socket buffers hold.
    const READS = 100;
    const WRITES = 150;
    for (let i = 0; i < READS; i++) c.send(WireOp.READ, new Uint8Array(0), 4096n, MAX_REQUEST_PAYLOAD);
    const page = new Uint8Array(MAX_REQUEST_PAYLOAD);
    for (let i = 0; i < WRITES; i++) c.send(WireOp.WRITE, page, 4096n, page.length);
    await sleep(500);
    // Stopped reading: most of what was sent waits unsent on the client's side.
    expect(c.sock.writableLength).toBeGreaterThan(200 << 10);
    c.sock.resume();
    for (let got = 0; got < READS; got++) expect((await c.reply())?.result).toBe(0);
    for (let got = 0; got < WRITES; got++) expect(await c.reply()).not.toBeNull();
    expect(c.sock.writableLength).toBe(0);
    c.close();
  });

  it('a pipelining client on a slow device: what the service has read and not yet served stays bounded', async () => {
    // Each state change waits a turn of the event loop, so requests finish one at a time, between socket reads.
    class Slow extends ForwardingDevice {
      override async setState(state: MigState) {
        await new Promise((r) => setImmediate(r));
        return this.inner.setState(state);
      }
    }
    const dev = sim();
    const path = join(tmpdir(), `vfio-mig-proto-${Math.random().toString(36).slice(2)}.sock`);
    const server = await listenUnix({ socketPath: path });
    let conn: Socket | null = null;
    server.on('connection', (sock) => (conn = sock)); // the service's own end of the connection
    const QUEUED = 4;
    const R = vmw_request.size + 4; // one device_state write
    const held: number[] = []; // bytes read from the socket and not yet being served, at each access
    let read0 = 0; // what the handshake read
    let started = 0;
    svc = new BridgeService(server, {
      socketPath: path,
      sectionSize: SECTION,
      openDevice: async () => new Slow(dev),
      limits: { maxQueuedRequests: QUEUED },
      trace: (e) => {
        if (e.kind !== 'access' || e.op !== 'write') return;
        started++;
        held.push(conn!.bytesRead - read0 - started * R);
      },
    });
    const c = await bridged(svc);
    read0 = conn!.bytesRead;
    const N = 8000; // 219 KiB of requests, sent at once
    for (let i = 0; i < N; i++) c.send(WireOp.WRITE, le32(i % 2 === 0 ? 0 : 1), STATE, 4);
    for (let i = 0; i < N; i++) expect((await c.reply())?.result).toBe(0);
    expect(dev.state).toBe(MigState.RUNNING);
    expect(held).toHaveLength(N);
    expect(conn!.bytesRead - read0).toBe(N * R);
    // The service pauses once more than MAX_UNPARSED bytes wait unparsed or QUEUED requests are taken; past
    // that it holds the read that crossed the bound (Node reads 64 KiB at a time) and what Node's stream
    // buffers while paused before it stops reading (up to its high-water mark, plus one read). A socket
    // resumed while still full (RELIABILITY.md, back-pressure) lets a read in per request served: all of it.
    const MAX_UNPARSED = 2 * (vmw_request.size + MAX_REQUEST_PAYLOAD);
    const bound = MAX_UNPARSED + QUEUED * R + (64 << 10) + conn!.readableHighWaterMark + (64 << 10);
    expect(N * R).toBeGreaterThan(bound);
    expect(Math.max(...held)).toBeGreaterThan(MAX_UNPARSED); // the bound was reached
    expect(Math.max(...held)).toBeLessThanOrEqual(bound);
    c.close();
  });

  it('a refused client that keeps its end open is cut off after a second', async () => {
    const s = await serve({ limits: { maxConnections: 0 } });
    const half = connect({ path: s.socketPath, allowHalfOpen: true });
    let reply = Buffer.alloc(0);
    half.on('data', (d: Buffer) => (reply = Buffer.concat([reply, d])));
    const ended = new Promise((r) => half.once('end', r));
    const closed = new Promise((r) => half.once('close', r));
    await ended;
    expect(reply.readInt32LE(0)).toBe(-EAGAIN);
    half.on('error', () => undefined);
    await sleep(1500);
    // The service's end is gone: what the client still writes fails, and its socket closes.
    half.write(Buffer.alloc(16));
    await Promise.race([closed, sleep(2000)]);
    expect(half.destroyed).toBe(true);
  });

  it('the per-connection log budget names the connection in its last line', async () => {
    const s = await serve({ limits: { logLinesPerConnection: 1 } });
    const c = await bridged(s);
    c.close();
    await until(() => logs.length >= 2);
    expect(logs[1]).toBe(
      `"test device" (VMM pid ${process.pid}): more than 1 log lines from this connection; the rest are dropped`,
    );
  });

  it('a HELLO whose device state cannot be read is refused and the connection ended', async () => {
    const broken = new (class extends ForwardingDevice {
      override getState(): Promise<MigState> {
        return Promise.reject(new VfioError('EIO', 'GET_STATE', 'x', 'no answer'));
      }
    })(sim());
    const s = await serve({ openDevice: async () => broken });
    const c = await WireClient.connect(s.socketPath);
    c.hello(process.pid, 0);
    await refusedAndClosed(c, -5, /GET_STATE on x: EIO \(5\): no answer/);
  });

  it('stopping the service after its socket was removed from under it still stops it', async () => {
    const s = await serve();
    (await bridged(s)).close();
    rmSync(s.socketPath);
    await s.close();
    svc = null;
    expect(s.sessions).toBe(0);
  });
});

describe('a connection that ends while a request is served', () => {
  it('requests queued behind it are dropped, not served to a session that ended', async () => {
    let opened!: () => void;
    const slow = new Promise<void>((r) => (opened = r));
    const s = await serve({
      openDevice: async () => {
        await slow;
        return sim();
      },
    });
    const c = await WireClient.connect(s.socketPath);
    c.hello(process.pid, 0);
    c.send(WireOp.READ, new Uint8Array(0), STATE, 4);
    await until(() => s.sessions === 1);
    await sleep(50); // both requests read: HELLO waits for the device, READ behind it
    c.close();
    await c.gone;
    await sleep(50);
    opened();
    await until(() => s.sessions === 0);
    expect(s.sessions).toBe(0);
    expect(logs.filter((l) => /region access/.test(l))).toEqual([]);
  });

  it('a connection ended before HELLO leaves no timer behind', async () => {
    const s = await serve({ limits: { helloTimeoutMs: 600_000 } });
    const timers = () => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
    const before = timers();
    const c = await WireClient.connect(s.socketPath);
    await until(() => s.sessions === 1);
    expect(timers()).toBe(before + 1); // the HELLO timeout
    c.close();
    await c.gone;
    await until(() => s.sessions === 0);
    await sleep(20);
    expect(timers()).toBe(before);
  });
});
