/**
 * vfio-mig exec / serve / env as a new user drives them (the trial behind
 * the QEMU 7.2 issue's closing note): shutdown with VMMs attached, sockets
 * in use, bad sizes and paths, a closed stderr, a failing trace file.
 * The VMM is test/interposer/qemu72-client.c on a simulated device.
 */
import { spawn, spawnSync } from 'node:child_process';
import {
  chmodSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI, runCli, runInProcess } from './run-cli.js';
import { spawnCli, waitFor } from './spawn-cli.js';
import { stringContaining, stringMatching } from '../matchers.js';

const root = resolve(import.meta.dirname, '../..');
const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-exec-'));
const client = join(dir, 'qemu72-client');
const TEST_DEVICE = { VFIO_MIG_TEST_DEVICE: '/dev/null' };

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Polls `pred` until it holds; fails (with `what`) if it never does within `ms`. */
async function until(what: string, pred: () => boolean, ms = 10_000): Promise<void> {
  for (const t0 = Date.now(); !pred(); await sleep(50)) if (Date.now() - t0 > ms) throw new Error(`never: ${what}`);
}

/** Whether `pid` is a live (not zombie) process. */
function alive(pid: number): boolean {
  try {
    return !/^State:\s*Z/m.test(readFileSync(`/proc/${pid}/status`, 'utf8'));
  } catch {
    return false;
  }
}

/** `vfio-mig exec -- ARGS` as a caller (libvirt, a shell) starts it: its output so far, and how it ended. */
function execProcess(
  args: string[],
  env: Record<string, string> = {},
  stdio: ('pipe' | 'ignore')[] = ['ignore', 'pipe', 'pipe'],
) {
  const p = spawn(process.execPath, [CLI, 'exec', ...args], { stdio, env: { ...process.env, ...env } });
  let out = '';
  let err = '';
  p.stdout?.on('data', (d) => (out += d));
  p.stderr?.on('data', (d) => (err += d));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) =>
    p.on('exit', (code, signal) => r({ code, signal })),
  );
  const closed = new Promise((r) => p.on('close', r)); // every holder of its stdout and stderr (the service too) is gone
  return { p, exited, closed, out: () => out, err: () => err };
}

beforeAll(() => {
  expect(spawnSync('cc', ['-O2', '-o', client, join(root, 'test/interposer/qemu72-client.c')]).status).toBe(0);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const startServe = (socket: string, extra: string[] = []) =>
  spawnCli(['serve', '--socket', socket, ...extra], { stdout: 'ignore' });

describe('vfio-mig serve', () => {
  it("SIGTERM with a VMM mid-migration: exits at once, the VMM's next access fails, the socket is removed", async () => {
    const sock = join(dir, 'term.sock');
    const svc = startServe(sock, ['--sim', 'sim:size=64M,read-delay-ms=20']);
    await waitFor(svc.stderr, /serving on/);
    const vmm = spawn(client, ['/dev/null', 'save', join(dir, 'x.bin'), 'mmap'], {
      env: {
        ...process.env,
        ...TEST_DEVICE,
        LD_PRELOAD: join(root, 'dist/interposer/libvfio-mig-preload.so'),
        VFIO_MIG_SOCKET: sock,
      },
    });
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
    expect(await runInProcess(['serve', '--socket', join(dir, 'a'.repeat(110))])).toMatchObject({
      code: 1,
      stderr: stringMatching(/ENAMETOOLONG/),
    });
    expect(await runInProcess(['serve', '--socket', ''])).toMatchObject({
      code: 1,
      stderr: stringMatching(/socket path is empty/),
    });
    for (const size of ['0', '8G', 'abc'])
      expect((await runInProcess(['serve', '--socket', join(dir, 's.sock'), '--section-size', size])).code).toBe(2);
    for (const spec of ['bogus', 's', '/dev/null']) {
      expect(await runInProcess(['serve', '--socket', join(dir, 's.sock'), '--sim', spec])).toMatchObject({
        code: 2,
        stderr: stringContaining(`${spec}: not a simulated device`),
      });
    }
  });
});

describe('vfio-mig exec', () => {
  const save = (out: string) => ['--', client, '/dev/null', 'save', out, 'mmap', 'precopy'];

  it('a trace file that fails to write stops tracing, not the migration', () => {
    const r = runCli(
      ['exec', '--sim', 'sim:size=2M', '--trace', '/dev/full', ...save(join(dir, 'full.bin'))],
      undefined,
      TEST_DEVICE,
    );
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/trace \/dev\/full: .*tracing stopped/);
  });

  it('a stderr nobody reads any more does not take the service down', async () => {
    const cli = spawnCli(
      [
        'exec',
        '--sim',
        'sim:size=8M',
        '--',
        'sh',
        '-c',
        `sleep 0.5; exec ${client} /dev/null save ${join(dir, 'pipe.bin')} mmap precopy`,
      ],
      { stdout: 'ignore', env: TEST_DEVICE },
    );
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
    const r = runCli(['exec', '--sim', 'sim:size=1M', ...save(join(dir, 'long.bin'))], undefined, {
      ...TEST_DEVICE,
      TMPDIR: long,
    });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).not.toMatch(/not bridged/);
  });
});

