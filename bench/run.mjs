#!/usr/bin/env node
// npm run bench: throughput of the bridge against the raw v2 path, on the
// simulated device, in one run. Reported as ratios to raw v2, never as
// absolute limits. Each case moves a whole device state from one simulated
// device into another of the same model and checks the result.
import { chunkPipe, createSimDevice, loadV1, loadV2, openV1Bridge, saveV1, saveV2 } from '../dist/index.js';

const MiB = 1024 * 1024;
const size = Number(process.env.BENCH_MIB ?? 256) * MiB;
const qemuSize = Number(process.env.BENCH_QEMU_MIB ?? 16) * MiB;
const reps = Number(process.env.BENCH_REPS ?? 5);

function pair(stateSize) {
  // No dirtying: every case moves the same bytes.
  const model = { stateSize, dirtyRatio: 0 };
  return [createSimDevice({ ...model, seed: 1 }), createSimDevice({ ...model, seed: 2 })];
}

/** Save on one device and load on the other, interleaved as over a pipe. */
async function move(n, save, load) {
  const [a, b] = pair(n);
  const p = chunkPipe();
  await Promise.all([save(a, p.sink).finally(p.end), load(b, p.source)]);
  return [a, b];
}

const cases = {
  'raw v2 (saveV2 -> loadV2)': (n) => move(n, (a, sink) => saveV2(a, sink, { precopy: false }), (b, src) => loadV2(b, src)),
  'v1 bridge, bulk access (saveV1 -> loadV1)': (n) =>
    move(n, async (a, sink) => saveV1(await openV1Bridge(a), sink, { precopy: false }), async (b, src) => loadV1(await openV1Bridge(b), src)),
  'v1 bridge, bulk access, with pre-copy': (n) =>
    move(n, async (a, sink) => saveV1(await openV1Bridge(a), sink), async (b, src) => loadV1(await openV1Bridge(b), src)),
  'v1 bridge, 8-byte accesses as QEMU without mmap': (n) =>
    move(
      n,
      async (a, sink) => saveV1(await openV1Bridge(a), sink, { precopy: false, dataAccess: 'qemu' }),
      async (b, src) => loadV1(await openV1Bridge(b), src, { dataAccess: 'qemu' }),
    ),
};

async function once(name, n) {
  globalThis.gc?.(); // start each run from a collected heap, so one case's garbage does not bill the next
  const t = process.hrtime.bigint();
  const [a, b] = await cases[name](n);
  const s = Number(process.hrtime.bigint() - t) / 1e9;
  if (a.stateDigest() !== b.stateDigest()) throw new Error(`${name}: the resumed state differs`);
  return n / MiB / s; // MiB/s
}

const median = (xs) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)];
const names = Object.keys(cases);
const runs = [
  ...names.map((name) => ({ name, mib: (name.includes('8-byte') ? qemuSize : size) / MiB, rates: [] })),
  // The raw path again at the small size: the same-size baseline for the 8-byte case.
  { name: names[0], mib: qemuSize / MiB, rates: [], baselineOnly: true },
];
// Round-robin, so drift in machine speed hits every case alike.
for (let i = 0; i < reps; i++) for (const r of runs) r.rates.push(await once(r.name, r.mib * MiB));
const rateOf = (r) => median(r.rates);
const baseline = (mib) => rateOf(runs.find((r) => r.name === names[0] && r.mib === mib));
console.log(`vfio-mig-bridge benchmark: node ${process.version}, median of ${reps} round-robin runs, simulated device, save and load interleaved`);
console.log('case'.padEnd(52), 'state'.padStart(8), 'MiB/s'.padStart(9), 'vs raw v2'.padStart(10));
for (const r of runs.filter((r) => !r.baselineOnly)) {
  console.log(r.name.padEnd(52), `${r.mib} MiB`.padStart(8), rateOf(r).toFixed(0).padStart(9), `${(rateOf(r) / baseline(r.mib)).toFixed(2)}x`.padStart(10));
}

const { interposerBench } = await import('./interposer.mjs');
const ip = await interposerBench({ mib: Number(process.env.BENCH_INTERPOSER_MIB ?? 256), reps, median });
console.log('\nsave only, QEMU 7.2 access pattern through the LD_PRELOAD interposer (saved bytes checked against raw v2)');
console.log('case'.padEnd(52), 'state'.padStart(8), 'MiB/s'.padStart(9), 'vs raw v2'.padStart(10), 'vs bridge'.padStart(10));
for (const r of ip.rows) {
  console.log(r.case.padEnd(52), `${r.mib} MiB`.padStart(8), r.rate.toFixed(0).padStart(9), `${r.vsRaw.toFixed(2)}x`.padStart(10), `${r.vsBridge.toFixed(2)}x`.padStart(10));
}
console.log(`header accesses over the socket: ${ip.headerPerMiB.toFixed(2)} per MiB of state (the service default data section, 4 MiB)`);
