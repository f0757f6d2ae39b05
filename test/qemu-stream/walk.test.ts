/**
 * src/qemu-stream on hand-made streams (encoder.ts): a good one walked
 * section by section, and every framing error refused with its code and
 * the byte offset where it is.
 */
import { describe, expect, it } from 'vitest';
import { VfioError, isVfioError } from '../../src/errors.js';
import { savedWith, vfioDevices, vfioPayloads, walkStream, diffStreams } from '../../src/qemu-stream/index.js';
import { StreamBuilder, VFIO, be32, be64, be8, ram, timer, vfio } from './encoder.js';

const DEV = '0000:00:03.0/vfio';
const P1 = Buffer.alloc(100, 0xa1);
const P2 = Buffer.alloc(50, 0xb2);
const P3 = Buffer.alloc(7, 0xc3);

/** A stream as QEMU 7.2 writes one with a VFIO device: ram and the device live, then every device FULL, EOF, VMDESCRIPTION. */
function good(o: { iterate?: Buffer[][]; complete?: Buffer[]; footer?: boolean; desc?: boolean } = {}) {
  const b = new StreamBuilder().header().configuration('pc-i440fx-7.2');
  const f = o.footer ?? true;
  b.start(
    2,
    'ram',
    0,
    4,
    Buffer.concat([
      ram.memSize([
        ['pc.ram', 0x200000],
        ['pc.bios', 0x40000],
      ]),
      ram.eos(),
    ]),
    f,
  );
  b.start(3, DEV, 0, 1, vfio.setup(), f);
  b.part(
    2,
    Buffer.concat([ram.page(0x1000, 'pc.ram', 0x5a), ram.zero(0x2000, null), ram.page(0x3000, null, 0x6b), ram.eos()]),
    f,
  );
  for (const payloads of o.iterate ?? [[P1], [Buffer.alloc(0)]]) b.part(3, vfio.data(payloads), f);
  b.end(2, ram.eos(), f);
  b.end(3, vfio.data(o.complete ?? [P2, P3]), f);
  b.full(0, 'timer', 0, 2, timer.data(), f);
  b.full(3, DEV, 0, 1, vfio.config(vfio.pciBody(0x4348, 0x3253)), f);
  b.eof();
  if (o.desc ?? true)
    b.vmdescription({
      page_size: 4096,
      devices: [timer.desc, { name: DEV, instance_id: 0, fields: [{ name: 'data', type: 'buffer', size: 292 }] }],
    });
  return b.build();
}

/** The refusal walkStream gives `buf`. */
function refusal(buf: Buffer): VfioError {
  try {
    walkStream(buf, 'x.mig');
  } catch (e) {
    if (isVfioError(e)) return e;
    throw e;
  }
  throw new Error('walked without a refusal');
}

