/**
 * What one run of vfio-mig owns: its output streams, whether --json was
 * given, the devices it opened and the files it has not finished. An
 * interrupt closes the devices (naming the state each was left in) and
 * removes the files. main.ts builds one from the process; tests build one
 * from buffers and run commands in-process.
 */
import { Console } from 'node:console';
import { fstatSync, unlinkSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import type { Writable } from 'node:stream';
import { isatty } from 'node:tty';
import type { V2Device } from '../v2/device.js';
import { ForwardingDevice } from '../v2/forwarding-device.js';
import { holdsSession } from '../v2/fsm.js';
import { migStateName } from '../v2/uapi.js';
import { openDeviceArg } from './open-device.js';
import { errnoOf } from '../errors.js';
import { errorLine, toJson } from './output.js';

/** process.stdout / process.stderr, or any Writable standing in for them. */
export type CliStream = Writable & { isTTY?: boolean; columns?: number };

/** Where signals come from (the process): serve and exec replace the interrupt handling with their own. */
export interface SignalSource {
  on(sig: NodeJS.Signals, listener: () => void): unknown;
  once(sig: NodeJS.Signals, listener: () => void): unknown;
  removeAllListeners(sig: NodeJS.Signals): unknown;
}

export type StdinKind = 'terminal' | 'file' | 'stream';

/** What fd 0 is, without touching process.stdin. */
export function stdinKindOf(fd = 0): StdinKind {
  if (isatty(fd)) return 'terminal';
  try {
    return fstatSync(fd).isFile() ? 'file' : 'stream';
  } catch {
    return 'stream'; // closed: reading it fails where it is read
  }
}

export interface CliIo {
  stdout: CliStream;
  stderr: CliStream;
  /** Read only when a command takes `-`: the process's stdin is not touched otherwise. */
  stdin?: () => AsyncIterable<Uint8Array>;
  /** What stdin is: `-i -` refuses a terminal and checks a file whole before the device is touched. */
  stdinKind?: StdinKind;
  /** When given, SIGINT, SIGTERM and SIGHUP clean up and end the run through `exit`. */
  signals?: SignalSource;
  exit?: (code: number) => void;
  /** Replaces the process with a program (`exec`); only a run that owns its process has it. Returns only by throwing. */
  execve?: (path: string, argv: string[], env: Record<string, string | undefined>) => never;
}

export const INTERRUPT_SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;

/** How long an interrupt waits for the devices to be closed before exiting anyway. */
const INTERRUPT_GRACE_MS = 2000;

export class CliContext {
  readonly stdout: CliStream;
  readonly stderr: CliStream;
  /** --json anywhere on the command line: errors, usage errors too, are then one JSON object. */
  readonly json: boolean;
  readonly signals: SignalSource | null;
  /** Ends the run at once with `code` (the process's exit, or the stand-in a test gives). */
  readonly exitNow: (code: number) => void;
  readonly execve: CliIo['execve'];
  readonly stdinKind: StdinKind;
  readonly #console: Console;
  readonly #stdin: (() => AsyncIterable<Uint8Array>) | undefined;
  #stdinRead = false;
  readonly #devices = new Set<V2Device>();
  readonly #unfinished = new Set<string>();

  constructor(io: CliIo, argv: readonly string[]) {
    this.stdout = io.stdout;
    this.stderr = io.stderr;
    this.json = argv.includes('--json');
    this.signals = io.signals ?? null;
    this.exitNow = io.exit ?? ((code: number) => process.exit(code));
    this.execve = io.execve;
    this.#stdin = io.stdin;
    this.stdinKind = io.stdinKind ?? 'stream';
    // console.log's semantics on these streams (a reader gone away does not throw).
    this.#console = new Console({ stdout: io.stdout, stderr: io.stderr });
    if (io.signals) {
      const exit = this.exitNow;
      for (const sig of INTERRUPT_SIGNALS) io.signals.on(sig, () => this.#interrupted(sig, exit));
    }
  }

  /** One line (or lines) of output on stdout. */
  log(text: string): void {
    this.#console.log(text);
  }

  stdin(): AsyncIterable<Uint8Array> {
    if (!this.#stdin) throw new Error('vfio-mig: this run has no stdin');
    this.#stdinRead = true;
    return this.#stdin();
  }

  /** Whether a command took stdin (which its process then closes at the end, see main.ts). */
  get stdinRead(): boolean {
    return this.#stdinRead;
  }

  /** Opens a device that an interrupt must close (and name the state of); closing it stops the tracking. */
  async openDevice(spec: string): Promise<V2Device> {
    const dev = new TrackedDevice(await openDeviceArg(spec), this.#devices);
    this.#devices.add(dev);
    return dev;
  }

  async withDevice<T>(spec: string, fn: (d: V2Device) => Promise<T>): Promise<T> {
    const dev = await this.openDevice(spec);
    try {
      return await fn(dev);
    } finally {
      await dev.close();
    }
  }

  /** A file being written under a temporary name: removed if the run is interrupted. */
  unfinished(file: string): void {
    this.#unfinished.add(file);
  }

  /** The file was renamed into place or removed: nothing for an interrupt to do. */
  finished(file: string): void {
    this.#unfinished.delete(file);
  }

  /**
   * Removes every unfinished file (at once, before anything is awaited) and
   * closes every open device, resetting one that holds a data session since
   * that session dies with this run. Returns where each device was left.
   */
  cleanup(): Promise<string[]> {
    for (const f of this.#unfinished) {
      try {
        unlinkSync(f);
      } catch {
        // already gone
      }
    }
    this.#unfinished.clear();
    return Promise.all([...this.#devices].map(closeInterrupted));
  }

  #interrupted(sig: (typeof INTERRUPT_SIGNALS)[number], exit: (code: number) => void): void {
    let ended = false;
    const code = 128 + osConstants.signals[sig];
    const done = () => {
      clearTimeout(timer);
      if (!ended) exit(code);
      ended = true; // a stand-in exit (tests) returns: end once
    };
    const closing = this.cleanup(); // an interrupted save leaves no file under the target name
    const timer = setTimeout(done, INTERRUPT_GRACE_MS).unref(); // done runs later (timer or closing), never before this
    closing.then((states) => {
      const message = `interrupted by ${sig}${states.length ? `; ${states.join('; ')}` : ''}`;
      // Under --json, the one error object every failure gives (EINTR, as a syscall cut short by the signal).
      const error = { code: 'EINTR', errno: errnoOf('EINTR'), op: 'interrupted', device: null, message, exit: code };
      this.stderr.write(this.json ? `${toJson({ error })}\n` : `vfio-mig: ${message}\n`);
      done();
    }, done);
  }
}

/**
 * A simulated device or a /dev/null stdout never waits on I/O, so a signal
 * handler would not run until the work ended: the function this returns
 * gives the event loop one turn when 50 ms have passed since the last.
 */
export function signalTurns(): () => Promise<void> {
  let turn = Date.now();
  return async () => {
    if (Date.now() - turn <= 50) return;
    await new Promise((r) => setImmediate(r));
    turn = Date.now();
  };
}

/** The device's state digest, where it has one; a signal is taken while a large state is hashed. */
export async function stateDigestOf(dev: V2Device): Promise<string | undefined> {
  return dev.stateDigest?.(signalTurns());
}

/** A device the run tracks until it is closed. */
class TrackedDevice extends ForwardingDevice {
  constructor(
    inner: V2Device,
    readonly tracking: Set<V2Device>,
  ) {
    super(inner);
  }
  override close(): Promise<void> {
    this.tracking.delete(this);
    return this.inner.close();
  }
}

/** Closes a device on an interrupt and says where it was left. */
async function closeInterrupted(dev: V2Device): Promise<string> {
  let where: string;
  try {
    const state = await dev.getState();
    if (holdsSession(state)) {
      await dev.reset();
      where = 'reset to RUNNING';
    } else {
      where = `left in ${migStateName(state)}`;
    }
  } catch (e) {
    where = `left in an unknown state (${errorLine(e)})`;
  }
  await dev.close().catch(() => undefined);
  return `${dev.name} ${where}`;
}
