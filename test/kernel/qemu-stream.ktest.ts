/**
 * vfio-mig qemu-stream on real streams: QEMU 7.2 saves an mtty VM through
 * `vfio-mig exec` to a file; `list` finds the VFIO device with its config
 * and state, `extract` gives that state as a state file and `vfio-mig load`
 * puts it into the other mtty device, whose UART scratch values then match
 * the source's; two saves of the VM are compared with `diff`.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import { resolve } from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Vmm } from './qemu-vmm.js';
import { A, B, cdevOf, SCR, scratch, setScratch, toRunning } from './guest-devices.js';

const CLI = resolve(import.meta.dirname, '../../dist/cli/main.js');
const cli = (...args: string[]) =>
  spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', maxBuffer: 1 << 28 });

afterEach(async () => {
  await toRunning(A);
  await toRunning(B);
});

/** An mtty VM on device A under QEMU 7.2 + `vfio-mig exec`, its UART scratch registers set to `values`, saved to `file`. */
async function saveVm(name: string, values: number[], file: string): Promise<void> {
  rmSync(file, { force: true });
  const vm = new Vmm({ name, devices: [A], exec: true });
  await vm.connect();
  const ports = await vm.uartPorts();
  expect(ports).toHaveLength(2);
  await vm.outb(ports[0]! + SCR, values[0]!);
  await vm.outb(ports[1]! + SCR, values[1]!);
  await vm.hmp(`migrate -d "exec:cat > ${file}"`);
  const m = await vm.waitMigration();
  expect(m.status, `${m.text}\n${vm.stderr}`).toBe('completed');
  expect(await vm.quit()).toBe(0);
}

describe('vfio-mig qemu-stream on a QEMU 7.2 stream with an mtty device', () => {
  const FILE = '/tmp/qs-a.mig';
  const STATE = '/tmp/qs-a.vfio';
  let idstr = '';
  beforeAll(async () => {
    await toRunning(A);
    await toRunning(B);
    await saveVm('qs-src', [0x3c, 0xc3], FILE);
  }, 300_000);

  it('list finds the VFIO device: its vfio-pci config and the state it carried, DEV_DATA_STATE bytes > 0', () => {
    const r = cli('qemu-stream', 'list', FILE, '--json');
    expect(r.status, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout) as {
      machine: string;
      vfio: {
        idstr: string;
        pciId: string;
        dataBytes: number;
        savedWith: unknown;
        phases: Record<'setup' | 'complete', { sections: number }>;
        config: { bytes: number; pci: { version: number } };
      }[];
    };
    expect(j.machine).toBe('pc-i440fx-7.2');
    expect(j.vfio).toHaveLength(1);
    const d = j.vfio[0]!;
    idstr = d.idstr;
    expect(idstr).toMatch(/^0000:00:[0-9a-f]{2}\.0\/vfio$/);
    expect(d.dataBytes).toBeGreaterThan(0);
    expect(d.phases.setup.sections).toBe(1);
    expect(d.phases.complete.sections).toBe(1);
    expect(d.config.bytes).toBeGreaterThanOrEqual(276);
    expect(d.config.pci.version).toBe(2);
    console.log(
      `mtty under QEMU 7.2: ${JSON.stringify({ pciId: d.pciId, config: d.config.bytes, phases: d.phases, savedWith: d.savedWith })}`,
    );
    const text = cli('qemu-stream', 'list', FILE);
    expect(text.stdout).toContain(`${idstr} (instance 0, version 1`);
    console.log(
      text.stdout
        .split('\n')
        .filter((l) => /vfio|VFIO|setup|iterate|complete|config|state/.test(l))
        .join('\n'),
    );
  });

  it("extract + vfio-mig load into the other mtty device: its UART scratch values are the source's", async () => {
    const x = cli('qemu-stream', 'extract', FILE, '--device', idstr, '-o', STATE, '--json');
    expect(x.status, x.stderr).toBe(0);
    const summary = JSON.parse(x.stdout) as { bytes: string };
    expect(Number(summary.bytes)).toBeGreaterThan(0);
    await setScratch(B, [0x11, 0x22]);
    expect(await scratch(B)).toEqual([0x11, 0x22]);
    const l = cli('load', cdevOf(B), '-i', STATE, '--json');
    expect(l.status, l.stderr).toBe(0);
    expect(JSON.parse(l.stdout)).toMatchObject({ state: 'RUNNING', bytes: summary.bytes });
    expect(await scratch(B)).toEqual([0x3c, 0xc3]);
    rmSync(STATE, { force: true });
  });

  it("diff against a second save of the VM: the same sections and versions, the device's config the same size", async () => {
    const second = '/tmp/qs-b.mig';
    await saveVm('qs-src2', [0x96, 0x69], second);
    const r = cli('qemu-stream', 'diff', FILE, second, '--json');
    expect(r.status, r.stderr).toBe(0);
    const d = JSON.parse(r.stdout) as { differences: { kind: string }[] };
    expect(
      d.differences.filter((x) => ['only-a', 'only-b', 'version', 'machine', 'vfio-config'].includes(x.kind)),
    ).toEqual([]);
    console.log(cli('qemu-stream', 'diff', FILE, second).stdout);
    expect(readFileSync(second).length).toBeGreaterThan(0);
    rmSync(second, { force: true });
    rmSync(FILE, { force: true });
  }, 300_000);
});
