/**
 * Walks a whole QEMU migration stream (QEMU v7.2.0 and v10.0.0
 * migration/savevm.c): the file header, then top-level records until
 * QEMU_VM_EOF, then the optional JSON VMDESCRIPTION. Sections are START,
 * PART, END (a live device: "ram", a VFIO device) and FULL (every device at
 * the end; a VFIO device's config), each followed by a footer. What is
 * found is returned as plain data; anything malformed is refused (reader.ts).
 */
import {
  QEMU_VM_FILE_MAGIC,
  QEMU_VM_FILE_VERSION,
  SectionType,
  be32,
  command,
  configurationName,
  fileHeader,
  sectionHeaderFull,
  sectionId,
  sectionType,
  sectionTypeName,
  shortString,
  subsectionHeader,
  vmdescription,
} from './framing.js';
import { walkRamSection, type RamWalk } from './ram.js';
import { StreamReader, hex } from './reader.js';
import { walkVfioSection, type VfioSectionWalk } from './vfio.js';
import { findDescription, walkVmsd, type VmDescription, type VmsdDesc } from './vmsd.js';

export type SectionKind = 'START' | 'PART' | 'END' | 'FULL';

export interface Section {
  type: SectionKind;
  sectionId: number;
  idstr: string;
  instanceId: number;
  versionId: number;
  /** Of the type byte. */
  offset: number;
  /** The whole record: header, data and footer. */
  bytes: number;
  dataOffset: number;
  dataBytes: number;
  footer: boolean;
  ram?: RamWalk;
  vfio?: VfioSectionWalk;
  /** The vmstate's name, from the VMDESCRIPTION. */
  vmsdName?: string;
}

export type OtherKind = 'CONFIGURATION' | 'COMMAND' | 'EOF' | 'VMDESCRIPTION';

export interface OtherRecord {
  type: OtherKind;
  offset: number;
  bytes: number;
  /** CONFIGURATION: the machine type. */
  machine?: string;
  /** CONFIGURATION: migration capabilities that change the stream. */
  capabilities?: string[];
  /** COMMAND: its number. */
  cmd?: number;
}

export interface QemuStream {
  file: string;
  size: number;
  machine: string | null;
  capabilities: string[];
  pageSize: number;
  records: (Section | OtherRecord)[];
  sections: Section[];
  description: VmDescription | null;
}

export function isSection(r: Section | OtherRecord): r is Section {
  return r.type === 'START' || r.type === 'PART' || r.type === 'END' || r.type === 'FULL';
}

/** A VFIO device's section: registered as "<device id>/vfio" (QEMU hw/vfio/migration.c). */
export function isVfioIdstr(idstr: string): boolean {
  return idstr === 'vfio' || idstr.endsWith('/vfio');
}

const KIND: Record<number, SectionKind> = {
  [SectionType.SECTION_START]: 'START',
  [SectionType.SECTION_PART]: 'PART',
  [SectionType.SECTION_END]: 'END',
  [SectionType.SECTION_FULL]: 'FULL',
};

export function walkStream(buf: Buffer, file: string): QemuStream {
  const r = new StreamReader(buf, file);
  if (buf.length === 0) throw r.fail('empty file: not a QEMU migration stream', 0, 'EINVAL');
  if (buf.length < fileHeader.head)
    throw r.fail(`truncated: ${buf.length} bytes, shorter than the 8-byte file header`, 0, 'EINVAL');
  const h = r.read(fileHeader);
  if (h.magic !== QEMU_VM_FILE_MAGIC)
    throw r.fail(
      `bad magic ${hex(h.magic, 8)}: not a QEMU migration stream (expected 0x5145564d, "QEVM")`,
      0,
      'EINVAL',
    );
  if (h.version !== QEMU_VM_FILE_VERSION)
    throw r.fail(`file version ${h.version}: this tool reads version ${QEMU_VM_FILE_VERSION}`, 4, 'EINVAL');

  const desc = readDescription(r);
  const devices = new Map<string, VmsdDesc>();
  for (const d of desc?.devices ?? []) devices.set(`${d.name}\0${d.instance_id}`, d);
  const out: QemuStream = {
    file,
    size: buf.length,
    machine: null,
    capabilities: [],
    pageSize: desc?.page_size ?? 4096,
    records: [],
    sections: [],
    description: desc,
  };
  const live = new Map<number, { idstr: string; instanceId: number; versionId: number }>();
  let last: Section | null = null;

  for (;;) {
    const offset = r.pos;
    if (r.left === 0) throw r.fail('truncated: the stream ends without QEMU_VM_EOF');
    const type = r.read(sectionType).type;
    const kind = KIND[type];
    if (kind) {
      let head: { idstr: string; instanceId: number; versionId: number };
      let id: number;
      if (kind === 'START' || kind === 'FULL') {
        const s = r.read(sectionHeaderFull, `${kind} section header`);
        id = s.section_id;
        head = { idstr: s.idstr, instanceId: s.instance_id, versionId: s.version_id };
        if (kind === 'START') live.set(id, head);
      } else {
        id = r.read(sectionId, `${kind} section header`).section_id;
        const started = live.get(id);
        if (!started) throw r.fail(`SECTION_${kind} for section id ${id}, which no SECTION_START began`, offset);
        head = started;
      }
      const s: Section = {
        type: kind,
        sectionId: id,
        ...head,
        offset,
        bytes: 0,
        dataOffset: r.pos,
        dataBytes: 0,
        footer: false,
      };
      walkSectionData(r, s, out, devices);
      s.dataBytes = r.pos - s.dataOffset;
      if (r.peek() === SectionType.SECTION_FOOTER) {
        const at = r.pos;
        r.pos++;
        const f = r.read(sectionId, 'section footer').section_id;
        if (f !== id)
          throw r.fail(
            `section footer for id ${f} after section ${id} (${s.idstr}): the section's data is not what its header says`,
            at,
          );
        s.footer = true;
      }
      s.bytes = r.pos - offset;
      out.records.push(s);
      out.sections.push(s);
      last = s;
      continue;
    }
    switch (type) {
      case SectionType.EOF:
        out.records.push({ type: 'EOF', offset, bytes: 1 });
        readTail(r, out);
        return out;
      case SectionType.CONFIGURATION: {
        const c = r.read(configurationName, 'configuration');
        const caps = readConfigurationSubsections(r, desc);
        out.machine = c.name;
        out.capabilities = caps;
        out.records.push({ type: 'CONFIGURATION', offset, bytes: r.pos - offset, machine: c.name, capabilities: caps });
        break;
      }
      case SectionType.COMMAND: {
        const c = r.read(command);
        r.bytes(c.len, `payload of command ${c.cmd}`);
        out.records.push({ type: 'COMMAND', offset, bytes: r.pos - offset, cmd: c.cmd });
        break;
      }
      case SectionType.SECTION_FOOTER:
        throw r.fail(
          last
            ? `a second section footer after section ${last.sectionId} (${last.idstr})`
            : 'section footer with no section before it',
          offset,
        );
      default:
        throw r.fail(
          `unknown section type ${sectionTypeName(type)}${type === SectionType.VMDESCRIPTION || type === SectionType.SUBSECTION ? ' here' : ''}${last ? ` after section ${last.sectionId} (${last.idstr}, ${last.type})` : ''}`,
          offset,
        );
    }
  }
}

