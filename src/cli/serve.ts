/**
 * vfio-mig serve / exec / env: the bridge service for VMMs that run with the
 * LD_PRELOAD interposer. `exec` starts one for a command it runs; `serve`
 * waits for VMMs someone else starts; `env` prints what such a VMM needs.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readFileSync, readlinkSync, rmSync, statSync, writeSync } from 'node:fs';
import { constants as osConstants, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import type { Server } from 'node:net';
import { fileURLToPath } from 'node:url';
import { getSystemErrorMap } from 'node:util';
import { VfioError, asVfioError } from '../errors.js';
import type { BridgeServiceOptions, ServiceTraceEvent } from '../service/bridge-service.js';
import { MAX_SOCKET_PATH, listenUnix } from '../service/listen.js';
import { preloadLibrary } from '../service/preload-library.js';
import { PAGE } from '../v2/uapi.js';
import type { CliContext, SignalSource } from './context.js';
import { openDeviceArg, parseSimSpec } from './open-device.js';
import { CliError, errorLine, toJson } from './output.js';
import { EXIT } from './exit-codes.js';
import { EXEC_SERVICE, resolveCommand } from './exec-inplace.js';
import { sysClose, sysPidfdOpen, sysReadable } from '../v2/kernel/sys.js';

export interface ServiceCliOptions {
  trace?: string;
  sectionSize: number;
  sim?: string;
}

export interface ServeCliOptions extends ServiceCliOptions {
  socket?: string;
  mode?: number;
  group?: number;
}

/** The socket systemd passed (socket activation: LISTEN_PID is ours, LISTEN_FDS=1, the socket is fd 3). */
function activationSocket(): number | undefined {
  const { LISTEN_PID, LISTEN_FDS } = process.env;
  if (LISTEN_PID === undefined || Number(LISTEN_PID) !== process.pid) return undefined;
  if (LISTEN_FDS !== '1')
    throw new CliError(
      `vfio-mig serve: systemd passed LISTEN_FDS=${LISTEN_FDS ?? ''}; the service takes exactly one socket`,
      EXIT.USAGE,
    );
  // Not for the VMMs or helpers this process starts (sd_listen_fds(1) does the same).
  for (const k of ['LISTEN_PID', 'LISTEN_FDS', 'LISTEN_FDNAMES']) delete process.env[k];
  return 3;
}

/** exec's own failures, told apart from COMMAND's statuses as env(1) and timeout(1) do. */
const EXEC_FAILED = 125;
const STOP_SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;

/** Service diagnostics on stderr; a stderr that went away (EPIPE) must not take the service down. */
function serviceLog(ctx: CliContext): (line: string) => void {
  return (line) => {
    try {
      ctx.stderr.write(`vfio-mig: ${line}\n`);
    } catch {
      // nobody is reading
    }
  };
}

/** serve and exec handle these signals themselves, instead of the run's interrupt clean-up. */
function replaceHandler(
  signals: SignalSource | null,
  sig: NodeJS.Signals,
  how: 'on' | 'once',
  handler: () => void,
): void {
  if (!signals) return;
  signals.removeAllListeners(sig);
  signals[how](sig, handler);
}

/**
 * Each event as one JSON line, written at once (a crash keeps what came
 * before). A write that fails turns tracing off with one message: the VMM's
 * accesses never fail because of the trace.
 */
function traceWriter(
  path: string,
  fd: number,
  log: (line: string) => void,
): { write: (e: ServiceTraceEvent) => void; close: () => void } {
  const t0 = Date.now();
  let on = true;
  return {
    write: (e) => {
      if (!on) return;
      try {
        writeSync(fd, `${toJson({ t: Date.now() - t0, ...e })}\n`);
      } catch (err) {
        on = false;
        log(`trace ${path}: ${(err as Error).message}; tracing stopped (the migration goes on)`);
      }
    },
    close: () => closeSync(fd),
  };
}

/** The --trace file, created or emptied. */
function openTrace(cmd: ServiceCommand, path: string): number {
  if (!path) throw new CliError(`vfio-mig ${cmd}: --trace needs a file name`, EXIT.USAGE);
  try {
    return openSync(path, 'w');
  } catch (e) {
    const err = asVfioError(e, `${cmd}: open`, `--trace ${path}`);
    throw new VfioError(err.code, err.op, err.device, systemMessage(e) ?? err.reason, { cause: e });
  }
}

