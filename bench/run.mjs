#!/usr/bin/env node
// npm run bench [-- --large] [-- --json]: the bridge against the raw v2 path
// (npm run bench -- --kernel: QEMU 7.2 bridged against QEMU 10 on a real device: bench/kernel.mjs)
// and against the machine, in one run. Every throughput figure is a median
// of round-robin runs, and every bridge case is given as a ratio to the raw
// v2 loop measured in the same rounds; BENCHMARKS.md explains each row.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, openSync, closeSync, rmSync, statSync, writeSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { createSimDevice, MigState, openV1Bridge, saveV2 } from '../dist/index.js';
import { writeU32 } from '../dist/v1/region-access.js';
import { FileDevice, MiB, deviceSource, resumePaths, savePaths, verifyingSink } from './callers.mjs';

const args = new Set(process.argv.slice(2));
for (const a of args) {
  if (!['--large', '--json', '--kernel'].includes(a)) {
    console.error(`bench: unknown option ${a} (--large, --json, --kernel)`);
    process.exit(2);
  }
}
if (args.has('--kernel')) {
  const { runKernelBench } = await import('./kernel.mjs');
  process.exit(runKernelBench({ json: args.has('--json') }));
}
const large = args.has('--large');
const json = args.has('--json');
const env = (k, d) => Number(process.env[k] ?? d);
const reps = env('BENCH_REPS', 7);
const sizes = process.env.BENCH_MIB
  ? process.env.BENCH_MIB.split(',').map(Number)
  : large
    ? [256, 1024, 4096]
    : [256, 1024];
const qemuMiB = env('BENCH_QEMU_MIB', 8);
const fdMiB = env('BENCH_FD_MIB', 1024);
const memSizes = large ? [256, 1024, 4096] : [256, 4096];
const root = new URL('..', import.meta.url).pathname;
const log = (...a) => (json ? process.stderr : process.stdout).write(`${a.join(' ')}\n`);
const started = Date.now();
const loadBefore = os.loadavg();

// ------------------------------------------------------------ checking

const model = (mib) => ({ stateSize: mib * MiB, dirtyRatio: 0 });
const source = (mib) => createSimDevice({ ...model(mib), seed: 1 });
const target = (mib) => createSimDevice({ ...model(mib), seed: 2 });
const digests = new Map();
const digestOf = (mib) => digests.get(mib) ?? digests.set(mib, source(mib).stateDigest()).get(mib);
const checked = new Set();

/**
 * The resumed device holds the source's state: its content (seed and every
 * page's version, from which every state byte follows) always, and the full
 * SHA-256 state digest on the first run of each case (hashing 1 GiB takes
 * longer than moving it).
 */
function check(name, mib, dev) {
  const want = source(mib).content;
  const same =
    dev.content.seed === want.seed &&
    Buffer.from(dev.content.versions.buffer).equals(Buffer.from(want.versions.buffer));
  if (!same) throw new Error(`${name}: the resumed state differs from the source`);
  if (!checked.has(name)) {
    if (dev.stateDigest() !== digestOf(mib))
      throw new Error(`${name}: the resumed state digest differs from the source's`);
    checked.add(name);
  }
}

/**
 * Wall and CPU seconds of one run. The CPU time (user + system, every
 * thread of this process, koffi's I/O workers included) is what the ratios
 * use: on a shared machine the wall time also counts the time others held
 * the CPU, which no round-robin evens out at a load of several per core.
 */
async function timed(fn) {
  globalThis.gc?.(); // each run starts from a collected heap: one case's garbage does not bill the next
  const cpu = process.cpuUsage();
  const t = process.hrtime.bigint();
  await fn();
  const wall = Number(process.hrtime.bigint() - t) / 1e9;
  const used = process.cpuUsage(cpu);
  return { wall, cpu: (used.user + used.system) / 1e6 };
}

// ------------------------------------------------------------ cases

const cases = [];
const add = (c) => cases.push({ ...c, secs: [] });

// Anchors: what the machine and the simulated device do on their own.
const COPY_MIB = 1024;
const src = new Uint8Array(MiB).fill(0x5a);
const dst = new Uint8Array(MiB);
add({
  group: 'anchor',
  dir: 'copy',
  path: 'memory copy, 1 MiB into a reused buffer',
  mib: COPY_MIB,
  run: () =>
    timed(async () => {
      for (let i = 0; i < COPY_MIB; i++) dst.set(src);
    }),
});
add({
  group: 'anchor',
  dir: 'copy',
  path: 'memory copy, 1 MiB into a new buffer (slice)',
  mib: COPY_MIB,
  run: () =>
    timed(async () => {
      for (let i = 0; i < COPY_MIB; i++) src.slice();
    }),
});
add({
  group: 'anchor',
  dir: 'save',
  path: 'sim produce only (stop-copy read, bytes dropped)',
  mib: COPY_MIB,
  run: async () => {
    const s = await deviceSource(source(COPY_MIB));
    const buf = new Uint8Array(MiB);
    return timed(async () => {
      while ((await s.fill(buf)) > 0);
    });
  },
});

