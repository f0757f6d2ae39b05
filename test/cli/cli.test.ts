import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { CLI, pipeCli, runCli, runInProcess } from './run-cli.js';
import { spawnCli, waitFor } from './spawn-cli.js';

/**
 * Most commands run in-process on buffers (runInProcess); what needs a real
 * process (pipes, signals, terminals) spawns the built binary, and the
 * first block checks that the binary prints what an in-process run does.
 */
const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-cli-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const json = (s: string) => JSON.parse(s.trim().split('\n').at(-1)!) as Record<string, unknown>;

describe('the built binary gives what an in-process run gives, byte for byte', () => {
  const saved = join(dir, 'e2e.vfio');
  const lines: string[][] = [
    ['--version'],
    ['bogus'],
    ['fsm', 'RUNNING', 'STOP_COPY'],
    ['fsm', 'STOP_COPY', 'PRE_COPY', '--json'],
    ['info', 'sim:profile=mtty', '--json'],
    ['info', '/etc/passwd'],
    ['info', 'sim:foo=1', '--json'],
    ['state', 'sim', '--v1', '011'],
    ['state', 'sim:fail=STOP:STOP_COPY:EIO:error', '--v1', '010'],
    ['trace', 'sim:size=100,flags=3'],
    ['save', 'sim:size=64K,seed=5', '-o', saved, '--protocol', 'v1'],
    ['load', 'sim:size=64K', '-i', saved, '--json'],
    ['load', 'sim:size=2K', '-i', saved],
    ['conformance', 'sim:size=8K', '--only', 'discovery,fsm.paths'],
    ['env', '--socket', 'x.sock'],
    ['serve', '--socket', ''],
    ['exec'],
  ];
  for (const args of lines) {
    it(args.join(' '), async () => {
      const spawned = runCli(args);
      const file = args[0] === 'save' ? readFileSync(saved) : null;
      const inProcess = await runInProcess(args);
      expect({ code: inProcess.code, stdout: inProcess.stdout, stderr: inProcess.stderr }).toEqual(spawned);
      // The same bytes: the sim is deterministic for one spec.
      if (file) expect(readFileSync(saved).equals(file)).toBe(true);
    });
  }
  it('load -i - from stdin', async () => {
    const input = readFileSync(saved);
    const spawned = runCli(['load', 'sim:size=64K', '-i', '-'], input);
    expect(spawned.code, spawned.stderr).toBe(0);
    const inProcess = await runInProcess(['load', 'sim:size=64K', '-i', '-'], input);
    expect({ code: inProcess.code, stdout: inProcess.stdout, stderr: inProcess.stderr }).toEqual(spawned);
  });
});

describe('vfio-mig fsm', () => {
  it('prints the path of a transition', async () => {
    const r = await runInProcess(['fsm', 'RUNNING', 'STOP_COPY']);
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toBe('RUNNING -> RUNNING_P2P -> STOP -> STOP_COPY');
    expect((await runInProcess(['fsm', '--flags', 'STOP_COPY', 'running', 'stop-copy'])).stdout.trim()).toBe(
      'RUNNING -> STOP -> STOP_COPY',
    );
  });
  it('prints the whole table as JSON, and fails an impossible transition with exit 1', async () => {
    const t = json((await runInProcess(['fsm', '--flags', '5', '--json'])).stdout);
    expect(t.flagNames).toEqual(['STOP_COPY', 'PRE_COPY']);
    expect(t.transitions).toContainEqual({ from: 'PRE_COPY', to: 'STOP_COPY', path: ['PRE_COPY', 'STOP_COPY'] });
    expect(t.transitions).toContainEqual({ from: 'STOP_COPY', to: 'PRE_COPY', error: 'EINVAL' });
    const r = await runInProcess(['fsm', 'STOP_COPY', 'PRE_COPY']);
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(/EINVAL/);
  });
});