/** A failure to listen, named after the command and the option the path came from, not the library's "serve". */
function listenError(e: unknown, cmd: ServiceCommand, socketPath: string, given: boolean): VfioError {
  const err = asVfioError(e, 'listen', socketPath);
  return new VfioError(err.code, `${cmd}: listen`, given ? `--socket ${socketPath || "''"}` : socketPath, err.reason, {
    cause: e,
  });
}

/** Node's text for its errno ("no such file or directory"), without the code and path Node's message repeats. */
function systemMessage(e: unknown): string | undefined {
  const errno = (e as NodeJS.ErrnoException).errno;
  return errno === undefined ? undefined : getSystemErrorMap().get(errno)?.[1];
}

type ServiceCommand = 'serve' | 'exec';

/** `given`: the socket path came from --socket (else it is exec's private one). */
async function start(
  ctx: CliContext,
  cmd: ServiceCommand,
  socketPath: string,
  given: boolean,
  o: ServeCliOptions & { listenFd?: number; traceFd?: number },
): Promise<() => Promise<void>> {
  if (o.sim) parseSimSpec(o.sim); // a bad --sim is a usage error now, not at each VMM's first device
  // The VMM maps the section: the interposer refuses one that is not whole pages.
  if (o.sectionSize % PAGE !== 0)
    throw new CliError(
      `vfio-mig ${cmd}: --section-size must be a multiple of ${PAGE} bytes, the page size (got ${o.sectionSize})`,
      EXIT.USAGE,
    );
  ctx.stderr.on('error', () => undefined);
  const log = serviceLog(ctx);
  const trace = o.trace !== undefined ? traceWriter(o.trace, o.traceFd ?? openTrace(cmd, o.trace), log) : null;
  const opts: BridgeServiceOptions = {
    socketPath,
    sectionSize: o.sectionSize,
    ...(o.listenFd !== undefined ? { listenFd: o.listenFd } : {}),
    ...(o.mode !== undefined ? { socketMode: o.mode } : {}),
    ...(o.group !== undefined ? { socketGid: o.group } : {}),
    log,
    ...(trace ? { trace: trace.write } : {}),
    // --sim: every VMM device is served by a fresh simulated device (tests, benchmarks).
    // The service owns the devices it opens and resets them when it stops: not the run's to track.
    ...(o.sim ? { openDevice: () => openDeviceArg(o.sim!) } : {}),
  };
  let svc;
  try {
    // Loaded here, not at the top: exec's own process only starts the service and execs COMMAND.
    const { startBridgeService } = await import('../service/bridge-service.js');
    svc = await startBridgeService(opts);
  } catch (e) {
    trace?.close();
    throw listenError(e, cmd, socketPath, given);
  }
  return async () => {
    await svc.close();
    trace?.close();
  };
}

/** The environment a VMM needs to reach the service at `socketPath`; `inherited` is the VMM's own LD_PRELOAD. */
export function vmmEnvironment(socketPath: string, inherited: string | undefined): Record<string, string> {
  const lib = preloadLibrary();
  return { LD_PRELOAD: inherited ? `${lib}:${inherited}` : lib, VFIO_MIG_SOCKET: resolve(socketPath) };
}

export function envCommand(ctx: CliContext, o: { socket: string }): void {
  for (const [k, v] of Object.entries(vmmEnvironment(o.socket, undefined))) ctx.stdout.write(`${k}=${v}\n`);
}

