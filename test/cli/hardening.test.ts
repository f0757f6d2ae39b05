/**
 * What a new user found in the CLI: output targets that are not regular
 * files, signals mid-run, error messages, bad values, slow readers,
 * terminals, --json errors. Each test failed before its fix.
 */
import { spawn, spawnSync } from 'node:child_process';
import {
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { CLI, bufferContext, runInProcess, signalSource } from './run-cli.js';
import { spawnCli, textOf, waitFor } from './spawn-cli.js';
import { runCli as runCommandLine } from '../../src/cli/program.js';
import { MigState } from '../../src/v2/uapi.js';

const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-hard-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const isRoot = process.getuid?.() === 0;
const STATE_FILE = /^VFIOMIG\0/;

describe('save -o never replaces what is not a regular file', () => {
  it.runIf(isRoot)('a character device is written through and stays a character device', async () => {
    const node = join(dir, 'null');
    expect(spawnSync('mknod', [node, 'c', '1', '3']).status).toBe(0); // our own /dev/null
    const r = await runInProcess(['save', 'sim:size=64K', '-o', node]);
    expect(r.code, r.stderr).toBe(0);
    expect(lstatSync(node).isCharacterDevice()).toBe(true);
    expect(readdirSync(dir).filter((f) => f.endsWith('.tmp'))).toEqual([]);
  });

  it('a FIFO gets the state file, and stays a FIFO', async () => {
    const fifo = join(dir, 'fifo');
    expect(spawnSync('mkfifo', [fifo]).status).toBe(0);
    const reader = spawn('cat', [fifo]);
    const chunks: Buffer[] = [];
    reader.stdout.on('data', (d: Buffer) => chunks.push(d));
    const closed = new Promise((r) => reader.on('close', r));
    const r = await runInProcess(['save', 'sim:size=64K', '-o', fifo]);
    const killer = setTimeout(() => reader.kill(), 3000); // a save that never opened the FIFO leaves cat waiting
    await closed;
    clearTimeout(killer);
    expect(r.code, r.stderr).toBe(0);
    expect(lstatSync(fifo).isFIFO()).toBe(true);
    expect(Buffer.concat(chunks).toString('latin1')).toMatch(STATE_FILE);
  });

  it('a symlink is followed: its target is replaced atomically, the link stays', async () => {
    mkdirSync(join(dir, 'real'));
    const target = join(dir, 'real', 'state.vfio');
    writeFileSync(target, 'old');
    const link = join(dir, 'link.vfio');
    symlinkSync(target, link);
    const r = await runInProcess(['save', 'sim:size=64K', '-o', link]);
    expect(r.code, r.stderr).toBe(0);
    expect(lstatSync(link).isSymbolicLink()).toBe(true);
    expect(readFileSync(target).toString('latin1')).toMatch(STATE_FILE);
    expect(readdirSync(join(dir, 'real'))).toEqual(['state.vfio']);
  });

  it('a symlink whose target does not exist yet: the target is created, the link stays; a missing directory is ENOENT', async () => {
    const link = join(dir, 'ahead.vfio');
    symlinkSync('ahead-target.vfio', link); // relative, as ln -s makes it
    const r = await runInProcess(['save', 'sim:size=64K', '-o', link]);
    expect(r.code, r.stderr).toBe(0);
    expect(lstatSync(link).isSymbolicLink()).toBe(true);
    expect(readFileSync(join(dir, 'ahead-target.vfio')).toString('latin1')).toMatch(STATE_FILE);
    const dangling = join(dir, 'dangling.vfio');
    symlinkSync('/nonexistent/dir/x.vfio', dangling);
    const bad = await runInProcess(['save', 'sim:size=64K', '-o', dangling]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain('ENOENT');
    expect(lstatSync(dangling).isSymbolicLink()).toBe(true);
  });

  it('a directory is refused, naming it', async () => {
    const r = await runInProcess(['save', 'sim:size=64K', '-o', dir]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`${dir}: EISDIR`);
    expect(r.stderr).not.toMatch(/\.tmp/);
  });

  it('a missing output directory is named, not the temporary file', async () => {
    const r = await runInProcess(['save', 'sim:size=64K', '-o', join(dir, 'nope', 'x.vfio')]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`no directory ${join(dir, 'nope')}`);
    expect(r.stderr).not.toMatch(/\.tmp/);
  });
});

describe('SIGTERM and SIGHUP clean up like SIGINT', () => {
  for (const [sig, code] of [
    ['SIGTERM', 143],
    ['SIGHUP', 129],
    ['SIGINT', 130],
  ] as const) {
    it(`${sig} mid-save: exit ${code}, no temporary file, the device's state named`, async () => {
      const out = join(dir, `${sig}.vfio`);
      const cli = spawnCli(['save', 'sim:size=64M,read-delay-ms=50', '-o', out], { probe: true });
      await waitFor(cli.probe!, /^setState (PRE_COPY|STOP_COPY)$/m); // streaming into the temporary file
      cli.kill(sig);
      const { code: exit } = await cli.exited;
      const stderr = textOf(cli.stderr);
      expect(exit, stderr).toBe(code);
      expect(readdirSync(dir).filter((f) => f.startsWith(`.${sig}.vfio`))).toEqual([]);
      expect(existsSync(out)).toBe(false);
      expect(stderr).toMatch(
        new RegExp(`interrupted by ${sig}; sim:size=64M,read-delay-ms=50 (reset to RUNNING|left in \\w+)`),
      );
    });
  }

  // A simulated device without delays never waits on I/O: the signal must still be taken mid-run.
  it.each([
    ['conformance', 'SIGINT', 130, ['conformance', 'sim:size=64K', '--only', 'stress.cycles', '--cycles', '99999999']],
    ['save to /dev/null, stdout on it too', 'SIGTERM', 143, ['save', 'sim:size=2G', '--no-precopy', '-o', '/dev/null']],
  ] as const)(
    '%s on a device that never waits: %s is taken mid-run',
    async (_, sig, code, args) => {
      // stdout on /dev/null: writes to it complete at once (-o - there is refused: it cannot be told from a closed stdout).
      const cli = spawnCli(args, { stdout: openSync('/dev/null', 'w'), probe: true });
      // Mid-run: cycling (a reset ends each cycle), or streaming the stop-copy data.
      await waitFor(cli.probe!, args[0] === 'conformance' ? /^reset$/m : /^setState STOP_COPY$/m);
      cli.kill(sig); // a run deaf to it is killed after 20 s: exit null
      const { code: exit } = await cli.exited;
      const stderr = textOf(cli.stderr);
      expect(exit, stderr).toBe(code);
      expect(stderr).toMatch(new RegExp(`interrupted by ${sig}`));
      expect(stderr).not.toMatch(/^saved /m); // never success and interruption in one run
    },
    30_000,
  );

  // A FIFO whose other end never comes: a blocking open(2) of it held a libuv thread that process.exit waited for, forever.
  it.each([
    ['load from a FIFO with no writer', 'SIGINT', 130, 'load'],
    ['save to a FIFO with no reader', 'SIGTERM', 143, 'save'],
  ] as const)(
    '%s: %s ends the run at once',
    async (_, sig, code, cmd) => {
      const sub = mkdtempSync(join(dir, 'fifo-sig-'));
      try {
        const fifo = join(sub, 'state.fifo');
        expect(spawnSync('mkfifo', [fifo]).status).toBe(0);
        const cli = spawnCli([cmd, 'sim:size=64K', cmd === 'load' ? '-i' : '-o', fifo], { probe: true });
        await waitFor(cli.probe!, /^open .*state\.fifo$/m);
        // An exit hung on the open is killed after 20 s (exit null); the interrupt's own grace is 2 s.
        cli.kill(sig);
        const { code: exit } = await cli.exited;
        const stderr = textOf(cli.stderr);
        expect(exit, stderr).toBe(code);
        expect(stderr).toMatch(new RegExp(`^vfio-mig: interrupted by ${sig}`, 'm'));
        expect(readdirSync(sub)).toEqual(['state.fifo']); // nothing written beside it, the FIFO still a FIFO
        expect(lstatSync(fifo).isFIFO()).toBe(true);
      } finally {
        rmSync(sub, { recursive: true, force: true });
      }
    },
    30_000,
  );

  // The same clean-up in-process, through the run's context: what the process does before it exits.
  it('in-process: SIGINT mid-save removes the temporary file, resets the device and ends with 130', async () => {
    const out = join(dir, 'ctx-int.vfio');
    const args = ['save', 'sim:size=64M,read-delay-ms=5', '-o', out];
    const signals = signalSource();
    const exits: number[] = [];
    const { ctx, stderr } = bufferContext(args, undefined, { signals, exit: (c) => exits.push(c) });
    const run = runCommandLine(args, ctx);
    const tmp = () => readdirSync(dir).filter((f) => f.startsWith('.ctx-int.vfio.'));
    // Stream bytes after the 32-byte header: the device is mid-session.
    const streaming = () => tmp().some((f) => (statSync(join(dir, f), { throwIfNoEntry: false })?.size ?? 0) > 32);
    for (let i = 0; i < 1000 && !streaming(); i++) await new Promise((r) => setTimeout(r, 10));
    expect(streaming()).toBe(true);
    signals.emit('SIGINT');
    expect(tmp()).toEqual([]); // removed before anything is awaited
    for (let i = 0; i < 200 && exits.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
    expect(exits).toEqual([130]);
    expect(stderr.bytes().toString()).toMatch(
      /^vfio-mig: interrupted by SIGINT; sim:size=64M,read-delay-ms=5 reset to RUNNING\n/,
    );
    // A stand-in exit returns: the save then fails on its closed device, and still leaves no file.
    expect(await run).not.toBe(0);
    expect(existsSync(out)).toBe(false);
    expect(tmp()).toEqual([]);
  });

  it('in-process: a device outside a session is named with its state; a closed one is no longer tracked', async () => {
    const signals = signalSource();
    const exits: number[] = [];
    const { ctx, stderr } = bufferContext([], undefined, { signals, exit: (c) => exits.push(c) });
    await ctx.withDevice('sim:seed=1', async () => undefined); // opened and closed: nothing to clean up
    const dev = await ctx.openDevice('sim:size=4K');
    await dev.setState(MigState.STOP);
    signals.emit('SIGTERM');
    for (let i = 0; i < 200 && exits.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
    expect(exits).toEqual([143]);
    expect(stderr.bytes().toString()).toBe('vfio-mig: interrupted by SIGTERM; sim:size=4K left in STOP\n');
    expect(await ctx.cleanup()).toEqual([]); // the interrupt closed it
  });

  it('in-process, under --json: the interrupt is the one JSON error object (EINTR), not a text line', async () => {
    const signals = signalSource();
    const exits: number[] = [];
    const { ctx, stderr } = bufferContext(['--json'], undefined, { signals, exit: (c) => exits.push(c) });
    const dev = await ctx.openDevice('sim:size=4K');
    await dev.setState(MigState.PRE_COPY);
    signals.emit('SIGINT');
    for (let i = 0; i < 200 && exits.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
    expect(exits).toEqual([130]);
    expect(JSON.parse(stderr.bytes().toString())).toEqual({
      error: {
        code: 'EINTR',
        errno: 4,
        op: 'interrupted',
        device: null,
        message: 'interrupted by SIGINT; sim:size=4K reset to RUNNING',
        exit: 130,
      },
    });
  });
});

describe('errors name what the user gave', () => {
  for (const path of ['/etc/passwd', '/dev/null']) {
    it(`info ${path}: not a VFIO device, a usage error (exit 2; 3 is a device without migration)`, async () => {
      const r = await runInProcess(['info', path]);
      expect(r.code).toBe(2);
      expect(r.stderr).toMatch(/\n\(see vfio-mig info --help\)\n$/);
      expect(r.stderr).toContain(`${path}: ENOTTY`);
      expect(r.stderr).toMatch(/not a VFIO device/);
      expect(r.stderr).not.toMatch(/iommu/);
    });
  }

  it("load -i a missing file names it, without Node's raw message", async () => {
    const r = await runInProcess(['load', 'sim', '-i', join(dir, 'missing.vfio')]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`${join(dir, 'missing.vfio')}: ENOENT (2): no such file`);
    expect(r.stderr).not.toMatch(/no such file or directory, open/);
  });
});

describe('bad values are usage errors (exit 2), never silently changed', () => {
  for (const spec of [
    'sim:foo=1',
    'sim:size=abc',
    'simx',
    'sim:ports=7',
    'sim:dirty=2',
    'sim:fail=STOP:STOP_COPY:EFOO',
    'sim:fail=RUNNING:STOP_COPY:EIO',
  ]) {
    it(`info ${spec}`, async () => {
      const r = await runInProcess(['info', spec]);
      expect(r.code, r.stderr).toBe(2);
      expect(r.stderr.trim().split('\n')[0]).toMatch(/^vfio-mig: /);
    });
  }
  it('--section-size 100G', async () => {
    const r = await runInProcess(['info', 'sim', '--section-size', '100G']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--section-size/);
  });
  it('fsm --flags 0', async () => {
    const r = await runInProcess(['fsm', '--flags', '0']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/STOP_COPY/);
  });
});

describe('a stdout read late', () => {
  it('save -o - into a pipe read late warns about nothing', async () => {
    const p = spawn(process.execPath, [CLI, 'save', 'sim:size=32M', '-o', '-'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    p.stderr.on('data', (d) => (stderr += d));
    p.stdout.pause();
    await new Promise((r) => setTimeout(r, 1500));
    let bytes = 0;
    p.stdout.on('data', (d: Buffer) => (bytes += d.length));
    p.stdout.resume();
    expect(await new Promise((r) => p.on('close', r))).toBe(0);
    expect(bytes).toBeGreaterThan(32 << 20);
    expect(stderr).not.toMatch(/MaxListeners|Warning/);
  });
});

describe('binary state never goes to a terminal', () => {
  const hasScript = spawnSync('script', ['--version']).status === 0;
  it.runIf(hasScript)('save -o - on a terminal is refused (exit 2), as gzip does', () => {
    const r = spawnSync('script', ['-qec', `${process.execPath} ${CLI} save sim:size=64K -o -`, '/dev/null'], {
      encoding: 'utf8',
    });
    expect(r.status).toBe(2);
    expect(r.stdout).toMatch(/refusing to write binary device state to a terminal/);
    expect(r.stdout).not.toMatch(/VFIOMIG/);
  });

  it.runIf(hasScript)('nor -o /dev/tty (or any terminal named as the output file)', () => {
    const r = spawnSync('script', ['-qec', `${process.execPath} ${CLI} save sim:size=64K -o /dev/tty`, '/dev/null'], {
      encoding: 'utf8',
    });
    expect(r.status).toBe(2);
    expect(r.stdout).toMatch(/refusing to write binary device state to a terminal \(\/dev\/tty\)/);
    expect(r.stdout).not.toMatch(/VFIOMIG/);
  });

  it.runIf(hasScript)('and load does not read state from a terminal: -i - on a terminal stdin, or -i /dev/tty', () => {
    // Without the refusal the load would wait for typed input: the timeout ends such a run (a failure, not a hang).
    for (const [input, named] of [
      ['-', /redirect stdin or use -i FILE/],
      ['/dev/tty', /from a terminal \(\/dev\/tty\)/],
    ] as const) {
      const r = spawnSync('script', ['-qec', `${process.execPath} ${CLI} load sim -i ${input}`, '/dev/null'], {
        encoding: 'utf8',
        timeout: 20_000,
      });
      expect(r.status, `${input}: ${r.stdout}`).toBe(2);
      expect(r.stdout).toMatch(/refusing to read binary device state from a terminal/);
      expect(r.stdout).toMatch(named);
    }
  });
});

describe('--json errors have one shape, alone on stderr', () => {
  const one = (stderr: string) => {
    const lines = stderr.trim().split('\n');
    expect(lines).toHaveLength(1);
    return (JSON.parse(lines[0]!) as { error: Record<string, unknown> }).error;
  };
  const cases: Array<[string[], number, string]> = [
    [['info', '/etc/passwd', '--json'], 2, 'ENOTTY'],
    [['load', 'sim', '-i', '/nonexistent.vfio', '--json'], 1, 'ENOENT'],
    [['state', 'sim:fail=STOP:STOP_COPY:EIO:error', '--v1', '010', '--json'], 5, 'EIO'],
    [['info', 'sim:foo=1', '--json'], 2, 'EINVAL'],
    [['fsm', 'STOP_COPY', 'PRE_COPY', '--json'], 1, 'EINVAL'],
    [['save', 'sim', '--json'], 2, 'EINVAL'],
  ];
  for (const [args, exit, code] of cases) {
    it(args.join(' '), async () => {
      const r = await runInProcess(args);
      expect(r.code).toBe(exit);
      const e = one(r.stderr);
      expect(Object.keys(e).sort()).toEqual(['code', 'device', 'errno', 'exit', 'message', 'op']);
      expect(e).toMatchObject({ code, exit });
      expect(typeof e.errno).toBe('number');
      expect(e.message).toMatch(/\S/);
    });
  }
  it('save --json gives byte counts as decimal strings', async () => {
    const r = await runInProcess(['save', 'sim:size=64K', '-o', join(dir, 'j.vfio'), '--json']);
    expect(r.code).toBe(0);
    const j = JSON.parse(r.stdout.trim()) as Record<string, unknown>;
    expect(typeof j.bytes).toBe('string');
    expect(typeof j.precopyBytes).toBe('string');
  });
});

describe('a save whose reader goes away', () => {
  it.each(['v2', 'v1'])('--protocol %s: EPIPE, and the device is back in RUNNING, not left mid-session', (protocol) => {
    const r = spawnSync(
      'bash',
      [
        '-c',
        `"${process.execPath}" "${CLI}" save sim:size=16M --protocol ${protocol} -o - | head -c 10 >/dev/null; exit \${PIPESTATUS[0]}`,
      ],
      { encoding: 'utf8' },
    );
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/^vfio-mig: save on stdout: EPIPE \(32\).*; the device is now in RUNNING$/m);
  });
});