describe('vfio-mig info and state', () => {
  it('info describes a simulated device, in text and JSON', async () => {
    const r = await runInProcess(['info', 'sim:profile=mtty']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/migration\s+STOP_COPY \| P2P \| PRE_COPY \(0x7\)/);
    const j = json(
      (await runInProcess(['info', 'sim:flags=STOP_COPY,size=64K', '--json', '--section-size', '64K'])).stdout,
    );
    expect(j).toMatchObject({
      flags: 1,
      state: 'RUNNING',
      v1Region: { sectionSize: 65536, type: { type: 3, subtype: 1 } },
    });
    expect(typeof j.stopCopySize).toBe('string');
    // The simulated device offers the stateDigest capability; the CLI shows it.
    expect(j.stateDigest).toMatch(/^[0-9a-f]{64}$/);
    expect(r.stdout).toMatch(/^state digest {2}[0-9a-f]{64}$/m);
  });
  it('state gets, sets by v2 name with the path, and sets v1 bits through the bridge', async () => {
    expect((await runInProcess(['state', 'sim'])).stdout.trim()).toBe('RUNNING');
    expect(json((await runInProcess(['state', 'sim', 'RESUMING', '--json'])).stdout)).toMatchObject({
      path: ['RUNNING', 'RUNNING_P2P', 'STOP', 'RESUMING'],
      dataFd: true,
      state: 'RESUMING',
    });
    const v1 = await runInProcess(['state', 'sim', '--v1', '011']);
    expect(v1.stdout.trim()).toBe('001 RUNNING -> 011 SAVING|RUNNING: SET_STATE RUNNING->PRE_COPY = data_fd');
  });
  it('a transition that leaves the device in ERROR exits 5 with one line', async () => {
    const r = await runInProcess(['state', 'sim:fail=STOP:STOP_COPY:EIO:error', '--v1', '010']);
    expect(r.code).toBe(5);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/EIO \(5\).*the device is now in ERROR \(device_state 110 ERROR; v2: /);
  });
  it('a refused transition exits 1 naming EINVAL', async () => {
    // (ERROR itself is a usage error: no state to ask for, test/cli/new-user.test.ts.)
    const r = await runInProcess(['state', 'sim:flags=1', 'PRE_COPY']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/EINVAL \(22\)/);
  });
});

