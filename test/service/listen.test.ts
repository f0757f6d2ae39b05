/**
 * The service's listening socket (src/service/listen.ts): what the path may
 * be, what it replaces (a stale socket only), the mode and group it is
 * given, and a socket systemd passes (LISTEN_FDS), which the service serves
 * and never removes.
 */
import koffi from 'koffi';
import { connect } from 'node:net';
import { spawnSync } from 'node:child_process';
import {
  chmodSync,
  chownSync,
  existsSync,
  lstatSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isMainThread } from 'node:worker_threads';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { VfioError, createSimDevice } from '../../src/index.js';
import { startBridgeService, type BridgeService } from '../../src/service/bridge-service.js';
import { MAX_SOCKET_PATH, listenUnix, type ListenFsOps } from '../../src/service/listen.js';
import { WireOp, vmw_hello_reply } from '../../src/service/wire.js';
import { WireClient } from './wire-client.js';

const libc = koffi.load('libc.so.6');
const socketCall = libc.func('int socket(int domain, int type, int protocol)');
const bindCall = libc.func('int bind(int fd, const void *addr, int len)');
const listenCall = libc.func('int listen(int fd, int backlog)');
const AF_UNIX = 1;
const SOCK_STREAM = 1;

/** A Unix socket bound at `path` and listening, as systemd makes one; Node never saw it. */
function listeningFd(path: string): number {
  const fd = socketCall(AF_UNIX, SOCK_STREAM, 0) as number;
  const addr = Buffer.alloc(110);
  addr.writeUInt16LE(AF_UNIX, 0);
  addr.write(path, 2);
  if (fd < 0 || (bindCall(fd, addr, addr.length) as number) < 0 || (listenCall(fd, 16) as number) < 0)
    throw new Error(`listening socket at ${path}: errno ${koffi.errno()}`);
  return fd;
}

const answers = (path: string) =>
  new Promise<boolean>((done) => {
    const s = connect(path);
    s.once('connect', () => {
      s.destroy();
      done(true);
    });
    s.once('error', () => done(false));
  });

