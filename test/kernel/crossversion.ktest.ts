/**
 * Live upgrade across the protocol boundary (issue #18): QEMU 7.2 through
 * `vfio-mig exec` (v1 caller, bridged) and QEMU 10 (native v2 caller)
 * migrate the same VM to each other, both ways, on mtty and on a 64 MiB
 * mbig device. Both binaries are Debian's, unpacked by
 * scripts/kernel/fetch-qemu.sh; both run `-M pc-i440fx-7.2`.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { MigState } from '../../src/index.js';
import { qemuBinary, Vmm, type QemuVersion } from './qemu-vmm.js';
import { A, B, SCR, scratch, setScratch, toRunning, waitRunning } from './guest-devices.js';

// v1 device_state values as the v2 states they stand for (docs/protocol.md): the bridge's trace records the VMM's writes.
const V1_AS_V2: Record<number, string> = { 0: 'STOP', 1: 'RUNNING', 2: 'STOP_COPY', 3: 'PRE_COPY', 4: 'RESUMING' };

afterEach(async () => {
  await toRunning(A);
  await toRunning(B);
});

/**
 * One end of a cross-version migration: 7.2 always under `vfio-mig exec`
 * (with the bridge's trace), 10 natively (with QEMU's own trace of the
 * device states it sets).
 */
function vmm(qemu: QemuVersion, name: string, device: string, incoming?: string, machine?: string): Vmm {
  return qemu === '7.2'
    ? new Vmm({ name, qemu, devices: [device], exec: true, trace: `/tmp/${name}.ndjson`, incoming, machine })
    : new Vmm({
        name,
        qemu,
        devices: [device],
        incoming,
        machine,
        args: ['-trace', 'vfio_migration_set_device_state'],
      });
}

/** The migration states the VMM set on its device, in order, from its trace. */
function statesSet(vm: Vmm): string[] {
  if (vm.opts.qemu === '10')
    return [...vm.stderr.matchAll(/vfio_migration_set_device_state.*\) state (\S+)/g)].map((m) => m[1]!);
  return readFileSync(vm.opts.trace!, 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as { field?: string; op?: string; value?: number })
    .filter((e) => e.field === 'device_state' && e.op === 'write')
    .map((e) => V1_AS_V2[e.value!] ?? `v1:${e.value}`);
}

async function migrateTo(
  src: Vmm,
  file: string,
  params: string[] = [],
): Promise<{ totalMs: number; downtimeMs: number; text: string }> {
  rmSync(file, { force: true });
  for (const p of params) await src.hmp(`migrate_set_parameter ${p}`);
  await src.hmp(`migrate -d "exec:cat > ${file}"`);
  const m = await src.waitMigration(300_000);
  expect(m.status, `${m.text}\n${src.stderr}`).toBe('completed');
  return m;
}

const PAIRS: [QemuVersion, QemuVersion][] = [
  ['7.2', '10'],
  ['10', '7.2'],
];
const label = (v: QemuVersion) => (v === '7.2' ? 'QEMU 7.2 via vfio-mig exec' : 'QEMU 10 native');

describe('the fetched QEMU binaries', () => {
  it('run in the guest and are 7.2 and 10', () => {
    for (const [v, re] of [
      ['7.2', /QEMU emulator version 7\.2\./],
      ['10', /QEMU emulator version 10\./],
    ] as const) {
      const q = qemuBinary(v);
      const r = spawnSync(q.bin, ['--version'], { encoding: 'utf8', env: { ...process.env, ...q.env } });
      expect(r.stdout, r.stderr).toMatch(re);
    }
  });
});

