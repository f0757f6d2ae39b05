/**
 * vfio-mig qemu-stream list, extract and diff on hand-made streams
 * (encoder.ts), and on a real stream from the host's QEMU 7.2 (a VM with no
 * devices, saved with `migrate "exec:cat > FILE"`).
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HEADER_SIZE, TRAILER_SIZE, decodeHeader } from '../../src/cli/state-file.js';
import { runInProcess } from '../cli/run-cli.js';
import { StreamBuilder, be64, ram, vfio } from './encoder.js';

const dir = mkdtempSync(join(tmpdir(), 'qemu-stream-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const json = <T = Record<string, unknown>>(s: string) => JSON.parse(s) as T;
/** The parts of `list --json` and `diff --json` these tests read. */
interface ListJson {
  machine: string;
  records: { type: string; idstr?: string; bytes: number; ram?: { blocks: unknown[] } }[];
  vfio: unknown[];
}
interface DiffJson {
  identical: boolean;
  differences: { kind: string }[];
  same: string[];
}
const DEV = '0000:00:04.0/vfio';

/** A stream carrying `state` as a VFIO device's: split over pre-copy and stop-copy records. */
function streamWith(state: Buffer, o: { emptyIterate?: boolean; machine?: string } = {}): Buffer {
  const cut = Math.floor(state.length / 3);
  const b = new StreamBuilder().header().configuration(o.machine ?? 'pc-i440fx-7.2');
  b.start(2, 'ram', 0, 4, Buffer.concat([ram.memSize([['pc.ram', 0x100000]]), ram.eos()]));
  b.start(3, DEV, 0, 1, vfio.setup());
  b.part(3, vfio.data([state.subarray(0, cut)]));
  if (o.emptyIterate) b.part(3, vfio.data([Buffer.alloc(0)]));
  b.end(2, ram.eos());
  b.end(3, vfio.data([state.subarray(cut, 2 * cut), state.subarray(2 * cut)]));
  b.full(3, DEV, 0, 1, vfio.config(vfio.pciBody(0x4348, 0x3253)));
  return b.eof().build();
}

