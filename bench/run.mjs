#!/usr/bin/env node
// npm run bench: throughput of the bridge against the raw v2 path, on the
// simulated device, in one run. Reported as ratios to raw v2, never as
// absolute limits. Each case moves a whole device state from one simulated
// device into another of the same model and checks the result.
import { createSimDevice, loadV1, loadV2, openV1Bridge, saveV1, saveV2 } from '../dist/index.js';

const MiB = 1024 * 1024;
const size = Number(process.env.BENCH_MIB ?? 256) * MiB;
const qemuSize = Number(process.env.BENCH_QEMU_MIB ?? 16) * MiB;
const reps = Number(process.env.BENCH_REPS ?? 3);

function pair(stateSize) {
  // No dirtying: every case moves the same bytes.
  const model = { stateSize, dirtyRatio: 0 };
  return [createSimDevice({ ...model, seed: 1 }), createSimDevice({ ...model, seed: 2 })];
}

/** A one-chunk hand-off so save and load run interleaved, as over a pipe. */
function pipe() {
  let slot = null, done = false, wakeC = null, wakeP = null;
  return {
    async sink(c) {
      while (slot) await new Promise((r) => (wakeP = r));
      slot = c;
      wakeC?.();
    },
    end() {
      done = true;
      wakeC?.();
    },
    source: {
      async *[Symbol.asyncIterator]() {
        for (;;) {
          while (!slot && !done) await new Promise((r) => (wakeC = r));
          if (!slot) return;
          const c = slot;
          slot = null;
          wakeP?.();
          yield c;
        }
      },
    },
  };
}

const cases = {
  'raw v2 (saveV2 -> loadV2)': async (n) => {
    const [a, b] = pair(n);
    const p = pipe();
    await Promise.all([saveV2(a, p.sink, { precopy: false }).finally(p.end), loadV2(b, p.source)]);
    return [a, b];
  },
  'v1 bridge, bulk access (saveV1 -> loadV1)': async (n) => {
    const [a, b] = pair(n);
    const p = pipe();
    const [ra, rb] = [await openV1Bridge(a), await openV1Bridge(b)];
    await Promise.all([saveV1(ra, p.sink, { precopy: false }).finally(p.end), loadV1(rb, p.source)]);
    return [a, b];
  },
  'v1 bridge, bulk access, with pre-copy': async (n) => {
    const [a, b] = pair(n);
    const p = pipe();
    const [ra, rb] = [await openV1Bridge(a), await openV1Bridge(b)];
    await Promise.all([saveV1(ra, p.sink).finally(p.end), loadV1(rb, p.source)]);
    return [a, b];
  },
  'v1 bridge, 8-byte accesses as QEMU without mmap': async (n) => {
    const [a, b] = pair(n);
    const p = pipe();
    const [ra, rb] = [await openV1Bridge(a), await openV1Bridge(b)];
    await Promise.all([saveV1(ra, p.sink, { precopy: false, dataAccess: 'qemu' }).finally(p.end), loadV1(rb, p.source, { dataAccess: 'qemu' })]);
    return [a, b];
  },
};

async function measure(name, n) {
  let best = Infinity;
  for (let i = 0; i < reps; i++) {
    const t = process.hrtime.bigint();
    const [a, b] = await cases[name](n);
    const s = Number(process.hrtime.bigint() - t) / 1e9;
    if (a.stateDigest() !== b.stateDigest()) throw new Error(`${name}: the resumed state differs`);
    best = Math.min(best, s);
  }
  return n / MiB / best; // MiB/s, best of reps
}

const names = Object.keys(cases);
const results = [];
for (const name of names) {
  const n = name.includes('8-byte') ? qemuSize : size;
  results.push({ name, mib: n / MiB, rate: await measure(name, n) });
}
// The raw path is measured again at the small size, so the 8-byte case has a same-size baseline.
const rawSmall = await measure(names[0], qemuSize);
const raw = results[0].rate;
console.log(`vfio-mig-bridge benchmark: node ${process.version}, best of ${reps}, simulated device, save and load interleaved`);
console.log('case'.padEnd(52), 'state'.padStart(8), 'MiB/s'.padStart(9), 'vs raw v2'.padStart(10));
for (const r of results) {
  const base = r.mib === results[0].mib ? raw : rawSmall;
  console.log(r.name.padEnd(52), `${r.mib} MiB`.padStart(8), r.rate.toFixed(0).padStart(9), `${(r.rate / base).toFixed(2)}x`.padStart(10));
}
