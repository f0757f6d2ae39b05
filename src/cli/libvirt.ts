/**
 * vfio-mig libvirt snippet / check: the domain XML that bridges a device
 * under libvirt (README, "Using it with libvirt"), and whether a running
 * domain's QEMU is bridged, asked of the service (its STATUS query), not
 * read from QEMU's log.
 */
import { readFileSync, realpathSync } from 'node:fs';
import { connect } from 'node:net';
import { basename, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { getSystemErrorMap } from 'node:util';
import { VfioError, asVfioError } from '../errors.js';
import { SYSTEM_SOCKET } from '../service/listen.js';
import { preloadLibrary } from '../service/preload-library.js';
import { WireOp, vmw_reply, vmw_request, type StatusReply } from '../service/wire.js';
import type { CliContext } from './context.js';
import { EXIT } from './exit-codes.js';
import { CliError, toJson } from './output.js';

const QEMU = '/usr/bin/qemu-system-x86_64';
const WRAPPER = '/usr/local/bin/qemu-vfio-mig';
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const PCI = /^(?:([0-9a-f]{4}):)?([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])$/i;
/** The CLI's entry point (dist/cli/main.js, also when run from src/ in tests), for the wrapper line. */
const CLI_SCRIPT = resolve(dirname(fileURLToPath(import.meta.url)), '../../dist/cli/main.js');

const attr = (v: string) =>
  v.replaceAll('&', '&amp;').replaceAll("'", '&apos;').replaceAll('<', '&lt;').replaceAll('"', '&quot;');

/** The <hostdev> of an mdev (UUID or its sysfs path) or a PCI function (DDDD:BB:SS.F or its sysfs path). */
export function hostdevXml(device: string): string {
  const name = device.includes('/') ? basename(device.replace(/\/+$/, '')) : device;
  if (UUID.test(name))
    return `<hostdev mode='subsystem' type='mdev' model='vfio-pci'>\n  <source><address uuid='${name.toLowerCase()}'/></source>\n</hostdev>`;
  const pci = PCI.exec(name);
  if (pci) {
    const [, domain = '0000', bus, slot, fn] = pci;
    return `<hostdev mode='subsystem' type='pci' managed='yes'>\n  <source><address domain='0x${domain}' bus='0x${bus}' slot='0x${slot}' function='0x${fn}'/></source>\n</hostdev>`;
  }
  throw new CliError(
    `vfio-mig libvirt snippet: ${JSON.stringify(device)} is neither an mdev (its UUID or /sys/bus/mdev/devices/UUID) nor a PCI function (0000:01:00.0 or /sys/bus/pci/devices/0000:01:00.0)`,
    EXIT.USAGE,
  );
}

export interface SnippetOptions {
  socket?: string;
  recipe: 'serve' | 'emulator';
  wrapper?: string;
  qemu?: string;
}

/** The pieces to merge into a domain's XML for one device, with where each goes. */
export function snippetCommand(ctx: CliContext, device: string, o: SnippetOptions): void {
  if (o.recipe === 'emulator' && o.socket !== undefined)
    throw new CliError(
      'vfio-mig libvirt snippet: --socket applies to --recipe serve (exec makes a private socket per QEMU)',
      EXIT.USAGE,
    );
  if (o.recipe === 'serve' && (o.wrapper !== undefined || o.qemu !== undefined))
    throw new CliError('vfio-mig libvirt snippet: --wrapper and --qemu apply to --recipe emulator', EXIT.USAGE);
  const hostdev = hostdevXml(device);
  const socket = resolve(o.socket ?? SYSTEM_SOCKET);
  const out: string[] = [
    `<!-- vfio-mig libvirt snippet, ${o.recipe} recipe (README, "Using it with libvirt"); merge into the domain (virsh edit DOMAIN).`,
    `     The <qemu:commandline> element needs the namespace on the root element:`,
    `     <domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'> -->`,
  ];
  if (o.recipe === 'emulator') {
    const wrapper = o.wrapper ?? WRAPPER;
    out.push(
      `<!-- The wrapper, executable by QEMU's user (libvirt-qemu), at ${wrapper}:`,
      `       #!/bin/sh`,
      `       exec ${process.execPath} ${CLI_SCRIPT} exec -- ${o.qemu ?? QEMU} "$@"`,
      `     In <devices>, instead of the <emulator> there: -->`,
      `<emulator>${attr(wrapper)}</emulator>`,
    );
  }
  out.push(`<!-- In <devices>: -->`, hostdev, `<!-- In <domain>, after </devices>: -->`, `<qemu:commandline>`);
  out.push(`  <qemu:arg value='-global'/>`, `  <qemu:arg value='vfio-pci.x-enable-migration=on'/>`);
  if (o.recipe === 'serve') {
    out.push(
      `  <qemu:env name='LD_PRELOAD' value='${attr(preloadLibrary())}'/>`,
      `  <qemu:env name='VFIO_MIG_SOCKET' value='${attr(socket)}'/>`,
    );
  }
  out.push(`</qemu:commandline>`);
  ctx.stdout.write(`${out.join('\n')}\n`);
}

/** The pid file libvirt keeps for a running domain: the system instance's, then the user's session's. */
function domainPid(name: string): { pid: number; pidFile: string } {
  const files = [`/run/libvirt/qemu/${name}.pid`];
  if (process.env.XDG_RUNTIME_DIR) files.push(`${process.env.XDG_RUNTIME_DIR}/libvirt/qemu/run/${name}.pid`);
  for (const f of files) {
    let text: string;
    try {
      text = readFileSync(f, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') continue;
      throw asVfioError(e, 'libvirt check: read', f);
    }
    const pid = Number(text.trim());
    if (Number.isInteger(pid) && pid > 0) return { pid, pidFile: f };
    throw new CliError(`vfio-mig libvirt check: ${f} holds no pid (${JSON.stringify(text.trim())})`, CANNOT_TELL);
  }
  throw new CliError(
    `vfio-mig libvirt check: no running domain ${JSON.stringify(name)}: ${files.join(' and ')} not found (give QEMU's pid instead)`,
    CANNOT_TELL,
  );
}

/** QEMU's VFIO_MIG_SOCKET, when its environment can be read (root, or QEMU's own user). */
function socketOf(pid: number): string | undefined {
  try {
    const env = readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0');
    return env.find((e) => e.startsWith('VFIO_MIG_SOCKET='))?.slice('VFIO_MIG_SOCKET='.length);
  } catch {
    return undefined;
  }
}

/** A socket error as a VfioError whose reason is the system's text ("no such file or directory"), not Node's message. */
function withSystemText(e: Error, op: string, path: string): VfioError {
  const err = asVfioError(e, op, path);
  const errno = (e as NodeJS.ErrnoException).errno;
  const text = errno !== undefined ? getSystemErrorMap().get(errno)?.[1] : undefined;
  return text ? new VfioError(err.code, op, path, text, { cause: e }) : err;
}

/** One STATUS query to the service at `path`. */
export function queryStatus(path: string, timeoutMs = 10_000): Promise<StatusReply> {
  const op = 'libvirt check: status';
  return new Promise((done, fail) => {
    const sock = connect(path);
    let buf = Buffer.alloc(0);
    const timer = setTimeout(() => {
      sock.destroy();
      fail(new VfioError('ETIMEDOUT', op, path, `the service did not answer within ${timeoutMs / 1000} s`));
    }, timeoutMs);
    const finish = (f: () => void) => {
      clearTimeout(timer);
      sock.destroy();
      f();
    };
    sock.on('error', (e) => finish(() => fail(withSystemText(e, op, path))));
    sock.on('connect', () =>
      sock.write(vmw_request.encode({ op: WireOp.STATUS, payload_len: 0, offset: 0n, length: 0, reserved: 0 })),
    );
    sock.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      if (buf.length < vmw_reply.size) return;
      const r = vmw_reply.decode(buf);
      if (buf.length < vmw_reply.size + r.payload_len) return;
      const text = buf.subarray(vmw_reply.size, vmw_reply.size + r.payload_len).toString('utf8');
      finish(() => {
        if (r.result < 0)
          return fail(
            new VfioError(
              'EPROTO',
              op,
              path,
              /unknown request/.test(text)
                ? 'the service does not answer status queries (a vfio-mig older than this one)'
                : text,
            ),
          );
        try {
          done(JSON.parse(text) as StatusReply);
        } catch {
          fail(new VfioError('EPROTO', op, path, `the service answered ${JSON.stringify(text.slice(0, 200))}`));
        }
      });
    });
    sock.on('end', () =>
      finish(() => fail(new VfioError('EPROTO', op, path, 'the service closed the connection without an answer'))),
    );
  });
}

