/**
 * The only file that imports koffi: one thin function per syscall. Every
 * -1 becomes a VfioError carrying errno, the op and the device; nothing
 * here keeps state beyond the loaded libc functions.
 */
import koffi from 'koffi';
import { VfioError } from '../../errors.js';

const O_RDWR = 0o2;
const O_CLOEXEC = 0o2000000;

type AsyncCall = (...args: unknown[]) => void;
interface AsyncFn {
  async: AsyncCall;
}

interface Libc {
  open: (path: string, flags: number, mode: number) => number;
  close: (fd: number) => number;
  ioctlPtr: (fd: number, req: number, arg: Uint8Array | null) => number;
  ioctlInt: (fd: number, req: number, arg: number) => number;
  pread: (fd: number, buf: Uint8Array, count: number, offset: bigint) => number | bigint;
  pwrite: (fd: number, buf: Uint8Array, count: number, offset: bigint) => number | bigint;
  /** read()/write() on a worker thread: a data_fd may block, the event loop must not. */
  readAsync: AsyncFn;
  writeAsync: AsyncFn;
}

let libc: Libc | null = null;

function load(): Libc {
  if (libc) return libc;
  if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) throw new Error('the VFIO kernel backend needs a little-endian host');
  const lib = koffi.load('libc.so.6');
  // Fixed-arity prototypes for the variadic open/ioctl: integer and pointer
  // varargs travel in the same registers on x86-64 and arm64.
  libc = {
    open: lib.func('int open(const char *path, int flags, int mode)'),
    close: lib.func('int close(int fd)'),
    ioctlPtr: lib.func('ioctl', 'int', ['int', 'unsigned long', 'void *']),
    ioctlInt: lib.func('ioctl', 'int', ['int', 'unsigned long', 'unsigned long']),
    pread: lib.func('intptr_t pread64(int fd, void *buf, size_t count, int64_t offset)'),
    pwrite: lib.func('intptr_t pwrite64(int fd, const void *buf, size_t count, int64_t offset)'),
    readAsync: lib.func('intptr_t read(int fd, void *buf, size_t count)') as unknown as AsyncFn,
    writeAsync: lib.func('intptr_t write(int fd, const void *buf, size_t count)') as unknown as AsyncFn,
  } as Libc;
  return libc;
}

/** Reads errno right after a failed call, before any other koffi call. */
function fail(op: string, device: string, syscall: string, reason?: string): VfioError {
  return VfioError.fromErrno(koffi.errno(), op, device, syscall, reason);
}

export function sysOpen(path: string, op: string): number {
  const fd = load().open(path, O_RDWR | O_CLOEXEC, 0);
  if (fd < 0) throw fail(op, path, 'open');
  return fd;
}

export function sysClose(fd: number): void {
  load().close(fd); // nothing useful to do with a close error on Linux: the fd is gone either way
}

/** ioctl with a pointer argument (a Buffer the kernel reads and writes during the call). */
export function sysIoctl(fd: number, request: number, arg: Uint8Array | null, op: string, device: string): number {
  const r = load().ioctlPtr(fd, request, arg);
  if (r < 0) throw fail(op, device, 'ioctl');
  return r;
}

/** ioctl with an integer argument (VFIO_CHECK_EXTENSION, VFIO_SET_IOMMU). */
export function sysIoctlInt(fd: number, request: number, arg: number, op: string, device: string): number {
  const r = load().ioctlInt(fd, request, arg);
  if (r < 0) throw fail(op, device, 'ioctl');
  return r;
}

/** Runs a read/write-style call, retrying EINTR; every other errno is raised. */
function retryEintr(call: () => number | bigint, op: string, device: string, syscall: string): number {
  for (;;) {
    const r = Number(call());
    if (r >= 0) return r;
    const e = fail(op, device, syscall);
    if (e.code !== 'EINTR') throw e;
  }
}

/**
 * read()/write() on koffi's worker pool; errno is read in the callback (koffi
 * >= 3.2 carries it over). The buffer stays referenced by the closure until
 * the call returns, as koffi's transient-pointer rule requires.
 */
async function asyncIo(fn: AsyncFn, fd: number, buf: Uint8Array, op: string, device: string, syscall: string): Promise<number> {
  for (;;) {
    const r = await new Promise<number>((resolve, reject) =>
      fn.async(fd, buf, buf.length, (err: unknown, res: number | bigint) => (err ? reject(err) : resolve(res < 0 ? -koffi.errno() : Number(res)))),
    );
    if (r >= 0) return r;
    const e = VfioError.fromErrno(-r, op, device, syscall);
    if (e.code !== 'EINTR') throw e;
  }
}

export function sysRead(fd: number, into: Uint8Array, op: string, device: string): Promise<number> {
  return asyncIo(load().readAsync, fd, into, op, device, 'read');
}

export function sysWrite(fd: number, from: Uint8Array, op: string, device: string): Promise<number> {
  return asyncIo(load().writeAsync, fd, from, op, device, 'write');
}

export function sysPread(fd: number, into: Uint8Array, offset: bigint, op: string, device: string): number {
  return retryEintr(() => load().pread(fd, into, into.length, offset), op, device, 'pread');
}

export function sysPwrite(fd: number, from: Uint8Array, offset: bigint, op: string, device: string): number {
  return retryEintr(() => load().pwrite(fd, from, from.length, offset), op, device, 'pwrite');
}
