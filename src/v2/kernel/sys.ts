/**
 * The only file that imports koffi: one thin function per syscall. Every
 * -1 becomes a VfioError carrying errno, the op and the device; nothing
 * here keeps state beyond the loaded libc functions.
 */
import koffi from 'koffi';
import { readFileSync } from 'node:fs';
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
  syscall3: (nr: number, a: number, b: number, c: number) => number | bigint;
  mmap: (addr: null, len: number, prot: number, flags: number, fd: number, off: bigint) => unknown;
  munmap: (addr: unknown, len: number) => number;
  getsockopt: (fd: number, level: number, name: number, val: Uint8Array, len: Uint8Array) => number;
  fcntl: (fd: number, cmd: number, arg: number) => number;
  poll: (fds: Uint8Array, nfds: number, timeout: number) => number;
  execve: (path: string, argv: (string | null)[], envp: (string | null)[]) => number;
  signal: (sig: number, handler: null) => unknown;
}

let libc: Libc | null = null;

/**
 * The uAPI structs are encoded little-endian (src/struct.ts). ENOTSUP: the
 * call is valid but this build cannot do it on this host; not EINVAL (no
 * argument is wrong) nor EOPNOTSUPP, which the CLI reads as a device
 * without migration. `probe` is for the test.
 */
export function checkHostByteOrder(probe: Uint16Array = new Uint16Array([1])): void {
  if (new Uint8Array(probe.buffer)[0] !== 1)
    throw new VfioError(
      'ENOTSUP',
      'load',
      'the VFIO kernel backend',
      'it needs a little-endian host (the uAPI structs are encoded little-endian)',
    );
}

