/**
 * Runs inside the test guest (npm run test:kernel) against two real mtty
 * devices, through both open paths.
 */
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readdirSync, readlinkSync, rmSync } from 'node:fs';
import { basename, dirname } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { cliCopyIn } from '../cli/run-cli.js';
import { stringContaining, stringMatching } from '../matchers.js';
import { KernelDevice, openKernelDevice, type V2Device } from '../../src/index.js';
import { deviceContract } from '../v2/device-contract.js';

const UUID = { a: process.env.VFIOMIG_A!, b: process.env.VFIOMIG_B! };
const cdevOf = (u: string) => `/dev/vfio/devices/${readdirSync(`/sys/bus/mdev/devices/${u}/vfio-dev`)[0]}`;
const groupOf = (u: string) => `/dev/vfio/${basename(readlinkSync(`/sys/bus/mdev/devices/${u}/iommu_group`))}:${u}`;

// mtty's state is its UART registers, in BAR0 (region 0) for port 0 and
// BAR1 for port 1; offset 7 is the scratch register, which mtty migrates.
const UART_SCR = 7;

async function scratch(dev: V2Device): Promise<string> {
  const k = dev as KernelDevice;
  const p0 = await k.regionRead(0, UART_SCR, 1);
  const p1 = await k.regionRead(1, UART_SCR, 1);
  return `${p0[0]}/${p1[0]}`;
}

for (const [path, spec] of [
  ['cdev', cdevOf],
  ['group', groupOf],
] as const) {
  deviceContract({
    name: `mtty via ${path}`,
    flags: 7,
    temporaryEnd: 'zero',
    // The long profile here: only a kernel device has real fds to leak (about 30 s a path).
    cycles: 1000,
    open: (which) => openKernelDevice(spec(UUID[which])),
    async mutate(dev, value) {
      const k = dev as KernelDevice;
      await k.regionWrite(0, UART_SCR, Uint8Array.of(value));
      await k.regionWrite(1, UART_SCR, Uint8Array.of(value ^ 0xff));
    },
    fingerprint: scratch,
  });
}

/** The built package copied where nobody may read it (the checkout may be 0700, a clone in /root): its CLI. */
let copyDir: string | undefined;
function readableCli(): string {
  if (!copyDir) {
    copyDir = mkdtempSync('/tmp/vfio-mig-nobody-');
    chmodSync(copyDir, 0o755);
  }
  return cliCopyIn(copyDir);
}
afterAll(() => {
  if (copyDir) rmSync(copyDir, { recursive: true, force: true });
});
describe('mtty: device and region info', () => {
  it('reports regions through VFIO_DEVICE_GET_INFO / GET_REGION_INFO', async () => {
    const dev = await openKernelDevice(cdevOf(UUID.a));
    try {
      const regions = await dev.regions();
      expect(regions.length).toBe(9);
      expect(regions[0]!.size).toBeGreaterThan(0n);
      expect(regions[0]!.flags & 3).toBe(3); // read|write
    } finally {
      await dev.close();
    }
  });
});

describe('mtty: bad input', () => {
  it('a path that does not exist: ENOENT', async () => {
    await expect(openKernelDevice('/dev/vfio/devices/vfio99')).rejects.toMatchObject({ code: 'ENOENT' });
    await expect(openKernelDevice(`/dev/vfio/999:${UUID.a}`)).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('a file that is not a VFIO device: ENOTTY', async () => {
    await expect(openKernelDevice('/dev/null')).rejects.toMatchObject({
      code: 'ENOTTY',
      reason: stringContaining('not a VFIO device'),
    });
    await expect(openKernelDevice('/dev/null:whatever')).rejects.toMatchObject({
      code: 'ENOTTY',
      reason: stringContaining('not a VFIO device: a mem character device (expected /dev/vfio/N:DEVICE)'),
    });
  });

  it('a device name that is not in the group: an errno naming the device', async () => {
    const group = groupOf(UUID.a).split(':')[0]!;
    const err = await openKernelDevice(`${group}:00000000-0000-0000-0000-000000000000`).catch((e: unknown) => e);
    expect(err).toMatchObject({
      code: stringMatching(/^E/),
      reason: stringContaining('no device "00000000-0000-0000-0000-000000000000"'),
    });
  });

  it('no permission: EACCES for an unprivileged user', () => {
    const script = `import('${dirname(readableCli())}/../index.js').then(async (m) => {
      try { await m.openKernelDevice('${cdevOf(UUID.a)}'); console.log('opened'); } catch (e) { console.log(e.code); }
    })`;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], {
      uid: 65534,
      gid: 65534,
      encoding: 'utf8',
    });
    expect(r.stdout.trim()).toBe('EACCES');
  });

  it('fds are not leaked by failed opens', async () => {
    const before = readdirSync('/proc/self/fd').length;
    for (let i = 0; i < 20; i++) {
      await openKernelDevice('/dev/null').catch(() => undefined);
      await openKernelDevice(`${groupOf(UUID.a).split(':')[0]}:nope`).catch(() => undefined);
    }
    expect(readdirSync('/proc/self/fd').length).toBe(before);
  });
});

