/**
 * One `vfio-mig serve` shared by VMMs in the guest (docs/interposer.md,
 * "Trust model"): QEMU 7.2 running as `nobody` migrates through a socket
 * opened to its group; an honest QEMU migrates while a hostile client goes
 * after its pid, fds and section; a device a dead service left mid-session
 * is reset and bridged by the next VMM; the service recognises a cdev
 * device fd through sysfs.
 */
import { execFileSync } from 'node:child_process';
import {
  chmodSync,
  closeSync,
  copyFileSync,
  existsSync,
  ftruncateSync,
  openSync,
  readFileSync,
  readdirSync,
  readlinkSync,
  statSync,
} from 'node:fs';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { checkVfioDeviceFd } from '../../src/service/peer.js';
import { preloadLibrary } from '../../src/service/preload-library.js';
import { WireOp } from '../../src/service/wire.js';
import { WireClient, u32 } from '../service/wire-client.js';
import { QEMU_TREES, Vmm } from './qemu-vmm.js';
import { A, B, cdevOf, SCR, scratch, sleep, startServe, toRunning, waitRunning } from './guest-devices.js';

const groupOf = (u: string) => `/dev/vfio/${readlinkSync(`/sys/bus/mdev/devices/${u}/iommu_group`).split('/').pop()}`;
// nobody can read neither the checkout (it may be 0700) nor root's files: the interposer is copied to /tmp.
const PRELOAD = '/tmp/libvfio-mig-preload.so';
const QEMU_COPY = '/tmp/qemu-7.2';
const AS_NOBODY = [
  'prlimit',
  '--memlock=unlimited:unlimited',
  '--',
  'setpriv',
  '--reuid=nobody',
  '--regid=nogroup',
  '--clear-groups',
  '--',
];

/** Migrates A to B through `socket`, with the scratch values written on A; returns them as read on B. */
async function migrate(
  socket: string,
  name: string,
  wrap?: string[],
  during?: (src: Vmm) => Promise<void>,
): Promise<number[]> {
  const env = { LD_PRELOAD: PRELOAD, VFIO_MIG_SOCKET: socket };
  const asUser = wrap ? { wrap, tree: QEMU_COPY } : {};
  const src = new Vmm({ name: `${name}-src`, devices: [A], env, ...asUser });
  await src.connect();
  const ports = await src.uartPorts();
  await src.outb(ports[0]! + SCR, 0x3c);
  await src.outb(ports[1]! + SCR, 0xc3);
  if (during) await during(src);
  await src.hmp(`migrate -d "exec:cat > /tmp/${name}.mig"`);
  const m = await src.waitMigration();
  expect(m.status, `${m.text}\n${src.stderr}`).toBe('completed');
  expect(await src.quit()).toBe(0);
  expect(src.stderr).not.toMatch(/not bridged/);
  const dst = new Vmm({ name: `${name}-dst`, devices: [B], env, incoming: `exec:cat /tmp/${name}.mig`, ...asUser });
  await dst.connect();
  await waitRunning(dst);
  const seen = [await dst.inb(ports[0]! + SCR), await dst.inb(ports[1]! + SCR)];
  expect(await dst.quit()).toBe(0);
  return seen;
}

beforeAll(() => {
  copyFileSync(preloadLibrary(), PRELOAD);
  chmodSync(PRELOAD, 0o755);
  // The fetched QEMU lives in the checkout, which nobody may not be able to enter.
  execFileSync('cp', ['-a', QEMU_TREES['7.2'], QEMU_COPY]);
  execFileSync('chmod', ['-R', 'a+rX', QEMU_COPY]);
});
afterEach(async () => {
  await toRunning(A);
  await toRunning(B);
});

