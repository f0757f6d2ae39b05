// The interposer under QEMU 7.2's access pattern: test/interposer/qemu72-client.c
// (a stand-in for QEMU 7.2's v1 caller) saves a simulated device served by
// the bridge service in this process, through the mmap'd data section and
// through 8-byte preads, against save-only baselines measured in the same
// run: raw v2 and the in-process bridge. The client times itself from the
// first device_state access to the end, so process start is not billed.
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createSimDevice, openV1Bridge, saveV1, saveV2 } from '../dist/index.js';
import { startBridgeService } from '../dist/service/bridge-service.js';

const root = new URL('..', import.meta.url).pathname;
const MiB = 1024 * 1024;

export async function interposerBench({ mib, reps, median, sectionSize }) {
  const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-bench-'));
  const client = join(dir, 'qemu72-client');
  const cc = spawnSync('cc', ['-O2', '-o', client, join(root, 'test/interposer/qemu72-client.c')], {
    encoding: 'utf8',
  });
  if (cc.status !== 0) throw new Error(`cannot build the client: ${cc.stderr}`);
  const model = { stateSize: mib * MiB, dirtyRatio: 0, seed: 1 };
  const svc = await startBridgeService({
    socketPath: join(dir, 's.sock'),
    sectionSize,
    openDevice: async () => createSimDevice(model),
  });
  const env = {
    ...process.env,
    LD_PRELOAD: join(root, 'dist/interposer/libvfio-mig-preload.so'),
    VFIO_MIG_SOCKET: svc.socketPath,
    VFIO_MIG_TEST_DEVICE: '/dev/null',
  };
  const runClient = (mode, out = '/dev/null') =>
    new Promise((done, fail) => {
      const p = spawn(client, ['/dev/null', 'save', out, mode], { env });
      let text = '';
      p.stdout.on('data', (d) => (text += d));
      p.stderr.on('data', (d) => (text += d));
      p.on('close', (code) => {
        const m = /^ok (\d+) bytes (\S+) s (\d+) header/.exec(text.trim());
        if (code !== 0 || !m) fail(new Error(`client ${mode}: ${text}`));
        else done({ bytes: Number(m[1]), secs: Number(m[2]), header: Number(m[3]) });
      });
    });
  const timed = async (fn) => {
    globalThis.gc?.();
    const t = process.hrtime.bigint();
    await fn();
    return Number(process.hrtime.bigint() - t) / 1e9;
  };
  const discard = () => undefined;
  const cases = {
    'raw v2 save (saveV2)': () =>
      timed(() => saveV2(createSimDevice(model), discard, { precopy: false, reuseBuffer: true })),
    'in-process bridge save, bulk': () =>
      timed(async () =>
        saveV1(await openV1Bridge(createSimDevice(model)), discard, { precopy: false, reuseBuffer: true }),
      ),
    'interposer, mmap data section': async () => (await runClient('mmap')).secs,
    'interposer, 8-byte preads': async () => (await runClient('pread')).secs,
  };
  const secs = Object.fromEntries(Object.keys(cases).map((k) => [k, []]));
  for (let i = 0; i < reps; i++) for (const [k, fn] of Object.entries(cases)) secs[k].push(await fn());

  // Untimed check: both client paths give the raw v2 bytes.
  const want = createHash('sha256');
  await saveV2(createSimDevice(model), (c) => void want.update(c), { precopy: false });
  const digest = want.digest('hex');
  let header = 0;
  for (const mode of ['mmap', 'pread']) {
    const out = join(dir, `${mode}.bin`);
    header = (await runClient(mode, out)).header;
    if (createHash('sha256').update(readFileSync(out)).digest('hex') !== digest)
      throw new Error(`interposer ${mode}: saved bytes differ from raw v2`);
    rmSync(out);
  }
  await svc.close();
  rmSync(dir, { recursive: true, force: true });
  const rate = (k) => mib / median(secs[k]);
  const raw = rate('raw v2 save (saveV2)');
  const inproc = rate('in-process bridge save, bulk');
  return {
    rows: Object.keys(cases).map((k) => ({
      case: k,
      mib,
      rate: rate(k),
      vsRaw: rate(k) / raw,
      vsBridge: rate(k) / inproc,
    })),
    headerPerMiB: header / mib,
  };
}
