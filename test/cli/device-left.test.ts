/**
 * What a new-user trial found: commands that left a device in ERROR without
 * saying so (exit 1), info and trace deaf to signals on large simulated
 * devices, no limit on sim:size, a pre-copy line for a device without
 * PRE_COPY, and --cycles 0 passing stress.cycles. Each test failed before
 * its fix.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, openSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { stringMatching } from '../matchers.js';
import { CLI, bufferContext, runInProcess } from './run-cli.js';
import { spawnCli, textOf, waitFor } from './spawn-cli.js';
import { conformanceCommand } from '../../src/cli/conformance.js';
import { checkConformance, createSimDevice, MigState, SIM_MAX_STATE_SIZE, VfioError } from '../../src/index.js';

const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-left-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
/** The last line of a --json output: the fields these tests read. */
const json = (s: string) =>
  JSON.parse(s.trim().split('\n').at(-1)!) as { error: { message: string }; stateDigest: string | null };

/** The built CLI as a process killed after `ms`: what used to run for hours fails here instead of hanging the suite. */
function runBounded(args: string[], ms = 10_000) {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: ms, killSignal: 'SIGKILL' });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('a command that leaves the device in ERROR exits 5 and says so', () => {
  const toError = 'sim:fail=PRE_COPY_P2P:STOP_COPY:EIO:error';

  it.each(['v2', 'v1'])('save --protocol %s', async (protocol) => {
    const out = join(dir, `error-${protocol}.vfio`);
    const r = await runInProcess(['save', toError, '-o', out, '--protocol', protocol]);
    expect(r.code, r.stderr).toBe(5);
    expect(r.stderr).toMatch(/EIO \(5\).*; the device is now in ERROR\n$/);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(existsSync(out)).toBe(false);
    expect(readdirSync(dir).filter((f) => f.startsWith(`.error-${protocol}`))).toEqual([]);
  });

  it('save --json: one error object with the errno and exit 5', async () => {
    const r = await runInProcess(['save', toError, '-o', join(dir, 'error.vfio'), '--json']);
    expect(r.code).toBe(5);
    expect(json(r.stderr).error).toMatchObject({ code: 'EIO', errno: 5, op: 'SET_STATE PRE_COPY->STOP_COPY', exit: 5 });
    expect(json(r.stderr).error.message).toMatch(/the device is now in ERROR$/);
  });

  it('save: a failure that leaves the device elsewhere names that state and exits 1', async () => {
    const r = await runInProcess(['save', 'sim:fail=PRE_COPY_P2P:STOP_COPY:EIO', '-o', join(dir, 'stay.vfio')]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/EIO \(5\).*; the device is now in PRE_COPY_P2P\n$/);
  });

  it('trace', async () => {
    const r = await runInProcess(['trace', toError]);
    expect(r.code).toBe(5);
    expect(r.stdout).toMatch(/device_state = 110 ERROR/);
    expect(r.stderr).toMatch(/EIO \(5\).*; the device is now in ERROR\n$/);
  });

  it('state (v2 names) as before: the path and the state, exit 5', async () => {
    const r = await runInProcess(['state', 'sim:fail=STOP:STOP_COPY:EIO:error', 'STOP_COPY']);
    expect(r.code).toBe(5);
    expect(r.stderr).toMatch(
      /; the device is now in ERROR \(path was RUNNING -> RUNNING_P2P -> STOP -> STOP_COPY\)\n$/,
    );
  });

  it('conformance: a device the checker could not bring back from ERROR', async () => {
    const dev = createSimDevice({
      stateSize: 8192,
      faults: { failArc: [{ from: MigState.STOP, to: MigState.STOP_COPY, errno: 'EIO', leave: 'error' }] },
    });
    dev.reset = async () => {
      throw new VfioError('EIO', 'VFIO_DEVICE_RESET', dev.name, 'reset refused');
    };
    const { ctx, stdout } = bufferContext([]);
    const code = await conformanceCommand(ctx, dev, undefined, { only: ['fsm'] });
    expect(stdout.bytes().toString()).toMatch(/left in ERROR: recover with VFIO_DEVICE_RESET/);
    expect(code).toBe(5);
  });
});

