/**
 * What a new user found in the CLI (hardening issue, findings 1, 3, 4, 6, 7
 * and 8). Each test failed before its fix.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CLI, runCli } from './run-cli.js';

const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-hard-'));
const isRoot = process.getuid?.() === 0;
const STATE_FILE = /^VFIOMIG\0/;

describe('finding 1: save -o never replaces what is not a regular file', () => {
  it.runIf(isRoot)('a character device is written through and stays a character device', () => {
    const node = join(dir, 'null');
    expect(spawnSync('mknod', [node, 'c', '1', '3']).status).toBe(0); // our own /dev/null
    const r = runCli(['save', 'sim:size=64K', '-o', node]);
    expect(r.code, r.stderr).toBe(0);
    expect(lstatSync(node).isCharacterDevice()).toBe(true);
    expect(readdirSync(dir).filter((f) => f.endsWith('.tmp'))).toEqual([]);
  });

  it('a FIFO gets the state file, and stays a FIFO', async () => {
    const fifo = join(dir, 'fifo');
    expect(spawnSync('mkfifo', [fifo]).status).toBe(0);
    const reader = spawn('cat', [fifo]);
    const chunks: Buffer[] = [];
    reader.stdout.on('data', (d) => chunks.push(d));
    const closed = new Promise((r) => reader.on('close', r));
    const r = spawnSync(process.execPath, [CLI, 'save', 'sim:size=64K', '-o', fifo], { encoding: 'utf8' });
    const killer = setTimeout(() => reader.kill(), 3000); // a save that never opened the FIFO leaves cat waiting
    await closed;
    clearTimeout(killer);
    expect(r.status, r.stderr).toBe(0);
    expect(lstatSync(fifo).isFIFO()).toBe(true);
    expect(Buffer.concat(chunks).toString('latin1')).toMatch(STATE_FILE);
  });

  it('a symlink is followed: its target is replaced atomically, the link stays', () => {
    mkdirSync(join(dir, 'real'));
    const target = join(dir, 'real', 'state.vfio');
    writeFileSync(target, 'old');
    const link = join(dir, 'link.vfio');
    symlinkSync(target, link);
    const r = runCli(['save', 'sim:size=64K', '-o', link]);
    expect(r.code, r.stderr).toBe(0);
    expect(lstatSync(link).isSymbolicLink()).toBe(true);
    expect(readFileSync(target).toString('latin1')).toMatch(STATE_FILE);
    expect(readdirSync(join(dir, 'real'))).toEqual(['state.vfio']);
  });

  it('a directory is refused, naming it', () => {
    const r = runCli(['save', 'sim:size=64K', '-o', dir]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`${dir}: EISDIR`);
    expect(r.stderr).not.toMatch(/\.tmp/);
  });

  it('a missing output directory is named, not the temporary file', () => {
    const r = runCli(['save', 'sim:size=64K', '-o', join(dir, 'nope', 'x.vfio')]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`no directory ${join(dir, 'nope')}`);
    expect(r.stderr).not.toMatch(/\.tmp/);
  });
});

describe('finding 3: SIGTERM and SIGHUP clean up like SIGINT', () => {
  for (const [sig, code] of [['SIGTERM', 143], ['SIGHUP', 129], ['SIGINT', 130]] as const) {
    it(`${sig} mid-save: exit ${code}, no temporary file, the device's state named`, async () => {
      const out = join(dir, `${sig}.vfio`);
      const p = spawn(process.execPath, [CLI, 'save', 'sim:size=64M,read-delay-ms=50', '-o', out]);
      const exited = new Promise<number | null>((r) => p.on('close', r));
      let stderr = '';
      p.stderr.on('data', (d) => (stderr += d));
      await new Promise((r) => setTimeout(r, 1200));
      p.kill(sig);
      const exit = await exited;
      expect(exit).toBe(code);
      expect(readdirSync(dir).filter((f) => f.startsWith(`.${sig}.vfio`))).toEqual([]);
      expect(existsSync(out)).toBe(false);
      expect(stderr).toMatch(new RegExp(`interrupted by ${sig}; sim:size=64M,read-delay-ms=50 (reset to RUNNING|left in \\w+)`));
    });
  }
});

describe('finding 4: errors name what the user gave', () => {
  for (const path of ['/etc/passwd', '/dev/null']) {
    it(`info ${path}: not a VFIO device, exit 3`, () => {
      const r = runCli(['info', path]);
      expect(r.code).toBe(3);
      expect(r.stderr).toContain(`${path}: ENOTTY`);
      expect(r.stderr).toMatch(/not a VFIO device/);
      expect(r.stderr).not.toMatch(/iommu/);
    });
  }

  it('load -i a missing file names it, without Node\'s raw message', () => {
    const r = runCli(['load', 'sim', '-i', join(dir, 'missing.vfio')]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`${join(dir, 'missing.vfio')}: ENOENT (2): no such file`);
    expect(r.stderr).not.toMatch(/no such file or directory, open/);
  });
});

describe('finding 6: bad values are usage errors (exit 2), never silently changed', () => {
  for (const spec of ['sim:foo=1', 'sim:size=abc', 'simx', 'sim:ports=7', 'sim:dirty=2', 'sim:fail=STOP:STOP_COPY:EFOO', 'sim:fail=RUNNING:STOP_COPY:EIO']) {
    it(`info ${spec}`, () => {
      const r = runCli(['info', spec]);
      expect(r.code, r.stderr).toBe(2);
      expect(r.stderr.trim().split('\n')[0]).toMatch(/^vfio-mig: /);
    });
  }
  it('--section-size 100G', () => {
    const r = runCli(['info', 'sim', '--section-size', '100G']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--section-size/);
  });
  it('fsm --flags 0', () => {
    const r = runCli(['fsm', '--flags', '0']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/STOP_COPY/);
  });
});

describe('finding 7: a slow stdout reader', () => {
  it('save -o - into a pipe read late warns about nothing', async () => {
    const p = spawn(process.execPath, [CLI, 'save', 'sim:size=32M', '-o', '-'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    p.stderr.on('data', (d) => (stderr += d));
    p.stdout.pause();
    await new Promise((r) => setTimeout(r, 1500));
    let bytes = 0;
    p.stdout.on('data', (d) => (bytes += d.length));
    p.stdout.resume();
    expect(await new Promise((r) => p.on('close', r))).toBe(0);
    expect(bytes).toBeGreaterThan(32 << 20);
    expect(stderr).not.toMatch(/MaxListeners|Warning/);
  });
});

describe('finding 8: binary state never goes to a terminal', () => {
  const hasScript = spawnSync('script', ['--version']).status === 0;
  it.runIf(hasScript)('save -o - on a terminal is refused (exit 2), as gzip does', () => {
    const r = spawnSync('script', ['-qec', `${process.execPath} ${CLI} save sim:size=64K -o -`, '/dev/null'], { encoding: 'utf8' });
    expect(r.status).toBe(2);
    expect(r.stdout).toMatch(/refusing to write binary device state to a terminal/);
    expect(r.stdout).not.toMatch(/VFIOMIG/);
  });
});



describe('finding 5: --json errors have one shape, alone on stderr', () => {
  const one = (stderr: string) => {
    const lines = stderr.trim().split('\n');
    expect(lines).toHaveLength(1);
    return JSON.parse(lines[0]!).error as Record<string, unknown>;
  };
  const cases: Array<[string[], number, string]> = [
    [['info', '/etc/passwd', '--json'], 3, 'ENOTTY'],
    [['load', 'sim', '-i', '/nonexistent.vfio', '--json'], 1, 'ENOENT'],
    [['state', 'sim:fail=STOP:STOP_COPY:EIO:error', '--v1', '010', '--json'], 5, 'EIO'],
    [['info', 'sim:foo=1', '--json'], 2, 'EINVAL'],
    [['fsm', 'STOP_COPY', 'PRE_COPY', '--json'], 1, 'EINVAL'],
    [['save', 'sim', '--json'], 2, 'EINVAL'],
  ];
  for (const [args, exit, code] of cases) {
    it(args.join(' '), () => {
      const r = runCli(args);
      expect(r.code).toBe(exit);
      const e = one(r.stderr);
      expect(Object.keys(e).sort()).toEqual(['code', 'device', 'errno', 'exit', 'message', 'op']);
      expect(e).toMatchObject({ code, exit });
      expect(typeof e.errno).toBe('number');
      expect(e.message).toMatch(/\S/);
    });
  }
  it('save --json gives byte counts as decimal strings', () => {
    const r = runCli(['save', 'sim:size=64K', '-o', join(dir, 'j.vfio'), '--json']);
    expect(r.code).toBe(0);
    const j = JSON.parse(r.stdout.trim());
    expect(typeof j.bytes).toBe('string');
    expect(typeof j.precopyBytes).toBe('string');
  });
});
