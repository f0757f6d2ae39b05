#!/usr/bin/env node
// npm run test:kernel: boots the Linux image named by VFIO_MIG_KERNEL under
// qemu-system-x86_64 (software emulation), runs the kernel suite inside it
// against two real mtty devices, brings the vitest report back and fails
// when a test fails, when no report comes back or when the guest does not
// boot. Never a silent pass.
import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, createWriteStream, existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const project = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
// The image built by scripts/kernel/build-kernel.sh into the cache (npm run
// kernel:build, or npm run test:all when VFIO_MIG_KERNEL is unset).
const CACHED_KERNEL = join(resolve(project, process.env.VFIO_MIG_KERNEL_CACHE || '.cache/kernel'), 'bzImage');
const kernelEnv = process.env.VFIO_MIG_KERNEL || (existsSync(CACHED_KERNEL) ? CACHED_KERNEL : undefined);
const kernel =
  kernelEnv && existsSync(kernelEnv) && !kernelEnv.endsWith('bzImage') && existsSync(join(kernelEnv, 'bzImage'))
    ? join(kernelEnv, 'bzImage')
    : kernelEnv;
// The bench (VFIOMIG_CONFIG) leaves the kernel suite's report alone.
const REPORT = join(project, process.env.VFIOMIG_CONFIG ? '.ci-kernel-bench.json' : '.ci-kernel.json');
// The guest console as it came, escape sequences and all; the terminal gets a filtered copy.
const CONSOLE_LOG = join(project, '.ci-kernel-console.log');
rmSync(REPORT, { force: true });

function die(msg) {
  console.error(`test:kernel: ${msg}`);
  process.exit(1);
}

if (!kernel)
  die(
    'no test kernel: set VFIO_MIG_KERNEL to a bzImage built by scripts/kernel/build-kernel.sh, or build one into .cache/kernel with npm run kernel:build (README: The real-kernel test bed)',
  );
