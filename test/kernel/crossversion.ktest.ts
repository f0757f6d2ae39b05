/**
 * Live upgrade across the protocol boundary (issue #18): QEMU 7.2 through
 * `vfio-mig exec` (v1 caller, bridged) and QEMU 10 (native v2 caller)
 * migrate the same VM to each other, both ways, on mtty and on a 64 MiB
 * mbig device. Both binaries are Debian's, unpacked by
 * scripts/kernel/fetch-qemu.sh; both run `-M pc-i440fx-7.2`.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { MigState } from '../../src/index.js';
import { qemuBinary, Vmm, type QemuVersion } from './qemu-vmm.js';
import {
  A,
  B,
  C,
  cdevOf,
  crc,
  createMbig,
  D,
  isWrite,
  SCR,
  scratch,
  setScratch,
  sleep,
  toRunning,
  traceOf,
  waitRunning,
  waitTrace,
} from './guest-devices.js';

const CLI = resolve(import.meta.dirname, '../../dist/cli/main.js');

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
function vmm(qemu: QemuVersion, name: string, devices: string[], incoming?: string, machine?: string): Vmm {
  return qemu === '7.2'
    ? new Vmm({ name, qemu, devices, exec: true, trace: `/tmp/${name}.ndjson`, incoming, machine })
    : new Vmm({
        name,
        qemu,
        devices,
        incoming,
        machine,
        args: ['-trace', 'vfio_migration_set_device_state'],
      });
}

/** The migration states the VMM set on its device, in order, from its trace. */
function statesSet(vm: Vmm): string[] {
  if (vm.opts.qemu === '10')
    return [...vm.stderr.matchAll(/vfio_migration_set_device_state.*\) state (\S+)/g)].map((m) => m[1]!);
  return traceOf(vm.opts.trace!)
    .filter((e) => e.field === 'device_state' && e.op === 'write')
    .map((e) => V1_AS_V2[Number(e.value)] ?? `v1:${e.value}`);
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

/** An mbig device's seed: writing a new one refills its memory. */
const seedFile = (uuid: string) => `/sys/bus/mdev/devices/${uuid}/vendor/seed`;

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
      const src = vmm(from, `${tag}-src`, [A]);
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

      const dst = vmm(to, `${tag}-dst`, [B], `exec:cat /tmp/${tag}.mig`);
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
    const src = vmm('7.2', 'xmt-src', [A]);
    await src.connect();
    await migrateTo(src, '/tmp/xmt.mig');
    expect(await src.quit()).toBe(0);
    const dst = vmm('10', 'xmt-dst', [B], 'exec:cat /tmp/xmt.mig', 'pc');
    const code = await dst.exited;
    console.log(`QEMU 10 -M pc on a 7.2 stream: exit ${code}:\n${dst.stderr}`);
    expect(code).not.toBe(0);
    expect(dst.stderr).toMatch(/Machine type received is 'pc-i440fx-7\.2' and local is 'pc-i440fx-10\.\d+'/);
    expect(dst.stderr).toMatch(/load of migration failed/);
  }, 300_000);
});