describe('mtty: closing mid-session', () => {
  it.each(['RESUMING', 'STOP_COPY', 'PRE_COPY'] as const)(
    'closing the device in %s leaves it usable on the next open',
    async (state) => {
      const { MigState } = await import('../../src/index.js');
      const d = await openKernelDevice(cdevOf(UUID.a));
      const s = await d.setState(MigState[state]);
      expect(s).not.toBeNull();
      await d.close(); // the stream's fd is still open here, as in a crashed caller
      await s!.close();
      const again = await openKernelDevice(cdevOf(UUID.a));
      try {
        expect(await again.getState()).toBe(MigState.RUNNING);
        const r = await again.setState(MigState.RESUMING);
        await again.setState(MigState.STOP).catch((e: { code: string }) => expect(e.code).toBe('EINVAL'));
        await r?.close();
      } finally {
        await again.close();
      }
    },
  );
});

describe('mtty: state across close', () => {
  it('keeps STOP across close and reopen (mtty does no reset on open)', async () => {
    const { MigState } = await import('../../src/index.js');
    const d = await openKernelDevice(cdevOf(UUID.b));
    await d.setState(MigState.STOP);
    await d.close();
    const again = await openKernelDevice(groupOf(UUID.b));
    try {
      expect(await again.getState()).toBe(MigState.STOP);
    } finally {
      await again.reset();
      await again.close();
    }
  });
});

describe('vfio-mig CLI on mtty', () => {
  const cli = (args: string[], uid?: number) => {
    const r = spawnSync(process.execPath, [uid ? readableCli() : `${process.cwd()}/dist/cli/main.js`, ...args], {
      encoding: 'utf8',
      ...(uid ? { uid, gid: uid } : {}),
    });
    return { code: r.status, stdout: r.stdout, stderr: r.stderr };
  };

  it('info reports flags 7, RUNNING and the regions', () => {
    const r = cli(['info', cdevOf(UUID.a), '--json']);
    expect(r.code, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout) as { regions: unknown[] };
    expect(j).toMatchObject({
      flags: 7,
      flagNames: ['STOP_COPY', 'P2P', 'PRE_COPY'],
      state: 'RUNNING',
      stopCopySize: '96',
    });
    expect(j.regions).toHaveLength(9);
  });

  it.each([
    ['v2', 'cdev'],
    ['v1', 'group'],
  ] as const)('save on one mtty and load on the other (%s protocol, load via %s)', async (protocol, loadPath) => {
    const a = await openKernelDevice(cdevOf(UUID.a));
    await a.regionWrite(0, UART_SCR, Uint8Array.of(protocol === 'v1' ? 0x42 : 0x24));
    const want = await scratch(a);
    await a.close();
    const file = `/tmp/mtty-${protocol}.vfio`;
    const s = cli(['save', cdevOf(UUID.a), '-o', file, '--protocol', protocol, '--json']);
    expect(s.code, s.stderr).toBe(0);
    expect((JSON.parse(s.stdout) as { bytes: string }).bytes).toBe('96'); // u64 as a decimal string
    const l = cli([
      'load',
      loadPath === 'cdev' ? cdevOf(UUID.b) : groupOf(UUID.b),
      '-i',
      file,
      '--protocol',
      protocol,
      '--json',
    ]);
    expect(l.code, l.stderr).toBe(0);
    expect(JSON.parse(l.stdout)).toMatchObject({ bytes: '96', state: 'RUNNING' });
    const b = await openKernelDevice(cdevOf(UUID.b));
    try {
      expect(await scratch(b)).toBe(want);
    } finally {
      await b.close();
    }
    const a2 = await openKernelDevice(cdevOf(UUID.a));
    await a2.reset();
    await a2.close();
  });

  it('exit 2 for a node that is not a VFIO device (a usage error), 4 without permission', () => {
    const r3 = cli(['info', '/dev/null']);
    expect(r3.code).toBe(2);
    expect(r3.stderr).toMatch(/ENOTTY \(25\)/);
    const r4 = cli(['info', cdevOf(UUID.a)], 65534);
    expect(r4.code).toBe(4);
    expect(r4.stderr).toMatch(/EACCES \(13\)/);
  });
});