/** Runs until SIGINT, SIGTERM or SIGHUP, then ends every session at once and exits 0. */
export async function serveCommand(ctx: CliContext, o: ServeCliOptions): Promise<void> {
  const log = serviceLog(ctx);
  let stopRequested: (() => void) | null = null;
  let early = false;
  let signalled = 0;
  for (const sig of STOP_SIGNALS) {
    replaceHandler(ctx.signals, sig, 'on', () => {
      if (signalled++ === 0) {
        log(
          `${sig}: stopping; every session ends and devices left mid-session are reset to RUNNING (a second signal exits at once)`,
        );
        return stopRequested ? stopRequested() : void (early = true);
      }
      log(`${sig} again: exiting without waiting; a device left mid-session is reset by the next VMM that opens it`);
      ctx.exitNow(128 + osConstants.signals[sig]);
    });
  }
  const listenFd = activationSocket();
  if (listenFd !== undefined && (o.mode !== undefined || o.group !== undefined || o.socket !== undefined)) {
    throw new CliError(
      'vfio-mig serve: --socket, --mode and --group do not apply to a socket systemd passed (set ListenStream=, SocketMode= and SocketGroup= in the .socket unit)',
      EXIT.USAGE,
    );
  }
  const socket = o.socket ?? (listenFd !== undefined ? boundPath(listenFd) : undefined);
  if (socket === undefined)
    throw new CliError('vfio-mig serve: --socket PATH is required (unless systemd passes the socket)', EXIT.USAGE);
  // A group is given to be let in: without --mode, the group may connect (0660).
  const mode = o.mode ?? (o.group !== undefined ? 0o660 : undefined);
  const env = vmmEnvironment(socket, undefined); // before listening: a missing interposer is an error now
  const stop = await start(ctx, 'serve', socket, o.socket !== undefined, {
    ...o,
    ...(mode !== undefined ? { mode } : {}),
    ...(listenFd !== undefined ? { listenFd } : {}),
  });
  const who =
    listenFd !== undefined
      ? 'the socket systemd passed'
      : `mode 0${(mode ?? 0o600).toString(8)}${o.group !== undefined ? `, group ${o.group}` : ''}`;
  log(
    `serving on ${env.VFIO_MIG_SOCKET} (${who}); start the VMM with\n  ${Object.entries(env)
      .map(([k, v]) => `${k}=${v}`)
      .join(' ')}`,
  );
  const hidden = listenFd !== undefined || (mode ?? 0o600) & 0o077 ? unreachableForOthers(env.LD_PRELOAD!) : null;
  if (hidden)
    log(
      `warning: other users cannot read the interposer at ${env.LD_PRELOAD} (${hidden}): their VMMs would run unbridged; install the package where they can read it`,
    );
  if (!early) await new Promise<void>((done) => (stopRequested = done));
  await stop();
}

/** Why a user other than the owner could not load `path` (a directory on the way without o+x, the file without o+r), or null. */
function unreachableForOthers(path: string): string | null {
  const parts = resolve(path).split('/');
  for (let i = 2; i <= parts.length; i++) {
    const p = parts.slice(0, i).join('/');
    const mode = statSync(p, { throwIfNoEntry: false })?.mode;
    if (mode === undefined) return `${p} is missing`;
    const need = i === parts.length ? 0o004 : 0o001;
    if (!(mode & need)) return `${p} is mode 0${(mode & 0o777).toString(8)}`;
  }
  return null;
}

/** The path a passed socket is bound to, for the VMM's environment line. */
function boundPath(fd: number): string {
  try {
    const path = readlinkSync(`/proc/self/fd/${fd}`);
    // A socket's link says socket:[inode]; its path is in /proc/net/unix.
    const inode = /^socket:\[(\d+)\]$/.exec(path)?.[1];
    const line = inode
      ? readFileSync('/proc/net/unix', 'utf8')
          .split('\n')
          .find((l) => l.split(/\s+/)[6] === inode)
      : undefined;
    return line?.split(/\s+/)[7] ?? `fd ${fd}`;
  } catch {
    return `fd ${fd}`;
  }
}

/** A private socket under $TMPDIR, or /tmp when $TMPDIR is too long for a socket path. */
function privateSocket(): { dir: string; socket: string } {
  for (const base of [tmpdir(), '/tmp']) {
    const dir = mkdtempSync(join(base, 'vfio-mig-'));
    const socket = join(dir, 'bridge.sock');
    if (Buffer.byteLength(socket) <= MAX_SOCKET_PATH) return { dir, socket };
    rmSync(dir, { recursive: true, force: true });
  }
  throw new CliError(
    'vfio-mig exec: no temporary directory with a short enough path for a socket: use --socket',
    EXEC_FAILED,
  );
}

/** The CLI's own entry point, for the service exec starts beside COMMAND (dist/cli/main.js, also when run from src/ in tests). */
const CLI_SCRIPT = join(dirname(fileURLToPath(import.meta.url)), '../../dist/cli/main.js');

