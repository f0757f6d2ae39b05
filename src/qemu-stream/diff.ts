/**
 * What differs between two walked streams, device by device (a device is
 * an idstr and instance, across its sections): present in one only,
 * version, size, contents; the machine type and capabilities; for "ram"
 * the RAMBlock list; for a VFIO device its per-phase state and config.
 */
import { deviceSummaries, type DeviceSummary } from './devices.js';
import type { QemuStream } from './walk.js';

export type DiffKind =
  | 'machine'
  | 'capabilities'
  | 'only-a'
  | 'only-b'
  | 'version'
  | 'vmsd'
  | 'size'
  | 'bytes'
  | 'ram-blocks'
  | 'vfio-phase'
  | 'vfio-config';

export interface Difference {
  kind: DiffKind;
  /** The device (idstr#instance); absent for the stream-wide ones. */
  device?: string;
  text: string;
  a?: unknown;
  b?: unknown;
}

export interface StreamDiff {
  differences: Difference[];
  /** Devices in both streams with nothing different. */
  same: string[];
  identical: boolean;
}

const label = (d: DeviceSummary) => `${d.idstr} (instance ${d.instanceId})`;

export function diffStreams(a: QemuStream, bufA: Buffer, b: QemuStream, bufB: Buffer): StreamDiff {
  const out: Difference[] = [];
  if (a.machine !== b.machine)
    out.push({
      kind: 'machine',
      text: `machine type ${a.machine ?? '(none)'} in A, ${b.machine ?? '(none)'} in B`,
      a: a.machine,
      b: b.machine,
    });
  if (a.capabilities.join() !== b.capabilities.join())
    out.push({
      kind: 'capabilities',
      text: `capabilities [${a.capabilities.join(', ')}] in A, [${b.capabilities.join(', ')}] in B`,
      a: a.capabilities,
      b: b.capabilities,
    });
  const da = new Map(deviceSummaries(a, bufA).map((d) => [d.key, d]));
  const db = new Map(deviceSummaries(b, bufB).map((d) => [d.key, d]));
  const same: string[] = [];
  for (const [key, x] of da) {
    const y = db.get(key);
    if (!y) {
      out.push({
        kind: 'only-a',
        device: key,
        text: `${label(x)} only in A (version ${x.versionId}, ${x.dataBytes} bytes)`,
      });
      continue;
    }
    const before = out.length;
    compareDevice(x, y, out);
    if (out.length === before) same.push(key);
  }
  for (const [key, y] of db)
    if (!da.has(key))
      out.push({
        kind: 'only-b',
        device: key,
        text: `${label(y)} only in B (version ${y.versionId}, ${y.dataBytes} bytes)`,
      });
  return { differences: out, same, identical: out.length === 0 };
}

function compareDevice(x: DeviceSummary, y: DeviceSummary, out: Difference[]): void {
  const key = x.key;
  const add = (kind: DiffKind, text: string, a?: unknown, b?: unknown) =>
    out.push({ kind, device: key, text: `${label(x)}: ${text}`, a, b });
  if (x.versionId !== y.versionId)
    add('version', `version ${x.versionId} in A, ${y.versionId} in B`, x.versionId, y.versionId);
  if (x.vmsdName !== y.vmsdName)
    add('vmsd', `vmstate ${x.vmsdName ?? '(none)'} in A, ${y.vmsdName ?? '(none)'} in B`, x.vmsdName, y.vmsdName);
  if (x.ramBlocks || y.ramBlocks) compareBlocks(x, y, add);
  if (x.vfio && y.vfio) {
    for (const p of ['setup', 'iterate', 'complete'] as const) {
      const pa = x.vfio.phases[p];
      const pb = y.vfio.phases[p];
      if (pa.bytes !== pb.bytes || pa.records !== pb.records)
        add(
          'vfio-phase',
          `${p}: ${pa.bytes} bytes in ${pa.records} DEV_DATA_STATE records in A, ${pb.bytes} in ${pb.records} in B`,
          pa,
          pb,
        );
    }
    const ca = x.vfio.config;
    const cb = y.vfio.config;
    if ((ca?.bytes ?? null) !== (cb?.bytes ?? null))
      add(
        'vfio-config',
        `config ${ca ? `${ca.bytes} bytes` : 'absent'} in A, ${cb ? `${cb.bytes} bytes` : 'absent'} in B`,
        ca?.bytes,
        cb?.bytes,
      );
    else if (ca?.pci && cb?.pci && (ca.pci.vendorId !== cb.pci.vendorId || ca.pci.deviceId !== cb.pci.deviceId)) {
      const id = (c: NonNullable<typeof ca.pci>) =>
        `${c.vendorId.toString(16).padStart(4, '0')}:${c.deviceId.toString(16).padStart(4, '0')}`;
      add('vfio-config', `PCI device ${id(ca.pci)} in A, ${id(cb.pci)} in B`, id(ca.pci), id(cb.pci));
    }
  }
  if (x.dataBytes !== y.dataBytes)
    add(
      'size',
      `${x.dataBytes} bytes of section data in A, ${y.dataBytes} in B (sections ${x.kinds.join(' ')} | ${y.kinds.join(' ')})`,
      x.dataBytes,
      y.dataBytes,
    );
  else if (x.sha256 !== y.sha256) add('bytes', `same size (${x.dataBytes} bytes), different contents`);
}

function compareBlocks(
  x: DeviceSummary,
  y: DeviceSummary,
  add: (kind: DiffKind, text: string, a?: unknown, b?: unknown) => void,
): void {
  const ba = new Map((x.ramBlocks ?? []).map((r) => [r.idstr, r.length]));
  const bb = new Map((y.ramBlocks ?? []).map((r) => [r.idstr, r.length]));
  for (const [name, len] of ba) {
    const other = bb.get(name);
    if (other === undefined) add('ram-blocks', `RAMBlock ${name} (${len} bytes) only in A`, len, null);
    else if (other !== len) add('ram-blocks', `RAMBlock ${name} is ${len} bytes in A, ${other} in B`, len, other);
  }
  for (const [name, len] of bb)
    if (!ba.has(name)) add('ram-blocks', `RAMBlock ${name} (${len} bytes) only in B`, null, len);
}
