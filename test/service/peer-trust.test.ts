/**
 * The bridge service shared by several VMMs (docs/interposer.md, "Trust
 * model"): a client is served only its own process's descriptors, what it
 * hands over must be what it claims, one connection is one session, and no
 * client can take the service's memory, descriptors or log. Each case is an
 * attack a raw client (test/service/wire-client.ts) made on the service.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { MigState, createSimDevice, type SimDevice } from '../../src/index.js';
import { startBridgeService, type BridgeService, type BridgeServiceOptions } from '../../src/service/bridge-service.js';
import { MAX_REQUEST_PAYLOAD, WireOp, vmw_hello_reply } from '../../src/service/wire.js';
import {
  buildPeerClient,
  F_SEAL_GROW,
  F_SEAL_SEAL,
  F_SEAL_SHRINK,
  WireClient,
  closeMemfd,
  memfd,
  truncateErrno,
  u32,
} from './wire-client.js';

const root = resolve(import.meta.dirname, '../..');
const EPERM = 1;
const EINVAL = 22;
const EPROTO = 71;
const SECTION = 1 << 20;
const SEALED = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const openFds = () => readdirSync('/proc/self/fd').length;

let dir: string;
let secret: string;
let victim: ChildProcess;
let svc: BridgeService | null = null;
const logs: string[] = [];
const memfds: number[] = [];

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'vfio-mig-trust-'));
  secret = join(dir, 'secret');
  writeFileSync(secret, 'root-only secret\n', { mode: 0o600 });
  // The victim: another process that holds a root-only file open as its fd 3.
  const fd = openSync(secret, 'r+');
  victim = spawn('sleep', ['120'], { stdio: ['ignore', 'ignore', 'ignore', fd] });
  closeSync(fd);
  await new Promise((r) => victim.once('spawn', r));
});
afterAll(() => {
  victim.kill();
  rmSync(dir, { recursive: true, force: true });
});
afterEach(async () => {
  await svc?.close();
  svc = null;
  logs.length = 0;
  while (memfds.length) closeMemfd(memfds.pop()!);
});

async function serve(opts: Partial<BridgeServiceOptions> = {}): Promise<BridgeService> {
  svc = await startBridgeService({
    socketPath: join(dir, `s${Math.random().toString(36).slice(2)}.sock`),
    sectionSize: SECTION,
    openDevice: async () => createSimDevice({ stateSize: 64 << 10, seed: 1 }),
    log: (l) => logs.push(l),
    ...opts,
  });
  return svc;
}

const sealedSection = (size = SECTION, seals = SEALED) => {
  const fd = memfd(size, seals);
  memfds.push(fd);
  return fd;
};

/** HELLO and SECTION as the interposer sends them, for this process. */
async function bridged(path: string): Promise<WireClient> {
  const c = await WireClient.connect(path);
  c.hello(process.pid, 0);
  const h = await c.reply();
  expect(h?.result).toBe(0);
  expect(vmw_hello_reply.decode(h!.payload).bridged).toBe(1);
  c.send(WireOp.SECTION, u32(sealedSection()));
  expect((await c.reply())?.result).toBe(0);
  return c;
}