/**
 * What exec hands its service, at fixed descriptor numbers: the socket it
 * listens on (as systemd passes one), a pidfd of COMMAND's process (this
 * one, which execve keeps), and the trace file when --trace is given.
 */
const EXEC_FD = { listen: 3, pidfd: 4, trace: 5 } as const;

/** The descriptor of a listening net.Server (libuv's handle: Node has no public accessor). */
function serverFd(server: Server): number {
  const fd = (server as unknown as { _handle?: { fd?: unknown } })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) throw new Error('the listening socket has no descriptor');
  return fd;
}

/**
 * Everything of the service that can fail on the caller's input, done here
 * so that it fails before COMMAND starts (exit 125): the socket bound and
 * listening, the trace file open. The service itself (a Node start and the
 * bridge's modules: seconds under emulation) then starts beside COMMAND
 * instead of before it; a VMM that reaches its first device sooner waits
 * in connect's backlog for the first answer (VFIO_MIG_TIMEOUT_MS).
 */
async function prepareService(socketPath: string, given: boolean, o: ServiceCliOptions) {
  const trace = o.trace !== undefined ? openTrace('exec', o.trace) : undefined;
  let server: Server;
  try {
    server = await listenUnix({ socketPath });
  } catch (e) {
    if (trace !== undefined) closeSync(trace);
    throw listenError(e, 'exec', socketPath, given);
  }
  return { server, trace };
}

/**
 * Starts exec's service as its own process in its own session (so nothing
 * sent to exec's process group or COMMAND reaches it), on the socket and
 * trace `prepareService` opened. It watches this process (COMMAND after
 * the execve) through a pidfd and ends when that ends; what goes wrong in
 * it from here is said on stderr, COMMAND's.
 */
function startServiceBeside(
  socketPath: string,
  prepared: { server: Server; trace: number | undefined },
  given: boolean,
  dir: string | null,
  o: ServiceCliOptions,
): ChildProcess {
  const pidfd = sysPidfdOpen(process.pid, 'exec: watch', 'exec itself');
  try {
    const args = [CLI_SCRIPT, EXEC_SERVICE, '--pid', String(process.pid), '--socket', socketPath];
    args.push('--section-size', String(o.sectionSize));
    if (given) args.push('--given');
    if (dir) args.push('--remove-dir', dir);
    if (o.trace !== undefined) args.push('--trace', o.trace);
    if (o.sim !== undefined) args.push('--sim', o.sim);
    // stderr is COMMAND's: the service's lines go where the VMM's go (libvirt's domain log).
    const fds = [serverFd(prepared.server), pidfd, ...(prepared.trace !== undefined ? [prepared.trace] : [])];
    const child = spawn(process.execPath, args, { detached: true, stdio: ['ignore', 'ignore', 'inherit', ...fds] });
    child.unref();
    return child;
  } finally {
    sysClose(pidfd);
  }
}

/**
 * Becomes COMMAND (execve in place) with the interposer preloaded and a
 * service of its own beside it: the pid the caller started is COMMAND's,
 * so its signals, its exit status, cgroup placement and a SIGKILL are
 * COMMAND's own. Returns only when exec itself failed: 125, or 127/126 as
 * env(1) when COMMAND is not found or not executable (told before
 * anything starts). The service ends when COMMAND's process ends.
 */
