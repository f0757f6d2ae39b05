/**
 * vfio-mig exec / serve / env as a new user drives them (the trial behind
 * the QEMU 7.2 issue's closing note): shutdown with VMMs attached, sockets
 * in use, bad sizes and paths, a closed stderr, a failing trace file.
 * The VMM is test/interposer/qemu72-client.c on a simulated device.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringContaining, stringMatching } from '../matchers.js';
import { runCli, runInProcess } from './run-cli.js';
import { spawnCli, waitFor } from './spawn-cli.js';

const root = resolve(import.meta.dirname, '../..');
const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-exec-'));
const client = join(dir, 'qemu72-client');
const TEST_DEVICE = { VFIO_MIG_TEST_DEVICE: '/dev/null' };

beforeAll(() => {
  expect(spawnSync('cc', ['-O2', '-o', client, join(root, 'test/interposer/qemu72-client.c')]).status).toBe(0);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const startServe = (socket: string, extra: string[] = []) => spawnCli(['serve', '--socket', socket, ...extra], { stdout: 'ignore' });

describe('vfio-mig serve', () => {
  it('SIGTERM with a VMM mid-migration: exits at once, the VMM\'s next access fails, the socket is removed', async () => {
    const sock = join(dir, 'term.sock');
    const svc = startServe(sock, ['--sim', 'sim:size=64M,read-delay-ms=20']);
    await waitFor(svc.stderr, /serving on/);
    const vmm = spawn(client, ['/dev/null', 'save', join(dir, 'x.bin'), 'mmap'], { env: { ...process.env, ...TEST_DEVICE, LD_PRELOAD: join(root, 'dist/interposer/libvfio-mig-preload.so'), VFIO_MIG_SOCKET: sock } });
    const vmmExit = new Promise<number | null>((r) => vmm.on('close', r));
    await waitFor(svc.stderr, /bridged/);
    // A service that waited for the migration to end would be killed after 20 s (SIGKILL).
    svc.kill('SIGTERM');
    expect(await svc.exited).toEqual({ code: 0, signal: null });
    expect(await vmmExit).toBe(2); // its access failed with an errno
    expect(existsSync(sock)).toBe(false);
  });

  it('a socket another service answers on is refused (EADDRINUSE), and that service keeps it', async () => {
    const sock = join(dir, 'busy.sock');
    const first = startServe(sock, ['--sim', 'sim']);
    await waitFor(first.stderr, /serving on/);
    const second = await runInProcess(['serve', '--socket', sock]);
    expect(second.code).toBe(1);
    expect(second.stderr).toMatch(/EADDRINUSE/);
    const again = await runInProcess(['exec', '--socket', sock, '--', 'true']);
    expect(again.code).toBe(125);
    expect(existsSync(sock)).toBe(true);
    first.kill('SIGTERM');
    await first.exited;
  });

  it('bad socket paths and sizes are refused before anything listens', async () => {
    expect(await runInProcess(['serve', '--socket', join(dir, 'a'.repeat(110))])).toMatchObject({ code: 1, stderr: stringMatching(/ENAMETOOLONG/) });
    expect(await runInProcess(['serve', '--socket', ''])).toMatchObject({ code: 1, stderr: stringMatching(/socket path is empty/) });
    for (const size of ['0', '8G', 'abc']) expect((await runInProcess(['serve', '--socket', join(dir, 's.sock'), '--section-size', size])).code).toBe(2);
    for (const spec of ['bogus', 's', '/dev/null']) {
      expect(await runInProcess(['serve', '--socket', join(dir, 's.sock'), '--sim', spec])).toMatchObject({ code: 2, stderr: stringContaining(`${spec}: not a simulated device`) });
    }
  });
});

describe('vfio-mig exec', () => {
  const save = (out: string) => ['--', client, '/dev/null', 'save', out, 'mmap', 'precopy'];

  it('a trace file that fails to write stops tracing, not the migration', () => {
    const r = runCli(['exec', '--sim', 'sim:size=2M', '--trace', '/dev/full', ...save(join(dir, 'full.bin'))], undefined, TEST_DEVICE);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/trace \/dev\/full: .*tracing stopped/);
  });

  it('a stderr nobody reads any more does not take the service down', async () => {
    const cli = spawnCli(['exec', '--sim', 'sim:size=8M', '--', 'sh', '-c', `sleep 0.5; exec ${client} /dev/null save ${join(dir, 'pipe.bin')} mmap precopy`], { stdout: 'ignore', env: TEST_DEVICE });
    cli.stderr.destroy(); // the reading end goes away, as with `2>&1 | head`
    expect(await cli.exited).toEqual({ code: 0, signal: null });
  });

  it('its own failures exit 125 and leave no temporary directory', () => {
    const tmp = join(dir, 'tmp');
    mkdirSync(tmp);
    for (const trace of ['/nonexistent/x.ndjson', dir]) {
      const r = runCli(['exec', '--trace', trace, '--', 'true'], undefined, { TMPDIR: tmp });
      expect(r.code, r.stderr).toBe(125);
    }
    expect(readdirSync(tmp)).toEqual([]);
  });

  it('a $TMPDIR too long for a socket path falls back to /tmp', () => {
    const long = join(dir, 'd'.repeat(100));
    mkdirSync(long);
    const r = runCli(['exec', '--sim', 'sim:size=1M', ...save(join(dir, 'long.bin'))], undefined, { ...TEST_DEVICE, TMPDIR: long });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).not.toMatch(/not bridged/);
  });
});

describe('the interposer\'s environment', () => {
  it('VFIO_MIG_TIMEOUT_MS that is not a number of milliseconds: said once, the default used', async () => {
    const sock = join(dir, 'tmo.sock');
    const svc = startServe(sock, ['--sim', 'sim:size=1M']);
    await waitFor(svc.stderr, /serving on/);
    const r = spawnSync(client, ['/dev/null', 'save', join(dir, 't.bin'), 'mmap'], {
      encoding: 'utf8',
      env: { ...process.env, ...TEST_DEVICE, LD_PRELOAD: join(root, 'dist/interposer/libvfio-mig-preload.so'), VFIO_MIG_SOCKET: sock, VFIO_MIG_TIMEOUT_MS: '5s' },
    });
    svc.kill('SIGTERM');
    await svc.exited;
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr.match(/VFIO_MIG_TIMEOUT_MS=5s is not a whole number of milliseconds/g)).toHaveLength(1);
  });

  it('env prints the VMM\'s environment, whatever LD_PRELOAD the shell running it has', () => {
    const r = runCli(['env', '--socket', 'x.sock'], undefined, { LD_PRELOAD: '' });
    const with_ = runCli(['env', '--socket', 'x.sock'], undefined, { LD_PRELOAD: '/lib/x86_64-linux-gnu/libc.so.6' });
    expect(with_.stdout).toBe(r.stdout);
    expect(r.stdout).toMatch(/^LD_PRELOAD=\/\S+libvfio-mig-preload\.so\nVFIO_MIG_SOCKET=\/\S+\/x\.sock\n$/);
  });
});