describe('a good hand-made stream', () => {
  const buf = good();
  const s = walkStream(buf, 'x.mig');

  it('walks every record in order, with the machine type and page size', () => {
    expect(s.machine).toBe('pc-i440fx-7.2');
    expect(s.pageSize).toBe(4096);
    expect(s.records.map((r) => `${r.type}${'idstr' in r ? ` ${r.idstr}` : ''}`)).toEqual([
      'CONFIGURATION',
      'START ram',
      `START ${DEV}`,
      'PART ram',
      `PART ${DEV}`,
      `PART ${DEV}`,
      'END ram',
      `END ${DEV}`,
      'FULL timer',
      `FULL ${DEV}`,
      'EOF',
      'VMDESCRIPTION',
    ]);
    // Offsets and sizes tile the file.
    let at = 8;
    for (const r of s.records) {
      expect(r.offset).toBe(at);
      at += r.bytes;
    }
    expect(at).toBe(buf.length);
  });

  it('gives section ids, instances and versions; PART and END take them from their START', () => {
    const [ramStart, , , vPart] = s.sections;
    expect(ramStart).toMatchObject({
      type: 'START',
      sectionId: 2,
      idstr: 'ram',
      instanceId: 0,
      versionId: 4,
      footer: true,
    });
    expect(vPart).toMatchObject({ type: 'PART', sectionId: 3, idstr: DEV, versionId: 1 });
  });

  it('reads the ram records: the RAMBlock list, pages and zero pages', () => {
    expect(s.sections[0]!.ram!.blocks).toEqual([
      { idstr: 'pc.ram', length: 0x200000 },
      { idstr: 'pc.bios', length: 0x40000 },
    ]);
    expect(s.sections[2]!.ram).toMatchObject({ pages: 2, zeroPages: 1 });
  });

  it('walks a described device by its VMDESCRIPTION, subsection included', () => {
    const t = s.sections.find((x) => x.idstr === 'timer')!;
    expect(t).toMatchObject({ vmsdName: 'timer', dataBytes: timer.data().length });
  });

  it('sums the VFIO device per phase, decodes its PCI config and gives its state in order', () => {
    const [d] = vfioDevices(s);
    expect(d).toMatchObject({ idstr: DEV, instanceId: 0, versionId: 1, sectionId: 3, dataBytes: 157 });
    expect(d!.phases).toEqual({
      setup: { sections: 1, records: 0, emptyRecords: 0, bytes: 0 },
      iterate: { sections: 2, records: 2, emptyRecords: 1, bytes: 100 },
      complete: { sections: 1, records: 2, emptyRecords: 0, bytes: 57 },
    });
    expect(d!.config).toMatchObject({
      bytes: 276,
      pci: { version: 2, vendorId: 0x4348, deviceId: 0x3253, classCode: 0x078000 },
    });
    expect(Buffer.concat(vfioPayloads(s, buf, d!))).toEqual(Buffer.concat([P1, P2, P3]));
    expect(savedWith(d!)).toMatchObject({ protocol: 'v1' });
  });

  it('says v2 for DEV_INIT_DATA_SENT and nothing when the stream does not show the caller', () => {
    const b = new StreamBuilder()
      .header()
      .start(3, DEV, 0, 1, vfio.setup())
      .part(3, vfio.data([P1], VFIO.INIT_DATA_SENT))
      .end(3, vfio.data([P2]))
      .eof()
      .build();
    const [d] = vfioDevices(walkStream(b, 'y'));
    expect(d!.initDataSent).toBe(true);
    expect(savedWith(d!)).toMatchObject({ protocol: 'v2' });
    const plain = new StreamBuilder()
      .header()
      .start(3, DEV, 0, 1, vfio.setup())
      .end(3, vfio.data([P2]))
      .eof()
      .build();
    expect(savedWith(vfioDevices(walkStream(plain, 'z'))[0]!)).toBeNull();
  });

  it('takes sections without footers (machines before QEMU 2.5 send none) and commands', () => {
    const s2 = walkStream(good({ footer: false }), 'y');
    expect(s2.sections.every((x) => !x.footer)).toBe(true);
    expect(vfioDevices(s2)[0]!.dataBytes).toBe(157);
    const c = new StreamBuilder().header().command(0x0b).start(3, DEV, 0, 1, vfio.setup()).eof().build();
    expect(walkStream(c, 'c').records[0]).toMatchObject({ type: 'COMMAND', cmd: 0x0b, offset: 8, bytes: 5 });
  });

  it('diffs against itself as identical, and names what changed in another', () => {
    expect(diffStreams(s, buf, s, buf)).toMatchObject({ identical: true, differences: [] });
    const other = good({ iterate: [[P1, P1]], complete: [P2] });
    const d = diffStreams(s, buf, walkStream(other, 'b'), other);
    expect(d.differences.map((x) => x.kind)).toEqual(['vfio-phase', 'vfio-phase', 'size']);
    expect(d.differences[0]!.text).toMatch(/iterate: 100 bytes in 2 DEV_DATA_STATE records in A, 200 in 2 in B/);
    expect(d.same).toContain('timer#0');
  });
});