describe('vfio-mig save and load', () => {
  const model = 'size=300K';
  for (const [saveP, loadP] of [
    ['v2', 'v2'],
    ['v1', 'v1'],
    ['v1', 'v2'],
    ['v2', 'v1'],
  ]) {
    it(`round-trips through a file: saved with ${saveP}, loaded with ${loadP}`, async () => {
      const file = join(dir, `rt-${saveP}-${loadP}.vfio`);
      const s = await runInProcess(['save', `sim:${model},seed=1`, '-o', file, '--protocol', saveP!, '--json']);
      expect(s.code, s.stderr).toBe(0);
      const saved = json(s.stdout);
      const l = await runInProcess(['load', `sim:${model},seed=2`, '-i', file, '--protocol', loadP!, '--json']);
      expect(l.code, l.stderr).toBe(0);
      const loaded = json(l.stdout);
      expect(loaded).toMatchObject({ savedWith: saveP, protocol: loadP, bytes: saved.bytes, state: 'RUNNING' });
      expect(saved.stateDigest).toMatch(/^[0-9a-f]{64}$/);
      expect(loaded.stateDigest).toBe(saved.stateDigest);
    });
  }

  it('save -o - | load -i - works across two processes', async () => {
    const [s, l] = await pipeCli(
      ['save', `sim:${model},seed=7`, '-o', '-', '--json'],
      ['load', `sim:${model},seed=8`, '-i', '-', '--json'],
    );
    expect(s.code, s.stderr).toBe(0);
    expect(l.code, l.stderr).toBe(0);
    expect(json(l.stdout).stateDigest).toBe(json(s.stderr).stateDigest);
  });

  it('the file format is header, stream, trailer as documented', async () => {
    const file = join(dir, 'format.vfio');
    expect((await runInProcess(['save', 'sim:size=10,flags=3', '-o', file])).code).toBe(0);
    const b = readFileSync(file);
    expect(b.subarray(0, 8).toString('latin1')).toBe('VFIOMIG\0');
    expect(b.readUInt16LE(8)).toBe(1);
    expect(b[10]).toBe(2);
    expect(b.readUInt32LE(12)).toBe(3);
    const n = b.readBigUInt64LE(16);
    expect(BigInt(b.length)).toBe(32n + n + 48n);
    expect(b.subarray(b.length - 48, b.length - 40).toString('latin1')).toBe('VFIOEND\0');
    expect(b.readBigUInt64LE(b.length - 40)).toBe(n);
  });

  describe('refuses bad files before touching the device', () => {
    const good = join(dir, 'good.vfio');
    // A device whose first arc towards RESUMING fails: touching it would show as EIO and exit 5.
    const tripwire = `sim:${model},fail=RUNNING:RUNNING_P2P:EIO:error`;
    const cases: Array<[string, (b: Buffer) => Buffer, RegExp]> = [
      ['empty', () => Buffer.alloc(0), /empty input/],
      ['wrong magic', (b) => Buffer.concat([Buffer.from('NOTMAGIC'), b.subarray(8)]), /wrong magic/],
      ['truncated', (b) => b.subarray(0, b.length - 1000), /truncated/],
      ['truncated header', (b) => b.subarray(0, 20), /truncated/],
      [
        'corrupted',
        (b) => {
          const c = Buffer.from(b);
          c[5000] = c[5000]! ^ 1;
          return c;
        },
        /checksum mismatch/,
      ],
      [
        'corrupted trailer',
        (b) => {
          const c = Buffer.from(b);
          c[c.length - 1] = c[c.length - 1]! ^ 1;
          return c;
        },
        /checksum mismatch/,
      ],
    ];
    it.each(cases)('%s', async (_name, mutate, why) => {
      if (!existsSync(good)) expect((await runInProcess(['save', `sim:${model}`, '-o', good])).code).toBe(0);
      const bad = join(dir, `bad-${_name.replace(/ /g, '-')}.vfio`);
      writeFileSync(bad, mutate(readFileSync(good)));
      const r = await runInProcess(['load', tripwire, '-i', bad]);
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(why);
      expect(r.stderr).toMatch(/EINVAL \(22\)/);
      expect(r.stderr).not.toMatch(/EIO|abandoned/);
    });

    it('from stdin: a bad header is refused before the device; a bad checksum abandons the resume (exit 5)', async () => {
      if (!existsSync(good)) expect((await runInProcess(['save', `sim:${model}`, '-o', good])).code).toBe(0);
      const g = readFileSync(good);
      const r1 = await runInProcess(
        ['load', tripwire, '-i', '-'],
        Buffer.from('garbage that is long enough to be a header....'),
      );
      expect(r1.code).toBe(1);
      expect(r1.stderr).toMatch(/wrong magic/);
      const corrupt = Buffer.from(g);
      corrupt[9000] = corrupt[9000]! ^ 0x40;
      const r2 = await runInProcess(['load', `sim:${model}`, '-i', '-'], corrupt);
      expect(r2.code).toBe(5);
      expect(r2.stderr).toMatch(/load abandoned: \S+ reset to RUNNING/);
    });
  });

  it('a device that rejects the data exits 5 and says it was reset', async () => {
    const file = join(dir, 'foreign.vfio');
    expect((await runInProcess(['save', 'sim:size=1K', '-o', file])).code).toBe(0);
    const r = await runInProcess(['load', 'sim:size=2K', '-i', file]);
    expect(r.code).toBe(5);
    expect(r.stderr).toMatch(/foreign stream.*load abandoned/);
  });

  it('an interrupted save leaves no file under the target name (exit 130)', async () => {
    const target = join(dir, 'interrupted.vfio');
    const cli = spawnCli(['save', 'sim:size=64M,read-delay-ms=5', '-o', target], { probe: true });
    // The temporary file is open and the save is streaming.
    await waitFor(cli.probe!, /^open .*\.interrupted\.vfio\.[\s\S]*^setState (PRE_COPY|STOP_COPY)$/m);
    expect(readdirSync(dir).some((f) => f.startsWith('.interrupted.vfio.'))).toBe(true);
    cli.kill('SIGINT');
    expect((await cli.exited).code).toBe(130);
    expect(existsSync(target)).toBe(false);
    expect(readdirSync(dir).filter((f) => f.startsWith('.interrupted.vfio.'))).toEqual([]);
  });
});

