/**
 * vfio-mig serve / exec / env: the bridge service for VMMs that run with the
 * LD_PRELOAD interposer. `exec` starts one for a command it runs; `serve`
 * waits for VMMs someone else starts; `env` prints what such a VMM needs.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readFileSync, readlinkSync, rmSync, statSync, writeSync } from 'node:fs';
import { constants as osConstants, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { getSystemErrorMap } from 'node:util';
import { VfioError, asVfioError } from '../errors.js';
import { MAX_SOCKET_PATH, startBridgeService, type BridgeServiceOptions, type ServiceTraceEvent } from '../service/bridge-service.js';
import { preloadLibrary } from '../service/preload-library.js';
import { PAGE } from '../v2/uapi.js';
import type { CliContext, SignalSource } from './context.js';
import { openDeviceArg, parseSimSpec } from './open-device.js';
import { CliError, errorLine, toJson } from './output.js';
import { EXIT } from './exit-codes.js';

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
  if (LISTEN_FDS !== '1') throw new CliError(`vfio-mig serve: systemd passed LISTEN_FDS=${LISTEN_FDS ?? ''}; the service takes exactly one socket`, EXIT.USAGE);
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
function replaceHandler(signals: SignalSource | null, sig: NodeJS.Signals, how: 'on' | 'once', handler: () => void): void {
  if (!signals) return;
  signals.removeAllListeners(sig);
  signals[how](sig, handler);
}

/**
 * Each event as one JSON line, written at once (a crash keeps what came
 * before). A write that fails turns tracing off with one message: the VMM's
 * accesses never fail because of the trace.
 */
function traceWriter(cmd: ServiceCommand, path: string, log: (line: string) => void): { write: (e: ServiceTraceEvent) => void; close: () => void } {
  if (!path) throw new CliError(`vfio-mig ${cmd}: --trace needs a file name`, EXIT.USAGE);
  let fd: number;
  try {
    fd = openSync(path, 'w');
  } catch (e) {
    const err = asVfioError(e, `${cmd}: open`, `--trace ${path}`);
    throw new VfioError(err.code, err.op, err.device, systemMessage(e) ?? err.reason, { cause: e });
  }
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

/** Node's text for its errno ("no such file or directory"), without the code and path Node's message repeats. */
function systemMessage(e: unknown): string | undefined {
  const errno = (e as NodeJS.ErrnoException).errno;
  return errno === undefined ? undefined : getSystemErrorMap().get(errno)?.[1];
}

type ServiceCommand = 'serve' | 'exec';

/** `given`: the socket path came from --socket (else it is exec's private one). */
async function start(ctx: CliContext, cmd: ServiceCommand, socketPath: string, given: boolean, o: ServeCliOptions & { listenFd?: number }): Promise<() => Promise<void>> {
  if (o.sim) parseSimSpec(o.sim); // a bad --sim is a usage error now, not at each VMM's first device
  // The VMM maps the section: the interposer refuses one that is not whole pages.
  if (o.sectionSize % PAGE !== 0) throw new CliError(`vfio-mig ${cmd}: --section-size must be a multiple of ${PAGE} bytes, the page size (got ${o.sectionSize})`, EXIT.USAGE);
  ctx.stderr.on('error', () => undefined);
  const log = serviceLog(ctx);
  const trace = o.trace !== undefined ? traceWriter(cmd, o.trace, log) : null;
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
    svc = await startBridgeService(opts);
  } catch (e) {
    trace?.close();
    // Named after the command and the option the path came from, not the library's "serve".
    const err = asVfioError(e, 'listen', socketPath);
    throw new VfioError(err.code, `${cmd}: listen`, given ? `--socket ${socketPath || "''"}` : socketPath, err.reason, { cause: e });
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
        log(`${sig}: stopping; every session ends and devices left mid-session are reset to RUNNING (a second signal exits at once)`);
        return stopRequested ? stopRequested() : void (early = true);
      }
      log(`${sig} again: exiting without waiting; a device left mid-session is reset by the next VMM that opens it`);
      ctx.exitNow(128 + osConstants.signals[sig]);
    });
  }
  const listenFd = activationSocket();
  if (listenFd !== undefined && (o.mode !== undefined || o.group !== undefined || o.socket !== undefined)) {
    throw new CliError('vfio-mig serve: --socket, --mode and --group do not apply to a socket systemd passed (set ListenStream=, SocketMode= and SocketGroup= in the .socket unit)', EXIT.USAGE);
  }
  const socket = o.socket ?? (listenFd !== undefined ? boundPath(listenFd) : undefined);
  if (socket === undefined) throw new CliError('vfio-mig serve: --socket PATH is required (unless systemd passes the socket)', EXIT.USAGE);
  // A group is given to be let in: without --mode, the group may connect (0660).
  const mode = o.mode ?? (o.group !== undefined ? 0o660 : undefined);
  const env = vmmEnvironment(socket, undefined); // before listening: a missing interposer is an error now
  const stop = await start(ctx, 'serve', socket, o.socket !== undefined, { ...o, ...(mode !== undefined ? { mode } : {}), ...(listenFd !== undefined ? { listenFd } : {}) });
  const who = listenFd !== undefined ? 'the socket systemd passed' : `mode 0${(mode ?? 0o600).toString(8)}${o.group !== undefined ? `, group ${o.group}` : ''}`;
  log(`serving on ${env.VFIO_MIG_SOCKET} (${who}); start the VMM with\n  ${Object.entries(env).map(([k, v]) => `${k}=${v}`).join(' ')}`);
  const hidden = listenFd !== undefined || (mode ?? 0o600) & 0o077 ? unreachableForOthers(env.LD_PRELOAD!) : null;
  if (hidden) log(`warning: other users cannot read the interposer at ${env.LD_PRELOAD} (${hidden}): their VMMs would run unbridged; install the package where they can read it`);
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
    const line = inode ? readFileSync('/proc/net/unix', 'utf8').split('\n').find((l) => l.split(/\s+/)[6] === inode) : undefined;
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
  throw new CliError('vfio-mig exec: no temporary directory with a short enough path for a socket: use --socket', EXEC_FAILED);
}