// The simulated device, save and resume, through each path.
const simCase = (dir, path, mib, group = 'sim') =>
  add({
    group,
    dir,
    path,
    mib,
    run: async () => {
      const name = `${group} ${dir} ${path} ${mib}`;
      const [a, b] = [source(mib), target(mib)];
      let secs;
      if (dir === 'save') {
        const out = await verifyingSink(b);
        secs = await timed(() => savePaths[path](a, out.sink));
        await out.finish();
      } else {
        const inp = await deviceSource(a);
        secs = await timed(() => resumePaths[path](b, inp.fill));
        await inp.finish();
      }
      check(name, mib, b);
      return secs;
    },
  });
for (const dir of ['save', 'resume'])
  for (const mib of sizes) for (const path of ['raw', 'bulk', 'mmap', 'mmap4']) simCase(dir, path, mib);
for (const dir of ['save', 'resume']) for (const path of ['raw', 'qemu']) simCase(dir, path, qemuMiB, 'qemu');

// A real file descriptor: the kernel backend's stream over a file on tmpfs holding a simulated stream.
const shm = existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir();
const fdDir = mkdtempSync(join(shm, 'vfio-mig-bench-'));
const fdFile = join(fdDir, 'stream.bin');
process.on('exit', () => rmSync(fdDir, { recursive: true, force: true }));
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(130));
{
  const fd = openSync(fdFile, 'w');
  await saveV2(source(fdMiB), (c) => void writeSync(fd, c), { precopy: false, reuseBuffer: true });
  closeSync(fd);
}
const fdBytes = statSync(fdFile).size;
const fdCase = (path) =>
  add({
    group: 'fd',
    dir: 'save',
    path,
    mib: fdMiB,
    run: async () => {
      const b = target(fdMiB);
      const out = await verifyingSink(b);
      const secs = await timed(() => savePaths[path](new FileDevice(fdFile), out.sink));
      await out.finish();
      check(`fd ${path}`, fdMiB, b);
      return secs;
    },
  });
for (const path of ['raw', 'bulk', 'mmap', 'mmap4']) fdCase(path);
add({
  group: 'fd',
  dir: 'save',
  path: 'raw read loop, bytes dropped',
  mib: fdMiB,
  run: () => timed(() => savePaths.raw(new FileDevice(fdFile), () => undefined)),
});
add({
  group: 'fd',
  dir: 'save',
  path: 'dd bs=1M to /dev/null (outside anchor)',
  mib: fdMiB,
  run: async () => {
    // bash's time builtin: dd's wall, user and system seconds.
    const r = spawnSync(
      'bash',
      ['-c', `TIMEFORMAT='%R %U %S'; time dd if='${fdFile}' of=/dev/null bs=1M 2>/dev/null`],
      { encoding: 'utf8' },
    );
    const m = /^([\d.]+) ([\d.]+) ([\d.]+)\s*$/.exec(r.stderr);
    if (r.status !== 0 || !m) throw new Error(`dd: ${r.stderr}`);
    return { wall: Number(m[1]), cpu: Math.max(Number(m[2]) + Number(m[3]), 0.001) };
  },
});

// ------------------------------------------------------------ run

const median = (xs) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)];
log(
  `vfio-mig-bridge benchmark: ${reps} round-robin rounds of ${cases.length} cases; state sizes ${sizes.join(', ')} MiB, 8-byte cases ${qemuMiB} MiB, fd ${fdMiB} MiB`,
);
for (let i = 0; i < reps; i++) {
  const t = Date.now();
  // Every other round backwards, so drift within a round bills a case and its raw baseline alike.
  for (const c of i % 2 ? [...cases].reverse() : cases) c.secs.push(await c.run());
  log(`  round ${i + 1}/${reps}: ${((Date.now() - t) / 1000).toFixed(1)} s`);
}

