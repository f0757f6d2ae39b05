/**
 * What `vfio-mig exec` needs to become COMMAND with execve(2): the command
 * found as env(1) finds it (127 not found, 126 not executable, told before
 * anything is started), and the process made fit for COMMAND (stdio and
 * the descriptors Node was given stay; the ones Node opened do not).
 */
import { accessSync, constants as fsConstants, readFileSync, readdirSync, readlinkSync, statSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { delimiter, join } from 'node:path';
import { sysExecve, sysSetCloexec, sysSetNonblock, sysSignalDefault } from '../v2/kernel/sys.js';

const O_NONBLOCK = 0o4000;

/** The hidden command exec runs its service as (serve.ts). */
export const EXEC_SERVICE = '_exec-service';

export interface FdNote {
  /** Given to this process (so COMMAND's too: libvirt passes tap, vhost and socket fds to QEMU). */
  inherited: Set<number>;
  /** O_NONBLOCK of fds 0-2 at startup: Node may change it on a shared file description, and resets it only at exit. */
  nonblock: Map<number, boolean>;
}

function fdFlags(fd: number): number | undefined {
  try {
    const m = /^flags:\s*([0-7]+)$/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
    return m ? parseInt(m[1]!, 8) : undefined;
  } catch {
    return undefined;
  }
}

function fdTarget(fd: number): string | undefined {
  try {
    return readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    return undefined;
  }
}

/**
 * What this process was given, for replaceProcess; called first thing in
 * main.ts. Node has already marked every descriptor it inherited
 * close-on-exec (libuv's uv_disable_stdio_inheritance), so the flag cannot
 * tell them from its own: those are known by kind instead, an anonymous
 * inode (epoll, eventfd, io_uring, ...) or a pipe whose both ends are here
 * (libuv's signal pipes). Everything else open now was given.
 */
export function noteInheritedFds(): FdNote {
  const inherited = new Set<number>();
  const nonblock = new Map<number, boolean>();
  let fds: number[] = [];
  try {
    fds = readdirSync('/proc/self/fd').map(Number);
  } catch {
    // no /proc: nothing is known, and only 0-2 are handed on
  }
  const targets = new Map(fds.map((fd) => [fd, fdTarget(fd)]));
  const pipeEnds = new Map<string, number>();
  for (const t of targets.values()) if (t?.startsWith('pipe:')) pipeEnds.set(t, (pipeEnds.get(t) ?? 0) + 1);
  for (const [fd, target] of targets) {
    if (target === undefined || target === '/proc/self/fd' || /^\/proc\/\d+\/fd$/.test(target)) continue; // gone, or readdir's own
    if (fd <= 2) {
      const flags = fdFlags(fd);
      if (flags !== undefined) nonblock.set(fd, (flags & O_NONBLOCK) !== 0);
    } else if (!target.startsWith('anon_inode:') && !(target.startsWith('pipe:') && pipeEnds.get(target)! > 1)) {
      inherited.add(fd);
    }
  }
  return { inherited, nonblock };
}

export type ResolvedCommand = { path: string } | { status: 126 | 127; reason: string };

function executable(path: string): 'yes' | 'missing' | 'denied' {
  try {
    if (statSync(path).isDirectory()) return 'denied'; // execve: EACCES
    accessSync(path, fsConstants.X_OK);
    return 'yes';
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'ENOENT' || (e as NodeJS.ErrnoException).code === 'ENOTDIR'
      ? 'missing'
      : 'denied';
  }
}

/**
 * COMMAND's file as execvp(3) would pick it: a name with a slash as it is,
 * else the first executable match on PATH; a match that is not executable
 * gives 126 only when no later one is (env(1)'s statuses).
 */
export function resolveCommand(name: string, pathVar: string | undefined): ResolvedCommand {
  if (name === '') return { status: 127, reason: 'No such file or directory' };
  if (name.includes('/')) {
    const x = executable(name);
    return x === 'yes'
      ? { path: name }
      : x === 'missing'
        ? { status: 127, reason: 'No such file or directory' }
        : { status: 126, reason: 'Permission denied' };
  }
  let denied = false;
  // glibc's default PATH when none is set.
  for (const dir of (pathVar ?? '/bin:/usr/bin').split(delimiter)) {
    const candidate = join(dir || '.', name);
    const x = executable(candidate);
    if (x === 'yes') return { path: candidate };
    if (x === 'denied') denied = true;
  }
  return denied ? { status: 126, reason: 'Permission denied' } : { status: 127, reason: 'command not found' };
}

/**
 * Becomes `path` with execve(2). Every descriptor Node opened is closed on
 * exec, 0-2 and the inherited ones stay, and signal dispositions and stdio
 * flags are put back as COMMAND would have had them without Node in between.
 * Returns only by throwing (the execve's errno).
 */
export function replaceProcess(
  n: FdNote,
  path: string,
  argv: string[],
  env: Record<string, string | undefined>,
): never {
  let fds: number[] = [];
  try {
    fds = readdirSync('/proc/self/fd').map(Number);
  } catch {
    // without /proc: Node's own descriptors are close-on-exec anyway (libuv opens them so)
  }
  for (const fd of fds) if (fd > 2) sysSetCloexec(fd, !n.inherited.has(fd));
  for (const fd of [0, 1, 2]) {
    sysSetCloexec(fd, false); // Node marks its stdio close-on-exec
    const was = n.nonblock.get(fd);
    if (was !== undefined) sysSetNonblock(fd, was);
  }
  sysSignalDefault(osConstants.signals.SIGPIPE);
  sysSignalDefault(osConstants.signals.SIGXFSZ);
  const envp = Object.entries(env).flatMap(([k, v]) => (v === undefined ? [] : [`${k}=${v}`]));
  return sysExecve(path, argv, envp);
}
