/**
 * What a walked stream (walk.ts) says per device: for each VFIO device its
 * config and the state it carried in each phase, and its state itself (the
 * DEV_DATA_STATE payloads in order: the bytes the device's v2 data_fd gave,
 * or its v1 data section); for every device a summary that diff.ts compares.
 */
import { createHash } from 'node:crypto';
import { VfioError } from '../errors.js';
import { OP } from './reader.js';
import type { RamBlock } from './ram.js';
import type { VfioPciConfig, VfioPhase } from './vfio.js';
import { isVfioIdstr, type QemuStream, type Section } from './walk.js';

export const PHASE_OF: Record<Section['type'], VfioPhase> = {
  START: 'setup',
  PART: 'iterate',
  END: 'complete',
  FULL: 'config',
};

export interface PhaseStats {
  sections: number;
  /** DEV_DATA_STATE records, and how many of them were empty. */
  records: number;
  emptyRecords: number;
  bytes: number;
}

export interface VfioDevice {
  idstr: string;
  instanceId: number;
  versionId: number;
  sectionId: number;
  config: VfioPciConfig | null;
  phases: Record<'setup' | 'iterate' | 'complete', PhaseStats>;
  /** All DEV_DATA_STATE payload bytes. */
  dataBytes: number;
  /** The section that said pre-copy's initial bytes were sent (QEMU 8.1+ switchover-ack), if any. */
  initDataSent: boolean;
}

const emptyPhase = (): PhaseStats => ({ sections: 0, records: 0, emptyRecords: 0, bytes: 0 });

export function vfioDevices(s: QemuStream): VfioDevice[] {
  const byKey = new Map<string, VfioDevice>();
  for (const sec of s.sections) {
    if (!sec.vfio || !isVfioIdstr(sec.idstr)) continue;
    const key = `${sec.idstr}\0${sec.instanceId}`;
    let d = byKey.get(key);
    if (!d) {
      d = {
        idstr: sec.idstr,
        instanceId: sec.instanceId,
        versionId: sec.versionId,
        sectionId: sec.sectionId,
        config: null,
        phases: { setup: emptyPhase(), iterate: emptyPhase(), complete: emptyPhase() },
        dataBytes: 0,
        initDataSent: false,
      };
      byKey.set(key, d);
    }
    if (sec.vfio.config) d.config = sec.vfio.config;
    if (sec.vfio.end === 'DEV_INIT_DATA_SENT') d.initDataSent = true;
    const phase = PHASE_OF[sec.type];
    if (phase === 'config') continue;
    const p = d.phases[phase];
    p.sections++;
    for (const rec of sec.vfio.records) {
      if (rec.marker !== 'DEV_DATA_STATE') continue;
      p.records++;
      if (rec.bytes === 0) p.emptyRecords++;
      p.bytes += rec.bytes!;
      d.dataBytes += rec.bytes!;
    }
  }
  return [...byKey.values()];
}

/** A VFIO device by its idstr ("0000:00:03.0/vfio") or the device id before "/vfio"; ENOENT naming the ones there are. */
export function findVfioDevice(s: QemuStream, name: string): VfioDevice {
  const all = vfioDevices(s);
  const hit = all.filter((d) => d.idstr === name || d.idstr === `${name}/vfio`);
  if (hit.length === 1) return hit[0]!;
  const there = all.length ? `the stream has ${all.map((d) => d.idstr).join(', ')}` : 'the stream has no VFIO device';
  if (hit.length > 1)
    throw new VfioError(
      'EINVAL',
      OP,
      s.file,
      `${name} names ${hit.length} VFIO devices (instances ${hit.map((d) => d.instanceId).join(', ')})`,
    );
  throw new VfioError('ENOENT', OP, s.file, `no VFIO device ${name} in the stream: ${there}`);
}

/** The device's state: its DEV_DATA_STATE payloads in stream order, as slices of `buf`. */
export function vfioPayloads(s: QemuStream, buf: Buffer, d: VfioDevice): Buffer[] {
  const out: Buffer[] = [];
  for (const sec of s.sections) {
    if (sec.idstr !== d.idstr || sec.instanceId !== d.instanceId || !sec.vfio) continue;
    for (const rec of sec.vfio.records)
      if (rec.marker === 'DEV_DATA_STATE' && rec.bytes)
        out.push(buf.subarray(rec.dataOffset, rec.dataOffset! + rec.bytes));
  }
  return out;
}

/**
 * Which caller saved the device, where the stream shows it: an empty
 * DEV_DATA_STATE record is QEMU 7.2's v1 loop (reading pending_bytes 0),
 * which the v2 loop of QEMU 8+ never writes; DEV_INIT_DATA_SENT is QEMU
 * 8.1+'s, so v2. Null when neither is there.
 */
export function savedWith(d: VfioDevice): { protocol: 'v1' | 'v2'; why: string } | null {
  const empty = d.phases.setup.emptyRecords + d.phases.iterate.emptyRecords + d.phases.complete.emptyRecords;
  if (empty > 0 && !d.initDataSent)
    return { protocol: 'v1', why: `${empty} empty DEV_DATA_STATE record(s): QEMU 7.2's v1 save loop` };
  if (d.initDataSent && empty === 0) return { protocol: 'v2', why: 'DEV_INIT_DATA_SENT: QEMU 8.1+, a v2 caller' };
  return null;
}

/** One device (idstr and instance) across all its sections: what diff.ts compares. */
export interface DeviceSummary {
  key: string;
  idstr: string;
  instanceId: number;
  versionId: number;
  vmsdName?: string;
  /** Section types in order, e.g. START PART PART END. */
  kinds: string[];
  dataBytes: number;
  /** SHA-256 of the sections' data, concatenated. */
  sha256: string;
  ramBlocks?: RamBlock[];
  vfio?: VfioDevice;
}

export function deviceSummaries(s: QemuStream, buf: Buffer): DeviceSummary[] {
  const out = new Map<string, { d: DeviceSummary; hash: ReturnType<typeof createHash> }>();
  const vfio = new Map(vfioDevices(s).map((v) => [`${v.idstr}#${v.instanceId}`, v]));
  for (const sec of s.sections) {
    const key = `${sec.idstr}#${sec.instanceId}`;
    let e = out.get(key);
    if (!e) {
      e = {
        d: {
          key,
          idstr: sec.idstr,
          instanceId: sec.instanceId,
          versionId: sec.versionId,
          kinds: [],
          dataBytes: 0,
          sha256: '',
        },
        hash: createHash('sha256'),
      };
      out.set(key, e);
    }
    e.d.kinds.push(sec.type);
    e.d.dataBytes += sec.dataBytes;
    e.hash.update(buf.subarray(sec.dataOffset, sec.dataOffset + sec.dataBytes));
    if (sec.vmsdName !== undefined) e.d.vmsdName = sec.vmsdName;
    if (sec.ram?.blocks.length) e.d.ramBlocks = [...(e.d.ramBlocks ?? []), ...sec.ram.blocks];
    const v = vfio.get(key);
    if (v) e.d.vfio = v;
  }
  return [...out.values()].map(({ d, hash }) => ({ ...d, sha256: hash.digest('hex') }));
}
