/**
 * Debian 12's libvirt 9.0 (libvirtd and virtlogd from the host's root, state
 * on tmpfs) runs QEMU 7.2 as libvirt-qemu with an mtty mdev in the guest:
 * unbridged, `virsh save` is refused; through `vfio-mig serve` and
 * `<qemu:env>`, save/restore, a live external memory snapshot and a libvirtd
 * restart keep the UART scratch values; destroy leaves no QEMU behind.
 * libvirt runs with its defaults (no qemu.conf): on this kernel (no cgroups,
 * seccomp or LSM) they start QEMU with no cgroup, no -sandbox and no MAC
 * label, in a private mount namespace with DAC ownership (the first test).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import {
  chmodSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { dirname, resolve } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { MigState, openKernelDevice } from '../../src/index.js';
import { preloadLibrary } from '../../src/service/preload-library.js';
import { cdevOf, SCR, sleep } from './guest-devices.js';
import { uartPorts } from './qemu-vmm.js';

const CLI = resolve(import.meta.dirname, '../../dist/cli/main.js');
// A spare mtty of its own (A and B belong to the other files).
const E = '83b8f4f2-509f-382f-3c1e-e6bfe0fa1017';
const MTTY_TYPE = '/sys/class/mdev_bus/mtty/mdev_supported_types/mtty-2';
const QEMU_USER = 'libvirt-qemu'; // libvirt's built-in default user and group (Debian)
// Its uid: the host's when libvirt-daemon-system made the user, else the one added in the guest (prepareHost).
let QEMU_UID = 64055;
const RUN = '/run/vfio-mig';
const SOCKET = `${RUN}/bridge.sock`;
const PRELOAD = `${RUN}/libvfio-mig-preload.so`; // readable by libvirt-qemu

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/** A command, without blocking the event loop (the service's log keeps flowing). */
function run(argv: string[], timeoutMs = 240_000): Promise<Run> {
  const t0 = Date.now();
  return new Promise((done) => {
    const p = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d) => (stdout += d));
    p.stderr.on('data', (d) => (stderr += d));
    const t = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
    p.on('close', (status) => {
      clearTimeout(t);
      done({ status, stdout, stderr, ms: Date.now() - t0 });
    });
  });
}

const virsh = (...args: string[]) => run(['virsh', '-c', 'qemu:///system', ...args]);

async function virshOk(...args: string[]): Promise<Run> {
  const r = await virsh(...args);
  if (r.status !== 0) throw new Error(`virsh ${args.join(' ')}: ${r.status}\n${r.stderr}${r.stdout}\n${daemons.log()}`);
  return r;
}

