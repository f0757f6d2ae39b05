/** vfio-mig conformance: exit codes, the table, the JSON object, usage errors (in-process; test/cli/cli.test.ts runs the binary too). */
import { describe, expect, it } from 'vitest';
import { stringContaining } from '../matchers.js';
import { CONFORMANCE_CHECKS, type ConformanceReport } from '../../src/index.js';
import { runInProcess } from '../cli/run-cli.js';

describe('vfio-mig conformance', () => {
  it('a clean sim with a peer: exit 0, a table row per check, both devices left RUNNING', async () => {
    const r = await runInProcess(['conformance', 'sim:size=16K', '--peer', 'sim:size=16K,seed=4', '--cycles', '4']);
    expect(r.code, r.stderr).toBe(0);
    for (const c of CONFORMANCE_CHECKS)
      expect(r.stdout).toMatch(new RegExp(`^${c.id.replace('.', '\\.')} +(pass|skip|warn) `, 'm'));
    // The sim stays out of ERROR after a refused resume: recovery from ERROR is a warning, not a pass.
    expect(r.stdout).toMatch(/^resume\.reset-recovers +warn +recovery from ERROR not exercised: /m);
    expect(r.stdout).toMatch(/^20 passed, 0 failed, 1 warned, 1 skipped$/m);
    expect(r.stdout).toMatch(/^sim:size=16K left RUNNING$/m);
    expect(r.stdout).toMatch(/^sim:size=16K,seed=4 left RUNNING$/m);
  });

  it('a device whose STOP->RUNNING_P2P arc fails: exit 1 and the failing checks say why', async () => {
    const r = await runInProcess([
      'conformance',
      'sim:size=16K,fail=STOP:RUNNING_P2P:EIO',
      '--only',
      'fsm.paths',
      '--json',
    ]);
    expect(r.code, r.stderr).toBe(1);
    const j = JSON.parse(r.stdout) as ConformanceReport;
    expect(j).toMatchObject({
      device: 'sim:size=16K,fail=STOP:RUNNING_P2P:EIO',
      peer: null,
      flags: 7,
      kernel: null,
      ok: false,
      summary: { fail: 1 },
    });
    expect(j.checks).toHaveLength(1);
    expect(j.checks[0]).toMatchObject({
      id: 'fsm.paths',
      verdict: 'fail',
      rule: stringContaining('must fully transition the device'),
    });
    expect(j.checks[0]?.findings[0]).toMatch(/STOP->RUNNING: failed with EIO/);
    expect(j.checks[0]?.evidence.join('\n')).toMatch(/SET_STATE RUNNING = EIO/);
  });

  it('--json is one object with the flags, each check and where the device was left', async () => {
    const r = await runInProcess([
      'conformance',
      'sim:flags=STOP_COPY,size=8K',
      '--json',
      '--only',
      'discovery,streams.precopy-end',
    ]);
    expect(r.code, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout) as ConformanceReport;
    expect(j.flagNames).toEqual(['STOP_COPY']);
    expect(j.checks.map((c) => [c.id, c.verdict])).toEqual([
      ['discovery.flags', 'pass'],
      ['discovery.data-size', 'pass'],
      ['streams.precopy-end', 'skip'],
    ]);
    expect(j.left).toEqual([{ device: 'sim:flags=STOP_COPY,size=8K', state: 'RUNNING' }]);
  });

  it('usage errors exit 2: unknown check, bad --cycles, a peer of another model', async () => {
    const a = await runInProcess(['conformance', 'sim', '--only', 'fsm.nope']);
    expect(a.code).toBe(2);
    expect(a.stderr).toMatch(/unknown check "fsm\.nope"/);
    const b = await runInProcess(['conformance', 'sim', '--cycles', 'many']);
    expect(b.code).toBe(2);
    expect(b.stderr).toMatch(/--cycles takes a whole number/);
    const c = await runInProcess(['conformance', 'sim:flags=7', '--peer', 'sim:flags=1', '--json']);
    expect(c.code).toBe(2);
    expect((JSON.parse(c.stderr) as { error: unknown }).error).toMatchObject({
      code: 'EINVAL',
      exit: 2,
      message: stringContaining("peer's migration flags (1) differ"),
    });
  });

  it('--peer naming the kernel device itself is a usage error', async () => {
    // Refused before anything is opened (this path does not even exist here).
    const r = await runInProcess(['conformance', '/dev/vfio/devices/vfio9', '--peer', '/dev/vfio/devices/vfio9']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--peer \/dev\/vfio\/devices\/vfio9 is the device itself/);
  });

  it('--help lists every check and whether it changes device state', async () => {
    const r = await runInProcess(['conformance', '--help']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/discovery\.flags +read-only/);
    for (const c of CONFORMANCE_CHECKS) expect(r.stdout).toContain(c.id);
    expect(r.stdout).toMatch(/fsm\.paths +changes state/);
  });
});