const LABELS = {
  raw: 'raw v2 loop (1 MiB reads into one buffer)',
  bulk: 'bridge, bulk access (1 MiB section)',
  mmap: 'bridge, zero-copy section view (1 MiB)',
  mmap4: 'bridge, zero-copy section view (4 MiB)',
  qemu: 'bridge, 8-byte accesses (QEMU 7.2, no mmap)',
};
const rate = (c, k = 'cpu') => c.mib / median(c.secs.map((s) => s[k])); // MiB of state per second
const rawOf = (c) => cases.find((r) => r.group === c.group && r.dir === c.dir && r.mib === c.mib && r.path === 'raw');
const copyRate = rate(cases[0]);
const rows = cases.map((c) => {
  const raw = c.group === 'anchor' ? null : rawOf(c);
  const row = {
    group: c.group,
    dir: c.dir,
    case: c.path,
    label: LABELS[c.path] ?? c.path,
    mib: c.mib,
    rateMiBs: Math.round(rate(c)),
    wallRateMiBs: Math.round(rate(c, 'wall')),
    runs: c.secs.length,
  };
  if (raw && raw !== c) {
    // Paired: run i of this case against run i of raw, from the same round; the median of those ratios.
    const per = (k) => c.secs.map((s, i) => raw.secs[i][k] / s[k]);
    const cpu = per('cpu');
    row.vsRaw = Number(median(cpu).toFixed(3));
    row.vsRawRange = [Number(Math.min(...cpu).toFixed(3)), Number(Math.max(...cpu).toFixed(3))];
    row.vsRawWall = Number(median(per('wall')).toFixed(3));
    // The extra CPU time, in copies of the same bytes: (1/ratio - 1) raw times, one copy being raw/copy of a raw time.
    row.extraCopies = Number(((1 / row.vsRaw - 1) * (copyRate / rate(raw))).toFixed(2));
  }
  return row;
});

// ------------------------------------------------------------ memory

log('  memory: one save per child process');
const memory = [];
for (const mib of memSizes) {
  const hwm = {};
  for (const path of ['raw', 'bulk', 'mmap', 'mmap4']) {
    const r = spawnSync(process.execPath, [join(root, 'bench/memory-child.mjs'), path, String(mib)], {
      encoding: 'utf8',
    });
    if (r.status !== 0) throw new Error(`memory child ${path} ${mib}: ${r.stderr}`);
    hwm[path] = JSON.parse(r.stdout).hwmKiB;
  }
  memory.push({
    mib,
    rawPeakMiB: +(hwm.raw / 1024).toFixed(1),
    bulkExtraMiB: +((hwm.bulk - hwm.raw) / 1024).toFixed(1),
    mmapExtraMiB: +((hwm.mmap - hwm.raw) / 1024).toFixed(1),
    mmap4ExtraMiB: +((hwm.mmap4 - hwm.raw) / 1024).toFixed(1),
  });
}

// ------------------------------------------------------------ transitions

log('  transitions');
const TRANS = env('BENCH_TRANSITIONS', 2000);
async function transitionPair() {
  const direct = createSimDevice({ stateSize: MiB });
  const viaDev = createSimDevice({ stateSize: MiB });
  const bridge = await openV1Bridge(viaDev);
  const block = 200;
  const t = { direct: [], bridge: [] };
  for (let done = 0; done < TRANS; done += block) {
    t.direct.push(
      await timed(async () => {
        for (let i = 0; i < block / 2; i++) {
          await direct.setState(MigState.STOP);
          await direct.setState(MigState.RUNNING);
        }
      }),
    );
    t.bridge.push(
      await timed(async () => {
        for (let i = 0; i < block / 2; i++) {
          await writeU32(bridge, 0, 0); // 001 -> 000: SET_STATE RUNNING -> STOP
          await writeU32(bridge, 0, 1); // 000 -> 001
        }
      }),
    );
  }
  if (viaDev.state !== MigState.RUNNING || bridge.deviceState !== 1) throw new Error('transitions: bridge out of step');
  const us = (xs) => (median(xs.map((x) => x.cpu)) / block) * 1e6;
  return { ops: TRANS, directUs: +us(t.direct).toFixed(2), bridgeUs: +us(t.bridge).toFixed(2) };
}
const transitions = await transitionPair();
transitions.extraUs = +(transitions.bridgeUs - transitions.directUs).toFixed(2);
transitions.ratio = +(transitions.bridgeUs / transitions.directUs).toFixed(2);

// ------------------------------------------------------------ interposer

let interposer = null;
if (process.env.BENCH_INTERPOSER !== '0') {
  log('  interposer');
  const { interposerBench } = await import('./interposer.mjs');
  interposer = await interposerBench({ mib: env('BENCH_INTERPOSER_MIB', 256), reps: Math.min(reps, 5), median });
}

// ------------------------------------------------------------ report