function load(): Libc {
  if (libc) return libc;
  checkHostByteOrder();
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
    readAsync: lib.func('intptr_t read(int fd, void *buf, size_t count)'),
    writeAsync: lib.func('intptr_t write(int fd, const void *buf, size_t count)'),
    syscall3: lib.func('long syscall(long nr, long a, long b, long c)'),
    mmap: lib.func('void *mmap(void *addr, size_t len, int prot, int flags, int fd, int64_t off)'),
    munmap: lib.func('int munmap(void *addr, size_t len)'),
    getsockopt: lib.func('int getsockopt(int fd, int level, int name, void *val, void *len)'),
    fcntl: lib.func('fcntl', 'int', ['int', 'int', 'int']),
    poll: lib.func('int poll(void *fds, unsigned long nfds, int timeout)'),
    execve: lib.func('int execve(const char *path, const char **argv, const char **envp)'),
    signal: lib.func('void *signal(int sig, void *handler)'),
  };
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
async function asyncIo(
  fn: AsyncFn,
  fd: number,
  buf: Uint8Array,
  op: string,
  device: string,
  syscall: string,
): Promise<number> {
  for (;;) {
    const r = await new Promise<number>((resolve, reject) =>
      fn.async(fd, buf, buf.length, (err: Error | null, res: number | bigint) =>
        err ? reject(err) : resolve(res < 0 ? -koffi.errno() : Number(res)),
      ),
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

// x86-64 syscall numbers (Linux 5.6+): glibc 2.36 has no pidfd_getfd wrapper.
const SYS_PIDFD_OPEN = 434;
const SYS_PIDFD_GETFD = 438;

/**
 * A pidfd for process `pid` (pidfd_open). Prefer sysPeerPidfd for a socket
 * peer: a pid alone may have been recycled by the time it is opened.
 */
export function sysPidfdOpen(pid: number, op: string, device: string): number {
  const pidfd = Number(load().syscall3(SYS_PIDFD_OPEN, pid, 0, 0));
  if (pidfd < 0) throw fail(op, device, 'pidfd_open', `process ${pid}`);
  return pidfd;
}

/** A copy of descriptor `fd` of the process `pidfd` refers to: needs ptrace access to it (its parent, or CAP_SYS_PTRACE). */
export function sysPidfdGetfd(pidfd: number, fd: number, op: string, device: string): number {
  const got = Number(load().syscall3(SYS_PIDFD_GETFD, pidfd, fd, 0));
  if (got < 0) throw fail(op, device, 'pidfd_getfd', `fd ${fd} of the peer`);
  return got;
}

/** A copy of descriptor `fd` of process `pid` (pidfd_open + pidfd_getfd). */
export function sysTakeFd(pid: number, fd: number, op: string, device: string): number {
  const pidfd = sysPidfdOpen(pid, op, device);
  try {
    return sysPidfdGetfd(pidfd, fd, op, device);
  } finally {
    sysClose(pidfd);
  }
}

export function sysPidfdPid(pidfd: number): number {
  try {
    return Number(/^Pid:\s*(-?\d+)/m.exec(readFileSync(`/proc/self/fdinfo/${pidfd}`, 'utf8'))?.[1] ?? -1);
  } catch {
    return -1;
  }
}

const SOL_SOCKET = 1;
const SO_PEERCRED = 17;
const SO_PEERPIDFD = 77; // Linux 6.5+

/** Who connected to a Unix socket, as the kernel recorded it at connect(2). */
export interface PeerCredentials {
  pid: number;
  uid: number;
  gid: number;
}

export function sysPeerCredentials(sockFd: number, op: string, device: string): PeerCredentials {
  const val = new Uint8Array(12);
  const len = new Uint8Array(4);
  new DataView(len.buffer).setUint32(0, val.length, true);
  if (load().getsockopt(sockFd, SOL_SOCKET, SO_PEERCRED, val, len) < 0)
    throw fail(op, device, 'getsockopt', 'SO_PEERCRED');
  const v = new DataView(val.buffer);
  return { pid: v.getInt32(0, true), uid: v.getUint32(4, true), gid: v.getUint32(8, true) };
}

/**
 * A pidfd for the socket's peer: SO_PEERPIDFD names the very process that
 * connected. Kernels before 6.5 lack it (ENOPROTOOPT); then the peer's pid
 * is opened, which a process that exited and whose pid was recycled since
 * connect(2) could defeat (docs/interposer.md#trust-model).
 */
export function sysPeerPidfd(sockFd: number, pid: number, op: string, device: string): number {
  const val = new Uint8Array(4);
  const len = new Uint8Array(4);
  new DataView(len.buffer).setUint32(0, val.length, true);
  if (load().getsockopt(sockFd, SOL_SOCKET, SO_PEERPIDFD, val, len) === 0)
    return new DataView(val.buffer).getInt32(0, true);
  const e = fail(op, device, 'getsockopt', 'SO_PEERPIDFD');
  if (e.code !== 'ENOPROTOOPT') throw e;
  return sysPidfdOpen(pid, op, device);
}

const F_GET_SEALS = 1034;

/** The seals of a memfd (F_GET_SEALS); EINVAL for a file that cannot carry seals. */
export function sysGetSeals(fd: number, op: string, device: string): number {
  const r = load().fcntl(fd, F_GET_SEALS, 0);
  if (r < 0) throw fail(op, device, 'fcntl', 'F_GET_SEALS');
  return r;
}

const F_GETFD = 1;
const F_SETFD = 2;
const F_GETFL = 3;
const F_SETFL = 4;
const FD_CLOEXEC = 1;
const O_NONBLOCK = 0o4000;

/** Sets or clears FD_CLOEXEC; a descriptor that is gone (EBADF) is left alone. */
export function sysSetCloexec(fd: number, on: boolean): void {
  const lib = load();
  const flags = lib.fcntl(fd, F_GETFD, 0);
  if (flags < 0) return;
  lib.fcntl(fd, F_SETFD, on ? flags | FD_CLOEXEC : flags & ~FD_CLOEXEC);
}

/** Sets or clears O_NONBLOCK on the open file description. */
export function sysSetNonblock(fd: number, on: boolean): void {
  const lib = load();
  const flags = lib.fcntl(fd, F_GETFL, 0);
  if (flags < 0) return;
  lib.fcntl(fd, F_SETFL, on ? flags | O_NONBLOCK : flags & ~O_NONBLOCK);
}

/** Whether `fd` is readable now (poll, no wait): a pidfd is once its process has exited. */
export function sysReadable(fd: number, op: string, device: string): boolean {
  const pfd = new Uint8Array(8); // struct pollfd { int fd; short events; short revents; }
  const v = new DataView(pfd.buffer);
  v.setInt32(0, fd, true);
  v.setInt16(4, 1 /* POLLIN */, true);
  for (;;) {
    const r = load().poll(pfd, 1, 0);
    if (r >= 0) return r > 0 && v.getInt16(6, true) !== 0;
    const e = fail(op, device, 'poll');
    if (e.code !== 'EINTR') throw e;
  }
}

/** Puts `sig` back to its default action (Node ignores SIGPIPE and SIGXFSZ, and execve keeps what is ignored). */
export function sysSignalDefault(sig: number): void {
  load().signal(sig, null); // SIG_DFL is NULL
}

/**
 * Replaces this process with `path` (execve(2)): returns only by throwing.
 * argv and envp go to C as NULL-terminated arrays of strings.
 */
export function sysExecve(path: string, argv: string[], envp: string[]): never {
  load().execve(path, [...argv, null], [...envp, null]);
  throw fail('execve', path, 'execve');
}

const PROT_READ = 1;
const PROT_WRITE = 2;
const MAP_SHARED = 1;

/** Shared memory mapped from `fd` (a memfd): the bytes and how to unmap them. */
export interface SharedMapping {
  bytes: Uint8Array;
  unmap(): void;
}

export function sysMapShared(fd: number, size: number, op: string, device: string): SharedMapping {
  const lib = load();
  const ptr = lib.mmap(null, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0n);
  // MAP_FAILED is (void *)-1.
  if (ptr === null || BigInt(koffi.address(ptr)) === 0xffffffffffffffffn) throw fail(op, device, 'mmap');
  let live = true;
  return {
    bytes: new Uint8Array(koffi.view(ptr, size)),
    unmap() {
      if (live) lib.munmap(ptr, size);
      live = false;
    },
  };
}

/**
 * The syscalls the kernel device uses, as one table: the seam where tests
 * put a fake kernel (test/v2/kernel-device.test.ts) to check the argsz
 * retry loop, fd clean-up order and close() on the host. Same contract as
 * the functions above: a failure throws a VfioError carrying the errno.
 */
export interface SysCalls {
  open(path: string, op: string): number;
  close(fd: number): void;
  ioctl(fd: number, request: number, arg: Uint8Array | null, op: string, device: string): number;
  ioctlInt(fd: number, request: number, arg: number, op: string, device: string): number;
  read(fd: number, into: Uint8Array, op: string, device: string): Promise<number>;
  write(fd: number, from: Uint8Array, op: string, device: string): Promise<number>;
  pread(fd: number, into: Uint8Array, offset: bigint, op: string, device: string): number;
  pwrite(fd: number, from: Uint8Array, offset: bigint, op: string, device: string): number;
}

/**
 * What the bridge service does to its peers: who connected, a pidfd for it,
 * copies of its descriptors, and the data section's checks and mapping.
 * The seam where test/service/ puts a fake kernel.
 */
export interface PeerSysCalls {
  close(fd: number): void;
  peerCredentials(sockFd: number, op: string, device: string): PeerCredentials;
  peerPidfd(sockFd: number, pid: number, op: string, device: string): number;
  pidfdGetfd(pidfd: number, fd: number, op: string, device: string): number;
  /** The pid a pidfd refers to, or -1 once that process has exited (its fdinfo). */
  pidfdPid(pidfd: number): number;
  getSeals(fd: number, op: string, device: string): number;
  mapShared(fd: number, size: number, op: string, device: string): SharedMapping;
}

export const linuxPeerSys: PeerSysCalls = {
  close: sysClose,
  peerCredentials: sysPeerCredentials,
  peerPidfd: sysPeerPidfd,
  pidfdGetfd: sysPidfdGetfd,
  pidfdPid: sysPidfdPid,
  getSeals: sysGetSeals,
  mapShared: sysMapShared,
};

/** The real syscalls, through koffi (libc is loaded on first use). */
export const linuxSys: SysCalls = {
  open: sysOpen,
  close: sysClose,
  ioctl: sysIoctl,
  ioctlInt: sysIoctlInt,
  read: sysRead,
  write: sysWrite,
  pread: sysPread,
  pwrite: sysPwrite,
};
