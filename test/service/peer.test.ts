/**
 * The process at the other end of a connection (src/service/peer.ts)
 * against a fake kernel (PeerSysCalls): who it is (pid and start time),
 * when it counts as gone, and what is refused before any descriptor of it
 * is taken or kept (docs/interposer.md#trust-model). The fake takes real
 * copies (dup) of this process's fds, so /proc and fstat see real files.
 */
import koffi from 'koffi';
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, copyFileSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VfioError } from '../../src/index.js';
import { Peer, checkVfioDeviceFd, fdTarget, type KernelTrees } from '../../src/service/peer.js';
import { linuxPeerSys, type PeerCredentials, type PeerSysCalls } from '../../src/v2/kernel/sys.js';
import { F_SEAL_GROW, F_SEAL_SHRINK, closeMemfd, memfd } from './wire-client.js';

const dup = koffi.load('libc.so.6').func('int dup(int fd)');
const F_SEAL_WRITE = 0x8;
const F_SEAL_FUTURE_WRITE = 0x10;
const PIDFD = 1000; // the fake's pidfd: never a real descriptor
/** Linux's O_PATH on x86_64 and arm64 (Node's fs.constants has no name for it). */
const O_PATH = 0o10000000;

/** A fake kernel: the peer is `creds`; `pidNow` is what the pidfd names (-1 once the process is gone). */
class FakeSys implements PeerSysCalls {
  readonly closed: number[] = [];
  readonly taken: number[] = [];
  pidNow: number;
  getfdError: Error | null = null;
  constructor(
    readonly creds: PeerCredentials,
    readonly pidfd = PIDFD,
  ) {
    this.pidNow = creds.pid;
  }
  close(fd: number) {
    this.closed.push(fd);
    if (fd !== this.pidfd) linuxPeerSys.close(fd);
  }
  peerCredentials() {
    return this.creds;
  }
  peerPidfd() {
    return this.pidfd;
  }
  pidfdPid(pidfd: number) {
    return pidfd === this.pidfd ? this.pidNow : -1;
  }
  pidfdGetfd(_pidfd: number, fd: number) {
    if (this.getfdError) throw this.getfdError;
    const got = dup(fd) as number;
    this.taken.push(got);
    return got;
  }
  getSeals = linuxPeerSys.getSeals.bind(linuxPeerSys);
  mapShared = linuxPeerSys.mapShared.bind(linuxPeerSys);
}

const self = (): PeerCredentials => ({
  pid: process.pid,
  uid: process.getuid!(),
  gid: process.getgid!(),
});