function sh(...argv: string[]): string {
  const r = spawnSync(argv[0]!, argv.slice(1), { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${argv.join(' ')}: ${r.error?.message ?? r.stderr}`);
  return r.stdout;
}

const hmp = async (dom: string, cmd: string) => (await virshOk('qemu-monitor-command', '--hmp', dom, cmd)).stdout;

const outb = (dom: string, port: number, v: number) => hmp(dom, `o /b 0x${port.toString(16)} 0x${v.toString(16)}`);

async function inb(dom: string, port: number): Promise<number> {
  const out = await hmp(dom, `i /b 0x${port.toString(16)}`);
  const m = /= 0x([0-9a-f]+)/.exec(out);
  if (!m) throw new Error(`HMP i /b gave: ${out}`);
  return parseInt(m[1]!, 16);
}

async function setScratchVia(dom: string, values: number[]): Promise<number[]> {
  const ports = await uartPorts((command) => hmp(dom, command));
  for (const [i, p] of ports.entries()) await outb(dom, p + SCR, values[i]!);
  return ports;
}

const scratchVia = async (dom: string, ports: number[]) => Promise.all(ports.map((p) => inb(dom, p + SCR)));

/** The device's v2 state as the kernel has it, and its scratch values (no VMM may hold it). */
async function deviceState(): Promise<MigState> {
  const d = await openKernelDevice(cdevOf(E));
  try {
    return await d.getState();
  } finally {
    await d.close();
  }
}

/** Back to RUNNING (reset when not) and the scratch registers cleared: what a restore shows came from the file. */
async function clobber(): Promise<MigState> {
  const d = await openKernelDevice(cdevOf(E));
  try {
    const before = await d.getState();
    if (before !== MigState.RUNNING) await d.reset();
    for (const r of [0, 1]) await d.regionWrite(r, SCR, Uint8Array.of(0));
    expect([(await d.regionRead(0, SCR, 1))[0], (await d.regionRead(1, SCR, 1))[0]]).toEqual([0, 0]);
    return before;
  } finally {
    await d.close();
  }
}

function domainXml(name: string, opts: { mdev?: boolean; bridged?: boolean }): string {
  const env = opts.bridged
    ? `<qemu:env name='LD_PRELOAD' value='${PRELOAD}'/><qemu:env name='VFIO_MIG_SOCKET' value='${SOCKET}'/>`
    : '';
  const hostdev =
    opts.mdev === false
      ? ''
      : `<hostdev mode='subsystem' type='mdev' model='vfio-pci'><source><address uuid='${E}'/></source></hostdev>`;
  return `<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>${name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
    ${hostdev}
  </devices>
  <qemu:commandline>
    <qemu:arg value='-global'/><qemu:arg value='vfio-pci.x-enable-migration=on'/>
    ${env}
  </qemu:commandline>
</domain>
`;
}

/** `virsh create` (a transient domain); the time it took. */
async function create(name: string, opts: { mdev?: boolean; bridged?: boolean }): Promise<number> {
  writeFileSync(`/tmp/${name}.xml`, domainXml(name, opts));
  return (await virshOk('create', `/tmp/${name}.xml`)).ms;
}

const qemuPid = (name: string) => Number(readFileSync(`/run/libvirt/qemu/${name}.pid`, 'utf8'));

/** Live (non-zombie) processes whose command line names the domain. */
function qemuProcesses(name: string): number[] {
  return readdirSync('/proc')
    .filter((p) => /^\d+$/.test(p))
    .filter((p) => {
      try {
        return (
          readFileSync(`/proc/${p}/cmdline`, 'utf8').includes(`guest=${name},`) &&
          !/^State:\s*Z/m.test(readFileSync(`/proc/${p}/status`, 'utf8'))
        );
      } catch {
        return false;
      }
    })
    .map(Number);
}

async function destroyAll(): Promise<void> {
  const names = (await virsh('list', '--name')).stdout.split('\n').filter(Boolean);
  for (const n of names) await virsh('destroy', n);
}

/** libvirtd and virtlogd in the foreground, children of the test. */
const daemons = {
  libvirtd: null as ChildProcess | null,
  virtlogd: null as ChildProcess | null,
  out: '',
  log(): string {
    return `libvirtd/virtlogd output:\n${this.out}`;
  },
  start(name: 'libvirtd' | 'virtlogd'): void {
    const p = spawn(name, [], { stdio: ['ignore', 'pipe', 'pipe'] });
    for (const s of [p.stdout, p.stderr]) s.on('data', (d) => (this.out += `${name}: ${d}`));
    this[name] = p;
  },
  async stop(name: 'libvirtd' | 'virtlogd'): Promise<void> {
    const p = this[name];
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    const gone = new Promise((r) => p.on('exit', r));
    p.kill('SIGTERM');
    const t = setTimeout(() => p.kill('SIGKILL'), 30_000);
    await gone;
    clearTimeout(t);
  },
};

/** Until virsh connects (the first connection probes QEMU's capabilities: ~20 s under TCG). */
async function waitLibvirtd(): Promise<number> {
  const t0 = Date.now();
  for (;;) {
    const r = await virsh('version');
    if (r.status === 0) return Date.now() - t0;
    if (Date.now() - t0 > 240_000) throw new Error(`libvirtd never answered: ${r.stderr}\n${daemons.log()}`);
    await sleep(500);
  }
}

const mounted: string[] = [];

/** The root is read-only: libvirt's state, its config and the libvirt-qemu user live on tmpfs copies. */
function prepareHost(): void {
  const tmpfs = (dir: string) => {
    sh('mount', '-t', 'tmpfs', '-o', 'mode=0755', 'libvirt', dir);
    mounted.push(dir);
  };
  const bindCopy = (path: string, extra: string) => {
    const copy = `/run/libvirt-test${path.replaceAll('/', '-')}`;
    sh('cp', '-a', path, copy);
    if (extra) writeFileSync(copy, readFileSync(copy, 'utf8') + extra);
    sh('mount', '--bind', copy, path);
    mounted.push(path);
  };
  // libvirt-daemon-system (not installed) would create these: with none on the root, tmpfs over the parent.
  for (const d of ['/var/lib/libvirt', '/var/cache/libvirt', '/var/log/libvirt']) {
    if (existsSync(d)) tmpfs(d);
    else if (!mounted.includes(dirname(d))) tmpfs(dirname(d));
    mkdirSync(d, { recursive: true });
  }
  mkdirSync('/run/libvirt', { recursive: true }); // /run is the guest's tmpfs
  bindCopy('/etc/libvirt', ''); // writable, without a qemu.conf: libvirt's defaults
  rmSync('/etc/libvirt/qemu.conf', { force: true });
  // As libvirt-daemon-system's postinst would add them.
  const known = /^libvirt-qemu:[^:]*:(\d+):/m.exec(readFileSync('/etc/passwd', 'utf8'));
  if (known) QEMU_UID = Number(known[1]);
  else {
    bindCopy('/etc/passwd', `${QEMU_USER}:x:${QEMU_UID}:${QEMU_UID}:Libvirt Qemu:/var/lib/libvirt:/usr/sbin/nologin\n`);
    bindCopy('/etc/group', `${QEMU_USER}:x:${QEMU_UID}:\n`);
  }
}

interface Serve {
  proc: ChildProcess;
  log: () => string;
  waitLog(re: RegExp, ms?: number): Promise<void>;
}

async function startServe(): Promise<Serve> {
  const proc = spawn(process.execPath, [CLI, 'serve', '--socket', SOCKET, '--mode', '0660', '--group', QEMU_USER], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let log = '';
  proc.stderr.on('data', (d) => (log += d));
  const waitLog = async (re: RegExp, ms = 60_000) => {
    for (const t0 = Date.now(); !re.test(log); await sleep(100)) {
      if (Date.now() - t0 > ms) throw new Error(`serve never logged ${re}:\n${log}`);
    }
  };
  await waitLog(/serving on/);
  return { proc, log: () => log, waitLog };
}

const times: string[] = [];

beforeAll(async () => {
  if (!existsSync(`/sys/bus/mdev/devices/${E}`)) writeFileSync(`${MTTY_TYPE}/create`, E);
  prepareHost();
  mkdirSync(RUN, { recursive: true });
  copyFileSync(preloadLibrary(), PRELOAD);
  chmodSync(PRELOAD, 0o644);
  daemons.start('virtlogd');
  daemons.start('libvirtd');
  times.push(`libvirtd up (first connection, capabilities probe) in ${await waitLibvirtd()} ms`);
}, 300_000);

afterEach(async () => {
  await destroyAll();
  if ((await deviceState()) !== MigState.RUNNING) await clobber();
});

afterAll(async () => {
  console.log(`libvirt 9.0 + QEMU 7.2 (TCG in the TCG guest), wall times:\n  ${times.join('\n  ')}`);
  await destroyAll().catch(() => undefined);
  await daemons.stop('libvirtd');
  await daemons.stop('virtlogd');
  for (const m of mounted.reverse()) spawnSync('umount', [m]);
  rmSync(RUN, { recursive: true, force: true });
  if (existsSync(`/sys/bus/mdev/devices/${E}`)) writeFileSync(`/sys/bus/mdev/devices/${E}/remove`, '1');
}, 120_000);

describe('libvirt 9.0 without the bridge', () => {
  it("virsh save of a domain with the mtty is refused with QEMU's message; the domain keeps running", async () => {
    const start = await create('plain', {});
    const pid = qemuPid('plain');
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    // libvirt's defaults on this kernel: QEMU as libvirt-qemu, in its own mount namespace (a private /dev,
    // where the device node is chowned to it); no -sandbox, no seccomp, no cgroup, no MAC label to apply.
    expect(status).toMatch(new RegExp(`^Uid:\\s+${QEMU_UID}\\s`, 'm'));
    expect(status).not.toMatch(/^Seccomp:/m);
    expect(readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0')).not.toContain('-sandbox');
    expect(sh('readlink', `/proc/${pid}/ns/mnt`)).not.toBe(sh('readlink', '/proc/self/ns/mnt'));
    expect(existsSync(`/proc/${pid}/cgroup`)).toBe(false);
    const live = (await virshOk('dumpxml', 'plain')).stdout;
    expect(live).toMatch(
      new RegExp(`<seclabel type='dynamic' model='dac' relabel='yes'>\\s*<label>\\+${QEMU_UID}:\\+\\d+</label>`),
    );
    expect(live).not.toMatch(/model='(apparmor|selinux)'/);
    const save = await virsh('save', 'plain', '/tmp/plain.save');
    expect(save.status).toBe(1);
    expect(save.stderr).toMatch(/VFIO device doesn't support migration/);
    expect((await virshOk('domstate', 'plain')).stdout.trim()).toBe('running');
    times.push(`unbridged, with the mtty: start ${start} ms (save refused)`);
  }, 300_000);

  it('a domain without the device: start, save, restore (the baseline)', async () => {
    const start = await create('bare', { mdev: false });
    const save = await virshOk('save', 'bare', '/tmp/bare.save');
    const restore = await virshOk('restore', '/tmp/bare.save');
    expect((await virshOk('domstate', 'bare')).stdout.trim()).toBe('running');
    times.push(`no device: start ${start} ms, save ${save.ms} ms, restore ${restore.ms} ms`);
  }, 300_000);
});

describe('libvirt 9.0 with vfio-mig serve and <qemu:env>', () => {
  let svc: Serve;
  beforeAll(async () => {
    svc = await startServe();
  });
  afterAll(async () => {
    svc.proc.kill('SIGTERM');
    await new Promise((r) => svc.proc.on('exit', r));
  });

  /** A bridged domain running with `values` in its scratch registers; its UART ports. */
  async function bridged(name: string, values: number[]): Promise<{ ports: number[]; start: number }> {
    const start = await create(name, { bridged: true });
    const pid = qemuPid(name);
    await svc.waitLog(new RegExp(`\\(VMM pid ${pid}\\) bridged`));
    expect(readFileSync(`/proc/${pid}/status`, 'utf8')).toMatch(new RegExp(`^Uid:\\s+${QEMU_UID}\\s`, 'm'));
    const ports = await setScratchVia(name, values);
    expect(ports).toHaveLength(2);
    expect(await scratchVia(name, ports)).toEqual(values);
    return { ports, start };
  }

  it('virsh save, then virsh restore: the scratch values come back', async () => {
    const { ports, start } = await bridged('saved', [0x5a, 0xa5]);
    const save = await virshOk('save', 'saved', '/tmp/saved.save');
    expect(qemuProcesses('saved')).toEqual([]);
    const after = await clobber();
    console.log(`device after a bridged virsh save: ${MigState[after]}`);
    const restore = await virshOk('restore', '/tmp/saved.save');
    await svc.waitLog(new RegExp(`\\(VMM pid ${qemuPid('saved')}\\) bridged`));
    expect(await scratchVia('saved', ports)).toEqual([0x5a, 0xa5]);
    times.push(`bridged, with the mtty: start ${start} ms, save ${save.ms} ms, restore ${restore.ms} ms`);
  }, 300_000);

  it('a live external memory snapshot, restored with virsh restore, carries the values taken at the snapshot', async () => {
    const { ports } = await bridged('snap', [0x6b, 0xb6]);
    const snap = await virsh(
      'snapshot-create-as',
      'snap',
      'snap1',
      '--memspec',
      'file=/tmp/snap.mem,snapshot=external',
      '--no-metadata',
      '--live',
    );
    expect(snap.status, `${snap.stderr}${snap.stdout}`).toBe(0);
    // The domain runs on after a live snapshot, its device too.
    expect((await virshOk('domstate', 'snap')).stdout.trim()).toBe('running');
    await setScratchVia('snap', [0x01, 0x02]);
    expect(await scratchVia('snap', ports)).toEqual([0x01, 0x02]);
    await virshOk('destroy', 'snap');
    await clobber();
    const restore = await virshOk('restore', '/tmp/snap.mem');
    expect(await scratchVia('snap', ports)).toEqual([0x6b, 0xb6]);
    times.push(`bridged live snapshot ${snap.ms} ms, its restore ${restore.ms} ms`);
  }, 300_000);

  it('virsh destroy leaves no QEMU behind; the device is left in STOP, and the next domains, unbridged and bridged, run on it', async () => {
    await bridged('gone', [0x33, 0x44]);
    const pid = qemuPid('gone');
    await virshOk('destroy', 'gone');
    for (const t0 = Date.now(); qemuProcesses('gone').length > 0 && Date.now() - t0 < 10_000;) await sleep(200);
    expect(qemuProcesses('gone')).toEqual([]);
    expect(existsSync(`/proc/${pid}`) && !/^State:\s*Z/m.test(readFileSync(`/proc/${pid}/status`, 'utf8'))).toBe(false);
    await svc.waitLog(new RegExp(`\\(VMM pid ${pid}\\) done:`)); // the service let go of its copy of the fd
    expect(svc.proc.exitCode).toBeNull();
    // QEMU stops its VM on SIGTERM, and the v1 write that says so (device_state 0) is a v2 STOP through the
    // bridge; nothing moves it back when QEMU exits (an unbridged QEMU never writes it: RUNNING). Issue #17,
    // build step 5, decides what the bridge should leave; this records what it leaves today.
    expect(MigState[await deviceState()]).toBe('STOP');
    // The next unbridged domain gets the stopped device: mtty still answers its port I/O.
    await create('next-plain', {});
    expect(await scratchVia('next-plain', await setScratchVia('next-plain', [0x12, 0x34]))).toEqual([0x12, 0x34]);
    await virshOk('destroy', 'next-plain');
    console.log(`device after an unbridged domain on a STOP device: ${MigState[await deviceState()]}`);
    // And a bridged one saves and restores it.
    const { ports } = await bridged('next', [0x21, 0x43]);
    await virshOk('save', 'next', '/tmp/next.save');
    await clobber();
    await virshOk('restore', '/tmp/next.save');
    expect(await scratchVia('next', ports)).toEqual([0x21, 0x43]);
  }, 300_000);

  it('libvirtd restarted while the domain runs: it finds the domain again, and the domain saves and restores bridged', async () => {
    const { ports } = await bridged('kept', [0x77, 0x88]);
    const pid = qemuPid('kept');
    await daemons.stop('libvirtd');
    expect(qemuProcesses('kept')).toEqual([pid]); // QEMU outlives libvirtd
    daemons.start('libvirtd');
    const up = await waitLibvirtd();
    expect((await virshOk('domstate', 'kept')).stdout.trim()).toBe('running');
    expect(qemuPid('kept')).toBe(pid);
    expect(svc.log()).not.toMatch(new RegExp(`\\(VMM pid ${pid}\\) done:`)); // its bridge session is still open
    expect(await scratchVia('kept', ports)).toEqual([0x77, 0x88]);
    await virshOk('save', 'kept', '/tmp/kept.save');
    await clobber();
    await virshOk('restore', '/tmp/kept.save');
    expect(await scratchVia('kept', ports)).toEqual([0x77, 0x88]);
    times.push(`libvirtd restarted with a domain running: answering again in ${up} ms`);
  }, 300_000);
});
