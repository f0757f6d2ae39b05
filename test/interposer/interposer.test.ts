/**
 * The LD_PRELOAD interposer and the bridge service together, on the host:
 * qemu72-client.c stands in for QEMU 7.2 (its region discovery, register
 * sequence and 8-byte access split), and VFIO_MIG_TEST_DEVICE makes
 * /dev/null count as a VFIO device whose v1 region a simulated device
 * serves. The real-kernel suite runs QEMU 7.2 itself (test/kernel/qemu72.ktest.ts).
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  createSimDevice,
  loadV2,
  MigState,
  VfioError,
  type SimDevice,
  type SimDeviceOptions,
  type V2Device,
} from '../../src/index.js';
import { startBridgeService, type BridgeService } from '../../src/service/bridge-service.js';
import { saveV2 } from '../helpers.js';
import { spawnCli, waitFor } from '../cli/spawn-cli.js';

const root = resolve(import.meta.dirname, '../..');
const PRELOAD = join(root, 'dist/interposer/libvfio-mig-preload.so');
let dir: string;
let client: string;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'vfio-mig-interposer-'));
  client = join(dir, 'qemu72-client');
  const cc = spawnSync('cc', ['-O2', '-o', client, join(root, 'test/interposer/qemu72-client.c')], {
    encoding: 'utf8',
  });
  expect(cc.status, cc.stderr).toBe(0);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the client as a preloaded VMM; `onStart` sees the child (to kill it). */
function runClient(args: string[], env: Record<string, string>, onStart?: (pid: number) => void): Promise<Run> {
  const p = spawn(client, ['/dev/null', ...args], {
    env: { ...process.env, LD_PRELOAD: PRELOAD, VFIO_MIG_TEST_DEVICE: '/dev/null', ...env },
  });
  let stdout = '';
  let stderr = '';
  p.stdout.on('data', (d) => (stdout += d));
  p.stderr.on('data', (d) => (stderr += d));
  onStart?.(p.pid!);
  return new Promise((done) => p.on('close', (code) => done({ code, stdout, stderr })));
}

async function serve(devices: SimDevice[], logs: string[] = []): Promise<BridgeService> {
  const queue = [...devices];
  return startBridgeService({
    socketPath: join(dir, `s${Math.random().toString(36).slice(2)}.sock`),
    openDevice: async () => queue.shift() ?? createSimDevice(),
    log: (l) => logs.push(l),
  });
}

const model: SimDeviceOptions = { stateSize: 3 << 20, seed: 1 };

describe('interposer + service, QEMU 7.2 access pattern', () => {
  for (const mode of ['mmap', 'pread'] as const) {
    it(`save through the ${mode} path gives the device's stop-copy stream, byte for byte`, async () => {
      const logs: string[] = [];
      const svc = await serve([createSimDevice(model)], logs);
      const out = join(dir, `save-${mode}.bin`);
      const r = await runClient(['save', out, mode], { VFIO_MIG_SOCKET: svc.socketPath });
      await svc.close();
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      expect(readFileSync(out).equals(await saveV2(createSimDevice(model), false))).toBe(true);
      const [, bytes, header, data] = /^ok (\d+) bytes \S+ s (\d+) header accesses (\d+) data accesses$/.exec(
        r.stdout.trim(),
      )!;
      // Header accesses only cross the socket: ~3 per 1 MiB chunk, whatever the data path.
      expect(Number(header)).toBeLessThan(30);
      expect(svc.finished[0]!.headerAccesses).toBe(Number(header));
      expect(Number(data)).toBe(mode === 'mmap' ? 0 : Math.ceil(Number(bytes) / 8));
      expect(svc.finished[0]!.dataReads).toBe(BigInt(data!));
    });
  }

  it('pre-copy save and a load through the interposer move the whole state', async () => {
    const src = createSimDevice({ ...model, seed: 3 });
    const dst = createSimDevice({ ...model, seed: 4 });
    const svc = await serve([src, dst]);
    const file = join(dir, 'precopy.bin');
    const save = await runClient(['save', file, 'mmap', 'precopy'], { VFIO_MIG_SOCKET: svc.socketPath });
    expect(save.code, save.stderr).toBe(0);
    const load = await runClient(['load', file, 'pread'], { VFIO_MIG_SOCKET: svc.socketPath });
    await svc.close();
    expect(load.code, load.stderr).toBe(0);
    expect(dst.stateDigest()).toBe(src.stateDigest());
    expect(dst.state).toBe(2 /* RUNNING */);
  });
});

