/**
 * vfio-mig libvirt: the domain XML snippet for a device, in both recipes of
 * README "Using it with libvirt", and `check`, which asks the service
 * (its STATUS query) whether a process is bridged. The service answers a
 * user only about that user's own VMMs, root about all
 * (docs/interposer.md#trust-model): a root VMM and a `nobody` VMM
 * (test/service/peer-client.c) are asked about as each.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createSimDevice } from '../../src/index.js';
import { startBridgeService, type BridgeService } from '../../src/service/bridge-service.js';
import { preloadLibrary } from '../../src/service/preload-library.js';
import { WireOp, type StatusReply } from '../../src/service/wire.js';
import { queryStatus } from '../../src/cli/libvirt.js';
import { WireClient, buildPeerClient } from '../service/wire-client.js';
import { cliCopyIn, runInProcess } from './run-cli.js';

const root = resolve(import.meta.dirname, '../..');
const isRoot = process.getuid?.() === 0;
const UUID = '83b8f4f2-509f-382f-3c1e-e6bfe0fa1001';
const NOBODY = ['setpriv', '--reuid=nobody', '--regid=nogroup', '--clear-groups', '--'];
const EPROTO = 71;

/** A command run to its end without blocking this process, whose event loop serves the service it asks. */
function runAsync(argv: string[]): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((done) => {
    const p = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d) => (stdout += d));
    p.stderr.on('data', (d) => (stderr += d));
    p.on('close', (status) => done({ status, stdout, stderr }));
  });
}