describe('vfio-mig exec becomes COMMAND (execve in place)', () => {
  it("the pid the caller started is COMMAND's own, with the service and its socket beside it", async () => {
    const x = execProcess(['--', 'sh', '-c', 'echo $$ $PPID $VFIO_MIG_PTRACER $VFIO_MIG_SOCKET']);
    expect(await x.exited).toEqual({ code: 0, signal: null });
    const [pid, ppid, service, socket] = x.out().trim().split(' ');
    expect(Number(pid)).toBe(x.p.pid);
    expect(Number(ppid)).toBe(process.pid);
    expect(Number(service)).toBeGreaterThan(0);
    expect(socket).toMatch(/\/vfio-mig-[^/]+\/bridge\.sock$/);
    await until('the service to end with COMMAND', () => !alive(Number(service)));
    await until('the socket dir to be removed', () => !existsSync(join(socket!, '..')));
  });

  it('exec --socket PATH: the socket listens before COMMAND starts (exec binds it, its service serves it) and is removed after COMMAND ends', async () => {
    const sock = join(dir, 'given.sock');
    const x = execProcess(['--socket', sock, '--', 'sh', '-c', `test -S ${sock} && echo $VFIO_MIG_PTRACER`]);
    expect(await x.exited).toEqual({ code: 0, signal: null });
    const service = Number(x.out().trim());
    expect(service).toBeGreaterThan(0);
    await until('the service to end with COMMAND', () => !alive(service));
    expect(existsSync(sock)).toBe(false);
  });

  it('SIGKILL of that pid mid-migration: the service resets the device, exits and removes its socket dir', async () => {
    const trace = join(dir, 'killed.ndjson');
    const x = execProcess(
      [
        '--sim',
        'sim:size=64M,read-delay-ms=200',
        '--trace',
        trace,
        '--',
        'sh',
        '-c',
        `echo $VFIO_MIG_PTRACER $VFIO_MIG_SOCKET; exec ${client} /dev/null save ${join(dir, 'killed.bin')} mmap`,
      ],
      TEST_DEVICE,
    );
    // The detached service writes the trace: the VMM is in stop-copy once it wrote 010.
    await until(
      'the VMM to reach stop-copy',
      () =>
        existsSync(trace) && /"op":"write","field":"device_state"[^\n]*"value":2\b/.test(readFileSync(trace, 'utf8')),
    );
    const [service, socket] = x.out().trim().split(' ');
    expect(alive(Number(service))).toBe(true);
    x.p.kill('SIGKILL');
    expect(await x.exited).toEqual({ code: null, signal: 'SIGKILL' });
    await until('the service to exit', () => !alive(Number(service)));
    await until('the socket dir to be removed', () => !existsSync(join(socket!, '..')));
    await x.closed; // the service held COMMAND's stderr: its last lines are in
    expect(x.err()).toMatch(/while the device was in STOP_COPY: reset to RUNNING/);
  });

  it('SIGTERM reaches COMMAND itself: its own handler runs and the status is its own', async () => {
    const x = execProcess([
      '--',
      'sh',
      '-c',
      'trap "echo got TERM; exit 7" TERM; echo ready; while :; do sleep 0.05; done',
    ]);
    await until('COMMAND to start', () => x.out().includes('ready'));
    x.p.kill('SIGTERM');
    expect(await x.exited).toEqual({ code: 7, signal: null });
    expect(x.out()).toBe('ready\ngot TERM\n');
  });

  it('COMMAND gets the descriptors the caller gave, and none of the ones Node opened', async () => {
    const list = 'for f in /proc/$$/fd/*; do echo ${f##*/}; done; echo via3 >&3';
    const fds = async (argv: string[]) => {
      const p = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe', 'pipe'] });
      let out = '';
      let three = '';
      p.stdout!.on('data', (d) => (out += d));
      p.stdio[3]!.on('data', (d) => (three += d));
      await new Promise((r) => p.on('close', r));
      return { fds: out.trim().split('\n').sort(), three };
    };
    const plain = await fds(['sh', '-c', list]);
    const via = await fds([process.execPath, CLI, 'exec', '--', 'sh', '-c', list]);
    expect(via).toEqual(plain);
    expect(via.three).toBe('via3\n');
    expect(via.fds).toEqual(expect.arrayContaining(['0', '1', '2', '3']));
  });

  it('COMMAND not found is 127 and not executable 126, as env(1), with no service started and no temporary dir left', () => {
    const tmp = join(dir, 'tmp-status');
    mkdirSync(tmp);
    const script = join(dir, 'not-executable.sh');
    writeFileSync(script, '#!/bin/sh\n');
    chmodSync(script, 0o644);
    const cases: [string, number, RegExp][] = [
      ['no-such-command-vfio-mig', 127, /cannot run no-such-command-vfio-mig: command not found/],
      [join(dir, 'missing'), 127, /No such file or directory/],
      [script, 126, /Permission denied/],
      [dir, 126, /Permission denied/],
    ];
    for (const [cmd, status, message] of cases) {
      const r = runCli(['exec', '--', cmd], undefined, { TMPDIR: tmp });
      expect(r.code, r.stderr).toBe(status);
      expect(r.stderr).toMatch(message);
    }
    expect(readdirSync(tmp)).toEqual([]);
  });

  it('a PATH entry that is not executable is passed over for a later one that is', () => {
    const a = join(dir, 'path-a');
    const b = join(dir, 'path-b');
    mkdirSync(a);
    mkdirSync(b);
    writeFileSync(join(a, 'vfio-mig-tool'), '#!/bin/sh\necho a\n', { mode: 0o644 });
    writeFileSync(join(b, 'vfio-mig-tool'), '#!/bin/sh\necho b\n', { mode: 0o755 });
    const r = runCli(['exec', '--', 'vfio-mig-tool'], undefined, { PATH: `${a}:${b}:${process.env.PATH}` });
    expect(r).toMatchObject({ code: 0, stdout: 'b\n' });
  });
});