describe('after a completed save the device is left in STOP (docs/decisions.md 22)', () => {
  it('the next bridged VMM finds 000, starts the device and migrates it; a destination resumes into it', async () => {
    const dev = createSimDevice({ ...model, seed: 5 });
    // One device for every VMM, as a kernel device outlives them: the service's close must not end it.
    const held: V2Device = new Proxy(dev, {
      get: (t, k) => {
        const v: unknown = Reflect.get(t, k, t);
        return k === 'close'
          ? async () => undefined
          : typeof v === 'function'
            ? (v as (...a: unknown[]) => unknown).bind(t)
            : v;
      },
    });
    const svc = await startBridgeService({
      socketPath: join(dir, 'after-save.sock'),
      openDevice: async () => held,
      log: () => undefined,
    });
    const env = { VFIO_MIG_SOCKET: svc.socketPath };
    const first = join(dir, 'after-save-1.bin');
    expect((await runClient(['save', first, 'mmap', 'precopy'], env)).code).toBe(0);
    for (let i = 0; i < 100 && svc.finished.length < 1; i++) await new Promise((r) => setTimeout(r, 20));
    expect(dev.state).toBe(MigState.STOP);

    // QEMU 7.2 writes 001 when its VM starts: STOP -> RUNNING, then a whole save again.
    const second = join(dir, 'after-save-2.bin');
    const r = await runClient(['save', second, 'pread', 'start', 'precopy'], env);
    expect(r.code, r.stderr).toBe(0);
    const copy = createSimDevice({ ...model, seed: 7 });
    await loadV2(copy, [readFileSync(second)]);
    expect(copy.stateDigest()).toBe(dev.stateDigest());
    for (let i = 0; i < 100 && svc.finished.length < 2; i++) await new Promise((r) => setTimeout(r, 20));
    expect(dev.state).toBe(MigState.STOP);

    // A destination on a device a save left in STOP: 000 -> 100 -> 001, the source's state in it.
    const src = createSimDevice({ ...model, seed: 6 });
    const file = join(dir, 'after-save-src.bin');
    writeFileSync(file, await saveV2(src, false));
    const load = await runClient(['load', file, 'mmap'], env);
    await svc.close();
    expect(load.code, load.stderr).toBe(0);
    expect(dev.state).toBe(MigState.RUNNING);
    expect(dev.stateDigest()).toBe(src.stateDigest());
  });
});

describe('interposer failures never hang and never pass silently', () => {
  it("a forked child that closes the inherited device fd and exits does not end the parent's session", async () => {
    const svc = await serve([createSimDevice(model)]);
    const out = join(dir, 'fork.bin');
    const r = await runClient(['save', out, 'mmap', 'forkclose'], { VFIO_MIG_SOCKET: svc.socketPath });
    await svc.close();
    expect(r.code, r.stderr).toBe(0);
    expect(readFileSync(out).equals(await saveV2(createSimDevice(model), false))).toBe(true);
  });

  it('no service: one message, the device is left unbridged (QEMU then refuses to migrate)', async () => {
    const r = await runClient(['save', join(dir, 'x.bin')], { VFIO_MIG_SOCKET: join(dir, 'nobody.sock') });
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(
      /^vfio-mig: VFIO device is not bridged: no bridge service at .*nobody\.sock \(No such file or directory\)\n/,
    );
    expect(r.stderr).toMatch(/doesn't support migration/);
  });

  it('VFIO_MIG_REQUIRED=1 makes an unbridged device fatal', async () => {
    const r = await runClient(['save', join(dir, 'x.bin')], {
      VFIO_MIG_SOCKET: join(dir, 'nobody.sock'),
      VFIO_MIG_REQUIRED: '1',
    });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/cannot be bridged: no bridge service .* exiting/);
  });

  it('a service that accepts and never answers: the access fails within the timeout', async () => {
    const path = join(dir, 'silent.sock');
    const silent = createServer(() => undefined);
    await new Promise<void>((r) => silent.listen(path, r));
    const r = await runClient(['save', join(dir, 'x.bin')], { VFIO_MIG_SOCKET: path, VFIO_MIG_TIMEOUT_MS: '300' });
    silent.close();
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/did not answer in time/);
  });

  it('a service that dies mid-migration: the next access fails with an errno, not a hang', async () => {
    const sock = join(dir, 'dying.sock');
    const svc = spawnCli(['serve', '--socket', sock, '--sim', 'sim:size=64M,read-delay-ms=5'], { stdout: 'ignore' });
    await waitFor(svc.stderr, /serving on/);
    const die = () => svc.kill('SIGKILL');
    void waitFor(svc.stderr, /bridged/).then(die, die); // dies mid-migration (or, failing, at the deadline)
    const r = await runClient(['save', join(dir, 'x.bin')], { VFIO_MIG_SOCKET: sock, VFIO_MIG_TIMEOUT_MS: '5000' });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/vfio-mig: bridge service is gone for \/dev\/null|vfio-mig: bridge service is gone/);
    expect(r.stderr).toMatch(/vfio_mig_(read|write) \d+ bytes at 0x[0-9a-f]+ failed: /);
    expect((await svc.exited).signal).toBe('SIGKILL');
  });

  it('a VMM killed mid-session: the service drops its fd and returns the device to RUNNING', async () => {
    const dev = createSimDevice({ stateSize: 64 << 20, faults: { readDelayMs: 2 } });
    const logs: string[] = [];
    const svc = await serve([dev], logs);
    const r = await runClient(['save', join(dir, 'x.bin'), 'mmap'], { VFIO_MIG_SOCKET: svc.socketPath }, (pid) => {
      const poll = setInterval(() => {
        if (dev.state === MigState.STOP_COPY) {
          clearInterval(poll);
          process.kill(pid, 'SIGKILL');
        }
      }, 2);
    });
    expect(r.code).toBe(null);
    for (let i = 0; i < 100 && svc.finished.length === 0; i++) await new Promise((res) => setTimeout(res, 20));
    expect(dev.state).toBe(2 /* RUNNING */);
    expect(logs.join('\n')).toMatch(/while the device was in STOP_COPY: reset to RUNNING/);
    await svc.close();
  });

  it('a device without v2 migration is left alone, with a message', async () => {
    const svc = await startBridgeService({
      socketPath: join(dir, 'nomig.sock'),
      openDevice: async (h) => {
        throw new VfioError('ENOTTY', 'FEATURE_MIGRATION', h.name, 'device does not support v2 migration');
      },
    });
    const r = await runClient(['save', join(dir, 'x.bin')], { VFIO_MIG_SOCKET: svc.socketPath });
    await svc.close();
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/is not bridged: no v2 migration support/);
  });
});
