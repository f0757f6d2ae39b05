/**
 * A test-only writer of QEMU migration streams, from the format (QEMU
 * v7.2.0 migration/savevm.c, migration/ram.c, hw/vfio/migration.c) with
 * plain Buffer writes: never src/qemu-stream's layouts, so the tests check
 * the reader against an independent encoding.
 */
export const be8 = (v: number) => Buffer.of(v);
export const be16 = (v: number) => {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(v);
  return b;
};
export const be32 = (v: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v);
  return b;
};
export const be64 = (v: bigint | number) => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(v));
  return b;
};
const str8 = (s: string) => Buffer.concat([be8(s.length), Buffer.from(s, 'latin1')]);

export const VFIO = {
  END: 0xffffffffef100001n,
  CONFIG: 0xffffffffef100002n,
  SETUP: 0xffffffffef100003n,
  DATA: 0xffffffffef100004n,
  INIT_DATA_SENT: 0xffffffffef100005n,
};

/** The VFIO records of one section. */
export const vfio = {
  setup: () => Buffer.concat([be64(VFIO.SETUP), be64(VFIO.END)]),
  /** One DEV_DATA_STATE record per payload, then the end marker. */
  data: (payloads: Buffer[], end = VFIO.END) =>
    Buffer.concat([...payloads.flatMap((p) => [be64(VFIO.DATA), be64(p.length), p]), be64(end)]),
  config: (body: Buffer) => Buffer.concat([be64(VFIO.CONFIG), body, be64(VFIO.END)]),
  /** vmstate_vfio_pci_config of a conventional PCI device: be32 version_id 2, 256 bytes of config space, 4 x be32 irq_state. */
  pciBody: (vendor: number, device: number, classCode = 0x078000) => {
    const cfg = Buffer.alloc(256);
    cfg.writeUInt16LE(vendor, 0);
    cfg.writeUInt16LE(device, 2);
    cfg.writeUInt8(classCode & 0xff, 9);
    cfg.writeUInt16LE(classCode >> 8, 10);
    return Buffer.concat([be32(2), cfg, Buffer.alloc(16)]);
  },
};

/** The "ram" section's records (4 KiB pages). */
export const ram = {
  memSize: (blocks: [string, number][]) =>
    Buffer.concat([
      be64(blocks.reduce((n, [, l]) => n + l, 0) | 0x04),
      ...blocks.map(([n, l]) => Buffer.concat([str8(n), be64(l)])),
    ]),
  page: (addr: number, block: string | null, fill: number) =>
    Buffer.concat([
      be64(addr | 0x08 | (block === null ? 0x20 : 0)),
      block === null ? Buffer.alloc(0) : str8(block),
      Buffer.alloc(4096, fill),
    ]),
  zero: (addr: number, block: string | null) =>
    Buffer.concat([
      be64(addr | 0x02 | (block === null ? 0x20 : 0)),
      block === null ? Buffer.alloc(0) : str8(block),
      be8(0),
    ]),
  eos: () => be64(0x10),
};

export class StreamBuilder {
  readonly parts: Buffer[] = [];

  get length(): number {
    return this.parts.reduce((n, p) => n + p.length, 0);
  }

  raw(b: Buffer): this {
    this.parts.push(b);
    return this;
  }

  header(magic = 0x5145564d, version = 3): this {
    return this.raw(Buffer.concat([be32(magic), be32(version)]));
  }

  configuration(machine: string): this {
    return this.raw(Buffer.concat([be8(0x07), be32(machine.length), Buffer.from(machine, 'latin1')]));
  }

  /** START (0x01) or FULL (0x04): header, data, footer (`footer` false: none; a number: that id). */
  open(
    type: 0x01 | 0x04,
    id: number,
    idstr: string,
    instance: number,
    version: number,
    data: Buffer,
    footer: boolean | number = true,
  ): this {
    return this.raw(
      Buffer.concat([be8(type), be32(id), str8(idstr), be32(instance), be32(version), data, this.#footer(id, footer)]),
    );
  }

  start(
    id: number,
    idstr: string,
    instance: number,
    version: number,
    data: Buffer,
    footer: boolean | number = true,
  ): this {
    return this.open(0x01, id, idstr, instance, version, data, footer);
  }

  full(
    id: number,
    idstr: string,
    instance: number,
    version: number,
    data: Buffer,
    footer: boolean | number = true,
  ): this {
    return this.open(0x04, id, idstr, instance, version, data, footer);
  }

  /** PART (0x02) or END (0x03). */
  part(id: number, data: Buffer, footer: boolean | number = true, type: 0x02 | 0x03 = 0x02): this {
    return this.raw(Buffer.concat([be8(type), be32(id), data, this.#footer(id, footer)]));
  }

  end(id: number, data: Buffer, footer: boolean | number = true): this {
    return this.part(id, data, footer, 0x03);
  }

  command(cmd: number, payload = Buffer.alloc(0)): this {
    return this.raw(Buffer.concat([be8(0x08), be16(cmd), be16(payload.length), payload]));
  }

  eof(): this {
    return this.raw(be8(0x00));
  }

  vmdescription(desc: unknown): this {
    const json = Buffer.from(JSON.stringify(desc), 'utf8');
    return this.raw(Buffer.concat([be8(0x06), be32(json.length), json]));
  }

  build(): Buffer {
    return Buffer.concat(this.parts);
  }

  #footer(id: number, footer: boolean | number): Buffer {
    return footer === false ? Buffer.alloc(0) : Buffer.concat([be8(0x7e), be32(footer === true ? id : footer)]);
  }
}

/** A "timer"-like device of 10 bytes of fields and one 4-byte subsection, and its VMDESCRIPTION entry. */
export const timer = {
  data: () =>
    Buffer.concat([be64(0x1122334455667788n), be16(7), be8(0x05), str8('timer/sub'), be32(1), be32(0xabcdef)]),
  desc: {
    name: 'timer',
    instance_id: 0,
    vmsd_name: 'timer',
    version: 2,
    fields: [
      { name: 'ticks', type: 'int64', size: 8 },
      { name: 'flags', type: 'uint8', size: 1, array_len: 2 },
    ],
    subsections: [{ vmsd_name: 'timer/sub', version: 1, fields: [{ name: 'x', type: 'uint32', size: 4 }] }],
  },
};
