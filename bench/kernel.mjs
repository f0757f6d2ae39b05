// npm run bench -- --kernel [--json]: QEMU 7.2 through the bridge against
// QEMU 10's own v2 path, on a real mbig device in the test guest
// (VFIO_MIG_KERNEL, as npm run test:kernel). The guest side is
// bench/kernel/crossversion.kbench.ts; this boots it and prints medians
// and their ratios to QEMU 10 -> QEMU 10 of the same size in the same run.
// VFIOMIG_BENCH_ROUNDS (default 3) and VFIOMIG_BENCH_MIB (default 64,256) pass through.
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
const RESULTS = join(root, '.bench-kernel.json');
const NATIVE = 'QEMU 10 → QEMU 10, native v2';
/** The issue's targets, as ratios to the native path. */
const TARGETS = { totalMs: 1.1, downtimeMs: 1.1, startToRunningMs: 1.3 };

export function runKernelBench({ json }) {
  rmSync(RESULTS, { force: true });
  const vm = spawnSync(process.execPath, [join(root, 'test/kernel/run-vm.mjs')], {
    // With --json the guest's console goes to stderr, so stdout is the JSON alone.
    stdio: ['ignore', json ? 2 : 'inherit', 'inherit'],
    env: {
      ...process.env,
      VFIOMIG_CONFIG: 'bench/kernel/vitest.config.ts',
      VFIO_MIG_VM_TIMEOUT_S: process.env.VFIO_MIG_VM_TIMEOUT_S ?? '7200',
    },
  });
  if (!existsSync(RESULTS)) {
    console.error(`bench --kernel: the guest left no ${RESULTS} (run-vm exited ${vm.status ?? vm.signal})`);
    return 1;
  }
  const { kernel, cpus, seconds, runs } = JSON.parse(readFileSync(RESULTS, 'utf8'));
  const median = (xs) => {
    const s = [...xs].sort((a, b) => a - b);
    return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
  };
  const keys = Object.keys(TARGETS);
  const rows = [];
  for (const mib of [...new Set(runs.map((r) => r.mib))]) {
    const of = (path) => runs.filter((r) => r.mib === mib && r.path === path);
    const med = (path, k) => median(of(path).map((r) => r[k]));
    for (const path of [...new Set(runs.map((r) => r.path))]) {
      const row = { mib, path, n: of(path).length, monitorMs: med(path, 'monitorMs'), setupMs: med(path, 'setupMs') };
      for (const k of keys) {
        row[k] = med(path, k);
        row[`${k}Range`] = [Math.min(...of(path).map((r) => r[k])), Math.max(...of(path).map((r) => r[k]))];
        row[`${k}Ratio`] = row[k] / med(NATIVE, k);
      }
      rows.push(row);
    }
  }
  if (json) {
    console.log(JSON.stringify({ kernel, cpus, seconds, targets: TARGETS, rows, runs }, null, 2));
    return 0;
  }
  const s = (ms) => (ms / 1000).toFixed(2);
  const cell = (r, k) => `${s(r[k])} s ${r[`${k}Ratio`].toFixed(2)}×${r[`${k}Ratio`] > TARGETS[k] ? '!' : ' '}`;
  console.log(
    `\n${kernel}; ${cpus} vCPUs\n${runs.length} migrations in ${Math.round(seconds)} s; medians of ${rows[0]?.n} rounds`,
  );
  console.log(
    `ratio: to ${NATIVE} of the same size in this run; ! over the target (total ≤ ${TARGETS.totalMs}×, downtime ≤ ${TARGETS.downtimeMs}×, start-to-running ≤ ${TARGETS.startToRunningMs}×)`,
  );
  console.log(
    `${'MiB'.padStart(4)}  ${'path'.padEnd(32)}  ${'total'.padEnd(14)}  ${'downtime'.padEnd(14)}  ${'start→running'.padEnd(14)}  monitor up  setup`,
  );
  for (const r of rows)
    console.log(
      `${String(r.mib).padStart(4)}  ${r.path.padEnd(32)}  ${cell(r, 'totalMs').padEnd(14)}  ${cell(r, 'downtimeMs').padEnd(14)}  ${cell(r, 'startToRunningMs').padEnd(14)}  ${s(r.monitorMs)} s    ${s(r.setupMs)} s`,
    );
  return 0;
}