describe('a client is served only its own process', () => {
  it('HELLO naming another process is refused (EPERM) and the connection closed: its fds are never taken', async () => {
    const s = await serve({ openDevice: undefined }); // the real path: pidfd_getfd of the peer's fd
    const c = await WireClient.connect(s.socketPath);
    c.hello(victim.pid!, 3, 'victim');
    const r = await c.reply();
    expect(r?.result).toBe(-EPERM);
    expect(r?.payload.toString()).toMatch(
      `HELLO names process ${victim.pid}, but the connected process is ${process.pid}`,
    );
    // What the old service did next: SECTION naming the victim's file, then READ and WRITE through it.
    c.send(WireOp.SECTION, u32(3));
    c.send(WireOp.READ, new Uint8Array(0), 4096n, 32);
    expect(await c.reply()).toBeNull();
    await c.gone;
    expect(readFileSync(secret, 'utf8')).toBe('root-only secret\n');
  });

  it('HELLO naming its own fd that is not a VFIO device is refused before any ioctl (ENODEV), nothing kept', async () => {
    const s = await serve({ openDevice: undefined });
    const fd = openSync('/etc/hostname', 'r');
    try {
      const before = openFds();
      const c = await WireClient.connect(s.socketPath);
      c.hello(process.pid, fd, 'not a device');
      const r = await c.reply();
      expect(vmw_hello_reply.decode(r!.payload).bridged).toBe(0);
      expect(r!.payload.subarray(vmw_hello_reply.size).toString()).toMatch(
        /ENODEV.*that fd is \/etc\/hostname, not a VFIO device/,
      );
      await c.gone;
      for (let i = 0; i < 50 && openFds() > before; i++) await sleep(10);
      expect(openFds()).toBe(before);
    } finally {
      closeSync(fd);
    }
  });

  it('SECTION before HELLO is a protocol error: one reply, the connection closed', async () => {
    const s = await serve();
    const c = await WireClient.connect(s.socketPath);
    c.send(WireOp.SECTION, u32(sealedSection()));
    expect((await c.reply())?.result).toBe(-EPROTO);
    expect(await c.reply()).toBeNull();
  });
});

describe('what is handed over must be what it claims', () => {
  const cases: [string, () => number, number, RegExp][] = [
    [
      'an unsealed memfd (its owner could shrink it under the mapping: SIGBUS)',
      () => sealedSection(SECTION, 0),
      EPERM,
      /not sealed against shrinking and growing/,
    ],
    ['a memfd sealed only against growing', () => sealedSection(SECTION, F_SEAL_GROW), EPERM, /not sealed/],
    [
      'a sealed memfd smaller than the section',
      () => sealedSection(4096),
      EINVAL,
      /holds 4096 bytes, the section needs 1048576/,
    ],
    ['a regular file', () => openSync(join(dir, 'plain'), 'w+'), EINVAL, /not a memfd/],
    ['a fd number that is not open', () => 999, 9 /* EBADF */, /EBADF.*fd 999 of the peer/],
  ];
  for (const [what, make, errno, why] of cases) {
    it(`SECTION with ${what} is refused and the connection closed; the service lives on`, async () => {
      const s = await serve();
      const c = await WireClient.connect(s.socketPath);
      c.hello(process.pid, 0);
      expect((await c.reply())?.result).toBe(0);
      const fd = make();
      c.send(WireOp.SECTION, u32(fd));
      const r = await c.reply();
      if (fd !== 999 && !memfds.includes(fd)) closeSync(fd);
      expect(r?.result).toBe(-errno);
      expect(r?.payload.toString()).toMatch(why);
      c.send(WireOp.READ, new Uint8Array(0), 0n, 4);
      expect(await c.reply()).toBeNull();
      // The next honest client is served.
      const ok = await bridged(s.socketPath);
      ok.send(WireOp.READ, new Uint8Array(0), 0n, 4);
      expect((await ok.reply())?.result).toBe(0);
      ok.close();
    });
  }

  it('a sealed section cannot be shrunk by its owner once the service maps it', async () => {
    const s = await serve();
    const c = await bridged(s.socketPath);
    expect(truncateErrno(memfds[0]!, 0)).toBe(EPERM);
    c.send(WireOp.READ, new Uint8Array(0), 0n, 4);
    expect((await c.reply())?.result).toBe(0);
    c.close();
  });

  it('a short SECTION payload is a protocol error, not a read past its end', async () => {
    const s = await serve();
    const c = await WireClient.connect(s.socketPath);
    c.hello(process.pid, 0);
    await c.reply();
    c.send(WireOp.SECTION, Uint8Array.of(1));
    const r = await c.reply();
    expect(r?.result).toBe(-EPROTO);
    expect(r?.payload.toString()).toMatch(/SECTION of 1 bytes/);
  });
});

