/**
 * The process at the other end of one service connection, as the kernel
 * names it: its credentials from SO_PEERCRED and one pidfd opened at
 * connect, through which every descriptor of the connection is taken. A
 * pid or fd number written in a message never selects a process
 * (docs/interposer.md#trust-model).
 */
import { fstatSync, readlinkSync, realpathSync } from 'node:fs';
import { VfioError } from '../errors.js';
import type { PeerCredentials, PeerSysCalls, SharedMapping } from '../v2/kernel/sys.js';

/** The seals a data section must carry: its size can change neither way, so a mapping of it never faults. */
export const F_SEAL_SHRINK = 0x2;
export const F_SEAL_GROW = 0x4;
const REQUIRED_SEALS = F_SEAL_SHRINK | F_SEAL_GROW;

export class Peer {
  readonly #sys: PeerSysCalls;
  #pidfd: number;

  private constructor(
    readonly creds: PeerCredentials,
    pidfd: number,
    sys: PeerSysCalls,
  ) {
    this.#pidfd = pidfd;
    this.#sys = sys;
  }

  /** The peer of the connected Unix socket `sockFd`. */
  static ofSocket(sockFd: number, sys: PeerSysCalls): Peer {
    const creds = sys.peerCredentials(sockFd, 'serve: connect', 'socket');
    if (creds.pid <= 0) throw new VfioError('ESRCH', 'serve: connect', 'socket', 'the peer has no process in this pid namespace');
    return new Peer(creds, sys.peerPidfd(sockFd, creds.pid, 'serve: connect', 'socket'), sys);
  }

  get pid(): number {
    return this.creds.pid;
  }

  /** A copy of the peer's descriptor `fd`; the caller owns it. */
  takeFd(fd: number, op: string, device: string): number {
    if (this.#pidfd < 0) throw new VfioError('EBADF', op, device, 'the connection has ended');
    if (!Number.isInteger(fd) || fd < 0) throw new VfioError('EBADF', op, device, `not a file descriptor: ${fd}`);
    try {
      return this.#sys.pidfdGetfd(this.#pidfd, fd, op, device);
    } catch (e) {
      if (!(e instanceof VfioError) || (e.code !== 'EPERM' && e.code !== 'EACCES')) throw e;
      throw new VfioError(e.code, op, device, `${e.reason ?? ''}: the service needs ptrace access to the VMM (run it as root, or let vfio-mig exec start it beside the VMM)`, { cause: e });
    }
  }

  /** A copy of the peer's device fd `fd`, checked to be a VFIO device before anyone issues an ioctl on it. */
  takeDeviceFd(fd: number, op: string, device: string): number {
    const own = this.takeFd(fd, op, device);
    try {
      checkVfioDeviceFd(own, op, device);
      return own;
    } catch (e) {
      this.#sys.close(own);
      throw e;
    }
  }

  /**
   * Maps the peer's data section `fd` (at least `size` bytes), refusing
   * anything but a memfd sealed against shrinking and growing: a file the
   * peer could truncate would fault (SIGBUS) the service on its next access.
   */
  mapSection(fd: number, size: number, device: string): SharedMapping {
    const op = 'serve: data section';
    const own = this.takeFd(fd, op, device);
    try {
      const what = fdTarget(own);
      if (!what.startsWith('/memfd:')) throw new VfioError('EINVAL', op, device, `fd ${fd} is ${what}, not a memfd`);
      const seals = this.#sys.getSeals(own, op, device);
      if ((seals & REQUIRED_SEALS) !== REQUIRED_SEALS) throw new VfioError('EPERM', op, device, `the memfd is not sealed against shrinking and growing (seals 0x${seals.toString(16)})`);
      const bytes = fstatSync(own).size;
      if (bytes < size) throw new VfioError('EINVAL', op, device, `the memfd holds ${bytes} bytes, the section needs ${size}`);
      return this.#sys.mapShared(own, size, op, device);
    } finally {
      this.#sys.close(own); // the mapping keeps the memory
    }
  }

  close(): void {
    if (this.#pidfd >= 0) this.#sys.close(this.#pidfd);
    this.#pidfd = -1;
  }
}

/** What /proc says a descriptor of ours is: a path, or `anon_inode:[...]`, `socket:[...]`. */
export function fdTarget(fd: number): string {
  try {
    return readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    return `fd ${fd}`;
  }
}

/**
 * Whether a descriptor is a VFIO device fd, checked before any ioctl is
 * issued on it: the group path gives `anon_inode:[vfio-device]`; the
 * iommufd path a character device that sysfs places under a `vfio-dev`
 * class (asked by device number, so a VMM in its own mount namespace, as
 * libvirt runs QEMU, is recognised too).
 */
export function checkVfioDeviceFd(fd: number, op: string, device: string): void {
  const what = fdTarget(fd);
  if (what === 'anon_inode:[vfio-device]') return;
  const st = fstatSync(fd, { bigint: true });
  if (st.isCharacterDevice()) {
    const major = st.rdev >> 8n & 0xfffn;
    const minor = (st.rdev & 0xffn) | (st.rdev >> 12n & ~0xffn);
    const sys = realpathOrNull(`/sys/dev/char/${major}:${minor}`);
    if (sys && /\/vfio-dev\/vfio\d+$/.test(sys)) return;
  }
  throw new VfioError('ENODEV', op, device, `that fd is ${what}, not a VFIO device`);
}

function realpathOrNull(path: string): string | null {
  try {
    return realpathSync(path);
  } catch {
    return null;
  }
}
