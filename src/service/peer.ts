/**
 * The process at the other end of one service connection, as the kernel
 * names it: its credentials from SO_PEERCRED and one pidfd opened at
 * connect, through which every descriptor of the connection is taken. A
 * pid or fd number written in a message never selects a process
 * (docs/interposer.md#trust-model).
 */
import { fstatSync, readFileSync, readlinkSync, realpathSync } from 'node:fs';
import { VfioError } from '../errors.js';
import type { PeerCredentials, PeerSysCalls, SharedMapping } from '../v2/kernel/sys.js';

/** The seals a data section must carry: its size can change neither way, so a mapping of it never faults. */
export const F_SEAL_SHRINK = 0x2;
export const F_SEAL_GROW = 0x4;
const REQUIRED_SEALS = F_SEAL_SHRINK | F_SEAL_GROW;
const F_SEAL_WRITE = 0x8;
const F_SEAL_FUTURE_WRITE = 0x10;

/** A process's start time in clock ticks since boot (/proc/PID/stat field 22), or null once it is gone. */
function startTime(pid: number): string | null {
  try {
    // The command name (field 2) may hold spaces and parentheses: count from its closing one.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? null;
  } catch {
    return null;
  }
}

/** Real, effective, saved and filesystem uids and gids of a process, from /proc/PID/status. */
function credentialsOf(pid: number): { uids: number[]; gids: number[] } | null {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const ids = (key: string) =>
      (new RegExp(`^${key}:\\s+(.*)$`, 'm').exec(status)?.[1] ?? '').trim().split(/\s+/).map(Number);
    return { uids: ids('Uid'), gids: ids('Gid') };
  } catch {
    return null;
  }
}

export class Peer {
  readonly #sys: PeerSysCalls;
  #pidfd: number;

  private constructor(
    readonly creds: PeerCredentials,
    /** The process as one key: pid and start time, so a recycled pid is another process. */
    readonly identity: string,
    pidfd: number,
    sys: PeerSysCalls,
  ) {
    this.#pidfd = pidfd;
    this.#sys = sys;
  }

  /** The peer of the connected Unix socket `sockFd`. */
  static ofSocket(sockFd: number, sys: PeerSysCalls): Peer {
    const op = 'serve: connect';
    const creds = sys.peerCredentials(sockFd, op, 'socket');
    if (creds.pid <= 0) throw new VfioError('ESRCH', op, 'socket', 'the peer has no process in this pid namespace');
    const pidfd = sys.peerPidfd(sockFd, creds.pid, op, 'socket');
    const start = startTime(creds.pid);
    const peer = new Peer(creds, `${creds.pid}:${start}`, pidfd, sys);
    // Alive after the /proc read: that read was of this very process, not of one that took its pid.
    if (start === null || !peer.alive()) {
      peer.close();
      throw new VfioError('ESRCH', op, 'socket', `process ${creds.pid} exited as it connected`);
    }
    return peer;
  }

  get pid(): number {
    return this.creds.pid;
  }

  /**
   * Whether the process that connected still runs. A connection can outlive
   * it (a forked child keeps the socket): its session must not, since the
   * pid may then name another process.
   */
  alive(): boolean {
    return this.#pidfd >= 0 && this.#sys.pidfdPid(this.#pidfd) === this.creds.pid;
  }

  /** A copy of the peer's descriptor `fd`; the caller owns it. */
  takeFd(fd: number, op: string, device: string): number {
    if (this.#pidfd < 0) throw new VfioError('EBADF', op, device, 'the connection has ended');
    if (!Number.isInteger(fd) || fd < 0) throw new VfioError('EBADF', op, device, `not a file descriptor: ${fd}`);
    // pidfd_getfd as root would take from a process that became setuid since connect(2): only the credentials it connected with count.
    const now = credentialsOf(this.creds.pid);
    if (!this.alive()) throw new VfioError('ESRCH', op, device, `process ${this.creds.pid} has exited`);
    if (!now || now.uids.some((u) => u !== this.creds.uid) || now.gids.some((g) => g !== this.creds.gid)) {
      throw new VfioError(
        'EPERM',
        op,
        device,
        `process ${this.creds.pid} no longer runs as uid ${this.creds.uid} gid ${this.creds.gid}, as it connected`,
      );
    }
    try {
      return this.#sys.pidfdGetfd(this.#pidfd, fd, op, device);
    } catch (e) {
      if (!(e instanceof VfioError) || (e.code !== 'EPERM' && e.code !== 'EACCES')) throw e;
      throw new VfioError(
        e.code,
        op,
        device,
        `${e.reason ?? ''}: the service needs ptrace access to the VMM (run it as root, or let vfio-mig exec start it beside the VMM)`,
        { cause: e },
      );
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
      if ((seals & REQUIRED_SEALS) !== REQUIRED_SEALS)
        throw new VfioError(
          'EPERM',
          op,
          device,
          `the memfd is not sealed against shrinking and growing (seals 0x${seals.toString(16)})`,
        );
      if (seals & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE))
        throw new VfioError(
          'EPERM',
          op,
          device,
          `the memfd is sealed against writing (seals 0x${seals.toString(16)}): the section is written both ways`,
        );
      const bytes = fstatSync(own).size;
      if (bytes < size)
        throw new VfioError('EINVAL', op, device, `the memfd holds ${bytes} bytes, the section needs ${size}`);
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

/** Where procfs and sysfs are mounted: tests pass a fake tree of both, as only a VFIO host has the real entries. */
export interface KernelTrees {
  proc: string;
  sys: string;
}
const KERNEL_TREES: KernelTrees = { proc: '/proc', sys: '/sys' };

/** What /proc says a descriptor of ours is: a path, or `anon_inode:[...]`, `socket:[...]`. */
export function fdTarget(fd: number, trees: KernelTrees = KERNEL_TREES): string {
  try {
    return readlinkSync(`${trees.proc}/self/fd/${fd}`);
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
export function checkVfioDeviceFd(fd: number, op: string, device: string, trees: KernelTrees = KERNEL_TREES): void {
  const what = fdTarget(fd, trees);
  if (what === 'anon_inode:[vfio-device]') return;
  const st = fstatSync(fd, { bigint: true });
  if (st.isCharacterDevice()) {
    const major = (st.rdev >> 8n) & 0xfffn;
    const minor = (st.rdev & 0xffn) | ((st.rdev >> 12n) & ~0xffn);
    const sys = realpathOrNull(`${trees.sys}/dev/char/${major}:${minor}`);
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