const cpu = os.cpus();
const machine = {
  cpu: cpu[0]?.model ?? 'unknown',
  cores: cpu.length,
  memoryGiB: Math.round(os.totalmem() / 2 ** 30),
  kernel: os.release(),
  node: process.version,
  loadavgBefore: loadBefore.map((x) => +x.toFixed(2)),
  loadavgAfter: os.loadavg().map((x) => +x.toFixed(2)),
  fdFile: { dir: shm, bytes: fdBytes },
  wallSeconds: Math.round((Date.now() - started) / 1000),
};
// One memory copy of the state, as a fraction of the raw sim save of the largest default size: what "within one copy" allows.
const rawSim = rows.find((r) => r.group === 'sim' && r.dir === 'save' && r.case === 'raw' && r.mib === sizes.at(-1));
const oneCopy = {
  copyMiBs: Math.round(copyRate),
  rawSimSaveMiBs: rawSim.rateMiBs,
  ofRawSim: Number((rawSim.rateMiBs / copyRate).toFixed(3)),
};
const result = { machine, reps, oneCopy, rows, memory, transitions, interposer };

if (json) {
  process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
} else {
  const m = machine;
  log(
    `\n${m.cpu}, ${m.cores} cores, ${m.memoryGiB} GiB, Linux ${m.kernel}, node ${m.node}; load average ${m.loadavgBefore[0]} before, ${m.loadavgAfter[0]} after; ${m.wallSeconds} s`,
  );
  log(
    `MiB of device state (fd rows: of the file) per CPU second, and per wall second; median of ${reps} round-robin runs`,
  );
  log(
    'vs raw: median over rounds of the CPU-time ratio to the raw v2 loop of the same group, size and direction in that round (range: lowest-highest round)',
  );
  log(
    `+copies: the CPU time over raw, in copies of the same bytes (one copy = ${oneCopy.ofRawSim} of a raw sim save here)`,
  );
  log(
    'group'.padEnd(7),
    'dir'.padEnd(7),
    'case'.padEnd(46),
    'MiB'.padStart(5),
    'MiB/s'.padStart(7),
    'vs raw'.padStart(7),
    'range'.padStart(10),
    '+copies'.padStart(8),
    'wall'.padStart(7),
    'vs raw'.padStart(7),
  );
  const f2 = (x) => x?.toFixed(2) ?? '';
  for (const r of rows) {
    const range = r.vsRawRange ? `${f2(r.vsRawRange[0])}-${f2(r.vsRawRange[1])}` : '';
    log(
      r.group.padEnd(7),
      r.dir.padEnd(7),
      r.label.padEnd(46),
      String(r.mib).padStart(5),
      String(r.rateMiBs).padStart(7),
      f2(r.vsRaw).padStart(7),
      range.padStart(10),
      f2(r.extraCopies).padStart(8),
      String(r.wallRateMiBs).padStart(7),
      f2(r.vsRawWall).padStart(7),
    );
  }
  log('\npeak RSS (VmHWM) of one save in a child process; extra = path minus raw v2');
  log(
    'state MiB'.padStart(10),
    'raw peak MiB'.padStart(13),
    'bulk extra'.padStart(11),
    'mmap extra'.padStart(11),
    'mmap 4 MiB extra'.padStart(17),
  );
  for (const r of memory)
    log(
      String(r.mib).padStart(10),
      String(r.rawPeakMiB).padStart(13),
      String(r.bulkExtraMiB).padStart(11),
      String(r.mmapExtraMiB).padStart(11),
      String(r.mmap4ExtraMiB).padStart(17),
    );
  const t = transitions;
  log(
    `\ntransitions (RUNNING <-> STOP, ${t.ops} ops): setState directly ${t.directUs} us/op, v1 device_state write through the bridge ${t.bridgeUs} us/op (${t.ratio}x, +${t.extraUs} us)`,
  );
  if (interposer) {
    log('\nsave only, QEMU 7.2 access pattern through the LD_PRELOAD interposer (saved bytes checked against raw v2)');
    log('case'.padEnd(48), 'MiB'.padStart(5), 'MiB/s'.padStart(7), 'vs raw'.padStart(7), 'vs bridge'.padStart(10));
    for (const r of interposer.rows)
      log(
        r.case.padEnd(48),
        String(r.mib).padStart(5),
        r.rate.toFixed(0).padStart(7),
        r.vsRaw.toFixed(2).padStart(7),
        r.vsBridge.toFixed(2).padStart(10),
      );
    log(
      `header accesses over the socket: ${interposer.headerPerMiB.toFixed(2)} per MiB of state (the service default data section, 4 MiB)`,
    );
  }
}