describe('vfio-mig libvirt snippet', () => {
  it('serve recipe: the mdev <hostdev>, -global x-enable-migration, LD_PRELOAD of the installed interposer and the socket, and the xmlns:qemu note', async () => {
    const r = await runInProcess(['libvirt', 'snippet', UUID, '--socket', '/run/vm/b.sock']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain(
      `<hostdev mode='subsystem' type='mdev' model='vfio-pci'>\n  <source><address uuid='${UUID}'/></source>\n</hostdev>`,
    );
    expect(r.stdout).toContain(`<qemu:arg value='-global'/>\n  <qemu:arg value='vfio-pci.x-enable-migration=on'/>`);
    expect(r.stdout).toContain(`<qemu:env name='LD_PRELOAD' value='${preloadLibrary()}'/>`);
    expect(r.stdout).toContain(`<qemu:env name='VFIO_MIG_SOCKET' value='/run/vm/b.sock'/>`);
    expect(r.stdout).toContain("xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'");
    expect(r.stdout).not.toContain('<emulator>');
    // The socket the shipped systemd unit listens on, when none is given.
    const d = await runInProcess(['libvirt', 'snippet', `/sys/bus/mdev/devices/${UUID}/`]);
    expect(d.stdout).toContain(`<address uuid='${UUID}'/>`);
    expect(d.stdout).toContain(`<qemu:env name='VFIO_MIG_SOCKET' value='/run/vfio-mig/bridge.sock'/>`);
  });

  it('emulator recipe: the wrapper running this vfio-mig exec, the <emulator> naming it, no <qemu:env>', async () => {
    const r = await runInProcess([
      'libvirt',
      'snippet',
      '0000:3b:00.1',
      '--recipe',
      'emulator',
      '--wrapper',
      '/opt/q',
      '--qemu',
      '/opt/qemu-7.2/bin/qemu-system-x86_64',
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain(
      `exec ${process.execPath} ${join(root, 'dist/cli/main.js')} exec -- /opt/qemu-7.2/bin/qemu-system-x86_64 "$@"`,
    );
    expect(r.stdout).toContain('<emulator>/opt/q</emulator>');
    expect(r.stdout).toContain(
      "<hostdev mode='subsystem' type='pci' managed='yes'>\n  <source><address domain='0x0000' bus='0x3b' slot='0x00' function='0x1'/></source>",
    );
    expect(r.stdout).toContain("<qemu:arg value='vfio-pci.x-enable-migration=on'/>");
    expect(r.stdout).not.toContain('qemu:env');
  });

  it.each([
    [['libvirt', 'snippet', 'vfio0'], /"vfio0" is neither an mdev .* nor a PCI function/],
    [['libvirt', 'snippet', UUID, '--recipe', 'emulator', '--socket', '/s'], /--socket applies to --recipe serve/],
    [['libvirt', 'snippet', UUID, '--wrapper', '/w'], /--wrapper and --qemu apply to --recipe emulator/],
    [
      ['libvirt', 'snippet', UUID, '--recipe', 'exec'],
      /argument 'exec' is invalid. Allowed choices are serve, emulator/,
    ],
  ])('%j is a usage error saying what is wrong', async (args, message) => {
    const r = await runInProcess(args);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(message);
    expect(r.stderr).toMatch(/\(see vfio-mig (libvirt )?snippet --help\)|\(see vfio-mig libvirt --help\)/);
    expect(r.stdout).toBe('');
  });
});

describe('vfio-mig libvirt check', () => {
  let dir: string;
  let client: string;
  let svc: BridgeService;
  const vmms: ChildProcess[] = [];

  /** peer-client bridged and holding its session (as nobody with `asNobody`); its pid. */
  async function heldVmm(asNobody: boolean): Promise<number> {
    const p = spawn(
      asNobody ? NOBODY[0]! : client,
      asNobody ? [...NOBODY.slice(1), client, svc.socketPath, 'hold'] : [svc.socketPath, 'hold'],
      {
        stdio: ['pipe', 'pipe', 'inherit'],
      },
    );
    vmms.push(p);
    let out = '';
    p.stdout.on('data', (d) => (out += d));
    for (const t0 = Date.now(); !/reply 0\nreply 0\n/.test(out); await new Promise((r) => setTimeout(r, 20)))
      if (Date.now() - t0 > 10_000 || p.exitCode !== null) throw new Error(`peer-client never bridged: ${out}`);
    return p.pid!; // setpriv execs the client: the same pid
  }

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'vfio-mig-libvirt-'));
    chmodSync(dir, 0o755); // nobody runs the client from here and connects to the socket
    client = buildPeerClient(dir);
    svc = await startBridgeService({
      socketPath: join(dir, 'bridge.sock'),
      socketMode: 0o666,
      sectionSize: 4 << 20,
      openDevice: async (hello) => createSimDevice({ stateSize: 64 << 10, seed: 1, name: `sim for ${hello.pid}` }),
    });
  });
  afterAll(async () => {
    for (const p of vmms) p.kill();
    await svc?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('a bridged process: exit 0, its device named; one that is not: exit 1, "not bridged"', async () => {
    const pid = await heldVmm(false);
    const r = await runInProcess(['libvirt', 'check', String(pid), '--socket', svc.socketPath]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(
      new RegExp(`^process ${pid} .*: bridged by the service at ${svc.socketPath}: 1 device\n  sim for ${pid} \\(`),
    );
    const j = await runInProcess(['libvirt', 'check', String(pid), '--socket', svc.socketPath, '--json']);
    expect(JSON.parse(j.stdout)).toMatchObject({ pid, bridged: true, devices: [`sim for ${pid}`] });
    const none = await runInProcess(['libvirt', 'check', String(process.pid), '--socket', svc.socketPath]);
    expect(none.code).toBe(1);
    expect(none.stdout).toMatch(`process ${process.pid} `);
    expect(none.stdout).toMatch(`not bridged: the service at ${svc.socketPath} has no session of it`);
    // Once the VMM is gone, so is its session.
    const p = vmms.find((v) => v.pid === pid)!;
    p.stdin!.end();
    await new Promise((done) => p.once('exit', done));
    for (const t0 = Date.now(); svc.sessions > 0 && Date.now() - t0 < 5000;)
      await new Promise((w) => setTimeout(w, 20));
    expect(svc.sessions).toBe(0);
    // A pid that no longer runs: check cannot tell (2), not "not bridged" (1).
    const gone = await runInProcess(['libvirt', 'check', String(pid), '--socket', svc.socketPath]);
    expect(gone.code).toBe(2);
    expect(gone.stderr).toMatch(`no process ${pid}`);
  });

  it.skipIf(!isRoot)(
    "each user sees only its own VMMs' sessions, root sees all: nobody is told nothing of root's",
    async () => {
      const rootVmm = await heldVmm(false);
      const nobodyVmm = await heldVmm(true);
      const all = await queryStatus(svc.socketPath);
      expect(all.uid).toBe(0);
      expect(all.sessions.map((s) => [s.vmm, s.uid]).sort()).toEqual(
        [
          [rootVmm, 0],
          [nobodyVmm, 65534],
        ].sort(),
      );
      // nobody's own raw query: its session only.
      const raw = await runAsync([...NOBODY, client, svc.socketPath, 'status']);
      expect(raw.status, raw.stderr).toBe(0);
      const [result, ...json] = raw.stdout.trim().split(' ');
      expect(result).toBe('0');
      const seen = JSON.parse(json.join(' ')) as StatusReply;
      expect(seen).toEqual({ uid: 65534, sessions: [expect.objectContaining({ vmm: nobodyVmm, uid: 65534 })] });
      // And through the CLI, run as nobody.
      const cli = cliCopyIn(dir);
      const asNobody = (pid: number) =>
        runAsync([...NOBODY, process.execPath, cli, 'libvirt', 'check', String(pid), '--socket', svc.socketPath]);
      const other = await asNobody(rootVmm);
      expect(other.status, other.stderr).toBe(1);
      expect(other.stdout).toMatch(
        /not bridged: .*the service shows uid 65534 only its own VMMs' sessions: run as root/,
      );
      const own = await asNobody(nobodyVmm);
      expect(own.status, own.stderr).toBe(0);
      expect(own.stdout).toMatch(/bridged by the service/);
      // Root sees the nobody VMM too.
      expect((await runInProcess(['libvirt', 'check', String(nobodyVmm), '--socket', svc.socketPath])).code).toBe(0);
    },
  );

  it('STATUS on a device connection, after HELLO, is a protocol error (EPROTO) that ends it', async () => {
    const c = await WireClient.connect(svc.socketPath);
    c.hello(process.pid, 0);
    expect((await c.reply())?.result).toBe(0);
    c.send(WireOp.STATUS);
    const r = await c.reply();
    expect(r?.result).toBe(-EPROTO);
    expect(r?.payload.toString()).toMatch(/STATUS on a device connection/);
    await c.gone;
  });

  it.each([
    [
      ['libvirt', 'check', 'no-such-domain-xyz'],
      /no running domain "no-such-domain-xyz": \/run\/libvirt\/qemu\/no-such-domain-xyz.pid/,
    ],
    [['libvirt', 'check', '999999999'], /no process 999999999/],
  ])('%j: exit 2 (it cannot tell; 1 is "not bridged") naming what is missing', async (args, message) => {
    const r = await runInProcess(args);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(message);
  });

  it('no service at the socket: the socket, where its path came from, and what to check', async () => {
    const r = await runInProcess(['libvirt', 'check', String(process.pid), '--socket', join(dir, 'none.sock')]);
    expect(r.code).toBe(2);
    expect(r.stderr).not.toMatch(/check the device or file path/);
    expect(r.stderr).toMatch(
      `libvirt check: status on ${join(dir, 'none.sock')} (--socket): ENOENT (2): no such file or directory (no service listens there: is vfio-mig serve running?)`,
    );
  });
});
