/**
 * The interposer checks the service's answers as the service checks it
 * (docs/interposer.md#checks): a fake service answers HELLO and SECTION
 * with one wrong value at a time, and the client (qemu72-client.c with the
 * interposer preloaded) must neither crash nor bridge, and must say which
 * value was wrong. The same fake, answering well, bridges the device and
 * finds the memfd it is given sealed at the section's size.
 */
import { spawn, spawnSync } from 'node:child_process';
import { fstatSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import koffi from 'koffi';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RequestReader, WireOp, encodeReply, vmw_hello, vmw_hello_reply, vmw_region } from '../../src/service/wire.js';
import { sysClose, sysTakeFd } from '../../src/v2/kernel/sys.js';
import {
  encodeRegionInfo,
  VFIO_REGION_INFO_FLAG_MMAP,
  VFIO_REGION_INFO_FLAG_READ,
  VFIO_REGION_INFO_FLAG_WRITE,
  type RegionInfo,
} from '../../src/v2/uapi.js';

const root = resolve(import.meta.dirname, '../..');
const PRELOAD = join(root, 'dist/interposer/libvfio-mig-preload.so');
const PAGE = 4096n;
const GiB = 1n << 30n;
let dir: string;
let client: string;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'vfio-mig-checks-'));
  client = join(dir, 'qemu72-client');
  const cc = spawnSync('cc', ['-O2', '-o', client, join(root, 'test/interposer/qemu72-client.c')], {
    encoding: 'utf8',
  });
  expect(cc.status, cc.stderr).toBe(0);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** What the fake answers; each field defaults to what the real service would say. */
interface Answers {
  helloSectionSize?: bigint;
  /** SECTION's vmw_region fields; region_size and the info follow section_size and data_offset unless given. */
  region?: Partial<{
    index: number;
    info_len: number;
    region_offset: bigint;
    region_size: bigint;
    data_offset: bigint;
    section_size: bigint;
  }>;
  /** The vfio_region_info the SECTION reply carries. */
  info?: Partial<RegionInfo>;
  /** Rewrites the encoded region info (cap chain damage). */
  patchInfo?: (info: Uint8Array) => void;
  /** The header's data_offset as READ returns it (where the client's data reads go). */
  headerDataOffset?: bigint;
}

interface Seen {
  pid?: number;
  memfd?: number;
  seals?: number;
  memfdSize?: number;
}

const libc = koffi.load('libc.so.6');
const fcntl = libc.func('int fcntl(int fd, int cmd, int arg)');
const F_GET_SEALS = 1034;
const F_SEAL_SEAL = 1;
const F_SEAL_SHRINK = 2;
const F_SEAL_GROW = 4;

/** A one-connection bridge service that answers as `a` says and serves a tiny 8-byte save. */
async function fakeService(a: Answers): Promise<{ path: string; seen: Seen; server: Server }> {
  const path = join(dir, `fake${Math.random().toString(36).slice(2)}.sock`);
  const seen: Seen = {};
  const server = createServer((sock) => {
    const reader = new RequestReader();
    let numRegions = 0;
    let pending = 8n;
    let state = 1; // RUNNING
    let dataOffset = PAGE;
    sock.on('data', (d) => {
      reader.push(d);
      for (let rq = reader.next(); rq; rq = reader.next()) {
        if (rq.op === WireOp.HELLO) {
          const h = vmw_hello.decode(rq.payload);
          seen.pid = h.pid;
          numRegions = h.num_regions;
          sock.write(encodeReply(0, vmw_hello_reply.encode({ bridged: 1, section_size: a.helloSectionSize ?? PAGE })));
        } else if (rq.op === WireOp.SECTION) {
          seen.memfd = new DataView(rq.payload.buffer, rq.payload.byteOffset, 4).getInt32(0, true);
          const fd = sysTakeFd(seen.pid!, seen.memfd, 'test', 'fake');
          seen.seals = fcntl(fd, F_GET_SEALS, 0) as number;
          seen.memfdSize = fstatSync(fd).size;
          sysClose(fd);
          const sectionSize = a.region?.section_size ?? a.helloSectionSize ?? PAGE;
          dataOffset = a.region?.data_offset ?? PAGE;
          const regionOffset = a.region?.region_offset ?? BigInt(numRegions) << 40n;
          const regionSize = a.region?.region_size ?? dataOffset + sectionSize;
          const info = encodeRegionInfo({
            index: numRegions,
            flags: VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE | VFIO_REGION_INFO_FLAG_MMAP,
            size: regionSize,
            offset: regionOffset,
            type: { type: 3, subtype: 1 },
            sparseMmap: [{ offset: dataOffset, size: sectionSize }],
            ...a.info,
          });
          a.patchInfo?.(info);
          const region = vmw_region.encode({
            index: numRegions,
            info_len: info.length,
            region_offset: regionOffset,
            region_size: regionSize,
            data_offset: dataOffset,
            section_size: sectionSize,
            ...a.region,
          });
          sock.write(encodeReply(0, Buffer.concat([region, info])));
        } else if (rq.op === WireOp.READ) {
          // The v1 header: device_state, pending_bytes (8, then 0), data_offset, data_size 8.
          const hdr = Buffer.alloc(32);
          hdr.writeUInt32LE(state, 0);
          hdr.writeBigUInt64LE(pending, 8);
          hdr.writeBigUInt64LE(a.headerDataOffset ?? dataOffset, 16);
          hdr.writeBigUInt64LE(8n, 24);
          const at = Number(rq.offset);
          if (at === 24) pending = 0n;
          sock.write(encodeReply(rq.length, hdr.subarray(at, at + rq.length)));
        } else if (rq.op === WireOp.WRITE) {
          if (rq.offset === 0n) state = Buffer.from(rq.payload).readUInt32LE(0);
          sock.write(encodeReply(rq.length));
        } else {
          sock.write(encodeReply(0));
        }
      }
    });
    sock.on('error', () => undefined);
  });
  await new Promise<void>((r) => server.listen(path, r));
  return { path, seen, server };
}

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