export async function execCommand(
  ctx: CliContext,
  command: string[],
  o: ServiceCliOptions & { socket?: string },
): Promise<number> {
  if (command.length === 0)
    throw new CliError('vfio-mig exec: no command given (vfio-mig exec -- COMMAND [ARGS...])', EXIT.USAGE);
  // A signal before the execve ends exec (and its service); after it, the signal is COMMAND's.
  let pendingSignal = null as NodeJS.Signals | null; // set by the handlers: not narrowed to null below
  for (const sig of [...STOP_SIGNALS, 'SIGQUIT'] as const)
    replaceHandler(ctx.signals, sig, 'on', () => void (pendingSignal ??= sig));
  if (o.sim) parseSimSpec(o.sim);
  if (o.sectionSize % 4096 !== 0)
    throw new CliError(
      `vfio-mig exec: --section-size must be a multiple of 4096 bytes, the page size (got ${o.sectionSize})`,
      EXIT.USAGE,
    );
  const found = resolveCommand(command[0]!, process.env.PATH);
  if (!('path' in found)) {
    serviceLog(ctx)(`exec: cannot run ${command[0]}: ${found.reason}`);
    return found.status;
  }
  let env: Record<string, string>;
  try {
    env = vmmEnvironment(o.socket ?? '.', process.env.LD_PRELOAD);
  } catch (e) {
    throw new CliError(errorLine(e), EXEC_FAILED, e);
  }
  const priv = o.socket ? null : privateSocket();
  const socketPath = o.socket ?? priv!.socket;
  const given = o.socket !== undefined;
  env.VFIO_MIG_SOCKET = resolve(socketPath);
  let prepared: Awaited<ReturnType<typeof prepareService>> | null = null;
  let service: ChildProcess | null = null;
  try {
    prepared = await prepareService(socketPath, given, o);
    if (pendingSignal) return 128 + osConstants.signals[pendingSignal];
    if (!ctx.execve)
      throw new CliError(
        'vfio-mig exec: replaces its own process with COMMAND: run it as the vfio-mig command',
        EXEC_FAILED,
      );
    // From here to the execve nothing awaits: this process never accepts on the socket its service serves.
    service = startServiceBeside(socketPath, prepared, given, priv?.dir ?? null, o);
    // Yama (ptrace_scope 1) lets only ancestors ptrace: the interposer names the service as COMMAND's tracer.
    env.VFIO_MIG_PTRACER = String(service.pid);
    try {
      return ctx.execve(found.path, command, { ...process.env, ...env });
    } catch (e) {
      serviceLog(ctx)(`exec: cannot run ${command[0]}: ${(e as Error).message}`);
      return (e as NodeJS.ErrnoException).code === 'ENOENT' ? 127 : 126;
    }
  } catch (e) {
    throw e instanceof CliError ? e : new CliError(errorLine(e), EXEC_FAILED, e);
  } finally {
    // Only reached when COMMAND did not replace this process.
    if (service && service.exitCode === null) service.kill('SIGTERM');
    if (prepared) {
      prepared.server.close();
      if (prepared.trace !== undefined) closeSync(prepared.trace);
      if (given) rmSync(socketPath, { force: true });
    }
    if (priv) rmSync(priv.dir, { recursive: true, force: true });
  }
}

export interface ExecServiceOptions extends ServiceCliOptions {
  pid: number;
  socket: string;
  given?: boolean;
  removeDir?: string;
}

/** How often the service looks whether COMMAND is still there. */
const WATCH_MS = 100;

/**
 * exec's service, on the socket, pidfd and trace exec opened (EXEC_FD):
 * runs until COMMAND's process ends or it gets SIGINT, SIGTERM or SIGHUP;
 * then ends its sessions (a device left mid-session is reset) and removes
 * its socket. A failure to start is said on stderr (COMMAND's): its VMM
 * then finds no service, and says so.
 */
export async function execServiceCommand(ctx: CliContext, o: ExecServiceOptions): Promise<number> {
  let stopRequested: (() => void) | null = null;
  let early = false;
  for (const sig of STOP_SIGNALS)
    replaceHandler(ctx.signals, sig, 'once', () => (stopRequested ? stopRequested() : (early = true)));
  const removeSocket = () =>
    o.removeDir ? rmSync(o.removeDir, { recursive: true, force: true }) : rmSync(o.socket, { force: true });
  let stop: () => Promise<void>;
  try {
    stop = await start(ctx, 'exec', o.socket, o.given === true, {
      ...o,
      listenFd: EXEC_FD.listen,
      ...(o.trace !== undefined ? { traceFd: EXEC_FD.trace } : {}),
    });
  } catch (e) {
    serviceLog(ctx)(`exec: the bridge service could not start: ${e instanceof CliError ? e.message : errorLine(e)}`);
    removeSocket();
    return EXEC_FAILED;
  }
  if (!early) {
    await new Promise<void>((done) => {
      const timer = setInterval(() => {
        if (sysReadable(EXEC_FD.pidfd, 'exec: watch', `process ${o.pid}`)) {
          clearInterval(timer);
          done();
        }
      }, WATCH_MS);
      stopRequested = () => {
        clearInterval(timer);
        done();
      };
    });
  }
  sysClose(EXEC_FD.pidfd);
  await stop();
  removeSocket();
  return 0;
}
