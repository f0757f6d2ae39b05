/**
 * What a new user hit (issue #19, part 2): misleading hints and exit codes,
 * a save into a closed stdout reported as a success, doubled JSON, raw
 * numbers. Each test failed before its fix.
 */
import { spawnSync } from 'node:child_process';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { VfioError } from '../../src/errors.js';
import { errorLine, exitCodeFor, formatBytes, progressReporter } from '../../src/cli/output.js';
import { CLI, runInProcess, sink } from './run-cli.js';
import { openCdev, openGroup } from '../../src/v2/kernel/kernel-device.js';
import type { SysCalls } from '../../src/v2/kernel/sys.js';
import { parseSize } from '../../src/cli/open-device.js';
import * as uapi from '../../src/v2/uapi.js';

/** A kernel where the device is open in another process: EBUSY where the kernel gives it. */
function busyKernel(where: 'bind' | 'group-open' | 'get-device-fd'): SysCalls {
  let fd = 10;
  const busy = (op: string, device: string, syscall: string) => VfioError.fromErrno(16, op, device, syscall);
  return {
    open(path, op) {
      if (where === 'group-open' && path === '/dev/vfio/12') throw busy(op, path, 'open');
      return fd++;
    },
    close() {},
    ioctl(_fd, request, arg, op, device) {
      if (where === 'bind' && request === uapi.VFIO_DEVICE_BIND_IOMMUFD) throw busy(op, device, 'ioctl');
      if (where === 'get-device-fd' && request === uapi.VFIO_GROUP_GET_DEVICE_FD) throw busy(op, device, 'ioctl');
      if (request === uapi.VFIO_GROUP_GET_STATUS)
        new DataView(arg!.buffer, arg!.byteOffset).setUint32(4, uapi.VFIO_GROUP_FLAGS_VIABLE, true);
      return 0;
    },
    ioctlInt: () => 1,
    read: async () => 0,
    write: async () => 0,
    pread: () => 0,
    pwrite: () => 0,
  };
}

describe('EBUSY opening a device another process holds', () => {
  it.each([
    ['cdev bind', () => openCdev('/dev/vfio/devices/vfio0', '/dev/iommu', busyKernel('bind'))],
    ['group open', () => openGroup('/dev/vfio/12', 'uuid-1', '/dev/vfio/vfio', busyKernel('group-open'))],
    ['group get-device-fd', () => openGroup('/dev/vfio/12', 'uuid-1', '/dev/vfio/vfio', busyKernel('get-device-fd'))],
  ])('%s: says another process holds it, never "reset it" (a reset cannot take it over)', (_name, open) => {
    let err: unknown;
    try {
      open();
    } catch (e) {
      err = e;
    }
    expect(err).toMatchObject({ code: 'EBUSY' });
    const line = errorLine(err);
    expect(line).toContain('another process holds the device or its VFIO group open');
    expect(line).not.toMatch(/reset|no device/);
  });

  it('EBUSY from a device mid-migration still points at the reset', () => {
    const e = new VfioError(
      'EBUSY',
      'openV1Bridge',
      'sim',
      'device is in STOP_COPY, which has no v1 value without its data session; reset it first',
    );
    expect(errorLine(e)).toContain('vfio-mig state DEVICE --reset');
  });
});

describe('progress rates are rounded', () => {
  afterEach(() => void vi.useRealTimers());

  it('below 1 KiB/s a rate is whole bytes, not 464.51612903225805 B/s', () => {
    expect(formatBytes(464.51612903225805)).toBe('465 B');
    expect(formatBytes(1023.4)).toBe('1023 B');
    vi.useFakeTimers({ toFake: ['Date'] });
    vi.setSystemTime(1_000_000);
    const stderr = Object.assign(sink(), { isTTY: true });
    const progress = progressReporter(stderr, 'save sim', null);
    vi.setSystemTime(1_000_000 + 1550);
    progress('stopcopy', 720); // 464.516... B/s
    vi.setSystemTime(1_000_000 + 3100);
    progress.done(1440);
    const lines = stderr
      .bytes()
      .toString()
      .split(/[\r\n]/)
      .map((l) => l.trim())
      .filter(Boolean);
    expect(lines).toEqual(['save sim stopcopy: 720 B at 465 B/s', 'save sim done: 1.4 KiB in 3.1 s at 465 B/s']);
  });
});

