/**
 * Runs inside the test guest (npm run test:kernel): the conformance checker
 * on the two real mtty devices, one as the other's peer, through both open
 * paths (iommufd cdev and the legacy group/container), by the CLI and by the
 * library. docs/conformance.md publishes what it prints.
 */
import { spawnSync } from 'node:child_process';
import { readdirSync, readlinkSync, writeFileSync } from 'node:fs';
import { release } from 'node:os';
import { basename } from 'node:path';
import { describe, expect, it } from 'vitest';
import { checkConformance, openKernelDevice, type ConformanceReport } from '../../src/index.js';

const UUID = { a: process.env.VFIOMIG_A!, b: process.env.VFIOMIG_B! };
const cdevOf = (u: string) => `/dev/vfio/devices/${readdirSync(`/sys/bus/mdev/devices/${u}/vfio-dev`)[0]}`;
const groupOf = (u: string) => `/dev/vfio/${basename(readlinkSync(`/sys/bus/mdev/devices/${u}/iommu_group`))}:${u}`;
/** CI-sized stress: a few hundred cycles fit well inside the suite's time in the emulated guest. */
const CYCLES = Number(process.env.VFIOMIG_CONFORMANCE_CYCLES ?? 300);

// What mtty (Linux 6.12) is expected to get, and why (docs/conformance.md).
const MTTY_WARNS = [
  'streams.precopy-end', // read() returns 0 at pre-copy's temporary end, not ENOMSG
  'precopy.info-einval', // its resuming data_fd has no ioctl at all: ENOTTY, not EINVAL
  'resume.bad-streams', // a bad header fails write() (EFAULT) but the bytes count: leaving RESUMING then succeeds
  'resume.reset-recovers', // it never enters ERROR, so recovery from ERROR cannot be exercised
];
const MTTY_SKIPS = ['debugfs.state']; // the test kernel has no CONFIG_VFIO_DEBUGFS (nor debugfs)

function expectMtty(r: ConformanceReport): void {
  const failed = r.checks
    .filter((c) => c.verdict === 'fail')
    .map((c) => `${c.id}: ${c.findings.join('; ')}\n  ${c.evidence.slice(-30).join('\n  ')}`);
  expect(failed).toEqual([]);
  expect(r.checks.filter((c) => c.verdict === 'warn').map((c) => c.id)).toEqual(MTTY_WARNS);
  expect(r.checks.filter((c) => c.verdict === 'skip').map((c) => c.id)).toEqual(MTTY_SKIPS);
  expect(r.left.every((l) => l.state === 'RUNNING')).toBe(true);
}

function cli(args: string[]) {
  const started = Date.now();
  const r = spawnSync(process.execPath, [`${process.cwd()}/dist/cli/main.js`, ...args], {
    encoding: 'utf8',
    maxBuffer: 1 << 28,
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr, ms: Date.now() - started };
}

describe('conformance on mtty', () => {
  for (const [path, spec] of [
    ['cdev', cdevOf],
    ['group', groupOf],
  ] as const) {
    it(`vfio-mig conformance via ${path} with the other mtty as --peer, ${CYCLES} cycles: nothing fails`, () => {
      const r = cli(['conformance', spec(UUID.a), '--peer', spec(UUID.b), '--json', '--cycles', String(CYCLES)]);
      expect(r.stdout, r.stderr).not.toBe('');
      const report = JSON.parse(r.stdout) as ConformanceReport;
      expectMtty(report);
      expect(r.code).toBe(0);
      expect(report).toMatchObject({ device: spec(UUID.a), peer: spec(UUID.b), flags: 7, kernel: release(), ok: true });
      const debugfs = report.checks.find((c) => c.id === 'debugfs.state')!;
      expect(debugfs.findings[0]).toMatch(/\/sys\/kernel\/debug\/vfio does not exist/);
      const stress = report.checks.find((c) => c.id === 'stress.cycles')!;
      expect(stress.findings.join(' ')).toContain(`${CYCLES} cycles`);
      // The human table, for docs/conformance.md (the project folder is shared with the host).
      const table = cli(['conformance', spec(UUID.a), '--peer', spec(UUID.b), '--cycles', String(CYCLES)]);
      expect(table.code, table.stderr).toBe(0);
      writeFileSync(
        `${process.cwd()}/.ci-conformance-${path}.txt`,
        `$ vfio-mig conformance ${spec(UUID.a)} --peer ${spec(UUID.b)} --cycles ${CYCLES}\n${table.stdout}\n(${r.ms} ms with --json, ${table.ms} ms for the table, in the emulated test guest)\n`,
      );
    });
  }

  it('checkConformance() on a cdev device, its peer opened through the group: nothing fails', async () => {
    const a = await openKernelDevice(cdevOf(UUID.a));
    const b = await openKernelDevice(groupOf(UUID.b));
    try {
      const r = await checkConformance(a, { peer: b, cycles: 20 });
      expectMtty(r);
      expect(r.kernel).toBe(release());
    } finally {
      await a.close();
      await b.close();
    }
  });

  it('one mtty on its own (resumes into itself)', () => {
    const r = cli(['conformance', cdevOf(UUID.b), '--json', '--cycles', '20']);
    expect(r.code, r.stderr).toBe(0);
    expectMtty(JSON.parse(r.stdout) as ConformanceReport);
  });
});
