/**
 * Runs Debian's QEMU 7.2 or QEMU 10 (the trees scripts/kernel/fetch-qemu.sh
 * unpacks into .cache/, seen through the guest's 9p mount of the project)
 * inside the test guest, with or without `vfio-mig exec`, and talks to its
 * HMP monitor.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { resolve } from 'node:path';

const CLI = resolve(import.meta.dirname, '../../dist/cli/main.js');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const PROJECT = resolve(import.meta.dirname, '../..');
/** Where fetch-qemu.sh unpacked each version (run-vm.mjs passes the paths on the kernel command line). */
export const QEMU_TREES = {
  '7.2': process.env.VFIOMIG_QEMU72 || `${PROJECT}/.cache/qemu-7.2`,
  '10': process.env.VFIOMIG_QEMU10 || `${PROJECT}/.cache/qemu-10`,
} as const;
export type QemuVersion = keyof typeof QEMU_TREES;

/** The binary of one version, and how to run it from its unpacked tree. */
export function qemuBinary(
  version: QemuVersion,
  tree: string = QEMU_TREES[version],
): { bin: string; args: string[]; env: Record<string, string> } {
  const bin = `${tree}/usr/bin/qemu-system-x86_64`;
  if (!existsSync(bin)) throw new Error(`no QEMU ${version} at ${bin}: run scripts/kernel/fetch-qemu.sh`);
  // Its own modules (not the system's, of another build); firmware from its tree, bios.bin from the seabios package.
  return {
    bin,
    args: ['-L', `${tree}/usr/share/qemu`, '-L', '/usr/share/seabios'],
    env: { QEMU_MODULE_DIR: `${tree}/usr/lib/x86_64-linux-gnu/qemu` },
  };
}

/** The vfio-pci options that turn migration on: 7.2's experimental switch; QEMU 8+ names it, and mtty has no device dirty tracking. */
export const MIGRATION_OPTS: Record<QemuVersion, string> = {
  '7.2': 'x-enable-migration=on',
  '10': 'enable-migration=on,x-device-dirty-page-tracking=off',
};

export interface VmmOptions {
  /** Which QEMU (default 7.2). */
  qemu?: QemuVersion;
  /** -M (default pc-i440fx-7.2: the machine both versions have). */
  machine?: string;
  /** mdev UUIDs to pass through, in order. */
  devices: string[];
  /** Run through `vfio-mig exec` (with --trace to this file when given). */
  exec?: boolean;
  trace?: string;
  incoming?: string;
  env?: Record<string, string>;
  /** A command QEMU runs under (e.g. setpriv to run it as another user). */
  wrap?: string[];
  /** An unpacked QEMU tree to run instead of the fetched one (a copy another user can read). */
  tree?: string;
  /** More QEMU arguments (e.g. -trace). */
  args?: string[];
  /** A name for the monitor socket. */
  name: string;
}

/** Where each thread of a process waits (name, state, kernel wait channel and stack): what a silent QEMU is doing. */
function threadsOf(pid: number | undefined): string {
  const read = (f: string) => {
    try {
      return readFileSync(f, 'utf8').trim();
    } catch (e) {
      return `(${(e as NodeJS.ErrnoException).code})`;
    }
  };
  try {
    return (
      readdirSync(`/proc/${pid}/task`)
        .map((t) => {
          const dir = `/proc/${pid}/task/${t}`;
          const state = /^State:\s*(.*)$/m.exec(read(`${dir}/status`))?.[1];
          return `${t} ${read(`${dir}/comm`)} ${state} wchan=${read(`${dir}/wchan`)}\n${read(`${dir}/stack`).replace(/^/gm, '    ')}`;
        })
        .join('\n') + backtraces(pid!)
    );
  } catch (e) {
    return `(cannot list /proc/${pid}/task: ${(e as Error).message})`;
  }
}

/** Every thread's backtrace when gdb is installed (it is not a dependency: a missing gdb says so). */
function backtraces(pid: number): string {
  const gdb = spawnSync('gdb', ['-p', String(pid), '-batch', '-nx', '-ex', 'thread apply all bt'], {
    encoding: 'utf8',
    timeout: 60_000,
  });
  return gdb.error ? `\n(no backtraces: gdb ${(gdb.error as NodeJS.ErrnoException).code})` : `\n${gdb.stdout}`;
}

