/**
 * A raw client of the bridge service's wire protocol (src/service/wire.ts),
 * for tests that play a hostile or broken VMM: it sends what it is told,
 * byte for byte, and reads replies as they come. Also a sealed or unsealed
 * memfd of this process, as the interposer would create one.
 */
import koffi from 'koffi';
import { spawnSync } from 'node:child_process';
import { connect, type Socket } from 'node:net';
import { join, resolve } from 'node:path';
import { vmw_hello, vmw_reply, vmw_request } from '../../src/service/wire.js';

export interface Reply {
  result: number;
  payload: Buffer;
}

export class WireClient {
  #buf = Buffer.alloc(0);
  #waiting: (() => void) | null = null;
  closed = false;
  readonly gone: Promise<void>;

  private constructor(readonly sock: Socket) {
    sock.on('data', (d) => {
      this.#buf = Buffer.concat([this.#buf, d]);
      this.#waiting?.();
    });
    sock.on('error', () => undefined);
    this.gone = new Promise((done) =>
      sock.on('close', () => {
        this.closed = true;
        this.#waiting?.();
        done();
      }),
    );
  }

  static connect(path: string): Promise<WireClient> {
    return new Promise((resolve, reject) => {
      const s = connect(path);
      s.once('connect', () => resolve(new WireClient(s)));
      s.once('error', reject);
    });
  }

  send(
    op: number,
    payload: Uint8Array = new Uint8Array(0),
    offset = 0n,
    length = 0,
    claimedLength = payload.length,
  ): void {
    const head = vmw_request.encode({ op, payload_len: claimedLength, offset, length, reserved: 0 });
    this.sock.write(Buffer.concat([head, payload]));
  }

  hello(pid: number, fd: number, name = 'test device', numRegions = 9): void {
    this.send(
      1,
      Buffer.concat([vmw_hello.encode({ pid, fd, num_regions: numRegions, reserved: 0 }), Buffer.from(name)]),
    );
  }

  /** The next reply, or null once the service closed the connection without one. */
  async reply(): Promise<Reply | null> {
    for (;;) {
      if (this.#buf.length >= vmw_reply.size) {
        const r = vmw_reply.decode(this.#buf);
        const end = vmw_reply.size + r.payload_len;
        if (this.#buf.length >= end) {
          const out = { result: r.result, payload: this.#buf.subarray(vmw_reply.size, end) };
          this.#buf = this.#buf.subarray(end);
          return out;
        }
      }
      if (this.closed) return null;
      await new Promise<void>((w) => (this.#waiting = w));
      this.#waiting = null;
    }
  }

  close(): void {
    this.sock.destroy();
  }
}

const libc = koffi.load('libc.so.6');
const memfdCreate = libc.func('int memfd_create(const char *name, unsigned int flags)');
const ftruncate = libc.func('int ftruncate(int fd, int64_t len)');
const fcntl = libc.func('fcntl', 'int', ['int', 'int', 'int']);
const closeFd = libc.func('int close(int fd)');
const MFD_CLOEXEC = 1;
const MFD_ALLOW_SEALING = 2;
const F_ADD_SEALS = 1033;
export const F_SEAL_SEAL = 1;
export const F_SEAL_SHRINK = 2;
export const F_SEAL_GROW = 4;

/** A memfd of `size` bytes in this process with `seals` added; the caller closes it with closeMemfd. */
export function memfd(size: number, seals: number): number {
  const fd = memfdCreate('test-section', MFD_CLOEXEC | MFD_ALLOW_SEALING) as number;
  if (fd < 0 || (ftruncate(fd, size) as number) < 0) throw new Error(`memfd: errno ${koffi.errno()}`);
  if (seals && (fcntl(fd, F_ADD_SEALS, seals) as number) < 0) throw new Error(`F_ADD_SEALS: errno ${koffi.errno()}`);
  return fd;
}

/** ftruncate on a memfd: 0, or the errno it failed with. */
export function truncateErrno(fd: number, size: number): number {
  return (ftruncate(fd, size) as number) < 0 ? koffi.errno() : 0;
}

export function closeMemfd(fd: number): void {
  closeFd(fd);
}

export const u32 = (n: number) => {
  const b = Buffer.alloc(4);
  b.writeInt32LE(n);
  return b;
};

/** test/service/peer-client.c compiled into `dir`: a C client of the service, run as another process or user. */
export function buildPeerClient(dir: string): string {
  const root = resolve(import.meta.dirname, '../..');
  const client = join(dir, 'peer-client');
  const cc = spawnSync(
    'cc',
    ['-O2', '-I', join(root, 'interposer'), '-o', client, join(root, 'test/service/peer-client.c')],
    { encoding: 'utf8' },
  );
  if (cc.status !== 0) throw new Error(`cc test/service/peer-client.c: ${cc.error?.message ?? cc.stderr}`);
  return client;
}
