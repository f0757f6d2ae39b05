/**
 * `vfio-mig serve` shared by several users' VMMs (docs/interposer.md,
 * "Trust model"): who may connect is the operator's choice (--mode,
 * --group, or a socket systemd passes), a hostile client running as
 * another user gets nothing of another process, and a wire fuzzer beside
 * an honest VMM neither disturbs its migration nor leaves descriptors or
 * memory behind. The VMM is test/interposer/qemu72-client.c on a
 * simulated device (VFIO_MIG_TEST_DEVICE); `nobody` plays the other user.
 */
import { spawn, spawnSync } from 'node:child_process';
import {
  chmodSync,
  closeSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  readdirSync,
  renameSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createSimDevice } from '../../src/index.js';
import { parseSimSpec } from '../../src/cli/open-device.js';
import { WireOp } from '../../src/service/wire.js';
import { saveV2 } from '../helpers.js';
import { spawnCli, textOf, waitFor, type SpawnedCli } from '../cli/spawn-cli.js';
import { F_SEAL_GROW, F_SEAL_SEAL, F_SEAL_SHRINK, WireClient, closeMemfd, memfd, u32 } from './wire-client.js';

const root = resolve(import.meta.dirname, '../..');
const SIM = 'sim:size=3M,seed=1';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const isRoot = process.getuid?.() === 0;
let dir: string;
let client: string;
let preload: string;
let out: string;

