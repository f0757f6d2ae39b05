/**
 * `npm run bench -- --kernel`, the guest side: the bridged path against
 * QEMU 10's own on an mbig device, in one guest run. Each path migrates a
 * VM into a file and starts the destination from it; QEMU's `info migrate`
 * gives total and downtime, the destination's start-to-running is timed
 * here. Paths and sizes are interleaved round by round so a slow moment of
 * the machine falls on all of them. Every run checks the destination's
 * crc32. Results go to .bench-kernel.json in the project (bench/run.mjs
 * prints the table).
 */
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { resolve } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { preloadLibrary } from '../../src/service/preload-library.js';
import { Vmm, type QemuVersion } from '../../test/kernel/qemu-vmm.js';
import { sleep, startServe, toRunning, type Serve } from '../../test/kernel/guest-devices.js';

const OUT = resolve(import.meta.dirname, '../../.bench-kernel.json');
const ROUNDS = Number(process.env.VFIOMIG_BENCH_ROUNDS ?? 3);
const SIZES = (process.env.VFIOMIG_BENCH_MIB ?? '64,256').split(',').map(Number);

/**
 * One end of a path: which QEMU, and how it reaches the bridge: through
 * `vfio-mig exec` (a service started with it), through a `vfio-mig serve`
 * already running (libvirt's recipe), or not at all (QEMU 10).
 */
interface End {
  qemu: QemuVersion;
  bridge: 'exec' | 'serve' | 'none';
}
const NATIVE_10: End = { qemu: '10', bridge: 'none' };
const EXEC_72: End = { qemu: '7.2', bridge: 'exec' };
const SERVE_72: End = { qemu: '7.2', bridge: 'serve' };
/** `device: false`: the same VM without the mbig device, QEMU's own figures for its RAM and machine (what no bridge can change). */
const PATHS: { name: string; from: End; to: End; device?: false }[] = [
  { name: 'QEMU 10 → QEMU 10, native v2', from: NATIVE_10, to: NATIVE_10 },
  { name: 'QEMU 7.2 exec → QEMU 7.2 exec', from: EXEC_72, to: EXEC_72 },
  { name: 'QEMU 7.2 serve → QEMU 7.2 serve', from: SERVE_72, to: SERVE_72 },
  { name: 'QEMU 7.2 exec → QEMU 10 native', from: EXEC_72, to: NATIVE_10 },
  { name: 'QEMU 7.2 serve → QEMU 10 native', from: SERVE_72, to: NATIVE_10 },
  { name: 'QEMU 10 native → QEMU 7.2 exec', from: NATIVE_10, to: EXEC_72 },
  { name: 'QEMU 10 → QEMU 10, no device', from: NATIVE_10, to: NATIVE_10, device: false },
  {
    name: 'QEMU 7.2 → QEMU 7.2, no device',
    from: { qemu: '7.2', bridge: 'none' },
    to: { qemu: '7.2', bridge: 'none' },
    device: false,
  },
];
const SOCKET = '/tmp/bench-serve.sock';
let serve: Serve;
beforeAll(async () => {
  serve = await startServe(['--socket', SOCKET]);
});
afterAll(() => {
  serve.proc.kill('SIGTERM');
});

export interface KernelBenchRun {
  path: string;
  mib: number;
  round: number;
  totalMs: number;
  downtimeMs: number;
  /** QEMU's setup phase (`info migrate` "setup"): the devices' save_setup, before any iteration. */
  setupMs: number;
  /** The source's `info migrate` at the end (first round only). */
  source?: string;
  /** Destination: process start until its monitor answers. */
  monitorMs: number;
  /** Destination: process start until `info status` says running. */
  startToRunningMs: number;
}

const mdev = (u: string) => `/sys/bus/mdev/devices/${u}`;
const crc = (u: string) => readFileSync(`${mdev(u)}/vendor/mem_crc32`, 'utf8').trim();