export interface CheckOptions {
  socket?: string;
  json?: boolean;
}

/**
 * Whether the QEMU of DOMAIN (or process PID) has devices bridged by the
 * service: exit 0 when it has, 1 when not. The service shows each user only
 * its own sessions (root sees all).
 */
/** check's status when it could not ask (as grep's 2): 1 is kept for "not bridged". */
const CANNOT_TELL = 2;

export async function checkCommand(ctx: CliContext, target: string, o: CheckOptions): Promise<number> {
  if (target === '') throw new CliError('vfio-mig libvirt check: DOMAIN or PID is empty', EXIT.USAGE);
  const byPid = /^\d+$/.test(target);
  const { pid, pidFile } = byPid ? { pid: Number(target), pidFile: undefined } : domainPid(target);
  let exe: string;
  try {
    exe = realpathSync(`/proc/${pid}/exe`);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT')
      throw new CliError(
        `vfio-mig libvirt check: no process ${pid}${pidFile ? ` (the pid in ${pidFile}: a stale file?)` : ''}`,
        CANNOT_TELL,
      );
    exe = '(its executable cannot be read as this user)';
  }
  const fromEnv = o.socket === undefined ? socketOf(pid) : undefined;
  const socket = resolve(o.socket ?? fromEnv ?? SYSTEM_SOCKET);
  const whence = o.socket !== undefined ? '--socket' : fromEnv !== undefined ? "QEMU's VFIO_MIG_SOCKET" : 'the default';
  let status: StatusReply;
  try {
    status = await queryStatus(socket);
  } catch (e) {
    const err = asVfioError(e, 'libvirt check: status', socket);
    const hint =
      err.code === 'ENOENT' || err.code === 'ECONNREFUSED'
        ? ` (no service listens there: is vfio-mig serve running${whence === 'the default' ? ', or is its socket elsewhere (--socket)' : ''}?)`
        : err.code === 'EACCES'
          ? ' (the socket is not open to this user: run as root or in its group)'
          : '';
    // Said whole here: the CLI's generic hint for ENOENT (a device or file path) would mislead.
    throw new CliError(
      `vfio-mig: ${new VfioError(err.code, err.op, `${err.device} (${whence})`, `${err.reason ?? ''}${hint}`).message}`,
      err.code === 'EACCES' || err.code === 'EPERM' ? EXIT.PERMISSION : CANNOT_TELL,
      e,
    );
  }
  const devices = status.sessions.filter((s) => s.vmm === pid);
  const who = `${byPid ? `process ${pid}` : `domain ${target} (pid ${pid})`} ${exe}`;
  if (o.json) {
    ctx.stdout.write(
      `${toJson({ target, pid, exe, socket, bridged: devices.length > 0, devices: devices.map((d) => d.device) })}\n`,
    );
  } else if (devices.length > 0) {
    ctx.stdout.write(
      `${who}: bridged by the service at ${socket}: ${devices.length} device${devices.length > 1 ? 's' : ''}\n${devices
        .map((d) => `  ${d.device} (${d.headerAccesses} header accesses so far)`)
        .join('\n')}\n`,
    );
  } else {
    const notSeen =
      status.uid !== 0
        ? `; the service shows uid ${status.uid} only its own VMMs' sessions: run as root or as QEMU's user to see all`
        : '';
    ctx.stdout.write(`${who}: not bridged: the service at ${socket} has no session of it${notSeen}\n`);
  }
  return devices.length > 0 ? EXIT.OK : EXIT.FAILED;
}