/**
 * Runs COMMAND with the interposer preloaded and a service of its own,
 * forwards SIGINT, SIGTERM, SIGHUP and SIGQUIT to it, and returns its exit
 * status (128 + signal number when a signal ended it; 125 when exec itself
 * failed). The service ends with COMMAND: a process COMMAND left behind
 * (QEMU's -daemonize) loses the bridge.
 */
export async function execCommand(ctx: CliContext, command: string[], o: ServiceCliOptions & { socket?: string }): Promise<number> {
  if (command.length === 0) throw new CliError('vfio-mig exec: no command given (vfio-mig exec -- COMMAND [ARGS...])', EXIT.USAGE);
  // Signals from the first moment: forwarded once COMMAND runs, remembered before.
  let child: ChildProcess | null = null;
  let pendingSignal = null as NodeJS.Signals | null; // set by the handlers: not narrowed to null below
  for (const sig of [...STOP_SIGNALS, 'SIGQUIT'] as const) {
    replaceHandler(ctx.signals, sig, 'on', () => (child ? void child.kill(sig) : (pendingSignal ??= sig)));
  }
  let env: Record<string, string>;
  try {
    env = vmmEnvironment(o.socket ?? '.', process.env.LD_PRELOAD);
  } catch (e) {
    throw new CliError(errorLine(e), EXEC_FAILED, e);
  }
  const priv = o.socket ? null : privateSocket();
  const socketPath = o.socket ?? priv!.socket;
  env.VFIO_MIG_SOCKET = resolve(socketPath);
  try {
    let stop: () => Promise<void>;
    try {
      stop = await start(ctx, 'exec', socketPath, o.socket !== undefined, o); // listening before the command starts
    } catch (e) {
      throw e instanceof CliError ? e : new CliError(errorLine(e), EXEC_FAILED, e);
    }
    try {
      if (pendingSignal) return 128 + osConstants.signals[pendingSignal];
      const c = spawn(command[0]!, command.slice(1), { stdio: 'inherit', env: { ...process.env, ...env } });
      child = c;
      return await new Promise<number>((done) => {
        c.once('error', (e) => {
          serviceLog(ctx)(`exec: cannot run ${command[0]}: ${e.message}`);
          done((e as NodeJS.ErrnoException).code === 'ENOENT' ? 127 : 126);
        });
        c.once('exit', (code, signal) => done(code ?? 128 + (signal ? osConstants.signals[signal] : 0)));
      });
    } finally {
      await stop();
    }
  } finally {
    if (priv) rmSync(priv.dir, { recursive: true, force: true });
  }
}