/** A source and a destination mbig device of `mib` MiB (mbig sizes a device when it is created). */
function devicePair(mib: number): [string, string] {
  const tag = mib.toString(16).padStart(4, '0');
  const pair = [1, 2].map((i) => `83b8f4f2-509f-382f-3c1e-e6bf${tag}b00${i}`) as [string, string];
  writeFileSync('/sys/module/mbig/parameters/mib', String(mib));
  for (const u of pair)
    if (!existsSync(mdev(u))) writeFileSync('/sys/class/mdev_bus/mbig/mdev_supported_types/mbig-2/create', u);
  return pair;
}

function vmm(end: End, name: string, device: string | null, incoming?: string): Vmm {
  const env = end.bridge === 'serve' ? { LD_PRELOAD: preloadLibrary(), VFIO_MIG_SOCKET: SOCKET } : undefined;
  const devices = device ? [device] : [];
  return new Vmm({ name, qemu: end.qemu, devices, exec: end.bridge === 'exec', env, incoming });
}

async function runOnce(path: (typeof PATHS)[number], mib: number, round: number): Promise<KernelBenchRun> {
  const withDevice = path.device !== false;
  const [src, dst] = devicePair(mib);
  // New memory on the destination, so only the migration can make the crc32s equal.
  writeFileSync(`${mdev(dst)}/vendor/seed`, ((Date.now() + round) & 0xffffff).toString(16));
  const want = crc(src);
  expect(crc(dst)).not.toBe(want);
  const file = `/tmp/bench-${mib}.mig`;
  rmSync(file, { force: true });

  const s = vmm(path.from, `bench-src`, withDevice ? src : null);
  await s.connect();
  // As in the measurement: both versions converge, the state goes at full speed.
  await s.hmp('migrate_set_parameter max-bandwidth 4G');
  await s.hmp('migrate_set_parameter downtime-limit 60000');
  await s.hmp(`migrate -d "exec:cat > ${file}"`);
  const m = await s.waitMigration(600_000);
  expect(m.status, `${m.text}\n${s.stderr}`).toBe('completed');
  expect(await s.quit()).toBe(0);

  const t0 = performance.now();
  const d = vmm(path.to, 'bench-dst', withDevice ? dst : null, `exec:cat ${file}`);
  await d.connect();
  const monitorMs = performance.now() - t0;
  for (;;) {
    if (/VM status: running/.test(await d.hmp('info status'))) break;
    if (performance.now() - t0 > 600_000) throw new Error(`destination never ran:\n${d.stderr}`);
    await sleep(20);
  }
  const startToRunningMs = performance.now() - t0;
  expect(await d.quit()).toBe(0);
  if (withDevice) expect(crc(dst), `${path.name}, ${mib} MiB: the destination's crc32`).toBe(want);
  rmSync(file, { force: true });
  await toRunning(src);
  await toRunning(dst);
  return {
    path: path.name,
    mib,
    round,
    totalMs: m.totalMs,
    downtimeMs: m.downtimeMs,
    setupMs: Number(/setup: (\d+) ms/.exec(m.text)?.[1] ?? NaN),
    // What QEMU says it moved (RAM, and the VFIO device on QEMU 10): where the time went, on the first round.
    ...(round === 1 ? { source: m.text.trim() } : {}),
    monitorMs: Math.round(monitorMs),
    startToRunningMs: Math.round(startToRunningMs),
  };
}

it('migrates mbig on every path, round-robin, and records the figures', async () => {
  const runs: KernelBenchRun[] = [];
  const started = Date.now();
  for (let round = 1; round <= ROUNDS; round++) {
    for (const mib of SIZES) {
      for (const path of PATHS) {
        const r = await runOnce(path, mib, round);
        console.log(JSON.stringify(r));
        runs.push(r);
      }
    }
  }
  writeFileSync(
    OUT,
    JSON.stringify({
      kernel: readFileSync('/proc/version', 'utf8').trim(),
      cpus: availableParallelism(),
      seconds: (Date.now() - started) / 1000,
      runs,
    }),
  );
}, 7_200_000);