describe('state --reset STATE --json', () => {
  it.each([
    [
      ['state', 'sim', '--reset', 'STOP', '--json'],
      { device: 'sim', reset: true, path: ['RUNNING', 'RUNNING_P2P', 'STOP'], dataFd: false, state: 'STOP' },
    ],
    [
      ['state', 'sim', '--reset', '--v1', '010', '--json'],
      { device: 'sim', reset: true, from: '001 RUNNING', to: '010 SAVING', state: 'STOP_COPY' },
    ],
    [['state', 'sim', '--reset', '--json'], { device: 'sim', reset: true, state: 'RUNNING' }],
  ])('%j prints one JSON object', async (args, want) => {
    const r = await runInProcess(args);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.trimEnd().split('\n')).toHaveLength(1);
    expect(JSON.parse(r.stdout)).toMatchObject(want);
  });

  it('without --json both lines stay', async () => {
    const r = await runInProcess(['state', 'sim', '--reset', 'STOP']);
    expect(r.stdout).toBe('reset: RUNNING\nRUNNING -> RUNNING_P2P -> STOP\n');
  });
});

describe("our own usage errors point at --help, as commander's do", () => {
  it.each([
    [['fsm', 'RUNNING'], 'vfio-mig: fsm takes both FROM and TO, or neither\n(see vfio-mig fsm --help)\n'],
    [
      ['state', 'sim', '--v1', 'BOGUS'],
      'vfio-mig: unknown v1 state "BOGUS" (000..111 bits, or STOP, RUNNING, SAVING, SAVING|RUNNING, RESUMING)\n(see vfio-mig state --help)\n',
    ],
    [['info', 'sim:ports=7'], 'vfio-mig: sim:ports=7: ports must be 1 or 2 (got 7)\n(see vfio-mig info --help)\n'],
  ])('%j', async (args, stderr) => {
    const r = await runInProcess(args);
    expect(r).toMatchObject({ code: 2, stdout: '', stderr });
  });

  it('under --json the one error object, without the pointer', async () => {
    const r = await runInProcess(['fsm', 'RUNNING', '--json']);
    expect(r.code).toBe(2);
    expect(JSON.parse(r.stderr)).toMatchObject({
      error: { code: 'EINVAL', exit: 2, message: 'fsm takes both FROM and TO, or neither' },
    });
  });

  it('a failure that is not a usage error has no pointer', async () => {
    const r = await runInProcess(['state', 'sim', '--v1', '101']);
    expect(r.code).toBe(1);
    expect(r.stderr).not.toContain('--help)');
  });
});