/** QEMU ended (or closed its monitor) while a monitor command waited for its prompt. */
export class VmmExited extends Error {
  constructor(
    readonly code: number | null,
    readonly signal: NodeJS.Signals | null,
    monitor: string,
    output: string,
  ) {
    super(
      `QEMU exited (code ${code}, signal ${signal}) while the monitor waited for a prompt; monitor: ${monitor}\nQEMU output:\n${output}`,
    );
  }
}

/**
 * I/O BAR bases of a VM's mtty UARTs, asked through `hmp` (a Vmm's monitor,
 * or virsh's): each "Serial port" entry of `info pci` lists one I/O BAR per
 * UART once SeaBIOS has assigned them.
 */
export async function uartPorts(hmp: (command: string) => Promise<string>): Promise<number[]> {
  for (let i = 0; i < 100; i++) {
    const serial = (await hmp('info pci'))
      .split('Serial port')
      .slice(1)
      .flatMap((entry) =>
        [...entry.split('id "')[0]!.matchAll(/I\/O at 0x([0-9a-f]+)/g)].map((m) => parseInt(m[1]!, 16)),
      );
    if (serial.length > 0 && serial.every((p) => p !== 0 && p < 0xffff)) return serial;
    await sleep(300);
  }
  throw new Error('SeaBIOS assigned no I/O BARs to the serial ports');
}

export class Vmm {
  readonly proc: ChildProcess;
  stderr = '';
  #mon: Socket | null = null;
  #out = '';
  #monitorClosed = false;
  readonly exited: Promise<number | null>;

