/**
 * QEMU's migration stream framing as declarative binary-parser layouts, and
 * the constants that name its records. The format is QEMU's (file and
 * section framing: QEMU v7.2.0 and v10.0.0 migration/savevm.c; the "ram"
 * records: migration/ram.c; the VFIO device's records: hw/vfio/migration.c);
 * all integers are big-endian. Nothing here reads a file: reader.ts walks
 * a buffer with these layouts.
 */
import { Parser } from 'binary-parser';

export const QEMU_VM_FILE_MAGIC = 0x5145564d; // "QEVM"
export const QEMU_VM_FILE_VERSION = 3;

/** The byte that opens each top-level record. */
export const SectionType = {
  EOF: 0x00,
  SECTION_START: 0x01,
  SECTION_PART: 0x02,
  SECTION_END: 0x03,
  SECTION_FULL: 0x04,
  SUBSECTION: 0x05,
  VMDESCRIPTION: 0x06,
  CONFIGURATION: 0x07,
  COMMAND: 0x08,
  SECTION_FOOTER: 0x7e,
} as const;

export function sectionTypeName(t: number): string {
  return Object.entries(SectionType).find(([, v]) => v === t)?.[0] ?? `0x${t.toString(16).padStart(2, '0')}`;
}

/** Flags in the low bits of a "ram" record's be64 address word (QEMU migration/ram.c). */
export const RamFlag = {
  ZERO: 0x02, // called COMPRESS before QEMU 8
  MEM_SIZE: 0x04,
  PAGE: 0x08,
  EOS: 0x10,
  CONTINUE: 0x20,
  XBZRLE: 0x40,
  HOOK: 0x80,
  COMPRESS_PAGE: 0x100,
  MULTIFD_FLUSH: 0x200,
} as const;

/** The be64 markers that delimit a VFIO device's records (QEMU hw/vfio/migration.c). */
export const VfioMarker = {
  END_OF_STATE: 0xffffffffef100001n,
  DEV_CONFIG_STATE: 0xffffffffef100002n,
  DEV_SETUP_STATE: 0xffffffffef100003n,
  DEV_DATA_STATE: 0xffffffffef100004n,
  /** QEMU 8.1+: pre-copy's initial bytes are sent (switchover-ack); ends the section. */
  DEV_INIT_DATA_SENT: 0xffffffffef100005n,
  /** QEMU 10.1+ with multifd device state: the config follows on a multifd channel; ends the section. */
  DEV_CONFIG_LOAD_READY: 0xffffffffef100006n,
} as const;

export function vfioMarkerName(m: bigint): string | undefined {
  return Object.entries(VfioMarker).find(([, v]) => v === m)?.[0];
}

/**
 * One layout: its parser, the bytes it needs before anything is known
 * (`head`), and what a length field in those bytes adds (`rest`).
 */
export interface Layout<T> {
  readonly name: string;
  readonly parser: Parser;
  readonly head: number;
  readonly rest?: (head: Buffer) => number;
  /** Only for typing parse(): never set. */
  readonly _type?: T;
}

/** `rest` reads a length from the first `head` bytes (a fixed layout needs none: its size is its own). */
function layout<T>(name: string, parser: Parser, rest?: { head: number; more: (head: Buffer) => number }): Layout<T> {
  parser.compile();
  return { name, parser, head: rest ? rest.head : parser.sizeOf(), rest: rest?.more };
}

export const fileHeader = layout<{ magic: number; version: number }>(
  'file header',
  new Parser().uint32be('magic').uint32be('version'),
);

export const sectionType = layout<{ type: number }>('section type', new Parser().uint8('type'));

/** QEMU_VM_SECTION_START / _FULL after the type byte: section_id, idstr (u8 length + bytes), instance_id, version_id. */
export const sectionHeaderFull = layout<{
  section_id: number;
  idlen: number;
  idstr: string;
  instance_id: number;
  version_id: number;
}>(
  'section header',
  new Parser()
    .uint32be('section_id')
    .uint8('idlen')
    .string('idstr', { length: 'idlen', encoding: 'latin1' })
    .uint32be('instance_id')
    .uint32be('version_id'),
  { head: 5, more: (h) => h[4]! + 8 },
);

/** QEMU_VM_SECTION_PART / _END, and QEMU_VM_SECTION_FOOTER, after the type byte. */
export const sectionId = layout<{ section_id: number }>('section id', new Parser().uint32be('section_id'));

/** QEMU_VM_COMMAND after the type byte: the command and its payload's length. */
export const command = layout<{ cmd: number; len: number }>(
  'command header',
  new Parser().uint16be('cmd').uint16be('len'),
);

/** QEMU_VM_VMDESCRIPTION after the type byte: the JSON's length (the JSON follows). */
export const vmdescription = layout<{ len: number }>('VMDESCRIPTION length', new Parser().uint32be('len'));

/** QEMU_VM_CONFIGURATION's vmstate: the machine type as be32 length + bytes. */
export const configurationName = layout<{ len: number; name: string }>(
  'configuration',
  new Parser().uint32be('len').string('name', { length: 'len', encoding: 'latin1' }),
  { head: 4, more: (h) => h.readUInt32BE(0) },
);

/** A vmstate subsection header after its 0x05 byte: name (u8 length + bytes) and version. */
export const subsectionHeader = layout<{ len: number; name: string; version: number }>(
  'subsection header',
  new Parser().uint8('len').string('name', { length: 'len', encoding: 'latin1' }).uint32be('version'),
  { head: 1, more: (h) => h[0]! + 4 },
);

/** A u8-length-prefixed string (RAMBlock idstr, a capability name). */
export const shortString = layout<{ len: number; text: string }>(
  'string',
  new Parser().uint8('len').string('text', { length: 'len', encoding: 'latin1' }),
  { head: 1, more: (h) => h[0]! },
);

export const be32 = layout<{ value: number }>('be32', new Parser().uint32be('value'));
export const be64 = layout<{ value: bigint }>('be64', new Parser().uint64be('value'));

/** A RAMBlock in the "ram" section's MEM_SIZE record: idstr and used length. */
export const ramBlock = layout<{ len: number; idstr: string; length: bigint }>(
  'RAMBlock entry',
  new Parser().uint8('len').string('idstr', { length: 'len', encoding: 'latin1' }).uint64be('length'),
  { head: 1, more: (h) => h[0]! + 8 },
);

/** A VFIO DEV_DATA_STATE record after its marker: the payload's size (the payload follows). */
export const vfioDataSize = layout<{ size: bigint }>('DEV_DATA_STATE size', new Parser().uint64be('size'));

/**
 * The start of DEV_CONFIG_STATE's payload from vfio-pci: vmstate_vfio_pci_config,
 * whose first field is the PCIDevice's version_id (be32) and then its config
 * space (256 bytes, 4096 on PCIe) with vendor and device ids little-endian.
 */
export const vfioPciConfigHead = layout<{
  pci_version: number;
  vendor_id: number;
  device_id: number;
  command: number;
  status: number;
  revision: number;
  class_code: number;
}>(
  'vfio-pci config',
  new Parser()
    .uint32be('pci_version')
    .uint16le('vendor_id')
    .uint16le('device_id')
    .uint16le('command')
    .uint16le('status')
    .uint8('revision')
    .uint32le('class_code', { formatter: (v: number) => v & 0xffffff }),
);