describe('a path that is not a VFIO device is a usage error, not "no migration support"', () => {
  it.each(['/etc/passwd', '/dev/null', '/tmp'])('info %s: exit 2 with the help pointer', async (path) => {
    const r = await runInProcess(['info', path]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(
      new RegExp(
        `^vfio-mig: open on ${path}: ENOTTY \\(25\\): not a VFIO device: .*\\n\\(see vfio-mig info --help\\)\\n$`,
      ),
    );
  });

  it('a VFIO device without v2 migration is still exit 3', () => {
    expect(
      exitCodeFor(
        new VfioError('ENOTTY', 'FEATURE_MIGRATION', '/dev/vfio/devices/vfio0', 'device does not support v2 migration'),
      ),
    ).toBe(3);
    expect(
      exitCodeFor(
        new VfioError(
          'ENOTTY',
          'VFIO_DEVICE_BIND_IOMMUFD',
          '/dev/vfio/devices/vfio0',
          'not a VFIO device (cdev) node',
          { hint: 'not-a-device' },
        ),
      ),
    ).toBe(2);
    // The hint decides, not the words: the same reason without it is a device without migration.
    expect(
      exitCodeFor(
        new VfioError('ENOTTY', 'VFIO_DEVICE_BIND_IOMMUFD', '/dev/vfio/devices/vfio0', 'not a VFIO device (cdev) node'),
      ),
    ).toBe(3);
  });
});

describe('sizes take T and TiB, so a size over the 1 TiB cap is named as such', () => {
  it('1T and 1TiB are 2^40 bytes; 2T is over the cap, which the error names', () => {
    expect(parseSize('1T', 'size', 2 ** 40)).toBe(2 ** 40);
    expect(parseSize('1TiB', 'size', 2 ** 40)).toBe(2 ** 40);
    expect(() => parseSize('2T', 'size', 2 ** 40)).toThrow(
      'size: 2T is more than the largest allowed (1099511627776 bytes, 1 TiB)',
    );
    expect(() => parseSize('2G', '--section-size', 2 ** 30)).toThrow(
      '--section-size: 2G is more than the largest allowed (1073741824 bytes, 1 GiB)',
    );
  });
});

describe('state lists only the states it can set', () => {
  it('state sim BOGUS: the list has no ERROR', async () => {
    const r = await runInProcess(['state', 'sim', 'BOGUS']);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe(
      'vfio-mig: unknown v2 state "BOGUS" (STOP, RUNNING, STOP_COPY, RESUMING, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P)\n(see vfio-mig state --help)\n',
    );
  });
  it('state sim ERROR: a usage error saying why', async () => {
    const r = await runInProcess(['state', 'sim', 'ERROR']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(
      /^vfio-mig: ERROR cannot be set: a device enters it when a transition fails and leaves it by --reset/,
    );
  });
  it('fsm still takes ERROR (the table has its row)', async () => {
    const r = await runInProcess(['fsm', 'ERROR', 'STOP']);
    expect(r.stdout).toMatch(/^ERROR -> STOP: EINVAL/);
  });
});

describe('help NAME for a command that does not exist', () => {
  it.each([
    [['help', 'bogus'], "error: unknown command 'bogus'\n(see vfio-mig --help)\n"],
    [['help', 'sav'], "error: unknown command 'sav'\n(Did you mean save?)\n(see vfio-mig --help)\n"],
  ])('%j: one line naming it, exit 2, not the whole help', async (args, stderr) => {
    const r = await runInProcess(args);
    expect(r).toMatchObject({ code: 2, stdout: '', stderr });
  });
  it('help save and help still show the help', async () => {
    expect((await runInProcess(['help', 'save'])).stdout).toMatch(/^Usage: vfio-mig save /);
    const all = await runInProcess(['help']);
    expect(all.code).toBe(0);
    expect(all.stdout).toMatch(/^Usage: vfio-mig \[options\] \[command\]/);
  });
});

describe('save -o - into a stdout that is /dev/null (a closed stdout is reopened there by Node)', () => {
  /** The built binary with stdout closed by the shell (`>&-`), or given `stdout` as fd 1. */
  const run = (args: string[], stdout: 'closed' | number) =>
    stdout === 'closed'
      ? spawnSync('sh', ['-c', `exec "$0" "$@" >&-`, process.execPath, CLI, ...args], { encoding: 'utf8' })
      : spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', stdio: ['ignore', stdout, 'pipe'] });
  const refused =
    /^vfio-mig: refusing to save to stdout: it is \/dev\/null \(a closed stdout, >&-, is reopened there\), so the state would be lost; -o \/dev\/null discards it on purpose\n\(see vfio-mig save --help\)\n$/;

  it.each([['-'], ['/dev/stdout']])('-o %s with stdout closed (>&-): exit 2, not "saved"', (output) => {
    const r = run(['save', 'sim:size=4K', '-o', output], 'closed');
    expect(r.stderr).toMatch(refused);
    expect(r.status).toBe(2);
  });

  it('-o - > /dev/null: refused the same way (the two cannot be told apart)', () => {
    const fd = openSync('/dev/null', 'w');
    try {
      const r = run(['save', 'sim:size=4K', '-o', '-'], fd);
      expect(r.stderr).toMatch(refused);
      expect(r.status).toBe(2);
    } finally {
      closeSync(fd);
    }
  });

  it('-o /dev/null discards the state on purpose, whatever stdout is', () => {
    const r = run(['save', 'sim:size=4K', '-o', '/dev/null'], 'closed');
    expect(r.status, r.stderr).toBe(0);
    // stdout is that same /dev/null, so the summary goes to stderr, as with -o /dev/stdout.
    expect(r.stderr).toMatch(/^saved 4160 bytes \(4144 in 1 pre-copy round\) from sim:size=4K to \/dev\/null /);
    const fd = openSync('/dev/null', 'w');
    try {
      expect(run(['save', 'sim:size=4K', '-o', '/dev/null'], fd).status).toBe(0);
    } finally {
      closeSync(fd);
    }
  });

  it('--help and the README say so', async () => {
    expect((await runInProcess(['save', '--help'])).stdout).toMatch(/-o - is refused when\s+stdout is \/dev\/null/);
    expect(readFileSync(join(__dirname, '../../README.md'), 'utf8')).toMatch(
      /`-o -` \(or `-o \/dev\/stdout`\) is refused, exit 2, when\s+stdout is `\/dev\/null`/,
    );
  });
});