  constructor(readonly opts: VmmOptions) {
    const monitor = `/tmp/${opts.name}.mon`;
    rmSync(monitor, { force: true });
    const version = opts.qemu ?? '7.2';
    const { bin, args, env } = qemuBinary(version, opts.tree);
    const qemu = [
      bin,
      ...args,
      '-M',
      opts.machine ?? 'pc-i440fx-7.2',
      '-m',
      '64',
      '-nodefaults',
      '-display',
      'none',
      '-monitor',
      `unix:${monitor},server=on,wait=off`,
      ...opts.devices.flatMap((u) => [
        '-device',
        `vfio-pci,sysfsdev=/sys/bus/mdev/devices/${u},${MIGRATION_OPTS[version]}`,
      ]),
      ...(opts.args ?? []),
      ...(opts.incoming ? ['-incoming', opts.incoming] : []),
    ];
    const argv = opts.exec
      ? [process.execPath, CLI, 'exec', ...(opts.trace ? ['--trace', opts.trace] : []), '--', ...qemu]
      : [...(opts.wrap ?? []), ...qemu];
    this.proc = spawn(argv[0]!, argv.slice(1), {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, ...env, ...opts.env },
    });
    this.proc.stdout!.on('data', (d) => (this.stderr += d));
    this.proc.stderr!.on('data', (d) => (this.stderr += d));
    this.exited = new Promise((done) => this.proc.on('exit', (code, sig) => done(code ?? (sig ? 128 : null))));
  }

  get monitorPath(): string {
    return `/tmp/${this.opts.name}.mon`;
  }

  /** Waits for the monitor and its first prompt. */
  async connect(timeoutMs = 90_000): Promise<void> {
    const t0 = Date.now();
    while (!existsSync(this.monitorPath)) {
      if (Date.now() - t0 > timeoutMs)
        throw new Error(`no QEMU monitor after ${timeoutMs} ms; output:\n${this.stderr}`);
      if (this.proc.exitCode !== null)
        throw new Error(`QEMU exited ${this.proc.exitCode} before its monitor came up:\n${this.stderr}`);
      await sleep(100);
    }
    this.#mon = connect(this.monitorPath);
    this.#mon.on('data', (d: Buffer) => (this.#out += d.toString()));
    this.#mon.on('error', () => undefined);
    this.#mon.on('close', () => (this.#monitorClosed = true));
    await this.#prompt(timeoutMs);
  }

  async #prompt(timeoutMs: number): Promise<string> {
    const t0 = Date.now();
    while (!this.#out.includes('(qemu) ')) {
      // A QEMU that has exited answers nothing: say so now, with how it ended, rather than at the timeout.
      if (this.#monitorClosed || this.proc.exitCode !== null || this.proc.signalCode !== null) {
        await Promise.race([this.exited, sleep(2000)]);
        throw new VmmExited(this.proc.exitCode, this.proc.signalCode, this.#out, this.stderr);
      }
      if (Date.now() - t0 > timeoutMs) {
        throw new Error(
          `no HMP prompt after ${timeoutMs} ms (QEMU still running); got: ${this.#out}\nQEMU output:\n${this.stderr}\nQEMU's threads:\n${threadsOf(this.proc.pid)}`,
        );
      }
      await sleep(20);
    }
    // QEMU's readline echoes each keystroke with escape sequences; drop them and the echo line.
    // eslint-disable-next-line no-control-regex -- ESC starts the escape sequences this strips
    const text = this.#out.replace(/\x1b\[[0-9;]*[A-Za-z]/g, '');
    this.#out = '';
    return text.slice(0, text.lastIndexOf('(qemu) '));
  }

  /** One HMP command; its output without the echo. */
  async hmp(command: string, timeoutMs = 60_000): Promise<string> {
    this.#out = '';
    this.#mon!.write(`${command}\n`);
    const text = await this.#prompt(timeoutMs);
    return text.slice(text.indexOf('\n') + 1);
  }

  /** I/O BAR bases of the passed-through serial ports (mtty: one BAR per UART). */
  uartPorts(): Promise<number[]> {
    return uartPorts((command) => this.hmp(command));
  }

  async outb(port: number, value: number): Promise<void> {
    await this.hmp(`o /b 0x${port.toString(16)} 0x${value.toString(16)}`);
  }

  async inb(port: number): Promise<number> {
    const out = await this.hmp(`i /b 0x${port.toString(16)}`);
    const m = /= 0x([0-9a-f]+)/.exec(out);
    if (!m) throw new Error(`HMP i /b gave: ${out}`);
    return parseInt(m[1]!, 16);
  }

  /** Polls `info migrate` until completed or failed: the figures QEMU reports. */
  async waitMigration(
    timeoutMs = 120_000,
  ): Promise<{ status: string; totalMs: number; downtimeMs: number; text: string }> {
    const t0 = Date.now();
    let reasks = 0;
    for (;;) {
      const text = await this.hmp('info migrate');
      const status = /Migration status: (\S+)/.exec(text)?.[1] ?? 'none';
      const totalMs = Number(/total time: (\d+)/.exec(text)?.[1] ?? NaN);
      // QEMU 7.2 can report "completed" a moment before it has filled in its times (0 ms): ask again.
      if (status === 'completed' && totalMs === 0 && reasks++ < 25) {
        await sleep(200);
        continue;
      }
      if (status === 'completed' || status === 'failed' || status === 'cancelled') {
        return { status, totalMs, downtimeMs: Number(/downtime: (\d+)/.exec(text)?.[1] ?? NaN), text };
      }
      if (Date.now() - t0 > timeoutMs) throw new Error(`migration still ${status} after ${timeoutMs} ms`);
      await sleep(200);
    }
  }

  /**
   * Under `vfio-mig exec`: the pid of the bridge service exec started beside
   * QEMU, which exec handed QEMU as VFIO_MIG_PTRACER (docs/interposer.md);
   * checked to be that service, watching this QEMU.
   */
  servicePid(): number {
    const environ = readFileSync(`/proc/${this.proc.pid}/environ`, 'utf8').split('\0');
    const pid = Number(/^VFIO_MIG_PTRACER=(\d+)$/m.exec(environ.join('\n'))?.[1]);
    const cmdline = Number.isInteger(pid) ? readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0') : [];
    const watched = cmdline[cmdline.indexOf('--pid') + 1];
    if (!cmdline.includes('_exec-service') || watched !== String(this.proc.pid))
      throw new Error(`no exec service for QEMU ${this.proc.pid}: VFIO_MIG_PTRACER=${pid}, ${cmdline.join(' ')}`);
    return pid;
  }

  /** How QEMU ended (its exit code, 128 for a signal), or 'running' if it still runs after `ms`. */
  async exitWithin(ms: number): Promise<number | null | 'running'> {
    return Promise.race([this.exited, sleep(ms).then(() => 'running' as const)]);
  }

  async quit(): Promise<number | null> {
    if (this.proc.exitCode === null) {
      this.#mon?.write('quit\n');
      const t = setTimeout(() => this.proc.kill('SIGKILL'), 20_000);
      await this.exited;
      clearTimeout(t);
    }
    this.#mon?.destroy();
    return this.exited;
  }
}
