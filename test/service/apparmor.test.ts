/**
 * The AppArmor files in contrib/apparmor/: what they allow matches the
 * package (the interposer's installed name, the systemd socket), and
 * apparmor_parser compiles them (when it is installed: .ci/run installs
 * the apparmor package; compiling needs no AppArmor in the kernel).
 */
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { expect, it } from 'vitest';
import { PRELOAD_NAME } from '../../src/service/preload-library.js';

const contrib = resolve(import.meta.dirname, '../../contrib');
const local = readFileSync(join(contrib, 'apparmor/local/abstractions/libvirt-qemu'), 'utf8');
const localExec = readFileSync(join(contrib, 'apparmor/local/abstractions/libvirt-qemu-exec'), 'utf8');
const localLibvirtd = readFileSync(join(contrib, 'apparmor/local/usr.sbin.libvirtd'), 'utf8');
const service = readFileSync(join(contrib, 'apparmor/vfio-mig'), 'utf8');
const pkg = JSON.parse(readFileSync(resolve(import.meta.dirname, '../../package.json'), 'utf8')) as { name: string };
const socket = /^ListenStream=(\S+)$/m.exec(readFileSync(join(contrib, 'systemd/vfio-mig.socket'), 'utf8'))![1]!;
const parser = spawnSync('apparmor_parser', ['--version']).status === 0;

it("QEMU's override maps the installed interposer, reaches the socket and lets only the service (or its own profile) take its fds", () => {
  expect(local).toContain(`/usr/local/lib/node_modules/${pkg.name}/dist/interposer/${PRELOAD_NAME} mr,`);
  expect(local).toContain(`${socket} rw,`);
  expect(local).toMatch(/^ptrace \(readby, tracedby\) peer=vfio-mig,$/m);
  expect(local).toMatch(/^ptrace \(read, trace, readby, tracedby\) peer=@\{profile_name\},$/m);
  expect(local).not.toMatch(/peer=libvirt-\*/); // one VM's QEMU never traces another's
  expect(service).toMatch(/^\s*ptrace \(read, trace\) peer=libvirt-\*,$/m);
  expect(service).toContain(`${socket} rw,`);
});

it("recipe 2's additions run README's wrapper and the global install under QEMU's profile, and let libvirtd probe the wrapper", () => {
  const wrapper = /<emulator>(\S+)<\/emulator>/.exec(readFileSync(resolve(contrib, '../README.md'), 'utf8'))![1]!;
  expect(localExec).toContain(`${wrapper} rix,`);
  expect(localExec).toContain(`/usr/local/lib/node_modules/${pkg.name}/dist/cli/main.js rix,`);
  expect(localExec).toMatch(/^owner \/tmp\/vfio-mig-\*\/bridge\.sock rw,$/m); // exec's private socket
  expect(localLibvirtd).toMatch(new RegExp(`^${wrapper} PUx,$`, 'm'));
});

it.skipIf(!parser)(
  "apparmor_parser compiles them (QEMU's additions inside a domain profile as libvirt names it, libvirtd's inside its profile)",
  () => {
    const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-apparmor-'));
    try {
      for (const d of ['tunables', 'abstractions'])
        if (existsSync(`/etc/apparmor.d/${d}`)) cpSync(`/etc/apparmor.d/${d}`, join(dir, d), { recursive: true });
      mkdirSync(join(dir, 'local/abstractions'), { recursive: true });
      writeFileSync(join(dir, 'local/abstractions/libvirt-qemu'), `${local}\n${localExec}`);
      writeFileSync(join(dir, 'local/usr.sbin.libvirtd'), localLibvirtd);
      writeFileSync(
        join(dir, 'domain'),
        '#include <tunables/global>\nprofile libvirt-6e1e4c49-5b1f-4b5e-9a56-3f1d0c1e2a11 flags=(attach_disconnected) {\n  #include <local/abstractions/libvirt-qemu>\n}\n',
      );
      writeFileSync(
        join(dir, 'libvirtd'),
        '#include <tunables/global>\nprofile libvirtd /usr/sbin/libvirtd {\n  #include <local/usr.sbin.libvirtd>\n}\n',
      );
      for (const file of [join(dir, 'domain'), join(dir, 'libvirtd'), join(contrib, 'apparmor/vfio-mig')]) {
        const r = spawnSync('apparmor_parser', ['-Q', '-K', '-I', dir, file], { encoding: 'utf8' });
        expect(r.status, `${file}: ${r.stderr}`).toBe(0);
        expect(r.stderr.replace(/^Cache read\/write disabled.*\n?/gm, '')).toBe('');
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
);