describe('vfio-mig trace', () => {
  it('prints each v1 access with the v2 operations it caused', async () => {
    const r = await runInProcess(['trace', 'sim:size=100,flags=3']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/W4@0\s+device_state := 011 SAVING\|RUNNING\n/); // virtual pre-copy: no v2 op
    expect(r.stdout).toMatch(/W4@0\s+device_state := 010 SAVING\s+->\s+SET_STATE RUNNING->STOP_COPY = data_fd/);
  });
  it('--json is NDJSON that parses line by line, summary last', async () => {
    const lines = (await runInProcess(['trace', 'sim:profile=mtty', '--json'])).stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { field?: string });
    expect(lines.at(-1)).toMatchObject({ event: 'summary', finalState: '000 STOP' });
    expect(lines.filter((l) => l.field === 'pending_bytes').length).toBeGreaterThan(1);
  });
});

describe('usage errors exit 2', () => {
  it.each([
    [['save', 'sim']],
    [['bogus']],
    [['save', 'sim', '-o', 'x', '--protocol', 'v3']],
    [['fsm', 'RUNNING']],
    [['state', 'sim', 'NOT_A_STATE']],
    [['save', 'sim', '-o', 'x', '--rounds', 'many']],
  ])('%j', async (args) => {
    const r = await runInProcess(args);
    expect(r.code).toBe(2);
    expect(r.stderr.length).toBeGreaterThan(0);
  });
  it('a bad device spec names what is wrong', async () => {
    const r = await runInProcess(['info', 'sim:size=lots']);
    expect(r.code).toBe(2); // a usage error
    expect(r.stderr).toMatch(/"lots" is not a size/);
  });
  it('--help on every command has an example', async () => {
    for (const c of ['info', 'state', 'save', 'load', 'fsm', 'trace', 'exec', 'serve', 'env']) {
      const r = await runInProcess([c, '--help']);
      expect(r.code).toBe(0);
      expect(r.stdout).toMatch(/Example:\n\s+vfio-mig /);
    }
  });
});

describe('progress', () => {
  it('shows bytes, rate and phase on a terminal, and nothing when output is piped', () => {
    const file = join(dir, 'progress.vfio');
    const tty = spawnSync(
      'script',
      ['-qec', `${process.execPath} ${CLI} save sim:size=8M,read-delay-ms=1 -o ${file}`, '/dev/null'],
      { encoding: 'utf8' },
    );
    expect(tty.status).toBe(0);
    expect(tty.stdout).toMatch(
      /\rsave sim:size=8M,read-delay-ms=1 (precopy|stopcopy): [\d.]+ (KiB|MiB) \(~\d+% of ~8\.0 MiB\) at [\d.]+ (B|KiB|MiB|GiB)\/s/,
    );
    // A state file says its size: an exact percentage, 100 at the end.
    const load = spawnSync(
      'script',
      [
        '-qec',
        `${process.execPath} ${CLI} load sim:size=8M,write-delay-ms=1,short-write=65536 -i ${file}`,
        '/dev/null',
      ],
      { encoding: 'utf8' },
    );
    expect(load.status).toBe(0);
    const shown = [...load.stdout.matchAll(/\rload sim:\S+ resume: [\d.]+ (?:KiB|MiB) \((\d+)%\) at /g)].map((m) =>
      Number(m[1]),
    );
    expect(shown.length).toBeGreaterThan(1);
    expect(shown).toEqual([...shown].sort((a, b) => a - b));
    expect(shown.every((p) => p >= 0 && p <= 100)).toBe(true);
    const piped = runCli(['save', 'sim:size=8M', '-o', file]);
    expect(piped.code).toBe(0);
    expect(piped.stderr).toBe('');
  });
});