let dir: string;
const servers: { close(): unknown }[] = [];
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'vfio-mig-listen-'));
});
afterEach(async () => {
  for (const s of servers.splice(0)) await s.close();
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function listenAt(path: string, opts: { socketMode?: number; socketGid?: number } = {}) {
  const server = await listenUnix({ socketPath: path, ...opts });
  servers.push({ close: () => new Promise((r) => server.close(r)) });
  return server;
}

describe('the socket path', () => {
  it('empty is EINVAL', async () => {
    await expect(listenUnix({ socketPath: '' })).rejects.toThrow(/EINVAL.*the socket path is empty/);
  });

  it(`of ${MAX_SOCKET_PATH} bytes is served; one byte more is ENAMETOOLONG, not cut short`, async () => {
    const base = join(dir, 'n');
    const long = base + 'x'.repeat(MAX_SOCKET_PATH - Buffer.byteLength(base));
    expect(Buffer.byteLength(long)).toBe(MAX_SOCKET_PATH);
    await listenAt(long);
    expect(await answers(long)).toBe(true);
    await expect(listenUnix({ socketPath: `${long}y` })).rejects.toThrow(
      new RegExp(`ENAMETOOLONG.*at most ${MAX_SOCKET_PATH} bytes`),
    );
    expect(existsSync(`${long}y`)).toBe(false);
  });

  it('in a directory that does not exist is ENOENT, naming the directory', async () => {
    await expect(listenUnix({ socketPath: join(dir, 'missing', 's.sock') })).rejects.toThrow(
      `ENOENT (2): no directory ${join(dir, 'missing')}`,
    );
  });

  it('naming something that is not a socket is EEXIST, and it is left alone', async () => {
    const file = join(dir, 'a-file');
    writeFileSync(file, 'keep me');
    await expect(listenUnix({ socketPath: file })).rejects.toThrow(/EEXIST.*exists and is not a socket/);
    expect(readFileSync(file, 'utf8')).toBe('keep me');
  });

  it('where another service listens is EADDRINUSE, and that service keeps its socket', async () => {
    const path = join(dir, 'live.sock');
    await listenAt(path);
    await expect(listenUnix({ socketPath: path })).rejects.toThrow(/EADDRINUSE.*another service is listening there/);
    expect(await answers(path)).toBe(true);
  });

  it('where a socket is left that nobody answers on, that socket is replaced', async () => {
    const path = join(dir, 'stale.sock');
    // A process that listens and exits without closing: its socket stays, answered by nobody.
    const left = spawnSync(process.execPath, [
      '-e',
      `require('node:net').createServer().listen(${JSON.stringify(path)}, () => process.exit(0))`,
    ]);
    expect(left.status).toBe(0);
    expect(lstatSync(path).isSocket()).toBe(true);
    expect(await answers(path)).toBe(false);
    await listenAt(path);
    expect(await answers(path)).toBe(true);
  });
});

describe('mode and group', () => {
  for (const bad of [-1, 0o1000, 1.5, Number.NaN])
    it(`socket mode ${bad} is EINVAL, and no socket is made`, async () => {
      const path = join(dir, `mode${String(bad).replace('.', '_')}.sock`);
      await expect(listenUnix({ socketPath: path, socketMode: bad })).rejects.toThrow(
        /EINVAL.*is not a permission mode \(0 to 0777\)/,
      );
      expect(existsSync(path)).toBe(false);
    });

  it('0600 by default; 0 and 0777 are taken as given', async () => {
    for (const [name, mode, want] of [
      ['default.sock', undefined, 0o600],
      ['none.sock', 0, 0],
      ['all.sock', 0o777, 0o777],
    ] as const) {
      const path = join(dir, name);
      await listenAt(path, mode === undefined ? {} : { socketMode: mode });
      expect(statSync(path).mode & 0o777).toBe(want);
    }
  });

  it('a group past 32 bits is EINVAL naming the group, and leaves no socket', async () => {
    const path = join(dir, 'biggid.sock');
    const e = await listenAt(path, { socketGid: 2 ** 40 }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(VfioError);
    expect((e as VfioError).code).toBe('EINVAL');
    expect((e as VfioError).message).toMatch(`group to ${2 ** 40}`);
    expect(existsSync(path)).toBe(false);
  });

  it.skipIf(process.getuid?.() !== 0)('the group asked is the socket group, with the mode asked', async () => {
    const path = join(dir, 'group.sock');
    await listenAt(path, { socketMode: 0o660, socketGid: 65534 });
    expect(statSync(path).gid).toBe(65534);
    expect(statSync(path).uid).toBe(0); // the owner stays the service's
    expect(statSync(path).mode & 0o777).toBe(0o660);
    if (isMainThread) {
      // The umask set for the bind is restored after it (a worker thread may not set one).
      const mask = process.umask(0o022);
      process.umask(mask);
      expect(mask).not.toBe(0o177);
    }
  });
});

/** What the kernel says when it refuses `syscall` on `path` (as Node's fs functions throw it). */
function refusal(code: string, syscall: string, path: string): NodeJS.ErrnoException {
  return Object.assign(new Error(`${code}: operation not permitted, ${syscall} '${path}'`), { code, syscall, path });
}

/** Whether a Unix socket bound at `path` is still open anywhere (the kernel keeps its name after an unlink). */
const boundSocket = (path: string) =>
  readFileSync('/proc/net/unix', 'utf8')
    .split('\n')
    .some((l) => l.endsWith(` ${path}`));

describe('a refusal after the socket is bound (never met as root)', () => {
  const real: ListenFsOps = { chown: chownSync, chmod: chmodSync, rename: renameSync };
  const cases: { step: keyof ListenFsOps; code: string; says: string }[] = [
    { step: 'chown', code: 'EPERM', says: "cannot set the socket's group to 4242" },
    { step: 'chmod', code: 'EACCES', says: "cannot set the socket's mode to 0660" },
    // Only a worker thread binds elsewhere and moves the socket into place (listen.ts).
    ...(isMainThread ? [] : [{ step: 'rename' as const, code: 'EXDEV', says: "cannot set the socket's place" }]),
  ];
  for (const { step, code, says } of cases)
    it(`${step} refused is ${code}, naming what was refused; no socket, directory or server is left`, async () => {
      const path = join(dir, `refused-${step}.sock`);
      const before = readdirSync(dir);
      const asked: string[] = [];
      const bound: string[] = [];
      const fs: ListenFsOps = {
        // A chown that succeeded changes nothing here: only a root test run could give the socket gid 4242.
        chown: (p, uid, gid) => {
          asked.push('chown');
          expect(lstatSync(p).isSocket()).toBe(true); // bound before its group and mode are set
          expect(boundSocket(p)).toBe(true);
          bound.push(p);
          expect([uid, gid]).toEqual([-1, 4242]);
          if (step === 'chown') throw refusal(code, 'chown', p);
        },
        chmod: (p, mode) => {
          asked.push('chmod');
          if (step === 'chmod') throw refusal(code, 'chmod', p);
          real.chmod(p, mode);
        },
        rename: (from, to) => {
          asked.push('rename');
          if (step === 'rename') throw refusal(code, 'rename', from);
          real.rename(from, to);
        },
      };
      const e = await listenUnix({ socketPath: path, socketMode: 0o660, socketGid: 4242 }, fs).catch((x: unknown) => x);
      expect(e).toBeInstanceOf(VfioError);
      expect(e).toMatchObject({ code, op: 'serve', device: path });
      expect((e as VfioError).message).toContain(`${says}: ${code}: operation not permitted, ${step}`);
      expect((e as VfioError).cause).toMatchObject({ code, syscall: step });
      const order = ['chown', 'chmod', 'rename'];
      expect(asked).toEqual(order.slice(0, order.indexOf(step) + 1)); // nothing tried after the refusal
      expect(existsSync(path)).toBe(false);
      expect(readdirSync(dir)).toEqual(before); // no private directory left either
      expect(bound.length).toBe(1);
      expect(boundSocket(bound[0]!)).toBe(false); // the server was closed, not only its name removed
    });

  it('a failure that carries no errno is EIO, with no socket left', async () => {
    const path = join(dir, 'no-errno.sock');
    const odd = new TypeError('not an errno');
    const e = await listenUnix(
      { socketPath: path },
      {
        ...real,
        chmod: () => {
          throw odd;
        },
      },
    ).catch((x: unknown) => x);
    expect(e).toMatchObject({ code: 'EIO', op: 'serve', device: path, cause: odd });
    expect(existsSync(path)).toBe(false);
  });

  it('the steps that succeed leave the socket served, with the mode asked', async () => {
    const path = join(dir, 'all-steps.sock');
    const asked: string[] = [];
    const fs: ListenFsOps = {
      chown: () => void asked.push('chown'),
      chmod: (p, mode) => {
        asked.push('chmod');
        real.chmod(p, mode);
      },
      rename: (from, to) => {
        asked.push('rename');
        real.rename(from, to);
      },
    };
    const server = await listenUnix({ socketPath: path, socketMode: 0o640, socketGid: 4242 }, fs);
    servers.push({ close: () => new Promise((r) => server.close(r)) });
    expect(asked).toEqual(isMainThread ? ['chown', 'chmod'] : ['chown', 'chmod', 'rename']);
    expect(statSync(path).mode & 0o777).toBe(0o640);
    expect(await answers(path)).toBe(true);
  });
});

describe('a socket systemd passes (LISTEN_FDS)', () => {
  let svc: BridgeService | null = null;
  afterEach(async () => {
    await svc?.close();
    svc = null;
  });

  it('is served, and left in place when the service stops', async () => {
    const path = join(dir, 'passed.sock');
    const fd = listeningFd(path);
    svc = await startBridgeService({
      socketPath: path,
      listenFd: fd,
      openDevice: async () => createSimDevice({ stateSize: 4096, seed: 1 }),
    });
    const c = await WireClient.connect(path);
    c.hello(process.pid, 0);
    const r = await c.reply();
    expect(vmw_hello_reply.decode(r!.payload).bridged).toBe(1);
    c.send(WireOp.BYE, new Uint8Array(24));
    await c.gone;
    await svc.close();
    svc = null;
    expect(lstatSync(path).isSocket()).toBe(true);
  });

  it('a descriptor that is not a listening socket is refused, naming it', async () => {
    const fd = listeningFd(join(dir, 'unused.sock'));
    const notSocket = koffi.load('libc.so.6').func('int open(const char *path, int flags)')('/dev/null', 0) as number;
    try {
      const err = await listenUnix({ socketPath: join(dir, 'x.sock'), listenFd: notSocket }).catch((e: unknown) => e);
      // The kernel's errno, not a generic EIO; Node's error kept as the cause.
      expect(err).toMatchObject({ code: 'EINVAL' });
      expect((err as Error).message).toContain(`fd ${notSocket} (LISTEN_FDS)`);
      expect((err as Error).cause).toMatchObject({ code: 'EINVAL', syscall: 'listen' });
    } finally {
      libc.func('int close(int fd)')(notSocket);
      libc.func('int close(int fd)')(fd);
    }
  });
});
