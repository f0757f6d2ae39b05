/**
 * What a new user's trial of vfio-mig on the simulated device found: output
 * into a closed pipe, options that were silently accepted or ignored, error
 * messages that named the wrong thing, the whole help after every usage
 * error, and a README that did not match the program. Each test failed
 * before its fix.
 */
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { runInProcess } from './run-cli.js';
import { spawnCli, textOf } from './spawn-cli.js';

const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-usability-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const README = readFileSync(join(__dirname, '../../README.md'), 'utf8');

/** Runs the binary with the streams in `closed` closed on our side before it writes anything (a reader that left). */
function withClosedPipe(
  args: string[],
  closed: ('stdout' | 'stderr')[],
): Promise<{ code: number | null; signal: string | null; stdout: string; stderr: string }> {
  const cli = spawnCli(args);
  for (const s of closed) cli[s]!.destroy();
  return cli.exited.then(({ code, signal }) => ({
    code,
    signal,
    stdout: textOf(cli.stdout!),
    stderr: textOf(cli.stderr),
  }));
}

describe("a reader that goes away ends the output quietly, with the command's own exit status", () => {
  it.each([
    [['--help'], 0],
    [['help', 'save'], 0],
    [['save', '--help'], 0],
  ])('%j | head -1: exit %i, nothing on stderr', async (args, code) => {
    const r = await withClosedPipe(args, ['stdout']);
    expect(r.stderr).toBe('');
    expect(r).toMatchObject({ code, signal: null });
  });
  it('a usage error into a closed stderr (2>&1 | head -1): exit 2, no stack trace', async () => {
    const r = await withClosedPipe(['save', '--protocol', 'v3', 'x'], ['stderr']);
    expect(r).toMatchObject({ code: 2, signal: null, stdout: '' });
    const both = await withClosedPipe(['save', '--protocol', 'v3', 'x'], ['stdout', 'stderr']);
    expect(both).toMatchObject({ code: 2, signal: null });
  });
  it('a command error into a closed stderr keeps its exit status', async () => {
    const r = await withClosedPipe(['state', 'sim', '--v1', '101'], ['stderr']);
    expect(r).toMatchObject({ code: 1, signal: null });
  });
});