describe('live upgrade and roll-back between QEMU 7.2 (bridged) and QEMU 10 (native): mtty', () => {
  beforeAll(async () => {
    await toRunning(A);
    await toRunning(B);
  });

  for (const [from, to] of PAIRS) {
    it(`${label(from)} → ${label(to)}: the UART scratch values arrive; the destination sets its device RESUMING then RUNNING; the source's is left STOP`, async () => {
      const tag = `x${from}-${to}`.replace('.', '');
      const values = from === '7.2' ? [0x5a, 0xa5] : [0x3c, 0xc3];
      await setScratch(B, [0x11, 0x22]);
      const src = vmm(from, `${tag}-src`, A);
      await src.connect();
      const ports = await src.uartPorts();
      expect(ports).toHaveLength(2);
      await src.outb(ports[0]! + SCR, values[0]!);
      await src.outb(ports[1]! + SCR, values[1]!);
      const m = await migrateTo(src, `/tmp/${tag}.mig`);
      console.log(`mtty ${label(from)} → ${label(to)}: total ${m.totalMs} ms, downtime ${m.downtimeMs} ms`);
      expect(await src.quit()).toBe(0);
      if (from === '7.2') expect(src.stderr).toMatch(/bridged: v1 region 9/);
      // QEMU stops the device at switchover and leaves it so with the paused source VM (`cont` would run it
      // again); mtty keeps that state across close. Bridged 7.2 and native 10 alike.
      expect(await toRunning(A)).toBe(MigState.STOP);

      const dst = vmm(to, `${tag}-dst`, B, `exec:cat /tmp/${tag}.mig`);
      await dst.connect();
      await waitRunning(dst);
      // The guest-visible state after the VM runs: what the source's guest wrote.
      expect([await dst.inb(ports[0]! + SCR), await dst.inb(ports[1]! + SCR)]).toEqual(values);
      const states = statesSet(dst);
      console.log(
        `source (${label(from)}) set: ${statesSet(src).join(' ')}; destination (${label(to)}) set while running: ${states.join(' ')}`,
      );
      expect(states).toContain('RESUMING');
      expect(states.at(-1)).toBe('RUNNING');
      expect(await dst.quit()).toBe(0);
      // And in the device itself, once its QEMU is gone.
      expect(await scratch(B)).toEqual(values);
    }, 400_000);
  }

  it('a destination of another machine type: QEMU 10 run without -M pc-i440fx-7.2 refuses the 7.2 stream and exits non-zero, saying which types differ', async () => {
    const src = vmm('7.2', 'xmt-src', A);
    await src.connect();
    await migrateTo(src, '/tmp/xmt.mig');
    expect(await src.quit()).toBe(0);
    const dst = vmm('10', 'xmt-dst', B, 'exec:cat /tmp/xmt.mig', 'pc');
    const code = await dst.exited;
    console.log(`QEMU 10 -M pc on a 7.2 stream: exit ${code}:\n${dst.stderr}`);
    expect(code).not.toBe(0);
    expect(dst.stderr).toMatch(/Machine type received is 'pc-i440fx-7\.2' and local is 'pc-i440fx-10\.\d+'/);
    expect(dst.stderr).toMatch(/load of migration failed/);
  }, 300_000);
});

describe('live upgrade and roll-back between QEMU 7.2 (bridged) and QEMU 10 (native): 64 MiB mbig', () => {
  const C = '83b8f4f2-509f-382f-3c1e-e6bfe0fa1003';
  const D = '83b8f4f2-509f-382f-3c1e-e6bfe0fa1004';
  const crc = (u: string) => readFileSync(`/sys/bus/mdev/devices/${u}/vendor/mem_crc32`, 'utf8').trim();
  const seedOfD = `/sys/bus/mdev/devices/${D}/vendor/seed`;
  let seed = '';

  beforeAll(() => {
    // The same devices and size as qemu72.ktest.ts's mbig cases, whichever file creates them.
    writeFileSync('/sys/module/mbig/parameters/mib', '64');
    for (const u of [C, D])
      if (!existsSync(`/sys/bus/mdev/devices/${u}`))
        writeFileSync('/sys/class/mdev_bus/mbig/mdev_supported_types/mbig-2/create', u);
    seed = readFileSync(seedOfD, 'utf8').trim();
  });
  afterEach(async () => {
    await toRunning(C);
    await toRunning(D);
  });
  // D's own memory again: qemu72.ktest.ts's mbig case wants C and D different when it starts.
  afterAll(() => writeFileSync(seedOfD, seed));

  for (const [from, to] of PAIRS) {
    it(`${label(from)} → ${label(to)}: equal crc32 on the destination, whose device goes RESUMING then RUNNING; the source's is left STOP`, async () => {
      const tag = `xb${from}-${to}`.replace('.', '');
      // New memory on the destination, so only the migration can make the crc32s equal.
      writeFileSync(seedOfD, (Date.now() & 0xffffff).toString(16));
      const want = crc(C);
      expect(crc(D)).not.toBe(want);
      const src = vmm(from, `${tag}-src`, C);
      await src.connect();
      // Both versions converge: the state goes at full speed, and QEMU 10's pre-copy may stop at any size.
      const m = await migrateTo(src, `/tmp/${tag}.mig`, ['max-bandwidth 4G', 'downtime-limit 60000']);
      expect(await src.quit()).toBe(0);
      expect(await toRunning(C)).toBe(MigState.STOP);
      const t1 = Date.now();
      const dst = vmm(to, `${tag}-dst`, D, `exec:cat /tmp/${tag}.mig`);
      await dst.connect();
      await waitRunning(dst);
      const load = Date.now() - t1;
      const states = statesSet(dst);
      expect(states).toContain('RESUMING');
      expect(states.at(-1)).toBe('RUNNING');
      expect(await dst.quit()).toBe(0);
      expect(crc(D)).toBe(want);
      console.log(
        `mbig 64 MiB ${label(from)} → ${label(to)}: total ${m.totalMs} ms, downtime ${m.downtimeMs} ms; destination start-to-running ${load} ms`,
      );
      rmSync(`/tmp/${tag}.mig`, { force: true });
    }, 600_000);
  }
});
