/**
 * The test guest made into a Debian libvirt host before libvirtd starts, on
 * its read-only root (writable copies on tmpfs, bind-mounted over the
 * originals): libvirt's state directories and the libvirt-qemu user, as
 * libvirt-daemon-system's postinst makes them; cgroup v2 with the
 * controllers libvirt places a VM in; AppArmor with that package's profiles
 * (fetched by scripts/kernel/fetch-libvirt-apparmor.sh) and this repo's
 * contrib/apparmor/ additions, as README "Using it with libvirt" installs
 * them; Yama's ptrace_scope 1; and the package where `npm install -g` puts
 * it, so those files' paths hold as written.
 */
import { spawnSync } from 'node:child_process';
import { chmodSync, cpSync, existsSync, mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';

const PROJECT = resolve(import.meta.dirname, '../..');
const CONTRIB = `${PROJECT}/contrib/apparmor`;
const PROFILES = `${PROJECT}/.cache/libvirt-apparmor/etc/apparmor.d`;
/** Where `npm install -g` puts the package and its command (Debian's prefix for a global install). */
export const PACKAGE = '/usr/local/lib/node_modules/vfio-mig-bridge';
export const VFIO_MIG = '/usr/local/bin/vfio-mig';
/** QEMU's user and group (Debian's libvirt default). */
export const QEMU_USER = 'libvirt-qemu';

export function sh(...argv: string[]): string {
  const r = spawnSync(argv[0]!, argv.slice(1), { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${argv.join(' ')}: ${r.error?.message ?? r.stderr}`);
  return r.stdout;
}

const mounted: string[] = [];

function tmpfs(dir: string): void {
  sh('mount', '-t', 'tmpfs', '-o', 'mode=0755', 'libvirt-host', dir);
  mounted.push(dir);
}

/** A writable copy of `path` (a file or a directory) in its place; `extra` appended to a file. */
function bindCopy(path: string, extra = ''): void {
  const copy = `/run/libvirt-test${path.replaceAll('/', '-')}`;
  sh('cp', '-a', path, copy);
  if (extra) writeFileSync(copy, readFileSync(copy, 'utf8') + extra);
  sh('mount', '--bind', copy, path);
  mounted.push(path);
}

/** The AppArmor denials the kernel logged (audit records on the console log; no auditd here). */
export function denials(): string {
  return sh('dmesg')
    .split('\n')
    .filter((l) => l.includes('apparmor="DENIED"'))
    .join('\n');
}

/** libvirt's directories and user; returns libvirt-qemu's uid. */
function libvirtState(): number {
  // libvirt-daemon-system (not installed) would create these: with none on the root, tmpfs over the parent.
  for (const d of ['/var/lib/libvirt', '/var/cache/libvirt', '/var/log/libvirt']) {
    if (existsSync(d)) tmpfs(d);
    else if (!mounted.includes(dirname(d))) tmpfs(dirname(d));
    mkdirSync(d, { recursive: true });
  }
  mkdirSync('/run/libvirt', { recursive: true }); // /run is the guest's tmpfs
  bindCopy('/etc/libvirt'); // writable, without a qemu.conf: libvirt's defaults
  rmSync('/etc/libvirt/qemu.conf', { force: true });
  const known = /^libvirt-qemu:[^:]*:(\d+):/m.exec(readFileSync('/etc/passwd', 'utf8'));
  if (known) return Number(known[1]);
  const uid = 64055; // as the package's postinst adds it on Debian
  bindCopy('/etc/passwd', `${QEMU_USER}:x:${uid}:${uid}:Libvirt Qemu:/var/lib/libvirt:/usr/sbin/nologin\n`);
  bindCopy('/etc/group', `${QEMU_USER}:x:${uid}:\n`);
  return uid;
}

/** cgroup v2, with the controllers libvirt uses enabled for the groups it makes. */
function cgroups(): void {
  sh('mount', '-t', 'cgroup2', 'cgroup2', '/sys/fs/cgroup');
  mounted.push('/sys/fs/cgroup');
  writeFileSync('/sys/fs/cgroup/cgroup.subtree_control', '+cpu +cpuset +memory +pids');
}

/** The package under /usr/local as a global install lays it out: this checkout, bound there. */
function globalInstall(): void {
  for (const d of ['/usr/local/lib', '/usr/local/bin']) tmpfs(d);
  mkdirSync(PACKAGE, { recursive: true });
  sh('mount', '--bind', PROJECT, PACKAGE);
  mounted.push(PACKAGE);
  symlinkSync('../lib/node_modules/vfio-mig-bridge/dist/cli/main.js', VFIO_MIG);
}

/** The file README's AppArmor step appends to Debian's local/abstractions/libvirt-qemu. */
export const LOCAL_QEMU = '/etc/apparmor.d/local/abstractions/libvirt-qemu';

/**
 * AppArmor as a Debian host with libvirt-daemon-system has it, plus README's
 * step: contrib's additions for QEMU (both recipes) and libvirtd, and the
 * service's profile, loaded. libvirtd started after this runs confined.
 */
function apparmor(): void {
  sh('mount', '-t', 'securityfs', 'securityfs', '/sys/kernel/security');
  mounted.push('/sys/kernel/security');
  if (!existsSync(`${PROFILES}/usr.sbin.libvirtd`))
    throw new Error(`no ${PROFILES}: run bash scripts/kernel/fetch-libvirt-apparmor.sh on the host`);
  bindCopy('/etc/apparmor.d');
  cpSync(PROFILES, '/etc/apparmor.d', { recursive: true });
  // The package's postinst creates the local/ files its profiles include.
  mkdirSync('/etc/apparmor.d/local/abstractions', { recursive: true });
  for (const f of ['usr.sbin.libvirtd', 'usr.lib.libvirt.virt-aa-helper', 'abstractions/libvirt-qemu'])
    writeFileSync(`/etc/apparmor.d/local/${f}`, '');
  writeFileSync(LOCAL_QEMU, localQemuRules());
  writeFileSync('/etc/apparmor.d/local/usr.sbin.libvirtd', readFileSync(`${CONTRIB}/local/usr.sbin.libvirtd`, 'utf8'));
  cpSync(`${CONTRIB}/vfio-mig`, '/etc/apparmor.d/vfio-mig');
  chmodSync('/etc/apparmor.d/libvirt', 0o755);
  for (const p of ['usr.sbin.libvirtd', 'usr.lib.libvirt.virt-aa-helper', 'vfio-mig'])
    sh('apparmor_parser', '-r', `/etc/apparmor.d/${p}`);
}

/** contrib's rules for QEMU's profile, both recipes: what README has the user append. */
export function localQemuRules(): string {
  return ['libvirt-qemu', 'libvirt-qemu-exec']
    .map((f) => readFileSync(`${CONTRIB}/local/abstractions/${f}`, 'utf8'))
    .join('\n');
}

const YAMA = '/proc/sys/kernel/yama/ptrace_scope';
let yamaBefore = '';

/**
 * Yama's ptrace_scope 1, as Ubuntu sets it (/etc/sysctl.d/10-ptrace.conf; the
 * kernel and Debian leave 0): a process may trace only its descendants, or
 * a process that named it with PR_SET_PTRACER.
 */
function yama(): void {
  yamaBefore = readFileSync(YAMA, 'utf8');
  writeFileSync(YAMA, '1');
}

/** Everything above, in order; libvirt-qemu's uid. */
export function prepareHost(): number {
  // An image built from an older fragment (before cgroups, seccomp and AppArmor) cannot run these tests.
  const fs = readFileSync('/proc/filesystems', 'utf8');
  const lacks = ['cgroup2', 'securityfs'].filter((f) => !new RegExp(`\\s${f}$`, 'm').test(fs));
  if (!existsSync('/proc/sys/kernel/seccomp')) lacks.push('seccomp');
  if (lacks.length > 0)
    throw new Error(
      `this kernel lacks ${lacks.join(', ')}: boot one built from scripts/kernel/fragment.config (npm run kernel:build)`,
    );
  const uid = libvirtState();
  cgroups();
  globalInstall();
  apparmor();
  yama();
  return uid;
}

export function restoreHost(): void {
  if (yamaBefore) writeFileSync(YAMA, yamaBefore);
  for (const m of mounted.reverse()) spawnSync('umount', [m]);
  mounted.length = 0;
}