describe('the process, not the socket', () => {
  let client: string;
  beforeAll(() => {
    client = buildPeerClient(dir);
  });

  it.skipIf(process.getuid?.() !== 0)(
    'a client that changed its credentials since connect(2) (root, then nobody) gets nothing taken from it (EPERM)',
    async () => {
      const s = await serve({ openDevice: undefined });
      const p = spawn(client, [s.socketPath, 'dropuid']);
      let out = '';
      p.stdout.on('data', (d) => (out += d));
      await new Promise((r) => p.once('close', r));
      expect(out).toBe('reply 0\n'); // HELLO answered: not bridged
      expect(logs.join('\n')).toMatch(/EPERM.*process \d+ no longer runs as uid 0 gid 0, as it connected/);
    },
  );

  it('a session ends when the process that connected exits, though a forked child keeps its socket: the child cannot drive the device', async () => {
    const dev = createSimDevice({ stateSize: 64 << 10, seed: 1 });
    const s = await serve({ openDevice: async () => dev });
    const go = join(dir, 'go');
    const p = spawn(client, [s.socketPath, 'ghost', go], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    p.stdout.on('data', (d) => (out += d));
    await new Promise((r) => p.once('exit', r)); // the parent: it bridged, forked and left
    expect(out).toBe('reply 0\nreply 0\n');
    for (let i = 0; i < 100 && s.sessions > 0; i++) await sleep(50);
    expect(s.sessions).toBe(0);
    expect(logs.join('\n'), logs.join('\n')).toMatch(/VMM process \d+ exited/);
    // The child writes 000 now: nobody is there to take it, and the device never left RUNNING.
    const child = new Promise<void>((r) => p.stdout.once('end', r));
    writeFileSync(go, '');
    await child;
    rmSync(go);
    expect(out).toBe('reply 0\nreply 0\nclosed\n');
    expect(await dev.getState().catch(() => MigState.RUNNING)).toBe(MigState.RUNNING);
  });
});

describe('the socket', () => {
  it('is made with the mode asked, in the main thread (umask) and in a worker thread (a private directory, then moved)', async () => {
    const dist = pathToFileURL(join(root, 'dist/service/bridge-service.js')).href;
    const script = join(dir, 'worker.mjs');
    writeFileSync(
      script,
      `import { parentPort, workerData } from 'node:worker_threads';
import { statSync, readdirSync } from 'node:fs';
import { dirname } from 'node:path';
const { startBridgeService } = await import(${JSON.stringify(dist)});
const s = await startBridgeService({ socketPath: workerData, socketMode: 0o660 });
parentPort.postMessage({ mode: statSync(workerData).mode & 0o777, left: readdirSync(dirname(workerData)).filter((f) => f.startsWith('.vfio-mig-')) });
await s.close();
`,
    );
    const path = join(dir, 'w.sock');
    const seen = await new Promise((done, fail) => {
      const w = new Worker(script, { workerData: path });
      w.once('message', done);
      w.once('error', fail);
    });
    expect(seen).toEqual({ mode: 0o660, left: [] });
    const s = await serve({ socketMode: 0o640 });
    expect(statSync(s.socketPath).mode & 0o777).toBe(0o640);
  });
});

describe('recovery after a service died', () => {
  it('a device found mid-session at HELLO (its holder is gone) is reset and bridged in the same run, with one line', async () => {
    for (const [left, reached] of [
      [MigState.STOP_COPY, 'STOP_COPY'],
      [MigState.RUNNING_P2P, 'RUNNING_P2P'],
    ] as const) {
      const dev = createSimDevice({ stateSize: 64 << 10, seed: 1 });
      await dev.setState(left); // what a killed service leaves: nobody holds the data_fd (if any) now
      const s = await serve({ openDevice: async () => dev });
      const c = await bridged(s.socketPath);
      expect(await dev.getState()).toBe(MigState.RUNNING);
      expect(logs.filter((l) => l.includes(`found in ${reached}`))).toHaveLength(1);
      c.send(WireOp.READ, new Uint8Array(0), 0n, 4); // device_state: 001
      expect((await c.reply())?.payload.readUInt32LE(0)).toBe(1);
      c.close();
      await svc!.close();
      svc = null;
      logs.length = 0;
    }
  });
});

describe('one session per connection', () => {
  it('a second HELLO is a protocol error that closes the connection; the device is returned', async () => {
    const devices: SimDevice[] = [];
    const s = await serve({
      openDevice: async () => {
        const d = createSimDevice({ stateSize: 64 << 10, seed: 1 });
        devices.push(d);
        return d;
      },
    });
    const c = await WireClient.connect(s.socketPath);
    c.hello(process.pid, 0);
    expect((await c.reply())?.result).toBe(0);
    c.hello(process.pid, 1);
    const r = await c.reply();
    expect(r?.result).toBe(-EPROTO);
    expect(r?.payload.toString()).toMatch(/a second HELLO on one connection/);
    await c.gone;
    let state: unknown;
    for (let i = 0; i < 50; i++) {
      state = await devices[0]!.getState().catch((e: Error) => e.message);
      if (typeof state === 'string') break;
      await sleep(10);
    }
    expect(devices).toHaveLength(1);
    expect(state).toMatch(/EBADF.*device closed/);
  });

  it('500 connections that each say HELLO twice leave the service with the descriptors it had', async () => {
    const s = await serve();
    const before = openFds();
    for (let i = 0; i < 500; i += 50) {
      await Promise.all(
        Array.from({ length: 50 }, async () => {
          const c = await WireClient.connect(s.socketPath);
          c.hello(process.pid, 0);
          c.hello(process.pid, 0);
          await c.gone;
        }),
      );
    }
    for (let i = 0; i < 100 && openFds() > before; i++) await sleep(10);
    expect(openFds()).toBe(before);
  });
});

describe('bounded per connection and per service', () => {
  it('replies the peer does not read stop the service reading (back-pressure); all are delivered once it reads', async () => {
    let answered = 0;
    const s = await serve({ trace: (e) => void (e.kind === 'access' && answered++) });
    const c = await bridged(s.socketPath);
    const N = 5000; // 20 MiB of replies: a data-section read is the longest a request can ask for
    c.sock.pause();
    for (let i = 0; i < N; i++) c.send(WireOp.READ, new Uint8Array(0), 4096n, MAX_REQUEST_PAYLOAD);
    await sleep(500);
    // Only what fits in the service's bound and the socket buffers was answered, not all N.
    expect(answered).toBeGreaterThan(0);
    expect(answered).toBeLessThan(200);
    c.sock.resume();
    let got = 0;
    while (got < N) {
      const r = await c.reply();
      expect(r?.result).toBe(0);
      got++;
    }
    c.close();
  });

  it('a READ longer than a header access is EINVAL, answered without allocating it', async () => {
    const s = await serve();
    const c = await bridged(s.socketPath);
    c.send(WireOp.READ, new Uint8Array(0), 0n, 4 << 20);
    const r = await c.reply();
    expect(r?.result).toBe(-EINVAL);
    expect(r?.payload.toString()).toMatch(/a read of 4194304 bytes/);
    c.close();
  });

  it('a connection that never says HELLO is closed after the timeout', async () => {
    const s = await serve({ limits: { helloTimeoutMs: 200 } });
    const c = await WireClient.connect(s.socketPath);
    await c.gone;
    expect(logs.join('\n')).not.toMatch(/bridged/);
  });

  it('connections over the per-uid cap are refused at once with the reason; a burst of refusals is 10 log lines, then one a second', async () => {
    const s = await serve({ limits: { maxConnectionsPerUid: 3 } });
    const held = await Promise.all([0, 1, 2].map(() => WireClient.connect(s.socketPath)));
    const extra = await Promise.all(Array.from({ length: 40 }, () => WireClient.connect(s.socketPath)));
    const replies = await Promise.all(extra.map((c) => c.reply()));
    await Promise.all(extra.map((c) => c.gone));
    expect(
      replies.every(
        (r) =>
          r?.result === -11 /* EAGAIN */ &&
          /the bridge service is full: uid \d+ has 3 connections open \(at most 3\)/.test(r.payload.toString()),
      ),
    ).toBe(true);
    expect(held.every((c) => !c.closed)).toBe(true);
    expect(logs.filter((l) => /refused: uid \d+ has 3 connections open \(at most 3\)/.test(l))).toHaveLength(10);
    held.forEach((c) => c.close());
    await Promise.all(held.map((c) => c.gone));
    // Released: a new one is served.
    (await bridged(s.socketPath)).close();
  });

  it('one process may hold at most maxConnectionsPerProcess connections, whatever its uid may hold', async () => {
    const s = await serve({ limits: { maxConnectionsPerProcess: 2 } });
    const held = await Promise.all([0, 1].map(() => WireClient.connect(s.socketPath)));
    const third = await WireClient.connect(s.socketPath);
    expect((await third.reply())?.payload.toString()).toMatch(/the process has 2 connections open \(at most 2\)/);
    held.forEach((c) => c.close());
  });

  it('a device name with a newline and escape sequences cannot forge log lines', async () => {
    const s = await serve({ openDevice: undefined });
    const c = await WireClient.connect(s.socketPath);
    c.hello(process.pid, 0, 'evil\nvfio-mig: forged line\u001b[2J\u2028\u202e');
    await c.reply();
    await c.gone;
    const text = logs.join('\n');
    expect(logs.length).toBeGreaterThan(0);
    expect(text).toMatch(/"evil\\x0avfio-mig: forged line\\x1b\[2J\\u\{2028\}\\u\{202e\}"/);
    expect(text).not.toMatch(/[\u2028\u202e]/);
    expect(logs.every((l) => !l.includes('\n') && !l.includes('\u001b'))).toBe(true);
  });

  it('a flood of refused HELLOs (no VFIO device) is 10 log lines, then one a second, with the count dropped', async () => {
    const s = await serve({ openDevice: undefined });
    const t0 = Date.now();
    for (let i = 0; i < 300; i += 30) {
      await Promise.all(
        Array.from({ length: 30 }, async () => {
          const c = await WireClient.connect(s.socketPath);
          c.hello(process.pid, 0, 'A'.repeat(200));
          await c.gone;
        }),
      );
    }
    const seconds = Math.ceil((Date.now() - t0) / 1000);
    expect(logs.length).toBeGreaterThanOrEqual(10);
    expect(logs.length).toBeLessThanOrEqual(10 + seconds);
  });

  it('one connection causes a bounded number of log lines', async () => {
    const s = await serve({ limits: { logLinesPerConnection: 1 } });
    const c = await bridged(s.socketPath);
    c.close();
    await c.gone;
    for (let i = 0; i < 50 && logs.length < 2; i++) await sleep(10);
    await sleep(50);
    // 'bridged', then the note; 'done' is dropped.
    expect(logs).toHaveLength(2);
    expect(logs[0]).toMatch(/bridged/);
    expect(logs[1]).toMatch(/more than 1 log lines from this connection/);
  });

  it('finished keeps only the last 64 sessions in a long-running service', async () => {
    const s = await serve();
    for (let i = 0; i < 70; i++) {
      const c = await bridged(s.socketPath);
      c.close();
      await c.gone;
    }
    for (let i = 0; i < 100 && s.finished.length < 64; i++) await sleep(10);
    await sleep(50);
    expect(s.finished).toHaveLength(64);
  });
});