describe('one serve shared by VMMs', () => {
  it('QEMU 7.2 as nobody migrates A to B through a --mode 0660 --group nogroup socket', async () => {
    const modes = [A, B].map((u) => statSync(groupOf(u)).mode);
    [A, B].forEach((u) => chmodSync(groupOf(u), 0o666)); // the device node made accessible to the VMM's user
    const svc = await startServe(['--socket', '/tmp/grp.sock', '--mode', '0660', '--group', 'nogroup']);
    try {
      expect(await migrate('/tmp/grp.sock', 'nobody', AS_NOBODY)).toEqual([0x3c, 0xc3]);
      expect(svc.log()).toMatch(/\(VMM pid \d+\) bridged/);
      expect(await scratch(B)).toEqual([0x3c, 0xc3]);
    } finally {
      svc.proc.kill('SIGTERM');
      [A, B].forEach((u, i) => chmodSync(groupOf(u), modes[i]! & 0o777));
    }
  }, 300_000);

  it("a hostile client on the same service, going after the honest QEMU's pid, device fd and section, is refused; the honest migration completes", async () => {
    const svc = await startServe(['--socket', '/tmp/shared.sock', '--mode', '0666']);
    let attacked = false;
    try {
      const seen = await migrate('/tmp/shared.sock', 'honest', undefined, async (src) => {
        const pid = src.proc.pid!;
        const fds = readdirSync(`/proc/${pid}/fd`).map(
          (f) =>
            [
              Number(f),
              (() => {
                try {
                  return readlinkSync(`/proc/${pid}/fd/${f}`);
                } catch {
                  return '';
                }
              })(),
            ] as const,
        );
        const deviceFd = fds.find(([, t]) => t === 'anon_inode:[vfio-device]')![0];
        const memfd = fds.find(([, t]) => t.startsWith('/memfd:vfio-mig-section'))![0];
        // 1: HELLO naming QEMU's pid and device fd, then its section, a read and a write.
        const c = await WireClient.connect('/tmp/shared.sock');
        c.hello(pid, deviceFd, 'hostile');
        c.send(WireOp.SECTION, u32(memfd));
        c.send(WireOp.READ, new Uint8Array(0), 0n, 4);
        const r = await c.reply();
        expect(r?.result).toBe(-1); // EPERM
        expect(r?.payload.toString()).toMatch(
          `HELLO names process ${pid}, but the connected process is ${process.pid}`,
        );
        expect(await c.reply()).toBeNull();
        // 2: two HELLOs on one connection (its own pid; fd 0 is no VFIO device, so the first is refused too).
        const d = await WireClient.connect('/tmp/shared.sock');
        d.hello(process.pid, 0);
        d.hello(process.pid, 0);
        expect(vmwBridged((await d.reply())!.payload)).toBe(0);
        expect(await d.reply()).toBeNull();
        // 3: shrinking the honest VMM's section under the service, even as root through /proc: it is sealed.
        const fd = openSync(`/proc/${pid}/fd/${memfd}`, 'r+');
        try {
          expect(() => ftruncateSync(fd, 0)).toThrow(/EPERM/);
        } finally {
          closeSync(fd);
        }
        attacked = true;
      });
      expect(attacked).toBe(true);
      expect(seen).toEqual([0x3c, 0xc3]);
      expect(svc.proc.exitCode).toBeNull(); // the service lived through it
    } finally {
      svc.proc.kill('SIGTERM');
    }
  }, 300_000);

  it('a device a killed service left mid-session is reset and bridged by the next VMM, which migrates', async () => {
    const first = await startServe(['--socket', '/tmp/dies.sock', '--trace', '/tmp/dies.ndjson']);
    const env = { LD_PRELOAD: PRELOAD, VFIO_MIG_SOCKET: '/tmp/dies.sock', VFIO_MIG_TIMEOUT_MS: '3000' };
    const vm = new Vmm({ name: 'orphaned', devices: [A], env });
    await vm.connect();
    await vm.hmp('migrate_set_parameter max-bandwidth 1k');
    await vm.hmp('migrate -d "exec:cat > /tmp/orphan.mig"');
    // Killed once QEMU has written 011 (PRE_COPY): the session is the dead service's data_fd's.
    const wrote011 = () =>
      existsSync('/tmp/dies.ndjson') &&
      readFileSync('/tmp/dies.ndjson', 'utf8')
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as { field?: string; op?: string; value?: unknown })
        .some((e) => e.field === 'device_state' && e.op === 'write' && e.value === 3);
    for (let t0 = Date.now(); !wrote011();) {
      if (Date.now() - t0 > 60_000) throw new Error(`QEMU never wrote 011:\n${first.log()}`);
      await sleep(100);
    }
    first.proc.kill('SIGKILL');
    vm.proc.kill('SIGKILL');
    await vm.exited;
    const svc = await startServe(['--socket', '/tmp/next.sock']);
    try {
      expect(await migrate('/tmp/next.sock', 'after', undefined)).toEqual([0x3c, 0xc3]);
      expect(svc.log()).toMatch(/found in PRE_COPY with no session holder .*: reset to RUNNING/);
    } finally {
      svc.proc.kill('SIGTERM');
    }
  }, 300_000);

  it('the service recognises a VFIO cdev fd through sysfs, and nothing else', async () => {
    const fd = openSync(cdevOf(A), 'r+');
    try {
      expect(() => checkVfioDeviceFd(fd, 'test', 'A')).not.toThrow();
    } finally {
      closeSync(fd);
    }
    for (const other of ['/dev/null', '/dev/vfio/vfio']) {
      const o = openSync(other, 'r+');
      try {
        expect(() => checkVfioDeviceFd(o, 'test', other)).toThrow(/ENODEV.*not a VFIO device/);
      } finally {
        closeSync(o);
      }
    }
  });
});

function vmwBridged(payload: Buffer): number {
  return payload.readUInt32LE(0);
}
