/** Reading a state file or stdin: exact-length reads, then the rest as chunks; sockets named as files. */
import { once } from 'node:events';
import { constants, openSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { Socket, createConnection } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

export class ByteSource {
  #it: AsyncIterator<Uint8Array>;
  #pending: Buffer = Buffer.alloc(0);

  constructor(chunks: AsyncIterable<Uint8Array>) {
    this.#it = chunks[Symbol.asyncIterator]();
  }

  /** Up to n bytes; fewer only at end of input. */
  async readUpTo(n: number): Promise<Buffer> {
    while (this.#pending.length < n) {
      const r = await this.#it.next();
      if (r.done) break;
      this.#pending = Buffer.concat([this.#pending, Buffer.from(r.value)]);
    }
    const out = this.#pending.subarray(0, n);
    this.#pending = this.#pending.subarray(out.length);
    return out;
  }

  /** Stops reading early: the underlying file is closed now, not when it is garbage-collected. */
  async close(): Promise<void> {
    await this.#it.return?.();
  }

  async *rest(): AsyncGenerator<Buffer> {
    if (this.#pending.length) yield this.#pending;
    this.#pending = Buffer.alloc(0);
    for (;;) {
      const r = await this.#it.next();
      if (r.done) return;
      yield Buffer.from(r.value);
    }
  }
}

export async function* fileChunks(path: string, chunkSize = 1 << 20): AsyncGenerator<Uint8Array> {
  const fh = await open(path, 'r');
  try {
    for (;;) {
      const buf = Buffer.allocUnsafe(chunkSize);
      const { bytesRead } = await fh.read(buf, 0, chunkSize, null);
      if (bytesRead === 0) return;
      yield buf.subarray(0, bytesRead);
    }
  } finally {
    await fh.close();
  }
}

/**
 * A socket named as a file cannot be open(2)ed (ENXIO). /dev/stdin,
 * /dev/stdout, /dev/fd/N and /proc/self/fd/N name a descriptor this process
 * holds (a socketpair, from a parent that is Node or an ssh session): it is
 * used as it is. Any other path is a listening Unix socket: connected to.
 */
export async function openSocket(path: string, mode: 'r' | 'w'): Promise<Socket> {
  const fd =
    path === '/dev/stdin' ? '0' : path === '/dev/stdout' ? '1' : /^\/(?:dev|proc\/self)\/fd\/(\d+)$/.exec(path)?.[1];
  if (fd !== undefined) return new Socket({ fd: Number(fd), readable: mode === 'r', writable: mode === 'w' });
  const sock = createConnection(path);
  await once(sock, 'connect'); // rejects on 'error'
  return sock;
}

/**
 * A FIFO (also a pipe named as /dev/fd/N, as <(…) gives) opened without
 * blocking and used as a stream: a blocking open or read of one would hold
 * a libuv threadpool thread until the other end came, and process.exit
 * waits for that thread, so an interrupt could never end the run. A writer
 * cannot open one before a reader has (ENXIO): it tries again until then.
 */
export async function openFifo(path: string, mode: 'r' | 'w'): Promise<Socket> {
  const flags = (mode === 'r' ? constants.O_RDONLY : constants.O_WRONLY) | constants.O_NONBLOCK;
  for (;;) {
    try {
      return new Socket({ fd: openSync(path, flags), readable: mode === 'r', writable: mode === 'w' });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENXIO' || mode === 'r') throw e;
    }
    await sleep(50);
  }
}

async function* streamChunks(open: () => Promise<Socket>): AsyncGenerator<Uint8Array> {
  const sock = await open();
  try {
    for await (const c of sock) yield c as Buffer;
  } finally {
    sock.destroy();
  }
}

export const socketChunks = (path: string) => streamChunks(() => openSocket(path, 'r'));
export const fifoChunks = (path: string) => streamChunks(() => openFifo(path, 'r'));