async function runAgainst(a: Answers, mode: 'pread' | 'mmap' = 'pread'): Promise<Run & { seen: Seen }> {
  const { path, seen, server } = await fakeService(a);
  const p = spawn(client, ['/dev/null', 'save', join(dir, 'out.bin'), mode], {
    env: {
      ...process.env,
      LD_PRELOAD: PRELOAD,
      VFIO_MIG_TEST_DEVICE: '/dev/null',
      VFIO_MIG_SOCKET: path,
      VFIO_MIG_TIMEOUT_MS: '5000',
    },
  });
  let stdout = '';
  let stderr = '';
  p.stdout.on('data', (d) => (stdout += d));
  p.stderr.on('data', (d) => (stderr += d));
  const r = await new Promise<Run>((done) => p.on('close', (code, signal) => done({ code, signal, stdout, stderr })));
  server.close();
  return { ...r, seen };
}

describe('a well-formed fake service', () => {
  it('bridges the device: the client saves its 8 bytes', async () => {
    const r = await runAgainst({});
    expect(r.stderr).toBe('');
    expect(r.stdout).toMatch(/^ok 8 bytes /);
    expect(r.code).toBe(0);
  });

  it('is given a memfd sealed against shrinking, growing and new seals, at the section size', async () => {
    const r = await runAgainst({ helloSectionSize: 16n * PAGE }, 'mmap');
    expect(r.code, r.stderr).toBe(0);
    expect(r.seen.memfdSize).toBe(16 * 4096);
    expect(r.seen.seals! & (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)).toBe(F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
  });
});

describe('a service answer that disagrees with what was mapped leaves the device unbridged, naming the value', () => {
  const cases: [string, Answers, RegExp][] = [
    [
      // The issue #16 crash: 4 KiB mapped, 1 GiB described, a data read at +256 MiB.
      'HELLO says 4 KiB, SECTION says 1 GiB',
      { helloSectionSize: PAGE, region: { section_size: GiB }, headerDataOffset: PAGE + (256n << 20n) },
      /bad SECTION reply from the bridge service: section_size 1073741824 is not the 4096 bytes mapped/,
    ],
    ['HELLO section_size 0', { helloSectionSize: 0n }, /bad HELLO reply from the bridge service: section_size 0 \(/],
    [
      'HELLO section_size not page aligned',
      { helloSectionSize: PAGE + 1n },
      /bad HELLO reply from the bridge service: section_size 4097 \(/,
    ],
    [
      'HELLO section_size above the cap',
      { helloSectionSize: 2n * GiB },
      /bad HELLO reply from the bridge service: section_size 2147483648 \(/,
    ],
    [
      'region_size not data_offset + section_size',
      { region: { region_size: 3n * PAGE } },
      /bad SECTION reply from the bridge service: region_size 12288 is not data_offset \+ section_size/,
    ],
    [
      'data_offset inside the header',
      { region: { data_offset: 16n } },
      /bad SECTION reply from the bridge service: data_offset 16 \(/,
    ],
    [
      'data_offset not page aligned',
      { region: { data_offset: PAGE + 8n } },
      /bad SECTION reply from the bridge service: data_offset 4104 \(/,
    ],
    [
      'info_len beyond the payload',
      { region: { info_len: 4000 } },
      /bad SECTION reply from the bridge service: info_len 4000 \(/,
    ],
    [
      'info_len below a vfio_region_info',
      { region: { info_len: 16 } },
      /bad SECTION reply from the bridge service: info_len 16 \(/,
    ],
    [
      'region info size not region_size',
      { info: { size: 1n << 40n } },
      /bad SECTION reply from the bridge service: region info size 1099511627776 is not region_size 8192/,
    ],
    [
      'region info offset not region_offset',
      { info: { offset: 0n } },
      /bad SECTION reply from the bridge service: region info offset 0x0 is not region_offset 0x90000000000/,
    ],
    [
      'a capability outside the region info',
      { patchInfo: (b) => new DataView(b.buffer, b.byteOffset).setUint32(12 /* cap_offset */, 4096, true) },
      /bad SECTION reply from the bridge service: capability at 4096 is outside the region info/,
    ],
    [
      'a sparse-mmap capability with more areas than bytes',
      {
        info: { type: undefined },
        patchInfo: (b) => new DataView(b.buffer, b.byteOffset).setUint32(32 + 8 /* nr_areas */, 1000, true),
      },
      /bad SECTION reply from the bridge service: capability 1 at 32 runs past the region info/,
    ],
  ];
  for (const [what, answers, message] of cases) {
    it(what, async () => {
      const r = await runAgainst(answers);
      expect(r.signal, r.stderr).toBe(null);
      expect(r.stderr).toMatch(new RegExp(`^vfio-mig: VFIO device is not bridged: ${message.source}.*\\n`));
      expect(r.stderr.match(/^vfio-mig: /gm)).toHaveLength(1);
      expect(r.stderr).toMatch(/doesn't support migration/);
      expect(r.code).toBe(3);
    });
  }
});