describe('info and trace take a signal mid-run on a large simulated device', () => {
  it.each([
    ['info --digest', 'SIGTERM', 143, ['info', 'sim:size=100G', '--digest'], 'left in RUNNING'],
    ['trace', 'SIGINT', 130, ['trace', 'sim:size=8G'], 'reset to RUNNING'],
  ] as const)(
    '%s: %s ends it mid-run, naming where the device was left',
    async (_, sig, code, args, where) => {
      const cli = spawnCli(args, { stdout: openSync('/dev/null', 'w'), probe: true });
      // Mid-run: hashing the state (info), holding a data session (trace).
      await waitFor(cli.probe!, args[0] === 'info' ? /^stateDigest$/m : /^setState (PRE_COPY|STOP_COPY)$/m);
      // The interrupt gives the devices 2 s to close, and its message comes only once they are:
      // an exit on the signal with the message shows it was taken mid-run, not after the work.
      cli.kill(sig);
      expect(await cli.exited, textOf(cli.stderr)).toEqual({ code, signal: null });
      expect(textOf(cli.stderr)).toBe(`vfio-mig: interrupted by ${sig}; ${args[1]} ${where}\n`);
    },
    30_000,
  );
});

describe('info stays quick: the state digest only up to 256 MiB of stop-copy size, or with --digest', () => {
  it('above the limit: not computed, said so (JSON: null)', async () => {
    const r = await runInProcess(['info', 'sim:size=300M']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(
      /^state digest {2}not computed: stop-copy size over 256\.0 MiB \(--digest hashes the state/m,
    );
    expect(json((await runInProcess(['info', 'sim:size=300M', '--json'])).stdout).stateDigest).toBeNull();
  });
  it('--digest computes it whatever the size; below the limit it is computed anyway', async () => {
    const d = json((await runInProcess(['info', 'sim:size=300M', '--json', '--digest'])).stdout).stateDigest;
    expect(d).toBe(createSimDevice({ stateSize: 300 << 20 }).stateDigest());
    expect(json((await runInProcess(['info', 'sim:size=64M', '--json'])).stdout).stateDigest).toMatch(/^[0-9a-f]{64}$/);
  });
  it('the largest simulated device answers at once', () => {
    const r = runBounded(['info', 'sim:size=1024G', '--json'], 5000);
    expect(r.code, r.stderr).toBe(0);
    expect(json(r.stdout)).toMatchObject({
      stateDigest: null,
      stopCopySize: String((2 ** 40 / 4096) * 16 + 2 ** 40 + 32 + 16),
    });
  });
});

describe('sim:size has a limit', () => {
  it.each(['9999999999999', '1025G', '2T', '2TiB'])('sim:size=%s is a usage error naming the limit', async (size) => {
    const r = runBounded(['info', `sim:size=${size}`]);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe(
      `vfio-mig: sim:size=${size}: size: ${size} is more than the largest allowed (1099511627776 bytes, 1 TiB)\n(see vfio-mig info --help)\n`,
    );
    expect((await runInProcess(['--help'])).stdout).toMatch(/size=4M \(.*at most 1T\)/);
  });
  it('and so has the library', () => {
    expect(SIM_MAX_STATE_SIZE).toBe(2 ** 40);
    expect(() => createSimDevice({ stateSize: SIM_MAX_STATE_SIZE + 1 })).toThrow(
      expect.objectContaining({ code: 'EINVAL', reason: stringMatching(/at most 1099511627776/) }),
    );
    expect(createSimDevice({ stateSize: SIM_MAX_STATE_SIZE }).stateSize).toBe(SIM_MAX_STATE_SIZE);
  });
});

describe('info on a device without PRE_COPY', () => {
  it('says so instead of describing a pre-copy session', async () => {
    const r = await runInProcess(['info', 'sim:flags=STOP_COPY+P2P']);
    expect(r.stdout).toMatch(/^pre-copy {6}none \(no PRE_COPY\)$/m);
    expect(r.stdout).not.toMatch(/pre-copy session/);
    expect((await runInProcess(['info', 'sim'])).stdout).toMatch(/^pre-copy info only within a pre-copy session/m);
  });
});

describe('conformance --cycles', () => {
  it('0 is a usage error naming --cycles', async () => {
    const r = await runInProcess(['conformance', 'sim:size=8K', '--only', 'stress.cycles', '--cycles', '0']);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe(
      'vfio-mig: --cycles takes a whole number from 1 to 1000000000 (got "0")\n(see vfio-mig conformance --help)\n',
    );
    expect(r.stdout).toBe('');
  });
  it('1 runs one cycle', async () => {
    const r = await runInProcess(['conformance', 'sim:size=8K', '--only', 'stress.cycles', '--cycles', '1']);
    expect(r.code, r.stdout).toBe(0);
    expect(r.stdout).toMatch(/stress\.cycles\s+pass\s+1 cycles/);
  });
  it('the library refuses 0 cycles too', async () => {
    await expect(checkConformance(createSimDevice({ stateSize: 8192 }), { cycles: 0 })).rejects.toMatchObject({
      code: 'EINVAL',
      reason: stringMatching(/at least 1/),
    });
  });
});
