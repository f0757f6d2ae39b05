/**
 * The service's listening socket: a path it creates with the owner, mode
 * and group the operator chose (created 0600 and widened only after, so no
 * one connects through a moment of the umask's default), or a socket
 * systemd already made and passed (LISTEN_FDS).
 */
import { connect, createServer, type Server } from 'node:net';
import { chmodSync, chownSync, existsSync, lstatSync, mkdtempSync, renameSync, rmSync } from 'node:fs';
import { dirname, join, resolve as resolvePath } from 'node:path';
import { isMainThread } from 'node:worker_threads';
import { VfioError, asVfioError } from '../errors.js';

/** sockaddr_un holds 108 bytes with the NUL: a longer path would be cut short silently. */
export const MAX_SOCKET_PATH = 107;

/** Where contrib/systemd/vfio-mig.socket listens. */
export const SYSTEM_SOCKET = '/run/vfio-mig/bridge.sock';

export interface ListenOptions {
  socketPath: string;
  listenFd?: number;
  /** Permission bits (default 0600). */
  socketMode?: number;
  socketGid?: number;
}

/** The file operations done on the bound socket (tests pass refusing ones: as root they never fail). */
export interface ListenFsOps {
  chown(path: string, uid: number, gid: number): void;
  chmod(path: string, mode: number): void;
  rename(from: string, to: string): void;
}

const nodeFsOps: ListenFsOps = { chown: chownSync, chmod: chmodSync, rename: renameSync };

/** Whether something answers on the Unix socket at `path`. */
function answers(path: string): Promise<boolean> {
  return new Promise((done) => {
    const s = connect(path);
    s.once('connect', () => {
      s.destroy();
      done(true);
    });
    s.once('error', () => done(false));
  });
}

/** An errno name for a failure: Node's own codes (ERR_OUT_OF_RANGE for a gid past 32 bits) are an invalid argument. */
function errnoName(e: unknown, op: string, path: string): string {
  const code = (e as NodeJS.ErrnoException).code;
  return code?.startsWith('ERR_') ? 'EINVAL' : asVfioError(e, op, path).code;
}

function listening(server: Server, what: string, target: string | { fd: number }): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    server.once('error', (e: NodeJS.ErrnoException) =>
      reject(new VfioError(errnoName(e, 'listen', what), 'listen', what, e.message, { cause: e })),
    );
    server.listen(target, () => {
      server.removeAllListeners('error');
      resolve();
    });
  });
}

export async function listenUnix(opts: ListenOptions, fs: ListenFsOps = nodeFsOps): Promise<Server> {
  const server = createServer();
  if (opts.listenFd !== undefined) {
    await listening(server, `fd ${opts.listenFd} (LISTEN_FDS)`, { fd: opts.listenFd });
    return server;
  }
  const path = opts.socketPath;
  if (!path) throw new VfioError('EINVAL', 'serve', '(empty)', 'the socket path is empty');
  if (Buffer.byteLength(path) > MAX_SOCKET_PATH)
    throw new VfioError('ENAMETOOLONG', 'serve', path, `a Unix socket path holds at most ${MAX_SOCKET_PATH} bytes`);
  const mode = opts.socketMode ?? 0o600;
  if (!Number.isInteger(mode) || mode < 0 || mode > 0o777)
    throw new VfioError('EINVAL', 'serve', path, `socket mode ${mode} is not a permission mode (0 to 0777)`);
  const old = lstatSync(path, { throwIfNoEntry: false });
  if (old && !old.isSocket()) throw new VfioError('EEXIST', 'serve', path, 'exists and is not a socket');
  if (old && (await answers(path)))
    throw new VfioError('EADDRINUSE', 'serve', path, 'another service is listening there');
  if (!old && !existsSync(dirname(resolvePath(path))))
    throw new VfioError('ENOENT', 'serve', path, `no directory ${dirname(resolvePath(path))}`);
  if (old) rmSync(path);
  // Created unreachable, opened up only after: in the main thread through the
  // umask; a worker (which may not set it) binds in a fresh 0700 directory and
  // moves the finished socket into place.
  const bound = isMainThread ? path : join(mkdtempSync(join(dirname(resolvePath(path)), '.vfio-mig-')), 's');
  const umask = isMainThread ? process.umask(0o177) : null;
  try {
    await listening(server, path, bound);
  } finally {
    if (umask !== null) process.umask(umask);
  }
  // Which step failed, for the message: Node's own argument errors (a gid past 32 bits) name no syscall.
  let step: 'group' | 'mode' | 'place' = 'group';
  try {
    if (opts.socketGid !== undefined) fs.chown(bound, -1, opts.socketGid);
    step = 'mode';
    fs.chmod(bound, mode);
    step = 'place';
    if (bound !== path) fs.rename(bound, path);
  } catch (e) {
    server.close();
    rmSync(path, { force: true });
    const err = e as NodeJS.ErrnoException;
    throw new VfioError(
      errnoName(e, 'serve', path),
      'serve',
      path,
      `cannot set the socket's ${step === 'group' ? `group to ${opts.socketGid}` : step === 'place' ? 'place' : `mode to 0${mode.toString(8)}`}: ${err.message}`,
      { cause: e },
    );
  } finally {
    if (bound !== path) rmSync(dirname(bound), { recursive: true, force: true });
  }
  return server;
}
