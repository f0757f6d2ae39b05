/**
 * Device sections other than "ram" and VFIO are not length-prefixed: their
 * extent comes from the JSON VMDESCRIPTION QEMU writes after QEMU_VM_EOF
 * (QEMU v7.2.0 migration/savevm.c and migration/vmstate.c), which gives
 * each field's size in bytes as written (array_len times over when an
 * array was compressed) and each subsection that was sent. This finds
 * that JSON and walks a section by it.
 */
import { SectionType, subsectionHeader } from './framing.js';
import type { StreamReader } from './reader.js';

export interface VmsdField {
  name: string;
  type?: string;
  size?: number;
  array_len?: number;
}

export interface VmsdDesc {
  name?: string;
  vmsd_name?: string;
  instance_id?: number;
  version?: number;
  fields?: VmsdField[];
  subsections?: VmsdDesc[];
}

export interface VmDescription {
  page_size?: number;
  devices?: VmsdDesc[];
  configuration?: VmsdDesc;
}

/**
 * Where the VMDESCRIPTION record is: its type byte, a be32 length and the
 * JSON, which runs to the end of the file and has no NUL byte. Null when
 * the stream has none.
 */
export function findDescription(buf: Buffer): { offset: number; json: Buffer } | null {
  const nul = buf.lastIndexOf(0);
  for (let j = buf.indexOf(0x7b, Math.max(5, nul - 3)); j >= 5; j = buf.indexOf(0x7b, j + 1)) {
    if (buf[j - 5] === SectionType.VMDESCRIPTION && buf.readUInt32BE(j - 4) === buf.length - j)
      return { offset: j - 5, json: buf.subarray(j) };
  }
  return null;
}

/** Moves the reader past one described vmstate: its fields by size, then each subsection it lists. */
export function walkVmsd(r: StreamReader, desc: VmsdDesc, what: string): void {
  for (const f of desc.fields ?? []) {
    if (typeof f.size !== 'number') throw r.fail(`the VMDESCRIPTION gives no size for field ${f.name} of ${what}`);
    r.bytes(f.size * (f.array_len ?? 1), `field ${f.name} of ${what}`);
  }
  for (const sub of desc.subsections ?? []) {
    const at = r.pos;
    if (r.peek() !== SectionType.SUBSECTION)
      throw r.fail(
        `subsection ${sub.vmsd_name} of ${what} expected (byte 0x05), found ${r.peek() === undefined ? 'the end of the file' : `0x${r.peek()!.toString(16)}`}`,
      );
    r.pos++;
    const h = r.read(subsectionHeader, `subsection header in ${what}`);
    if (sub.vmsd_name !== undefined && h.name !== sub.vmsd_name)
      throw r.fail(`subsection ${h.name} where the VMDESCRIPTION has ${sub.vmsd_name} (in ${what})`, at);
    walkVmsd(r, sub, `${what}/${h.name}`);
  }
}