describe('framing errors: refused with the byte offset', () => {
  const cases: [string, () => Buffer, string, number, RegExp][] = [
    ['an empty file', () => Buffer.alloc(0), 'EINVAL', 0, /empty file/],
    ['a file shorter than the header', () => Buffer.from('QEV'), 'EINVAL', 0, /shorter than the 8-byte file header/],
    [
      'bad magic',
      () => new StreamBuilder().header(0x12345678).eof().build(),
      'EINVAL',
      0,
      /bad magic 0x12345678: not a QEMU migration stream/,
    ],
    ['file version 2', () => new StreamBuilder().header(0x5145564d, 2).eof().build(), 'EINVAL', 4, /file version 2/],
    [
      'no QEMU_VM_EOF',
      () => new StreamBuilder().header().configuration('pc').build(),
      'EBADMSG',
      15,
      /ends without QEMU_VM_EOF/,
    ],
    [
      'an unknown section type',
      () => new StreamBuilder().header().raw(be8(0x09)).build(),
      'EBADMSG',
      8,
      /unknown section type 0x09/,
    ],
    [
      'a section header cut in its idstr',
      () =>
        new StreamBuilder()
          .header()
          .raw(Buffer.concat([be8(1), be32(3), be8(20), Buffer.from('0000:00')]))
          .build(),
      'EBADMSG',
      9,
      /truncated: START section header needs 33 bytes, the file has 12 left/,
    ],
    [
      'a PART whose id no START began',
      () => new StreamBuilder().header().part(9, ram.eos()).eof().build(),
      'EBADMSG',
      8,
      /SECTION_PART for section id 9, which no SECTION_START began/,
    ],
    [
      'a footer for another section',
      () => new StreamBuilder().header().start(2, 'ram', 0, 4, ram.eos(), 5).eof().build(),
      'EBADMSG',
      33,
      /section footer for id 5 after section 2 \(ram\)/,
    ],
    [
      'a stray footer',
      () =>
        new StreamBuilder()
          .header()
          .raw(Buffer.concat([be8(0x7e), be32(1)]))
          .build(),
      'EBADMSG',
      8,
      /section footer with no section before it/,
    ],
    [
      'an unknown VFIO marker',
      () => new StreamBuilder().header().start(3, DEV, 0, 1, be64(0xffffffffef100009n)).eof().build(),
      'EBADMSG',
      39,
      /unknown VFIO marker 0xffffffffef100009 in 0000:00:03.0\/vfio/,
    ],
    [
      'a DEV_DATA_STATE record cut short',
      () =>
        new StreamBuilder()
          .header()
          .start(3, DEV, 0, 1, vfio.setup())
          .raw(Buffer.concat([be8(2), be32(3), be64(VFIO.DATA), be64(4096), Buffer.alloc(10)]))
          .build(),
      'EBADMSG',
      65,
      /DEV_DATA_STATE record of 0000:00:03.0\/vfio cut short: it says 4096 bytes of device state, the file has 10 left/,
    ],
    [
      'a DEV_DATA_STATE size cut short',
      () =>
        new StreamBuilder()
          .header()
          .start(3, DEV, 0, 1, vfio.setup())
          .raw(Buffer.concat([be8(2), be32(3), be64(VFIO.DATA), Buffer.alloc(3)]))
          .build(),
      'EBADMSG',
      73,
      /truncated: DEV_DATA_STATE size of 0000:00:03.0\/vfio needs 8 bytes, the file has 3 left/,
    ],
    [
      'a DEV_CONFIG_STATE with no END_OF_STATE',
      () =>
        new StreamBuilder()
          .header()
          .raw(
            Buffer.concat([
              be8(4),
              be32(3),
              be8(DEV.length),
              Buffer.from(DEV),
              be32(0),
              be32(1),
              be64(VFIO.CONFIG),
              vfio.pciBody(1, 2),
            ]),
          )
          .build(),
      'EBADMSG',
      39,
      /DEV_CONFIG_STATE record of 0000:00:03.0\/vfio cut short: no END_OF_STATE marker/,
    ],
    [
      'a VFIO marker cut short',
      () =>
        new StreamBuilder()
          .header()
          .raw(
            Buffer.concat([
              be8(1),
              be32(3),
              be8(DEV.length),
              Buffer.from(DEV),
              be32(0),
              be32(1),
              Buffer.alloc(5, 0xff),
            ]),
          )
          .build(),
      'EBADMSG',
      39,
      /truncated: VFIO marker of 0000:00:03.0\/vfio needs 8 bytes, the file has 5 left/,
    ],
    [
      'a device section without VMDESCRIPTION',
      () => new StreamBuilder().header().full(0, 'timer', 0, 2, timer.data()).eof().build(),
      'EBADMSG',
      8,
      /timer \(instance 0\) is not length-prefixed and the stream has no VMDESCRIPTION/,
    ],
    [
      'a device the VMDESCRIPTION does not list',
      () =>
        new StreamBuilder()
          .header()
          .full(0, 'hpet', 0, 2, timer.data())
          .eof()
          .vmdescription({ devices: [timer.desc] })
          .build(),
      'EBADMSG',
      8,
      /hpet \(instance 0\) is not in the stream's VMDESCRIPTION/,
    ],
    [
      'a device whose data does not match its description',
      () =>
        new StreamBuilder()
          .header()
          .full(0, 'timer', 0, 2, timer.data().subarray(0, 10))
          .eof()
          .vmdescription({ devices: [timer.desc] })
          .build(),
      'EBADMSG',
      37,
      /subsection timer\/sub of timer \(instance 0\) expected \(byte 0x05\), found 0x7e/,
    ],
    [
      'a live section of unknown framing',
      () => new StreamBuilder().header().start(4, 'dirty-bitmap', 0, 1, Buffer.alloc(8)).eof().build(),
      'EBADMSG',
      8,
      /live section dirty-bitmap \(instance 0\) has a framing this tool does not know/,
    ],
    [
      'an XBZRLE ram record',
      () =>
        new StreamBuilder()
          .header()
          .start(2, 'ram', 0, 4, be64(0x1000 | 0x40))
          .eof()
          .build(),
      'EBADMSG',
      25,
      /ram record flags 0x40 \(XBZRLE\) are not supported/,
    ],
    [
      'a RAMBlock list longer than MEM_SIZE says',
      () =>
        new StreamBuilder()
          .header()
          .start(2, 'ram', 0, 4, Buffer.concat([be64(0x1000 | 0x04), be8(2), Buffer.from('rb'), be64(0x2000)]))
          .eof()
          .build(),
      'EBADMSG',
      33,
      /RAMBlock rb is 8192 bytes, more than the 4096/,
    ],
    [
      'bytes after QEMU_VM_EOF',
      () => new StreamBuilder().header().eof().raw(Buffer.from('junk')).build(),
      'EBADMSG',
      9,
      /4 bytes after QEMU_VM_EOF that are no VMDESCRIPTION/,
    ],
  ];
  for (const [what, make, code, offset, reason] of cases) {
    it(what, () => {
      const e = refusal(make());
      expect(e.code).toBe(code);
      expect(e.details).toEqual({ offset });
      expect(e.message).toContain(`qemu-stream on x.mig: ${code}`);
      expect(e.reason).toMatch(new RegExp(`^at byte ${offset} \\(0x${offset.toString(16)}\\): `));
      expect(e.reason).toMatch(reason);
    });
  }

  it('a good stream cut anywhere is refused as truncated, never walked', () => {
    const buf = good();
    const eofAt = buf.lastIndexOf(0x00, buf.indexOf('{"page_size"') - 5);
    for (let n = 8; n <= eofAt; n += 7) {
      const e = refusal(buf.subarray(0, n));
      expect(e.code, `cut at ${n}`).toBe('EBADMSG');
      expect(e.details!.offset as number).toBeLessThanOrEqual(n);
    }
  });
});