describe('live upgrade and roll-back between QEMU 7.2 (bridged) and QEMU 10 (native): 64 MiB mbig', () => {
  const seedOfD = seedFile(D);
  let seed = '';

  beforeAll(() => {
    // The same devices and size as qemu72.ktest.ts's mbig cases, whichever file creates them.
    createMbig();
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
      const src = vmm(from, `${tag}-src`, [C]);
      await src.connect();
      // Both versions converge: the state goes at full speed, and QEMU 10's pre-copy may stop at any size.
      const m = await migrateTo(src, `/tmp/${tag}.mig`, ['max-bandwidth 4G', 'downtime-limit 60000']);
      expect(await src.quit()).toBe(0);
      expect(await toRunning(C)).toBe(MigState.STOP);
      const t1 = Date.now();
      const dst = vmm(to, `${tag}-dst`, [D], `exec:cat /tmp/${tag}.mig`);
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

/**
 * The mbig pair C and D for one describe: created, every device RUNNING
 * at the start, and C's and D's own memory (their seeds) put back at the
 * end, since later files expect them as they were.
 */
function useMbigPair(): void {
  const seeds = new Map<string, string>();
  beforeAll(async () => {
    createMbig();
    for (const u of [C, D]) seeds.set(u, readFileSync(seedFile(u), 'utf8').trim());
    for (const u of [A, B, C, D]) await toRunning(u);
  });
  afterAll(() => {
    for (const [u, seed] of seeds) writeFileSync(seedFile(u), seed);
  });
}

describe('one VM with two devices, an mtty and a 64 MiB mbig, between QEMU 7.2 (bridged) and QEMU 10 (native)', () => {
  useMbigPair();
  afterEach(async () => {
    await toRunning(C);
    await toRunning(D);
  });
  // Their own memory again: qemu72.ktest.ts's mbig case wants C and D different when it starts.

  for (const [from, to] of PAIRS) {
    it(`${label(from)} → ${label(to)}: every UART scratch value and the mbig crc32 arrive; the 7.2 side's service moved both devices as one quiesce group`, async () => {
      const tag = `x2${from}-${to}`.replace('.', '');
      const [srcDevs, dstDevs] =
        from === '7.2'
          ? [
              [A, C],
              [B, D],
            ]
          : [
              [B, D],
              [A, C],
            ];
      const [srcBig, dstBig] = [srcDevs[1]!, dstDevs[1]!];
      writeFileSync(seedFile(dstBig), (Date.now() & 0xffffff).toString(16));
      const want = crc(srcBig);
      expect(crc(dstBig)).not.toBe(want);
      const src = vmm(from, `${tag}-src`, srcDevs);
      await src.connect();
      // Two UARTs on each device (mtty-2, mbig-2), in device order.
      const ports = await src.uartPorts();
      expect(ports).toHaveLength(4);
      const values = from === '7.2' ? [0x41, 0x42, 0x43, 0x44] : [0x51, 0x52, 0x53, 0x54];
      for (const [i, p] of ports.entries()) await src.outb(p + SCR, values[i]!);
      const m = await migrateTo(src, `/tmp/${tag}.mig`, ['max-bandwidth 4G', 'downtime-limit 60000']);
      expect(await src.quit()).toBe(0);

      const dst = vmm(to, `${tag}-dst`, dstDevs, `exec:cat /tmp/${tag}.mig`);
      await dst.connect();
      await waitRunning(dst);
      for (const [i, p] of ports.entries()) expect(await dst.inb(p + SCR), `port ${i}`).toBe(values[i]);
      expect(await dst.quit()).toBe(0);
      expect(crc(dstBig)).toBe(want);
      rmSync(`/tmp/${tag}.mig`, { force: true });
      console.log(`mtty + mbig ${label(from)} → ${label(to)}: total ${m.totalMs} ms, downtime ${m.downtimeMs} ms`);

      const bridged = from === '7.2' ? src : dst;
      const trace = traceOf(bridged.opts.trace!);
      console.log(
        `quiesce group (${from === '7.2' ? 'source' : 'destination'}, QEMU 7.2):\n${trace
          .filter((e) => e.kind === 'group' || (e.field === 'device_state' && e.op === 'write'))
          .map((e) => `  ${e.kind} ${e.device.slice(-4)} ${e.value ?? ''} ${e.v2.join(', ')}`)
          .join('\n')}`,
      );
      if (from === '7.2') {
        // Down: before the first device stops (v1 write 2, STOP_COPY), the other still pre-copying is parked
        // in PRE_COPY_P2P, caused by the first: both are members of one group.
        const firstStop = trace.findIndex(isWrite(2));
        const first = trace[firstStop]!.device;
        const other = first === A ? C : A;
        expect([A, C]).toContain(first);
        const parked = trace.findIndex(
          (e) => e.kind === 'group' && e.device === other && e.v2[0] === 'SET_STATE PRE_COPY->PRE_COPY_P2P',
        );
        expect(parked).toBeGreaterThanOrEqual(0);
        expect(parked).toBeLessThan(firstStop);
        expect(trace[parked]!.cause).toBe(first);
      } else {
        // Up: each device leaving RESUMING is held in RUNNING_P2P until both are there, then both run.
        const group = trace.filter((e) => e.kind === 'group');
        const held = group.filter((e) => /^SET_STATE RESUMING->RUNNING_P2P \(held/.test(e.v2[0]!));
        const released = group.filter((e) => e.v2[0] === 'SET_STATE RUNNING_P2P->RUNNING');
        expect(held.map((e) => e.device).sort()).toEqual([A, C].sort());
        expect(released.map((e) => e.device).sort()).toEqual([A, C].sort());
        expect(Math.max(...held.map((e) => group.indexOf(e)))).toBeLessThan(
          Math.min(...released.map((e) => group.indexOf(e))),
        );
      }
    }, 600_000);
  }
});

describe('what a user gets when a live upgrade from QEMU 7.2 (bridged) to QEMU 10 (native) goes wrong', () => {
  useMbigPair();
  afterEach(async () => {
    await toRunning(B);
    await toRunning(C);
    await toRunning(D);
  });

  /** A QEMU 10 destination listening on a Unix socket, and a QEMU 7.2 source (bridged) started migrating to it. */
  async function liveMigration(tag: string, srcDev: string, dstDev: string, bandwidth: string) {
    const sock = `/tmp/${tag}.sock`;
    rmSync(sock, { force: true });
    const dst = vmm('10', `${tag}-dst`, [dstDev], `unix:${sock}`);
    await dst.connect();
    const src = vmm('7.2', `${tag}-src`, [srcDev]);
    await src.connect();
    await src.hmp(`migrate_set_parameter max-bandwidth ${bandwidth}`);
    await src.hmp(`migrate -d unix:${sock}`);
    return { src, dst };
  }

  /** `vfio-mig state` on a device no VMM holds any more: the state it was left in, and what the command said. */
  function stateOf(uuid: string): { state: string; said: string } {
    const r = spawnSync(process.execPath, [CLI, 'state', cdevOf(uuid)], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    return { state: r.stdout.trim(), said: r.stderr.trim() };
  }
  const orphaned = (state: string) =>
    new RegExp(
      `^vfio-mig: /dev/vfio/devices/vfio\\d+ is in ${state} with no process holding its data session; closing it now resets it to RUNNING$`,
    );

  it("a destination device of another model: mbig's state into an mtty under QEMU 10 is refused by the driver (ENOMEM); the destination exits 1, the source's migration fails and its VM runs on", async () => {
    const { src, dst } = await liveMigration('xwm', C, B, '64M');
    const m = await src.waitMigration(300_000);
    const code = await dst.exitWithin(120_000);
    console.log(`mbig into mtty: destination exit ${code}:\n${dst.stderr}\nsource:\n${src.stderr}`);
    expect(code).toBe(1);
    // mtty's resume write refuses more bytes than an mtty's state holds with ENOMEM; QEMU 10 names the section.
    expect(dst.stderr).toMatch(/error while loading state section id \d+\(0000:00:02\.0\/vfio\)/);
    expect(dst.stderr).toMatch(/load of migration failed: Cannot allocate memory/);
    // The destination closed the connection: the source's migration fails, and its VM runs on.
    expect(m.status, m.text).toBe('failed');
    expect(await src.hmp('info status')).toMatch(/VM status: running/);
    expect(await src.quit()).toBe(0);
    // 7.2 put its device back to RUNNING when the migration failed (then STOP at quit).
    const set = statesSet(src);
    expect(set.slice(set.lastIndexOf('PRE_COPY'))).toEqual(['PRE_COPY', 'RUNNING', 'STOP']);
    // QEMU 10 left the mtty in RESUMING, its data session gone: vfio-mig state resets it.
    const b = stateOf(B);
    expect(b.state).toBe('RESUMING');
    expect(b.said).toMatch(orphaned('RESUMING'));
    expect(stateOf(B)).toEqual({ state: 'RUNNING', said: '' });
  }, 400_000);

  it('the bridge service killed mid-migration on the QEMU 7.2 source: the migration fails, the source VM runs on, QEMU 10 exits 1; the devices are reset and migrate on the next try', async () => {
    writeFileSync(seedFile(D), (Date.now() & 0xffffff).toString(16));
    const { src, dst } = await liveMigration('xk', C, D, '4M');
    // Mid-migration: PRE_COPY set and 8 MiB of the 64 read from the device (each chunk's data_size): ~14 s to go.
    await waitTrace(src.opts.trace!, isWrite(3));
    const read = () =>
      traceOf(src.opts.trace!)
        .filter((e) => e.field === 'data_size' && e.op === 'read')
        .reduce((n, e) => n + Number(e.value), 0);
    for (const t0 = Date.now(); read() < 8 << 20; await sleep(100))
      if (Date.now() - t0 > 120_000) throw new Error(`only ${read()} bytes read after 120 s`);
    expect(/Migration status: (\S+)/.exec(await src.hmp('info migrate'))?.[1]).toBe('active');
    const svc = src.servicePid();
    process.kill(svc, 'SIGKILL');
    const t0 = Date.now();
    const m = await src.waitMigration(60_000);
    const failedMs = Date.now() - t0;
    const code = await dst.exitWithin(60_000);
    const exitMs = Date.now() - t0;
    console.log(
      `service ${svc} killed at ${read()} bytes: source ${m.status} after ${failedMs} ms, destination exit ${code} after ${exitMs} ms\ndestination:\n${dst.stderr}\nsource:\n${src.stderr}`,
    );
    expect(m.status, m.text).toBe('failed');
    expect(await src.hmp('info status')).toMatch(/VM status: running/);
    expect(src.stderr).toMatch(
      new RegExp(
        `vfio-mig: bridge service is gone for ${C} \\(request \\d at offset 0x[0-9a-f]+\\): the v1 region of this device now fails with EIO`,
      ),
    );
    // 7.2 cannot put its device back: the v1 region is gone with the service.
    expect(src.stderr).toMatch(new RegExp(`${C}: Failed to set state RUNNING`));
    expect(code).toBe(1);
    expect(dst.stderr).toMatch(/load of migration failed: Input\/output error/);
    const srcExit = await src.quit();
    console.log(`source quit: exit ${srcExit}, signal ${src.proc.signalCode}`);
    // Stopping the VM, 7.2 sets the device state, fails, and reports it to a migration stream that is gone:
    // SIGSEGV in qemu_file_set_error (gdb's backtrace: vm_shutdown, vm_state_notify, then there).
    expect(srcExit).toBe(128);
    expect(src.proc.signalCode).toBe('SIGSEGV');

    // The source device was left in PRE_COPY with its session gone, the destination's in RESUMING. The next
    // bridged QEMU resets the one it opens; vfio-mig state resets the other.
    const d = stateOf(D);
    expect(d.state).toBe('RESUMING');
    expect(d.said).toMatch(orphaned('RESUMING'));
    const want = crc(C);
    expect(crc(D)).not.toBe(want);
    const again = await liveMigration('xk2', C, D, '4G');
    expect((await again.src.waitMigration(300_000)).status).toBe('completed');
    expect(again.src.stderr).toMatch(
      /found in PRE_COPY with no session holder \(a service that died mid-migration\?\): reset to RUNNING/,
    );
    await waitRunning(again.dst);
    expect(await again.dst.quit()).toBe(0);
    expect(await again.src.quit()).toBe(0);
    expect(crc(D)).toBe(want);
  }, 600_000);
});