describe("vfio-mig qemu-stream with a simulated device's state", () => {
  let saved: Record<string, unknown>;
  let state: Buffer;
  beforeAll(async () => {
    const file = join(dir, 'sim.vfio');
    const s = await runInProcess(['save', 'sim:size=300K,seed=5', '-o', file, '--json']);
    expect(s.code, s.stderr).toBe(0);
    saved = json(s.stdout);
    const whole = readFileSync(file);
    state = whole.subarray(HEADER_SIZE, whole.length - TRAILER_SIZE);
    rmSync(file);
  });

  it('list names the VFIO device, its config and its state per phase', async () => {
    const f = join(dir, 'l.mig');
    writeFileSync(f, streamWith(state, { emptyIterate: true }));
    const r = await runInProcess(['qemu-stream', 'list', f, '--json']);
    expect(r.code, r.stderr).toBe(0);
    const j = json<ListJson>(r.stdout);
    expect(j.machine).toBe('pc-i440fx-7.2');
    expect(j.records.map((x) => x.type)).toEqual([
      'CONFIGURATION',
      'START',
      'START',
      'PART',
      'PART',
      'END',
      'END',
      'FULL',
      'EOF',
    ]);
    const cut = Math.floor(state.length / 3);
    expect(j.vfio).toHaveLength(1);
    expect(j.vfio[0]).toMatchObject({
      idstr: DEV,
      pciId: '4348:3253',
      dataBytes: state.length,
      phases: {
        setup: { bytes: 0 },
        iterate: { bytes: cut, records: 2, emptyRecords: 1 },
        complete: { bytes: state.length - cut, records: 2 },
      },
      config: { bytes: 276 },
      savedWith: { protocol: 'v1' },
    });
    const t = await runInProcess(['qemu-stream', 'list', f]);
    expect(t.stdout).toMatch(new RegExp(`START +3 +${DEV.replace(/[./]/g, '\\$&')} +0 +1 +\\d+ +SETUP_STATE`));
    expect(t.stdout).toContain(`iterate   ${cut} bytes in 2 DEV_DATA_STATE records (1 empty), 2 sections`);
    expect(t.stdout).toContain('config    276 bytes (vfio-pci, PCI 4348:3253, class 078000)');
  });

  it('extract writes a state file that vfio-mig load takes: the loaded device has the saved state', async () => {
    const f = join(dir, 'e.mig');
    const out = join(dir, 'e.vfio');
    writeFileSync(f, streamWith(state, { emptyIterate: true }));
    const x = await runInProcess(['qemu-stream', 'extract', f, '--device', '0000:00:04.0', '-o', out, '--json']);
    expect(x.code, x.stderr).toBe(0);
    expect(json(x.stdout)).toMatchObject({
      device: DEV,
      bytes: String(state.length),
      savedWith: 'v1',
      flagNames: ['STOP_COPY', 'PRE_COPY'],
    });
    const file = readFileSync(out);
    expect(decodeHeader(file, out)).toMatchObject({ protocol: 'v1', flags: 5, byteCount: BigInt(state.length) });
    expect(file.subarray(HEADER_SIZE, file.length - TRAILER_SIZE)).toEqual(state);
    const l = await runInProcess(['load', 'sim:size=300K,seed=9', '-i', out, '--json']);
    expect(l.code, l.stderr).toBe(0);
    expect(json(l.stdout)).toMatchObject({ savedWith: 'v1', state: 'RUNNING', stateDigest: saved.stateDigest });
  });

  it('extract -o - writes the state file to stdout and the summary to stderr', async () => {
    const f = join(dir, 's.mig');
    writeFileSync(f, streamWith(state, { emptyIterate: true }));
    const r = await runInProcess(['qemu-stream', 'extract', f, '--device', DEV, '-o', '-']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(
      new RegExp(
        `^extracted ${state.length} bytes of ${DEV.replace(/[./]/g, '\\$&')}'s state .* to stdout; recorded as saved with v1`,
      ),
    );
    expect(decodeHeader(r.stdoutBytes, 'stdout').byteCount).toBe(BigInt(state.length));
    expect(r.stdoutBytes.subarray(HEADER_SIZE, r.stdoutBytes.length - TRAILER_SIZE)).toEqual(state);
  });

  it('extract: v2 when the stream does not show the caller, --saved-with when given, refused when it contradicts the stream', async () => {
    const f = join(dir, 'v.mig');
    writeFileSync(f, streamWith(state));
    const out = join(dir, 'v.vfio');
    const a = await runInProcess(['qemu-stream', 'extract', f, '--device', DEV, '-o', out]);
    expect(a.code, a.stderr).toBe(0);
    expect(a.stdout).toMatch(/recorded as saved with v2 \(assumed: the stream does not show which caller saved it/);
    const b = await runInProcess(['qemu-stream', 'extract', f, '--device', DEV, '-o', out, '--saved-with', 'v1']);
    expect(decodeHeader(readFileSync(out), out).protocol).toBe('v1');
    expect(b.stdout).toMatch(/saved with v1 \(--saved-with\)/);
    writeFileSync(f, streamWith(state, { emptyIterate: true }));
    const c = await runInProcess(['qemu-stream', 'extract', f, '--device', DEV, '-o', out, '--saved-with', 'v2']);
    expect(c.code).toBe(2);
    expect(c.stderr).toMatch(/--saved-with v2, but the stream shows a v1 caller/);
  });

  it('extract of a device the stream does not have names the ones it has (ENOENT, exit 1), and writes nothing', async () => {
    const f = join(dir, 'n.mig');
    writeFileSync(f, streamWith(state));
    const out = join(dir, 'n.vfio');
    const r = await runInProcess(['qemu-stream', 'extract', f, '--device', '0000:00:05.0', '-o', out]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`ENOENT (2): no VFIO device 0000:00:05.0 in the stream: the stream has ${DEV}`);
    expect(existsSync(out)).toBe(false);
  });

  it("diff reports the machine type and the VFIO device's per-phase state", async () => {
    const a = join(dir, 'a.mig');
    const b = join(dir, 'b.mig');
    writeFileSync(a, streamWith(state, { emptyIterate: true }));
    writeFileSync(b, streamWith(state, { machine: 'pc-i440fx-10.0' }));
    const r = await runInProcess(['qemu-stream', 'diff', a, b, '--json']);
    expect(r.code, r.stderr).toBe(0);
    const d = json<DiffJson>(r.stdout);
    expect(d.identical).toBe(false);
    expect(d.differences.map((x) => x.kind)).toEqual(['machine', 'vfio-phase', 'size']);
    expect(d.same).toEqual(['ram#0']);
    const t = await runInProcess(['qemu-stream', 'diff', a, b]);
    expect(t.stdout).toContain('machine       machine type pc-i440fx-7.2 in A, pc-i440fx-10.0 in B');
    expect(t.stdout).toMatch(
      /vfio-phase {4}0000:00:04\.0\/vfio \(instance 0\): iterate: \d+ bytes in 2 DEV_DATA_STATE records in A, \d+ in 1 in B/,
    );
  });

  it('a framing error is one line naming the file and offset, exit 1 (EBADMSG in --json)', async () => {
    const f = join(dir, 'bad.mig');
    writeFileSync(f, new StreamBuilder().header().start(3, DEV, 0, 1, be64(0xffffffffef100042n)).eof().build());
    const r = await runInProcess(['qemu-stream', 'list', f]);
    expect(r.code).toBe(1);
    expect(r.stderr.trim()).toBe(
      `vfio-mig: qemu-stream on ${f}: EBADMSG (74): at byte 39 (0x27): unknown VFIO marker 0xffffffffef100042 in ${DEV} (known: 0xffffffffef100001 to 0xffffffffef100006)`,
    );
    const j = await runInProcess(['qemu-stream', 'diff', f, f, '--json']);
    expect(j.code).toBe(1);
    expect(json(j.stderr).error).toMatchObject({ code: 'EBADMSG', exit: 1 });
    const m = await runInProcess(['qemu-stream', 'list', join(dir, 'missing.mig')]);
    expect(m.code).toBe(1);
    expect(m.stderr).toMatch(/ENOENT/);
  });
});

const QEMU = '/usr/bin/qemu-system-x86_64';

/** Saves a VM with no devices to `file` with the host's QEMU 7.2: HMP on stdin. */
async function saveVm(file: string, mem: number): Promise<void> {
  const q = spawn(
    QEMU,
    ['-M', 'pc-i440fx-7.2', '-m', String(mem), '-nodefaults', '-display', 'none', '-S', '-monitor', 'stdio'],
    { stdio: ['pipe', 'pipe', 'pipe'] },
  );
  let out = '';
  q.stdout.on('data', (d) => (out += d));
  q.stderr.on('data', (d) => (out += d));
  const done = new Promise<number | null>((r) => q.on('exit', r));
  q.stdin.write(`migrate "exec:cat > ${file}"\n`);
  for (let i = 0; i < 300 && !/Migration status: completed/.test(out); i++) {
    q.stdin.write('info migrate\n');
    await new Promise((r) => setTimeout(r, 100));
  }
  q.stdin.write('quit\n');
  await done;
  expect(out).toMatch(/Migration status: completed/);
}

describe.skipIf(!existsSync(QEMU))("a real stream from the host's QEMU 7.2 (a VM with no devices)", () => {
  const a = join(dir, 'q32.mig');
  const b = join(dir, 'q48.mig');
  beforeAll(async () => {
    expect(spawnSync(QEMU, ['--version'], { encoding: 'utf8' }).stdout).toMatch(/QEMU emulator version 7\.2\./);
    await saveVm(a, 32);
    await saveVm(b, 48);
  }, 120_000);

  it('list walks it whole: CONFIGURATION, ram live, every device FULL, EOF, VMDESCRIPTION; no VFIO device', async () => {
    const r = await runInProcess(['qemu-stream', 'list', a, '--json']);
    expect(r.code, r.stderr).toBe(0);
    const j = json<ListJson>(r.stdout);
    expect(j.machine).toBe('pc-i440fx-7.2');
    expect(j.vfio).toEqual([]);
    const types = j.records.map((x) => x.type);
    expect(types[0]).toBe('CONFIGURATION');
    expect(types.slice(-2)).toEqual(['EOF', 'VMDESCRIPTION']);
    const ramSecs = j.records.filter((x) => x.idstr === 'ram');
    expect(ramSecs[0]).toMatchObject({ type: 'START', versionId: 4 });
    expect(ramSecs.at(-1)?.type).toBe('END');
    expect(ramSecs[0]?.ram?.blocks).toContainEqual({ idstr: 'pc.ram', length: 32 << 20 });
    const full = j.records.filter((x) => x.type === 'FULL').map((x) => x.idstr);
    expect(full).toEqual(
      expect.arrayContaining(['timer', 'cpu', 'apic', 'mc146818rtc', '0000:00:01.0/PIIX3', 'globalstate']),
    );
    // The records tile the file from the header to its end.
    expect(j.records.reduce((n, x) => n + x.bytes, 8)).toBe(readFileSync(a).length);
  });

  it('diff against a VM with more memory: the pc.ram RAMBlock differs', async () => {
    const r = await runInProcess(['qemu-stream', 'diff', a, b, '--json']);
    expect(r.code, r.stderr).toBe(0);
    const d = json<DiffJson>(r.stdout);
    expect(d.differences).toContainEqual(
      expect.objectContaining({ kind: 'ram-blocks', device: 'ram#0', a: 32 << 20, b: 48 << 20 }),
    );
    expect(d.differences.some((x) => x.kind === 'only-a' || x.kind === 'only-b' || x.kind === 'version')).toBe(false);
    expect(d.same).toEqual(expect.arrayContaining(['timer#0', 'globalstate#0']));
  });

  it('the same stream cut short is refused as truncated', async () => {
    const f = join(dir, 'cut.mig');
    const whole = readFileSync(a);
    writeFileSync(f, whole.subarray(0, Math.floor(whole.length / 2)));
    const r = await runInProcess(['qemu-stream', 'list', f]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/EBADMSG \(74\): at byte \d+ \(0x[0-9a-f]+\): truncated: /);
  });
});