if (!existsSync(kernel)) die(`VFIO_MIG_KERNEL=${kernel}: no such file`);
if (spawnSync('qemu-system-x86_64', ['--version']).error) {
  // A fresh Debian machine lacks it: install it when we can, else say how.
  const hint = 'apt-get install -y --no-install-recommends qemu-system-x86';
  if (process.getuid?.() !== 0 || spawnSync('apt-get', ['--version']).error)
    die(`qemu-system-x86_64 not found: ${hint}`);
  console.error(`test:kernel: installing qemu-system-x86 (${hint})`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const ok =
    spawnSync('apt-get', ['update', '-qq'], { stdio: 'inherit', env }).status === 0 &&
    spawnSync('apt-get', ['install', '-y', '-qq', '--no-install-recommends', 'qemu-system-x86'], {
      stdio: 'inherit',
      env,
    }).status === 0;
  if (!ok || spawnSync('qemu-system-x86_64', ['--version']).error) die(`could not install qemu-system-x86: ${hint}`);
}
if (/\s/.test(project))
  die(`the project path must not contain spaces (it is passed on the kernel command line): ${project}`);

// QEMU 7.2 and 10 for the tests in the guest, unpacked by scripts/kernel/fetch-qemu.sh (npm run test:all runs it).
const qemuTrees = { VFIOMIG_QEMU72: join(project, '.cache/qemu-7.2'), VFIOMIG_QEMU10: join(project, '.cache/qemu-10') };
for (const dir of Object.values(qemuTrees)) {
  if (!existsSync(join(dir, 'usr/bin/qemu-system-x86_64')))
    console.error(`test:kernel: no ${dir}: the QEMU tests will fail; run bash scripts/kernel/fetch-qemu.sh`);
}
if (!existsSync(join(project, '.cache/libvirt-apparmor/version')))
  console.error(
    'test:kernel: no libvirt AppArmor profiles in .cache/: the libvirt tests will fail; run bash scripts/kernel/fetch-libvirt-apparmor.sh',
  );

const out = mkdtempSync(join(tmpdir(), 'vfio-mig-vm-'));
// Optional: a vitest name filter, or (for debugging) a command to run instead of the suite.
const filter = ['VFIOMIG_FILTER', 'VFIOMIG_CMD', 'VFIOMIG_CONFIG', 'VFIOMIG_BENCH_ROUNDS', 'VFIOMIG_BENCH_MIB']
  .filter((k) => process.env[k])
  .map((k) => ` ${k}=${process.env[k]}`)
  .join('');
const append = [
  // no_timer_check: under a loaded host, TCG's timer check can fail the boot ("IO-APIC + timer doesn't work").
  'console=ttyS0 quiet panic=-1 no_timer_check',
  'root=hostroot rootfstype=9p rootflags=trans=virtio,version=9p2000.L,msize=512000 ro',
  `init=${project}/test/kernel/guest-init.sh`,
  `VFIOMIG_PROJECT=${project}${filter}`,
  ...Object.entries(qemuTrees).map(([k, dir]) => `${k}=${dir}`),
].join(' ');
const args = [
  '-M',
  'q35',
  '-m',
  '2G',
  '-smp',
  '1',
  '-nographic',
  '-no-reboot',
  '-kernel',
  kernel,
  '-append',
  append,
  '-fsdev',
  'local,id=r,path=/,security_model=none,readonly=on,multidevs=remap',
  '-device',
  'virtio-9p-pci,fsdev=r,mount_tag=hostroot',
  '-fsdev',
  `local,id=p,path=${project},security_model=none`,
  '-device',
  'virtio-9p-pci,fsdev=p,mount_tag=proj',
  '-fsdev',
  `local,id=o,path=${out},security_model=none`,
  '-device',
  'virtio-9p-pci,fsdev=o,mount_tag=out',
];

const started = Date.now();
// The suite takes 10-20 min on an idle 2-core host (QEMU and libvirt run under TCG inside the TCG guest); twice that when loaded.
const limitMs = Number(process.env.VFIO_MIG_VM_TIMEOUT_S ?? 3600) * 1000;
let console_ = '';
const raw = createWriteStream(CONSOLE_LOG);
// Terminal control (SeaBIOS's ESC c, clear screen, wrap off) and the kernel's
// normal end ("Attempted to kill init": init exiting ends the guest) stay in the raw log only.
// eslint-disable-next-line no-control-regex -- ESC starts the terminal sequences this matches
const ESCAPES = /\x1b(\[[0-9;?]*[A-Za-z]|[c()][0-9A-B]?)/g;
const NORMAL_END =
  /^(Kernel panic - not syncing: Attempted to kill init!.*|Kernel Offset: .*|---\[ end Kernel panic.*)$/;
let pending = '';
function show(text) {
  // Whole lines only: an escape sequence may be split across two chunks.
  pending += text;
  const lines = pending.split('\n');
  pending = lines.pop();
  for (const raw of lines) {
    const line = raw.replace(ESCAPES, '').replace(/\r/g, '');
    if (!NORMAL_END.test(line.trim())) process.stdout.write(`${line}\n`);
  }
}
const vm = spawn('qemu-system-x86_64', args, { stdio: ['ignore', 'pipe', 'pipe'] });
const timer = setTimeout(() => {
  console.error(`test:kernel: guest still running after ${limitMs / 1000} s: killed`);
  vm.kill('SIGKILL');
}, limitMs);
for (const s of [vm.stdout, vm.stderr]) {
  s.on('data', (d) => {
    const text = d.toString();
    console_ += text;
    raw.write(d);
    show(text);
  });
}
vm.on('close', (code, signal) => {
  clearTimeout(timer);
  show('\n');
  raw.end();
  const secs = ((Date.now() - started) / 1000).toFixed(1);
  const booted = console_.includes('VFIOMIG: booted');
  const reportPath = join(out, 'kernel.json');
  if (!booted) die(`the guest did not boot (qemu ${signal ?? code}) after ${secs} s`);
  if (!existsSync(reportPath)) die(`no test report came back from the guest (qemu ${signal ?? code}) after ${secs} s`);
  copyFileSync(reportPath, REPORT);
  rmSync(out, { recursive: true, force: true });
  const r = JSON.parse(readFileSync(REPORT, 'utf8'));
  console.log(
    `test:kernel: guest console in ${CONSOLE_LOG}; boot to result ${secs} s; in the guest: ${r.numPassedTests} passed, ${r.numFailedTests} failed, ${r.numPendingTests + (r.numTodoTests ?? 0)} skipped`,
  );
  if (r.numTotalTests === 0) die('the guest ran no test');
  process.exit(r.success && r.numFailedTests === 0 ? 0 : 1);
});
