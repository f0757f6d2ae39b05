/**
 * vfio-mig serve / exec / env: the bridge service for VMMs that run with the
 * LD_PRELOAD interposer. `exec` starts one for a command it runs; `serve`
 * waits for VMMs someone else starts; `env` prints what such a VMM needs.
 */
import { spawn } from 'node:child_process';
import { closeSync, openSync, writeSync } from 'node:fs';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { constants as osConstants } from 'node:os';
import { startBridgeService, type BridgeService, type BridgeServiceOptions, type ServiceTraceEvent } from '../service/bridge-service.js';
import { preloadLibrary } from '../service/preload-library.js';
import { openDevice } from './open-device.js';
import { CliError, toJson } from './output.js';
import { EXIT } from './exit-codes.js';

export interface ServiceCliOptions {
  trace?: string;
  sectionSize: number;
  sim?: string;
}

/** Each event as one JSON line, written at once (a crash keeps what came before). */
function traceWriter(path: string): { write: (e: ServiceTraceEvent) => void; close: () => void } {
  const fd = openSync(path, 'w');
  const t0 = Date.now();
  return {
    write: (e) => void writeSync(fd, `${toJson({ t: Date.now() - t0, ...e })}\n`),
    close: () => closeSync(fd),
  };
}

async function start(socketPath: string, o: ServiceCliOptions): Promise<{ svc: BridgeService; stop: () => Promise<void> }> {
  const trace = o.trace ? traceWriter(o.trace) : null;
  const opts: BridgeServiceOptions = {
    socketPath,
    sectionSize: o.sectionSize,
    log: (line) => process.stderr.write(`vfio-mig: ${line}\n`),
    ...(trace ? { trace: trace.write } : {}),
    // --sim: every VMM device is served by a fresh simulated device (tests, benchmarks).
    ...(o.sim ? { openDevice: () => openDevice(o.sim!) } : {}),
  };
  const svc = await startBridgeService(opts);
  return {
    svc,
    stop: async () => {
      await svc.close();
      trace?.close();
    },
  };
}

/** The environment a VMM needs to reach the service at `socketPath`. */
export function vmmEnvironment(socketPath: string, inherited = process.env.LD_PRELOAD): Record<string, string> {
  const lib = preloadLibrary();
  return { LD_PRELOAD: inherited ? `${lib}:${inherited}` : lib, VFIO_MIG_SOCKET: resolve(socketPath) };
}

export function envCommand(o: { socket: string }): void {
  for (const [k, v] of Object.entries(vmmEnvironment(o.socket, undefined))) process.stdout.write(`${k}=${v}\n`);
}

const STOP_SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;

export async function serveCommand(o: ServiceCliOptions & { socket: string }): Promise<void> {
  const { stop } = await start(o.socket, o);
  const env = vmmEnvironment(o.socket, undefined);
  process.stderr.write(`vfio-mig: serving on ${env.VFIO_MIG_SOCKET}; start the VMM with\n  ${Object.entries(env).map(([k, v]) => `${k}=${v}`).join(' ')}\n`);
  await new Promise<void>((done) => {
    for (const sig of STOP_SIGNALS) process.removeAllListeners(sig).once(sig, () => done());
  });
  await stop();
}

/**
 * Runs COMMAND with the interposer preloaded and a service of its own,
 * forwards SIGINT, SIGTERM, SIGHUP and SIGQUIT to it, and returns its exit
 * status (128 + signal number when a signal ended it).
 */
export async function execCommand(command: string[], o: ServiceCliOptions & { socket?: string }): Promise<number> {
  if (command.length === 0) throw new CliError('vfio-mig exec: no command given (vfio-mig exec -- COMMAND [ARGS...])', EXIT.USAGE);
  const dir = o.socket ? null : mkdtempSync(join(tmpdir(), 'vfio-mig-'));
  const socketPath = o.socket ?? join(dir!, 'bridge.sock');
  const env = { ...process.env, ...vmmEnvironment(socketPath) };
  const { stop } = await start(socketPath, o); // listening before the command starts
  try {
    const child = spawn(command[0]!, command.slice(1), { stdio: 'inherit', env });
    const forward = (sig: NodeJS.Signals) => () => void child.kill(sig);
    for (const sig of [...STOP_SIGNALS, 'SIGQUIT'] as const) process.removeAllListeners(sig).on(sig, forward(sig));
    const status = await new Promise<number>((done) => {
      child.once('error', (e) => {
        process.stderr.write(`vfio-mig exec: cannot run ${command[0]}: ${e.message}\n`);
        done((e as NodeJS.ErrnoException).code === 'ENOENT' ? 127 : 126);
      });
      child.once('exit', (code, signal) => done(code ?? 128 + (signal ? osConstants.signals[signal] : 0)));
    });
    return status;
  } finally {
    await stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  }
}