describe("the interposer's environment", () => {
  it('VFIO_MIG_TIMEOUT_MS that is not a number of milliseconds: said once, the default used', async () => {
    const sock = join(dir, 'tmo.sock');
    const svc = startServe(sock, ['--sim', 'sim:size=1M']);
    await waitFor(svc.stderr, /serving on/);
    const r = spawnSync(client, ['/dev/null', 'save', join(dir, 't.bin'), 'mmap'], {
      encoding: 'utf8',
      env: {
        ...process.env,
        ...TEST_DEVICE,
        LD_PRELOAD: join(root, 'dist/interposer/libvfio-mig-preload.so'),
        VFIO_MIG_SOCKET: sock,
        VFIO_MIG_TIMEOUT_MS: '5s',
      },
    });
    svc.kill('SIGTERM');
    await svc.exited;
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr.match(/VFIO_MIG_TIMEOUT_MS=5s is not a whole number of milliseconds/g)).toHaveLength(1);
  });

  it("env prints the VMM's environment, whatever LD_PRELOAD the shell running it has", () => {
    const r = runCli(['env', '--socket', 'x.sock'], undefined, { LD_PRELOAD: '' });
    const with_ = runCli(['env', '--socket', 'x.sock'], undefined, { LD_PRELOAD: '/lib/x86_64-linux-gnu/libc.so.6' });
    expect(with_.stdout).toBe(r.stdout);
    expect(r.stdout).toMatch(/^LD_PRELOAD=\/\S+libvfio-mig-preload\.so\nVFIO_MIG_SOCKET=\/\S+\/x\.sock\n$/);
  });
});