/** The section's data, by the framing its device has. */
function walkSectionData(r: StreamReader, s: Section, out: QemuStream, devices: Map<string, VmsdDesc>): void {
  if (s.idstr === 'ram' && s.type !== 'FULL') {
    if (out.capabilities.includes('mapped-ram'))
      throw r.fail('the stream uses mapped-ram, whose pages are not in the stream: not supported');
    s.ram = walkRamSection(r, { pageSize: out.pageSize, ignoreShared: out.capabilities.includes('x-ignore-shared') });
    return;
  }
  if (isVfioIdstr(s.idstr)) {
    s.vfio = walkVfioSection(r, s.idstr);
    return;
  }
  const what = `${s.idstr} (instance ${s.instanceId})`;
  if (s.type !== 'FULL')
    throw r.fail(
      `live section ${what} has a framing this tool does not know (it reads "ram" and VFIO devices)`,
      s.offset,
    );
  if (!out.description)
    throw r.fail(
      `section ${what} is not length-prefixed and the stream has no VMDESCRIPTION to walk it by (QEMU writes it last: is the file cut short?)`,
      s.offset,
    );
  const d = devices.get(`${s.idstr}\0${s.instanceId}`);
  if (!d) throw r.fail(`section ${what} is not in the stream's VMDESCRIPTION: its extent is unknown`, s.offset);
  s.vmsdName = d.vmsd_name;
  walkVmsd(r, d, what);
}

function readDescription(r: StreamReader): VmDescription | null {
  const found = findDescription(r.buf);
  if (!found) return null;
  try {
    const d = JSON.parse(found.json.toString('utf8')) as VmDescription;
    if (typeof d !== 'object' || d === null) throw new Error('not an object');
    return d;
  } catch (e) {
    throw r.fail(`the VMDESCRIPTION is not JSON: ${(e as Error).message}`, found.offset);
  }
}

/** After QEMU_VM_EOF: the VMDESCRIPTION, if any, and nothing else. */
function readTail(r: StreamReader, out: QemuStream): void {
  if (r.left === 0) return;
  const offset = r.pos;
  if (r.peek() !== SectionType.VMDESCRIPTION)
    throw r.fail(`${r.left} bytes after QEMU_VM_EOF that are no VMDESCRIPTION`);
  r.pos++;
  const len = r.read(vmdescription).len;
  r.bytes(len, 'VMDESCRIPTION');
  out.records.push({ type: 'VMDESCRIPTION', offset, bytes: r.pos - offset });
  if (r.left) throw r.fail(`${r.left} bytes after the VMDESCRIPTION`);
}

/**
 * The configuration's subsections: by the VMDESCRIPTION when it describes
 * them (QEMU 9.1+), else the ones QEMU 7.2 to 10 send. Returns the
 * migration capabilities it lists.
 */
function readConfigurationSubsections(r: StreamReader, desc: VmDescription | null): string[] {
  const caps: string[] = [];
  while (r.peek() === SectionType.SUBSECTION) {
    const at = r.pos;
    r.pos++;
    const h = r.read(subsectionHeader, 'configuration subsection header');
    const described = desc?.configuration?.subsections?.find((s) => s.vmsd_name === h.name);
    if (h.name === 'configuration/capabilities') {
      const n = r.read(be32, 'capability count').value;
      for (let i = 0; i < n; i++) caps.push(r.read(shortString, 'capability name').text);
    } else if (h.name === 'configuration/target-page-bits') {
      r.read(be32, 'target page bits');
    } else if (h.name === 'configuration/uuid') {
      r.bytes(16, 'VM UUID');
    } else if (described) {
      walkVmsd(r, described, h.name);
    } else {
      throw r.fail(`configuration subsection ${h.name} is not known to this tool`, at);
    }
  }
  return caps;
}