/** Field 22 of /proc/PID/stat, counted from the end of the command name. */
function startTimeOf(pid: number): string {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  return stat.slice(stat.lastIndexOf(') ') + 2).split(' ')[19]!;
}

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'vfio-mig-peer-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('who connected', () => {
  it('is the pid and its start time, so a recycled pid is another process', () => {
    const p = Peer.ofSocket(3, new FakeSys(self()));
    expect(p.pid).toBe(process.pid);
    expect(p.identity).toBe(`${process.pid}:${startTimeOf(process.pid)}`);
    expect(p.identity).toMatch(/^\d+:\d+$/);
    p.close();
  });

  it('a command name with spaces and parentheses does not shift the fields', async () => {
    const odd = join(dir, 'a) b c');
    copyFileSync('/bin/sleep', odd);
    const child = spawn(odd, ['30']);
    await new Promise((r) => child.once('spawn', r));
    try {
      expect(readFileSync(`/proc/${child.pid}/stat`, 'utf8')).toContain('(a) b c)');
      const p = Peer.ofSocket(3, new FakeSys({ ...self(), pid: child.pid! }));
      expect(p.identity).toBe(`${child.pid}:${startTimeOf(child.pid!)}`);
      expect(p.identity).toMatch(/^\d+:\d+$/);
      p.close();
    } finally {
      child.kill();
    }
  });

  for (const pid of [0, -1])
    it(`pid ${pid} (a peer in another pid namespace) is ESRCH, and no pidfd is taken`, () => {
      const sys = new FakeSys({ ...self(), pid });
      const peerPidfd = sys.peerPidfd.bind(sys);
      let asked = 0;
      sys.peerPidfd = () => (asked++, peerPidfd());
      expect(() => Peer.ofSocket(3, sys)).toThrow(/ESRCH.*the peer has no process in this pid namespace/);
      expect(asked).toBe(0);
    });

  it('a process gone by the time it is looked at is ESRCH, and its pidfd is closed', async () => {
    const child = spawn('true');
    await new Promise((r) => child.once('exit', r));
    const sys = new FakeSys({ ...self(), pid: child.pid! });
    expect(() => Peer.ofSocket(3, sys)).toThrow(`process ${child.pid} exited as it connected`);
    expect(sys.closed).toEqual([PIDFD]);
  });

  it('a pidfd that names another process by then is ESRCH, and closed', () => {
    const sys = new FakeSys(self());
    sys.pidNow = -1;
    expect(() => Peer.ofSocket(3, sys)).toThrow(/ESRCH.*exited as it connected/);
    expect(sys.closed).toEqual([PIDFD]);
  });

  it('a pidfd numbered 0 is a pidfd like any other: alive, used, and closed', () => {
    const sys = new FakeSys(self(), 0);
    const p = Peer.ofSocket(3, sys);
    expect(p.alive()).toBe(true);
    const fd = openSync('/etc/hostname', 'r');
    try {
      closeSync(p.takeFd(fd, 'op', 'dev'));
    } finally {
      closeSync(fd);
    }
    p.close();
    expect(sys.closed).toContain(0);
    expect(p.alive()).toBe(false);
  });

  it('is alive while its pidfd names it; not once it exited, nor after close (which closes the pidfd once)', () => {
    const sys = new FakeSys(self());
    const p = Peer.ofSocket(3, sys);
    expect(p.alive()).toBe(true);
    sys.pidNow = -1;
    expect(p.alive()).toBe(false);
    sys.pidNow = process.pid;
    p.close();
    p.close();
    expect(p.alive()).toBe(false);
    expect(sys.closed).toEqual([PIDFD]);
  });
});

