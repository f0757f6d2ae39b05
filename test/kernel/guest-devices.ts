/**
 * The guest's mtty devices as the kernel tests use them: the cdev of an
 * mdev, back to RUNNING between tests, the UART scratch registers mtty
 * migrates, the two 64 MiB mbig devices and their crc32, a VM waited on
 * until it runs, the bridge's NDJSON trace, and `vfio-mig serve` in a
 * process of its own.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { MigState, openKernelDevice } from '../../src/index.js';
import type { Vmm } from './qemu-vmm.js';

/** The two mtty devices guest-init.sh creates. */
export const A = process.env.VFIOMIG_A!;
export const B = process.env.VFIOMIG_B!;
/** Two mbig devices (an mtty with device memory, scripts/kernel/mbig.patch), made by createMbig(). */
export const C = '83b8f4f2-509f-382f-3c1e-e6bfe0fa1003';
export const D = '83b8f4f2-509f-382f-3c1e-e6bfe0fa1004';

/** C and D at 64 MiB, whichever test file asks first (the size applies to devices created after it is set). */
export function createMbig(): void {
  writeFileSync('/sys/module/mbig/parameters/mib', '64');
  for (const u of [C, D])
    if (!existsSync(`/sys/bus/mdev/devices/${u}`))
      writeFileSync('/sys/class/mdev_bus/mbig/mdev_supported_types/mbig-2/create', u);
}

/** crc32 of an mbig device's memory, as the driver computes it. */
export const crc = (uuid: string) => readFileSync(`/sys/bus/mdev/devices/${uuid}/vendor/mem_crc32`, 'utf8').trim();

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

/** One line of `vfio-mig exec/serve --trace`: a v1 access (kind "access") or a quiesce-group move (kind "group"). */
export interface TraceEvent {
  kind: string;
  device: string;
  op?: string;
  field?: string;
  value?: number | string;
  v2: string[];
  cause?: string;
  error?: string;
}

export const traceOf = (file: string): TraceEvent[] =>
  readFileSync(file, 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as TraceEvent);

/** A v1 device_state write of `v` (docs/protocol.md: 2 STOP_COPY, 3 PRE_COPY, 4 RESUMING, 1 RUNNING). */
export const isWrite = (v: number) => (e: TraceEvent) =>
  e.kind === 'access' && e.field === 'device_state' && e.op === 'write' && e.value === v;

/** Waits until the trace in `file` has an event `pred` accepts. */
export async function waitTrace(file: string, pred: (e: TraceEvent) => boolean, ms = 60_000): Promise<void> {
  const t0 = Date.now();
  while (!(existsSync(file) && readFileSync(file, 'utf8').trim() && traceOf(file).some(pred))) {
    if (Date.now() - t0 > ms) throw new Error(`trace ${file} never showed the access`);
    await sleep(100);
  }
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
