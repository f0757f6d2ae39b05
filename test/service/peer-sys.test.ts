/**
 * The service's section path against a fake kernel (PeerSysCalls, the seam
 * in src/v2/kernel/sys.ts): every descriptor it takes from a peer is
 * closed exactly once on every path, and nothing is mapped or ioctl'd
 * before the checks pass. The fake takes real copies (dup) of this
 * process's fds, so the checks /proc and fstat make still see real files.
 */
import koffi from 'koffi';
import { afterEach, describe, expect, it } from 'vitest';
import { createSimDevice } from '../../src/index.js';
import { startBridgeService, type BridgeService } from '../../src/service/bridge-service.js';
import { linuxPeerSys, type PeerSysCalls } from '../../src/v2/kernel/sys.js';
import { WireOp } from '../../src/service/wire.js';
import { F_SEAL_GROW, F_SEAL_SEAL, F_SEAL_SHRINK, WireClient, closeMemfd, memfd, u32 } from './wire-client.js';
import { join } from 'node:path';
import { tmpdir } from 'node:os';

const dup = koffi.load('libc.so.6').func('int dup(int fd)');
const SECTION = 1 << 20;

class RecordingSys implements PeerSysCalls {
  readonly taken: number[] = [];
  readonly closed: number[] = [];
  readonly mapped: number[] = [];
  pidfds = 0;
  close(fd: number) {
    this.closed.push(fd);
    linuxPeerSys.close(fd);
  }
  peerCredentials = linuxPeerSys.peerCredentials.bind(linuxPeerSys);
  peerPidfd(sockFd: number, pid: number, op: string, device: string) {
    this.pidfds++;
    return linuxPeerSys.peerPidfd(sockFd, pid, op, device);
  }
  pidfdPid = linuxPeerSys.pidfdPid.bind(linuxPeerSys);
  pidfdGetfd(_pidfd: number, fd: number) {
    const got = dup(fd) as number;
    this.taken.push(got);
    return got;
  }
  getSeals = linuxPeerSys.getSeals.bind(linuxPeerSys);
  mapShared(fd: number, size: number, op: string, device: string) {
    this.mapped.push(size);
    return linuxPeerSys.mapShared(fd, size, op, device);
  }
}

let svc: BridgeService | null = null;
afterEach(async () => {
  await svc?.close();
  svc = null;
});

describe('the section path against a fake kernel', () => {
  const cases: [string, number, number, boolean][] = [
    ['sealed and big enough', SECTION, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL, true],
    ['unsealed', SECTION, 0, false],
    ['too small', 4096, F_SEAL_SHRINK | F_SEAL_GROW, false],
  ];
  for (const [what, size, seals, ok] of cases) {
    it(`${what}: the taken fd is closed once; mapped only when every check passed; one pidfd for the connection, closed at the end`, async () => {
      const sys = new RecordingSys();
      svc = await startBridgeService({
        socketPath: join(tmpdir(), `p${Math.random().toString(36).slice(2)}.sock`),
        sectionSize: SECTION,
        sys,
        openDevice: async () => createSimDevice({ stateSize: 4096, seed: 1 }),
      });
      const section = memfd(size, seals);
      try {
        const c = await WireClient.connect(svc.socketPath);
        c.hello(process.pid, 0);
        expect((await c.reply())?.result).toBe(0);
        c.send(WireOp.SECTION, u32(section));
        expect((await c.reply())?.result === 0).toBe(ok);
        c.close();
        await c.gone;
        await svc.close();
        svc = null;
        expect(sys.pidfds).toBe(1);
        expect(sys.taken).toHaveLength(1);
        expect(sys.closed.filter((fd) => fd === sys.taken[0])).toHaveLength(1);
        expect(sys.closed).toHaveLength(2); // the taken section fd and the pidfd
        expect(sys.mapped).toEqual(ok ? [SECTION] : []);
      } finally {
        closeMemfd(section);
      }
    });
  }
});