describe('taking a descriptor of the peer', () => {
  it('gives a copy of it', () => {
    const sys = new FakeSys(self());
    const p = Peer.ofSocket(3, sys);
    const fd = openSync('/etc/hostname', 'r');
    try {
      const own = p.takeFd(fd, 'op', 'dev');
      expect(sys.taken).toEqual([own]);
      expect(fdTarget(own)).toBe('/etc/hostname');
      closeSync(own);
    } finally {
      closeSync(fd);
      p.close();
    }
  });

  it('not after the connection ended (EBADF)', () => {
    const sys = new FakeSys(self());
    const p = Peer.ofSocket(3, sys);
    p.close();
    expect(() => p.takeFd(0, 'op', 'dev')).toThrow('op on dev: EBADF (9): the connection has ended');
    expect(sys.taken).toEqual([]);
  });

  for (const fd of [-1, 1.5, Number.NaN])
    it(`not fd ${fd} (EBADF)`, () => {
      const sys = new FakeSys(self());
      const p = Peer.ofSocket(3, sys);
      expect(() => p.takeFd(fd, 'op', 'dev')).toThrow(`op on dev: EBADF (9): not a file descriptor: ${fd}`);
      expect(sys.taken).toEqual([]);
      p.close();
    });

  it('not once the process exited (ESRCH)', () => {
    const sys = new FakeSys(self());
    const p = Peer.ofSocket(3, sys);
    sys.pidNow = -1;
    expect(() => p.takeFd(0, 'op', 'dev')).toThrow(`op on dev: ESRCH (3): process ${process.pid} has exited`);
    expect(sys.taken).toEqual([]);
  });

  for (const [what, creds] of [
    ['uid', { uid: self().uid + 1 }],
    ['gid', { gid: self().gid + 1 }],
  ] as const)
    it(`not from a process whose ${what} is no longer the one it connected with (EPERM)`, () => {
      const sys = new FakeSys({ ...self(), ...creds });
      const p = Peer.ofSocket(3, sys);
      const c = sys.creds;
      expect(() => p.takeFd(0, 'op', 'dev')).toThrow(
        `op on dev: EPERM (1): process ${process.pid} no longer runs as uid ${c.uid} gid ${c.gid}, as it connected`,
      );
      expect(sys.taken).toEqual([]);
      p.close();
    });

  /** A process running as `args` (setpriv), for as long as the test needs it. */
  async function runningAs(args: string[], use: (pid: number) => void): Promise<void> {
    const child = spawn('setpriv', [...args, '--clear-groups', 'sleep', '30']);
    await new Promise((r) => child.once('spawn', r));
    try {
      for (let i = 0; i < 100 && !readFileSync(`/proc/${child.pid}/status`, 'utf8').includes('sleep'); i++)
        await new Promise((r) => setTimeout(r, 10));
      use(child.pid!);
    } finally {
      child.kill();
    }
  }

  it.skipIf(process.getuid?.() !== 0)(
    "a process's own credentials are read from /proc: the uid and gid it connected with pass, others do not",
    async () => {
      await runningAs(['--reuid', '65534', '--regid', '65534'], (pid) => {
        const fd = openSync('/etc/hostname', 'r');
        try {
          const ok = Peer.ofSocket(3, new FakeSys({ pid, uid: 65534, gid: 65534 }));
          closeSync(ok.takeFd(fd, 'op', 'dev'));
          ok.close();
          const root = Peer.ofSocket(3, new FakeSys({ pid, uid: 0, gid: 0 }));
          expect(() => root.takeFd(fd, 'op', 'dev')).toThrow(/EPERM.*no longer runs as uid 0 gid 0/);
          root.close();
        } finally {
          closeSync(fd);
        }
      });
    },
  );

  it.skipIf(process.getuid?.() !== 0)(
    'a process whose real and effective ids differ (setuid since connect) is refused: every id must match',
    async () => {
      // Uids mixed with gids all 65534, then gids mixed with uids all 65534: each check on its own.
      for (const ids of [
        ['--ruid', '65534', '--euid', '0', '--regid', '65534'],
        ['--reuid', '65534', '--rgid', '65534', '--egid', '0'],
      ])
        await runningAs(ids, (pid) => {
          for (const creds of [
            { uid: 65534, gid: 65534 },
            { uid: 0, gid: 0 },
          ]) {
            const p = Peer.ofSocket(3, new FakeSys({ pid, ...creds }));
            expect(() => p.takeFd(0, 'op', 'dev')).toThrow(/EPERM.*no longer runs as/);
            p.close();
          }
        });
    },
  );

  for (const code of ['EPERM', 'EACCES'])
    it(`${code} from pidfd_getfd says the service needs ptrace access`, () => {
      const sys = new FakeSys(self());
      const cause = new VfioError(code, 'pidfd_getfd', 'dev', 'fd 0 of the peer');
      sys.getfdError = cause;
      const p = Peer.ofSocket(3, sys);
      let err: unknown;
      try {
        p.takeFd(0, 'op', 'dev');
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(VfioError);
      expect((err as VfioError).code).toBe(code);
      expect((err as VfioError).message).toMatch(
        /^op on dev: E\w+ \(\d+\): fd 0 of the peer: the service needs ptrace access to the VMM \(run it as root/,
      );
      expect((err as VfioError).cause).toBe(cause);
      p.close();
    });

  it('other failures of pidfd_getfd pass as they are', () => {
    const sys = new FakeSys(self());
    const p = Peer.ofSocket(3, sys);
    for (const e of [new VfioError('EBADF', 'pidfd_getfd', 'dev', 'fd 9'), new Error('not a VfioError')]) {
      sys.getfdError = e;
      expect(() => p.takeFd(9, 'op', 'dev')).toThrow(e);
    }
    p.close();
  });
});

describe('device and section descriptors', () => {
  it('a device fd that is not a VFIO device is ENODEV, and the copy taken is closed', () => {
    const sys = new FakeSys(self());
    const p = Peer.ofSocket(3, sys);
    const fd = openSync('/dev/null', 'r');
    try {
      expect(() => p.takeDeviceFd(fd, 'op', 'dev')).toThrow(
        'op on dev: ENODEV (19): that fd is /dev/null, not a VFIO device',
      );
      expect(sys.taken).toHaveLength(1);
      expect(sys.closed).toEqual(sys.taken);
    } finally {
      closeSync(fd);
      p.close();
    }
  });

  it('checkVfioDeviceFd refuses a regular file and a character device outside vfio-dev', () => {
    for (const path of ['/etc/hostname', '/dev/null', '/dev/zero']) {
      const fd = openSync(path, 'r');
      try {
        expect(() => checkVfioDeviceFd(fd, 'op', 'dev')).toThrow(`that fd is ${path}, not a VFIO device`);
      } finally {
        closeSync(fd);
      }
    }
  });

  it('fdTarget of a descriptor that is not open names its number', () => {
    expect(fdTarget(987654)).toBe('fd 987654');
  });

  const SEALED = F_SEAL_SHRINK | F_SEAL_GROW;
  const cases: [string, number, number, RegExp | null][] = [
    ['sealed against shrinking and growing, exactly the size', 4096, SEALED, null],
    [
      'sealed only against shrinking',
      4096,
      F_SEAL_SHRINK,
      /EPERM.*not sealed against shrinking and growing \(seals 0x2\)/,
    ],
    ['also sealed against writing', 4096, SEALED | F_SEAL_WRITE, /EPERM.*sealed against writing \(seals 0xe\)/],
    [
      'also sealed against future writes',
      4096,
      SEALED | F_SEAL_FUTURE_WRITE,
      /EPERM.*sealed against writing \(seals 0x16\)/,
    ],
    ['one byte short', 4095, SEALED, /EINVAL.*holds 4095 bytes, the section needs 4096/],
  ];
  for (const [what, size, seals, refused] of cases)
    it(`a section memfd ${what}: ${refused ? 'refused' : 'mapped'}; the copy taken is closed either way`, () => {
      const sys = new FakeSys(self());
      const p = Peer.ofSocket(3, sys);
      const fd = memfd(size, seals);
      try {
        if (refused) expect(() => p.mapSection(fd, 4096, 'dev')).toThrow(refused);
        else {
          const m = p.mapSection(fd, 4096, 'dev');
          expect(m.bytes.length).toBe(4096);
          m.unmap();
        }
        expect(sys.taken).toHaveLength(1);
        expect(sys.closed).toEqual(sys.taken);
      } finally {
        closeMemfd(fd);
        p.close();
      }
    });
});

/**
 * The two kinds of VFIO device fd, which only a VFIO host has: checked here
 * against a fake /proc (what a descriptor links to) and a fake sysfs (where
 * a character device's number leads), over real descriptors that fstat sees.
 */
describe('a VFIO device fd, against fake procfs and sysfs trees', () => {
  let n = 0;
  /** Trees where our `fd` links to `target` and char device `majmin` leads to sysfs's `device` path (or dangles). */
  function trees(fd: number, target: string, majmin?: string, device?: string): KernelTrees {
    const root = join(dir, `trees${n++}`);
    const t: KernelTrees = { proc: join(root, 'proc'), sys: join(root, 'sys') };
    mkdirSync(join(t.proc, 'self', 'fd'), { recursive: true });
    symlinkSync(target, join(t.proc, 'self', 'fd', String(fd)));
    mkdirSync(join(t.sys, 'dev', 'char'), { recursive: true });
    if (majmin && device) {
      const real = join(t.sys, 'devices', device);
      if (!device.endsWith('-dangling')) mkdirSync(real, { recursive: true });
      symlinkSync(`../../devices/${device}`, join(t.sys, 'dev', 'char', majmin));
    }
    return t;
  }

  function withFd(path: string, flags: string | number, fn: (fd: number) => void): void {
    const fd = openSync(path, flags);
    try {
      fn(fd);
    } finally {
      closeSync(fd);
    }
  }

  it('one /proc names anon_inode:[vfio-device] (the group path) is taken, whatever file it is', () => {
    withFd('/etc/hostname', 'r', (fd) => {
      expect(fdTarget(fd, trees(fd, 'anon_inode:[vfio-device]'))).toBe('anon_inode:[vfio-device]');
      expect(() => checkVfioDeviceFd(fd, 'op', 'dev', trees(fd, 'anon_inode:[vfio-device]'))).not.toThrow();
      for (const other of ['anon_inode:[vfio-device]x', 'anon_inode:[eventfd]'])
        expect(() => checkVfioDeviceFd(fd, 'op', 'dev', trees(fd, other))).toThrow(
          `op on dev: ENODEV (19): that fd is ${other}, not a VFIO device`,
        );
    });
  });

  it('a character device sysfs places under vfio-dev (the iommufd path) is taken, found by its number', () => {
    // /dev/null is char 1:3: only its number leads to the fake sysfs's vfio-dev entry.
    const PCI = 'pci0000:00/0000:00:02.0';
    withFd('/dev/null', 'r', (fd) => {
      const at = (device: string) => trees(fd, '/dev/vfio/devices/vfio12', '1:3', device);
      expect(() => checkVfioDeviceFd(fd, 'op', 'dev', at(`${PCI}/vfio-dev/vfio12`))).not.toThrow();
      expect(() => checkVfioDeviceFd(fd, 'op', 'dev', at(`${PCI}/vfio-dev/vfio0`))).not.toThrow();
      for (const other of [
        `${PCI}/vfio-dev/vfio12x`, // not the class's own name
        `${PCI}/vfio-dev/vfio`,
        `${PCI}/xvfio-dev/vfio12`,
        `${PCI}/misc/vfio12`,
        `${PCI}/vfio-dev/vfio12-dangling`, // sysfs has no such device: realpath fails
      ])
        expect(() => checkVfioDeviceFd(fd, 'op', 'dev', at(other)), other).toThrow(
          'op on dev: ENODEV (19): that fd is /dev/vfio/devices/vfio12, not a VFIO device',
        );
      // No entry for 1:3 at all.
      expect(() => checkVfioDeviceFd(fd, 'op', 'dev', trees(fd, '/dev/vfio/devices/vfio12'))).toThrow(
        'that fd is /dev/vfio/devices/vfio12, not a VFIO device',
      );
    });
  });

  it('a file that is not a character device is refused, even where its number 0:0 would lead to vfio-dev', () => {
    withFd('/etc/hostname', 'r', (fd) => {
      expect(() =>
        checkVfioDeviceFd(fd, 'op', 'dev', trees(fd, '/etc/hostname', '0:0', 'pci0000:00/vfio-dev/vfio0')),
      ).toThrow('that fd is /etc/hostname, not a VFIO device');
    });
  });

  it.skipIf(process.getuid?.() !== 0)(
    'a device number past 8 bits of major and minor is split as the kernel does (mknod: root only)',
    () => {
      // Dynamic majors of vfio-dev are past 255 (e.g. 511), as are minors on a host with many devices.
      const node = join(dir, 'vfio-node');
      const made = spawnSync('mknod', [node, 'c', '511', '300']);
      expect(made.status, made.stderr?.toString()).toBe(0);
      // O_PATH: fstat sees the node without a driver behind it being opened.
      withFd(node, O_PATH, (fd) => {
        const t = trees(fd, '/dev/vfio/devices/vfio3', '511:300', 'pci0000:00/0000:00:03.0/vfio-dev/vfio3');
        expect(() => checkVfioDeviceFd(fd, 'op', 'dev', t)).not.toThrow();
      });
    },
  );
});
