/**
 * The guest's mtty devices as the kernel tests use them: the cdev of an
 * mdev, back to RUNNING between tests, the UART scratch registers mtty
 * migrates, a VM waited on until it runs, and `vfio-mig serve` in a
 * process of its own.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { resolve } from 'node:path';
import { MigState, openKernelDevice } from '../../src/index.js';
import type { Vmm } from './qemu-vmm.js';

/** The two mtty devices guest-init.sh creates. */
export const A = process.env.VFIOMIG_A!;
export const B = process.env.VFIOMIG_B!;
/** UART scratch register, which mtty migrates. */
export const SCR = 7;

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
export const cdevOf = (uuid: string) => `/dev/vfio/devices/${readdirSync(`/sys/bus/mdev/devices/${uuid}/vfio-dev`)[0]}`;

/**
 * The device's state as the last user left it, then back to RUNNING: a
 * session left by a dead process is reset (mtty oopses on the next arc otherwise).
 */
export async function toRunning(uuid: string): Promise<MigState> {
  const d = await openKernelDevice(cdevOf(uuid));
  const before = await d.getState();
  if (before !== MigState.RUNNING) await d.reset();
  await d.close();
  return before;
}

/** Both ports' scratch registers. */
export async function scratch(uuid: string): Promise<number[]> {
  const d = await openKernelDevice(cdevOf(uuid));
  try {
    return [(await d.regionRead(0, SCR, 1))[0]!, (await d.regionRead(1, SCR, 1))[0]!];
  } finally {
    await d.close();
  }
}

export async function setScratch(uuid: string, values: number[]): Promise<void> {
  const d = await openKernelDevice(cdevOf(uuid));
  try {
    await d.regionWrite(0, SCR, Uint8Array.of(values[0]!));
    await d.regionWrite(1, SCR, Uint8Array.of(values[1]!));
  } finally {
    await d.close();
  }
}

/** Waits until the VM runs (a destination once its incoming migration is loaded). */
export async function waitRunning(vm: Vmm): Promise<void> {
  for (let i = 0; i < 300; i++) {
    if (/VM status: running/.test(await vm.hmp('info status'))) return;
    await sleep(200);
  }
  throw new Error(`destination never ran:\n${vm.stderr}`);
}

const CLI = resolve(import.meta.dirname, '../../dist/cli/main.js');

export interface Serve {
  proc: ChildProcess;
  log: () => string;
  /** Waits until the service's log matches `re` (60 s at most). */
  waitLog(re: RegExp, ms?: number): Promise<void>;
}

/** `vfio-mig serve ARGS` in its own process, once it says it is serving. */
export async function startServe(args: string[]): Promise<Serve> {
  const proc = spawn(process.execPath, [CLI, 'serve', ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  proc.stderr.on('data', (d: Buffer) => (log += d.toString()));
  const waitLog = async (re: RegExp, ms = 60_000) => {
    const t0 = Date.now();
    while (!re.test(log)) {
      if (Date.now() - t0 > ms) throw new Error(`serve never logged ${re}:\n${log}`);
      await sleep(100);
    }
  };
  await waitLog(/serving on/);
  return { proc, log: () => log, waitLog };
}