beforeAll(() => {
  // Everything `nobody` runs or writes lives here (TMPDIR is 0755), not in the checkout, which may be 0700.
  dir = mkdtempSync(join(tmpdir(), 'vfio-mig-shared-'));
  chmodSync(dir, 0o755);
  client = join(dir, 'qemu72-client');
  expect(spawnSync('cc', ['-O2', '-o', client, join(root, 'test/interposer/qemu72-client.c')]).status).toBe(0);
  preload = join(dir, 'libvfio-mig-preload.so');
  copyFileSync(join(root, 'dist/interposer/libvfio-mig-preload.so'), preload);
  out = join(dir, 'out');
  mkdirSync(out);
  chmodSync(out, 0o777);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** `vfio-mig ARGS` as a service; with `shell`, through sh (its "$@" is node, the CLI and ARGS). */
function startServe(args: string[], extraFd?: number, shell?: string): SpawnedCli {
  return spawnCli(args, {
    stdout: 'ignore',
    ...(shell ? { via: ['sh', '-c', shell, 'sh'] } : {}),
    ...(extraFd !== undefined ? { extraFds: [extraFd] } : {}),
  });
}

async function stop(s: SpawnedCli): Promise<void> {
  s.kill('SIGTERM');
  expect(await s.exited).toEqual({ code: 0, signal: null });
}

/** qemu72-client saving through the service at `socket`, as root or as nobody. */
function vmmSave(
  socket: string,
  file: string,
  asNobody: boolean,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const argv = [client, '/dev/null', 'save', file, 'mmap'];
  const env = {
    PATH: process.env.PATH!,
    LD_PRELOAD: preload,
    VFIO_MIG_SOCKET: socket,
    VFIO_MIG_TEST_DEVICE: '/dev/null',
  };
  const p = asNobody
    ? spawn('setpriv', ['--reuid=nobody', '--regid=nogroup', '--clear-groups', '--', ...argv], { env })
    : spawn(argv[0]!, argv.slice(1), { env });
  let stdout = '';
  let stderr = '';
  p.stdout.on('data', (d) => (stdout += d));
  p.stderr.on('data', (d) => (stderr += d));
  return new Promise((done) => p.on('close', (code) => done({ code, stdout, stderr })));
}

const expected = () => saveV2(createSimDevice(parseSimSpec(SIM)), false);

describe.skipIf(!isRoot)("who may connect is the operator's choice", () => {
  it("the default socket is its owner's only: a VMM of another user is refused by the kernel (EACCES) and runs unbridged", async () => {
    const sock = join(dir, 'private.sock');
    const s = startServe(['serve', '--socket', sock, '--sim', SIM]);
    await waitFor(s.stderr, /serving on .*mode 0600/);
    const r = await vmmSave(sock, join(out, 'x.bin'), true);
    await stop(s);
    expect(r.stderr).toMatch(
      /is not bridged: cannot reach the bridge service at .*private\.sock \(Permission denied\)/,
    );
    expect(r.code).not.toBe(0);
  });

  it('--mode 0660 --group nogroup: a VMM running as nobody migrates, and is served its own device only', async () => {
    const sock = join(dir, 'group.sock');
    // --group alone lets the group in: mode 0660.
    const s = startServe(['serve', '--socket', sock, '--group', 'nogroup', '--sim', SIM]);
    await waitFor(s.stderr, /serving on .*mode 0660, group 65534/);
    const file = join(out, 'nobody.bin');
    const r = await vmmSave(sock, file, true);
    await stop(s);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(readFileSync(file).equals(await expected())).toBe(true);
    rmSync(file);
  });

  it('a socket systemd passes (LISTEN_FDS) is served and left in place; --mode does not apply to it', async () => {
    const sock = join(dir, 'activated.sock');
    const server = createServer();
    await new Promise<void>((r) => server.listen(sock, r));
    const fd = (server as unknown as { _handle: { fd: number } })._handle.fd;
    // As systemd execs the service: LISTEN_PID is the service's own pid.
    const s = startServe(['serve', '--sim', SIM], fd, 'LISTEN_PID=$$ LISTEN_FDS=1 exec "$@"');
    await waitFor(s.stderr, /serving on .*activated\.sock \(the socket systemd passed\)/);
    // Our copy goes; closing it would unlink the path the service now serves, so it is moved aside first.
    renameSync(sock, `${sock}.aside`);
    await new Promise((r) => server.close(r));
    renameSync(`${sock}.aside`, sock);
    const file = join(out, 'activated.bin');
    const r = await vmmSave(sock, file, false);
    expect(r.code, r.stderr).toBe(0);
    expect(readFileSync(file).equals(await expected())).toBe(true);
    await stop(s);
    expect(existsSync(sock)).toBe(true); // systemd's, not ours to remove
    rmSync(file);
    rmSync(sock);

    for (const extra of [
      ['--mode', '0666'],
      ['--socket', join(dir, 'other.sock')],
    ]) {
      const bad = startServe(['serve', ...extra, '--sim', SIM], fd, 'LISTEN_PID=$$ LISTEN_FDS=1 exec "$@"');
      expect((await bad.exited).code).toBe(2);
      expect(textOf(bad.stderr)).toMatch(/--socket, --mode and --group do not apply to a socket systemd passed/);
    }
  });

  it('--group takes only a group the system knows, by name or number', async () => {
    for (const g of ['4294967296', '4294967295', 'no-such-group-here']) {
      const r = startServe(['serve', '--socket', join(dir, 'g.sock'), '--group', g]);
      expect((await r.exited).code).toBe(2);
      expect(textOf(r.stderr)).toMatch(`--group ${g}: no such group`);
    }
  });

  it('a second signal while sessions are ending exits at once, saying so', async () => {
    const sock = join(dir, 'twice.sock');
    const trace = join(dir, 'twice.ndjson');
    const s = startServe(['serve', '--socket', sock, '--trace', trace, '--sim', 'sim:size=64M,read-delay-ms=3000']);
    await waitFor(s.stderr, /serving on/);
    const vmm = vmmSave(sock, join(out, 'twice.bin'), false);
    // Mid-save: the VMM has written 010 and waits on its first chunk, which the device takes 3 s to give.
    const saving = () =>
      existsSync(trace) &&
      readFileSync(trace, 'utf8')
        .split('\n')
        .some((l) => l.includes('"device_state"') && l.includes('"write"'));
    for (let i = 0; i < 400 && !saving(); i++) await sleep(50);
    s.kill('SIGTERM');
    await waitFor(s.stderr, /SIGTERM: stopping; every session ends/);
    s.kill('SIGTERM');
    expect((await s.exited).code).toBe(143);
    expect(textOf(s.stderr)).toMatch(/SIGTERM again: exiting without waiting/);
    await vmm;
    rmSync(join(out, 'twice.bin'), { force: true });
    rmSync(sock, { force: true });
    rmSync(trace);
  });
});

describe.skipIf(!isRoot)('a hostile client as another user, on a socket open to all', () => {
  it("names a root process's pid and fds: refused, the secret is never read and the file never changes", async () => {
    const secret = join(dir, 'secret');
    writeFileSync(secret, 'root-only secret\n', { mode: 0o600 });
    const sfd = openSync(secret, 'r+');
    const victim = spawn('sleep', ['60'], { stdio: ['ignore', 'ignore', 'ignore', sfd] });
    closeSync(sfd);
    const sock = join(dir, 'open.sock');
    const s = startServe(['serve', '--socket', sock, '--mode', '0666']); // the real device path, no --sim
    await waitFor(s.stderr, /serving on/);
    // A plain Node client, as nobody: HELLO naming the victim, then SECTION and READ/WRITE as the old attack did.
    const attack = join(dir, 'attack.mjs');
    writeFileSync(
      attack,
      `import { connect } from 'node:net';
const [sock, pid] = process.argv.slice(2);
const req = (op, payload = Buffer.alloc(0), offset = 0n, length = 0) => {
  const h = Buffer.alloc(24); h.writeUInt32LE(op, 0); h.writeUInt32LE(payload.length, 4); h.writeBigUInt64LE(offset, 8); h.writeUInt32LE(length, 16);
  return Buffer.concat([h, payload]);
};
const hello = (p, fd) => { const b = Buffer.alloc(16); b.writeUInt32LE(p, 0); b.writeInt32LE(fd, 4); b.writeUInt32LE(9, 8); return req(1, b); };
const fd3 = Buffer.alloc(4); fd3.writeInt32LE(3);
const s = connect(sock);
let got = Buffer.alloc(0);
s.on('data', (d) => (got = Buffer.concat([got, d])));
s.on('connect', () => s.write(Buffer.concat([hello(Number(pid), 3), req(2, fd3), req(3, Buffer.alloc(0), 4096n, 4096), req(4, Buffer.from('pwned'), 4096n, 5)])));
s.on('close', () => { console.log(JSON.stringify({ result: got.length >= 8 ? got.readInt32LE(0) : null, bytes: got.length, text: got.subarray(8).toString() })); });
s.on('error', () => {});
`,
    );
    const r = spawnSync(
      'setpriv',
      ['--reuid=nobody', '--regid=nogroup', '--clear-groups', '--', process.execPath, attack, sock, String(victim.pid)],
      { encoding: 'utf8', timeout: 20_000 },
    );
    victim.kill();
    await stop(s);
    const seen = JSON.parse(r.stdout.trim()) as { result: number; bytes: number; text: string };
    expect(seen.result).toBe(-1); // EPERM
    expect(seen.text).toMatch(/HELLO names process \d+, but the connected process is \d+/);
    expect(seen.text).not.toMatch(/secret/);
    expect(readFileSync(secret, 'utf8')).toBe('root-only secret\n');
    expect(textOf(s.stderr)).toMatch(/could not be bridged: .*EPERM/);
  });
});

/** Descriptors and resident memory of a process, from /proc. */
function usage(pid: number): { fds: number; rssKiB: number } {
  const rss = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]!;
  return { fds: readdirSync(`/proc/${pid}/fd`).length, rssKiB: Number(rss) };
}

/** A small seeded generator, so a failing run can be repeated (the seed is in the test's title). */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

const SEED = Number(process.env.VFIO_MIG_FUZZ_SEED ?? Date.now() % 100000);

describe.skipIf(!isRoot)('wire fuzzer beside an honest VMM', () => {
  it(`random, truncated, oversized and out-of-order messages on 8 connections at a time (seed ${SEED}): the honest save is byte-exact; fds and RSS come back`, async () => {
    const sock = join(dir, 'fuzz.sock');
    const s = startServe(['serve', '--socket', sock, '--sim', SIM]);
    await waitFor(s.stderr, /serving on/);
    const warm = await vmmSave(sock, join(out, 'warm.bin'), false); // the first session loads what every later one uses
    expect(warm.code, warm.stderr).toBe(0);
    await waitFor(s.stderr, /done:/);
    const before = usage(s.p.pid!);
    const rand = rng(SEED);
    const pick = <T>(xs: T[]) => xs[Math.floor(rand() * xs.length)]!;
    const sealed: number[] = [];
    const honest = vmmSave(sock, join(out, 'honest.bin'), false);
    const deadline = Date.now() + 8000;
    let connections = 0;
    const fuzzOne = async () => {
      const c = await WireClient.connect(sock).catch(() => null);
      if (!c) return;
      connections++;
      const n = 1 + Math.floor(rand() * 12);
      for (let i = 0; i < n && !c.closed; i++) {
        const kind = pick([
          'hello',
          'hello-other',
          'section',
          'section-sealed',
          'read',
          'write',
          'bye',
          'garbage',
          'oversized',
          'truncated',
        ]);
        if (kind === 'hello') c.hello(process.pid, Math.floor(rand() * 8), 'fuzz\n\u001b[31m');
        else if (kind === 'hello-other') c.hello(1, 0);
        else if (kind === 'section') c.send(WireOp.SECTION, u32(Math.floor(rand() * 64)));
        else if (kind === 'section-sealed') {
          const fd = memfd(4 << 20, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
          sealed.push(fd);
          c.send(WireOp.SECTION, u32(fd));
        } else if (kind === 'read')
          c.send(WireOp.READ, new Uint8Array(0), BigInt(Math.floor(rand() * 8192)), Math.floor(rand() * 2 ** 23));
        else if (kind === 'write')
          c.send(
            WireOp.WRITE,
            Buffer.alloc(Math.floor(rand() * 64), 0xff),
            BigInt(Math.floor(rand() * 64)),
            Math.floor(rand() * 64),
          );
        else if (kind === 'bye') c.send(WireOp.BYE, Buffer.alloc(Math.floor(rand() * 30)));
        else if (kind === 'garbage')
          c.sock.write(
            Buffer.from(Array.from({ length: 1 + Math.floor(rand() * 100) }, () => Math.floor(rand() * 256))),
          );
        else if (kind === 'oversized') c.send(pick([1, 2, 3, 4, 5, 99]), new Uint8Array(0), 0n, 0, 0xffffffff);
        else c.send(pick([1, 2, 3, 4]), Buffer.alloc(8), 0n, 8, 64); // says 64, sends 8, then stops
        if (rand() < 0.3) await sleep(Math.floor(rand() * 20));
      }
      if (rand() < 0.5) c.close();
      else await Promise.race([c.gone, sleep(300)]).then(() => c.close());
    };
    while (Date.now() < deadline) await Promise.all(Array.from({ length: 8 }, fuzzOne));
    const r = await honest;
    sealed.forEach(closeMemfd);
    expect(r.code, r.stderr).toBe(0);
    expect(readFileSync(join(out, 'honest.bin')).equals(await expected())).toBe(true);
    // Every fuzz connection is gone: the service is back to what it held.
    let after = usage(s.p.pid!);
    for (let i = 0; i < 100 && after.fds > before.fds; i++) {
      await sleep(50);
      after = usage(s.p.pid!);
    }
    console.log(
      `wire fuzzer (seed ${SEED}): ${connections} connections in 8 s; service fds ${before.fds} -> ${after.fds}, RSS ${before.rssKiB} -> ${after.rssKiB} KiB; log ${textOf(s.stderr).split('\n').length} lines`,
    );
    await stop(s);
    expect(after.fds).toBe(before.fds);
    expect(after.rssKiB - before.rssKiB).toBeLessThan(32 << 10);
    rmSync(join(out, 'honest.bin'));
    rmSync(join(out, 'warm.bin'));
  }, 60_000);
});