describe('--threshold 0 is refused: pending data is never below 0, so pre-copy could only run out of rounds', () => {
  it('exit 2 naming --threshold and its smallest value; nothing written', async () => {
    const out = join(dir, 'threshold.vfio');
    const r = await runInProcess(['save', 'sim', '-o', out, '--threshold', '0']);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe(
      'vfio-mig: --threshold: 0 is less than the smallest allowed (1 byte)\n(see vfio-mig save --help)\n',
    );
    expect(existsSync(out)).toBe(false);
  });
  it('1 (the default) still converges', async () => {
    const r = await runInProcess(['save', 'sim:size=64K', '-o', join(dir, 'one.vfio'), '--threshold', '1', '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).not.toHaveProperty('converged');
  });
});

describe('bad input is refused, not silently taken', () => {
  it('a sim key given twice is a usage error naming the key', async () => {
    const r = await runInProcess(['info', 'sim:size=1M,size=2M']);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe('vfio-mig: sim:size=1M,size=2M: size is given more than once\n(see vfio-mig info --help)\n');
    const f = await runInProcess(['info', 'sim:fail=STOP:STOP_COPY:EIO,fail=STOP:RUNNING_P2P:EIO']);
    expect(f.code).toBe(2);
    expect(f.stderr).toMatch(/fail is given more than once \(join several faults with \+/);
  });
  it.each(['1MB', '1KB', '1gb', '64kB', '1TB'])(
    'size %s is refused as ambiguous, naming the accepted suffixes',
    async (size) => {
      for (const args of [
        ['info', `sim:size=${size}`],
        ['info', 'sim', '--section-size', size],
        ['save', 'sim', '-o', join(dir, 'x'), '--threshold', size],
      ]) {
        const r = await runInProcess(args);
        expect(r.code).toBe(2);
        const [, n, u] = /^(\d+)(\w)/.exec(size)!;
        expect(r.stderr).toContain(`"${size}" is ambiguous`);
        expect(r.stderr).toContain(
          `write ${n}${u} or ${n}${u}iB (suffixes K, M, G, T, KiB, MiB, GiB, TiB are powers of 1024)`,
        );
      }
    },
  );
  it('binary suffixes are the same size: 1M, 1MiB, 1024K', async () => {
    const sizes = await Promise.all(
      ['1M', '1MiB', '1024K', '1048576'].map(
        async (s) =>
          (JSON.parse((await runInProcess(['info', `sim:size=${s}`, '--json'])).stdout) as { stopCopySize: string })
            .stopCopySize,
      ),
    );
    expect(new Set(sizes).size).toBe(1);
  });
  it.each([
    [
      ['save', 'sim', '-o', 'x', '--rounds', '99999999999999999999'],
      'vfio-mig: --rounds takes a whole number from 1 to 1000000 (got "99999999999999999999")',
    ],
    [
      ['save', 'sim', '-o', 'x', '--rounds', '0'],
      'vfio-mig: --rounds takes a whole number from 1 to 1000000 (got "0")',
    ],
    [
      ['conformance', 'sim', '--cycles', '1000000001'],
      'vfio-mig: --cycles takes a whole number from 1 to 1000000000 (got "1000000001")',
    ],
    [
      ['info', 'sim:seed=4294967296'],
      'vfio-mig: sim:seed=4294967296: seed must be a whole number from 0 to 4294967295 (got "4294967296")',
    ],
    [
      ['info', 'sim:read-delay-ms=99999999999999999999'],
      'vfio-mig: sim:read-delay-ms=99999999999999999999: read-delay-ms must be a whole number from 0 to 2147483647 (got "99999999999999999999")',
    ],
  ])('%j: out of range, named', async (args, message) => {
    const r = await runInProcess(args);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe(`${message}\n(see vfio-mig ${args[0]} --help)\n`);
  });
  it.each(['save', 'load'])(
    '%s --section-size with --protocol v2 is a usage error; with v1 it is taken',
    async (cmd) => {
      const file = join(dir, 'section.vfio');
      const io = cmd === 'save' ? ['-o', file] : ['-i', file];
      if (cmd === 'load') expect((await runInProcess(['save', 'sim', '-o', file])).code).toBe(0);
      const v2 = await runInProcess([cmd, 'sim', ...io, '--section-size', '4K']);
      expect(v2.code).toBe(2);
      expect(v2.stderr).toBe(
        `vfio-mig ${cmd}: --section-size applies only to --protocol v1 (the bridge's data section); v2 has none\n(see vfio-mig ${cmd} --help)\n`,
      );
      expect((await runInProcess([cmd, 'sim', ...io, '--section-size', '4K', '--protocol', 'v1'])).code).toBe(0);
      expect((await runInProcess([cmd, '--help'])).stdout).toMatch(
        /--section-size <bytes>\s+v1 data section size \(bridge window\); only with\s+--protocol v1/,
      );
    },
  );
});

describe('errors name what was wrong', () => {
  it('exec --socket in a missing directory names exec and --socket, not serve', async () => {
    const r = await runInProcess(['exec', '--socket', '/nonexist/dir/s', '--', 'true']);
    expect(r.code).toBe(125);
    expect(r.stderr).toBe(
      'vfio-mig: exec: listen on --socket /nonexist/dir/s: ENOENT (2): no directory /nonexist/dir\n',
    );
  });
  it('exec --trace to a missing directory names --trace', async () => {
    const r = await runInProcess(['exec', '--trace', '/nonexist/t', '--', 'true']);
    expect(r.code).toBe(125);
    expect(r.stderr).toMatch(/^vfio-mig: exec: open on --trace \/nonexist\/t: ENOENT \(2\): no such file or directory/);
    const s = await runInProcess(['serve', '--socket', join(dir, 's.sock'), '--trace', '/nonexist/t']);
    expect(s.code).toBe(1);
    expect(s.stderr).toMatch(/^vfio-mig: serve: open on --trace \/nonexist\/t: ENOENT/);
  });
  it('fsm --flags 2 says what is wrong once', async () => {
    const r = await runInProcess(['fsm', '--flags', '2']);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe(
      'vfio-mig: --flags: "2" is not a set of migration flags: STOP_COPY (required), P2P and PRE_COPY, e.g. 7 or STOP_COPY+P2P\n(see vfio-mig fsm --help)\n',
    );
  });
  it('state --v1 101 lists the v1 values instead of pointing at the v2 table', async () => {
    const r = await runInProcess(['state', 'sim', '--v1', '101']);
    expect(r.code).toBe(1);
    expect(r.stderr).not.toContain('vfio-mig fsm');
    expect(r.stderr).toContain(
      '(v1 device_state values: 000 STOP, 001 RUNNING, 011 SAVING|RUNNING, 010 SAVING, 100 RESUMING, each reachable from each other except 010 -> 011; 110 is the error state, left by `vfio-mig state DEVICE --reset`)',
    );
  });
  it('a refused v2 transition still points at vfio-mig fsm', async () => {
    const r = await runInProcess(['state', 'sim:flags=1', 'PRE_COPY']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('`vfio-mig fsm` lists the valid transitions');
  });
});

describe('unknown commands and options: the error and one line pointing at --help', () => {
  it.each([
    [['bogus'], "error: unknown command 'bogus'\n(see vfio-mig --help)\n"],
    [['sav'], "error: unknown command 'sav'\n(Did you mean save?)\n(see vfio-mig --help)\n"],
    [['save', 'sim', '-o', 'x', '--bogus'], "error: unknown option '--bogus'\n(see vfio-mig save --help)\n"],
    [['info', 'sim', '--jsn'], "error: unknown option '--jsn'\n(Did you mean --json?)\n(see vfio-mig info --help)\n"],
  ])('%j', async (args, stderr) => {
    const r = await runInProcess(args);
    expect(r).toMatchObject({ code: 2, stdout: '', stderr });
  });
  it('under --json, one JSON error object and nothing else', async () => {
    const r = await runInProcess(['info', 'sim', '--json', '--bogus']);
    expect(r.code).toBe(2);
    expect(JSON.parse(r.stderr)).toMatchObject({
      error: { code: 'EINVAL', exit: 2, message: "unknown option '--bogus'" },
    });
  });
});

describe('README and --help match the program', () => {
  it('the quick start prints what the README shows', async () => {
    const block =
      /## Quick start[\s\S]*?\n {4}npm ci && npm run build && (.+)\n\n {4}(saved .+)\n {4}(loaded .+)\n/.exec(README);
    expect(block).not.toBeNull();
    const [, commands, saved, loaded] = block!;
    const file = join(dir, 'state.vfio');
    const lines: string[] = [];
    for (const c of commands!.split(' && ')) {
      const args = c
        .replace(/^node dist\/cli\/main\.js /, '')
        .split(' ')
        .map((a) => (a === 'state.vfio' ? file : a));
      const r = await runInProcess(args);
      expect(r.code, r.stderr).toBe(0);
      lines.push(r.stdout.replaceAll(file, 'state.vfio'));
    }
    expect(lines).toEqual([`${saved}\n`, `${loaded}\n`]);
    expect(saved).toContain('in 1 pre-copy round)');
  });
  it('"pre-copy round" takes a plural only when there are several', async () => {
    const one = await runInProcess(['save', 'sim', '--protocol', 'v1', '-o', join(dir, 'one.vfio')]);
    expect(one.stdout).toMatch(/ in 1 pre-copy round\) /);
    const none = await runInProcess(['save', 'sim', '--no-precopy', '-o', join(dir, 'none.vfio')]);
    expect(none.stdout).toMatch(/ in 0 pre-copy rounds\) /);
    const trace = await runInProcess(['trace', 'sim:profile=mtty']);
    expect(trace.stdout).toMatch(/\(1 pre-copy round\); device_state 000 STOP\n$/);
  });
  it('the README installs from a clone or a tarball, never from the registry the package is not on', () => {
    expect(README).toMatch(/not on the npm registry/);
    const installs = [...README.matchAll(/npm install (?:-g )?([^\s`]+)/g)].map((m) => m[1]!);
    expect(installs.length).toBeGreaterThan(1);
    for (const what of installs) expect(what).toMatch(/^\.|\.tgz$/);
  });
  it("every command's --help describes each of its arguments", async () => {
    for (const c of [
      'info',
      'state',
      'save',
      'load',
      'fsm',
      'conformance',
      'trace',
      'exec',
      'serve',
      'env',
      'qemu-stream list',
      'qemu-stream extract',
      'qemu-stream diff',
    ]) {
      const help = (await runInProcess([...c.split(' '), '--help'])).stdout;
      const usage = /^Usage: vfio-mig (?:qemu-stream )?\S+ (.*)$/m.exec(help)![1]!;
      for (const [, name] of usage.matchAll(/[<[](\w+)(?:\.\.\.)?[>\]]/g)) {
        if (name === 'options') continue;
        expect(help, `${c} ${name}`).toMatch(
          new RegExp(`^Arguments:\\n(?:  .*\\n)*  ${name}(?:\\.\\.\\.)?\\s{2,}\\S`, 'm'),
        );
      }
    }
  });
});
