/**
 * The VFIO device's records inside its sections (QEMU v7.2.0 and v10.0.0
 * hw/vfio/migration.c): be64 markers, DEV_DATA_STATE followed by a be64
 * size and that many bytes of device state, DEV_CONFIG_STATE followed by
 * vfio-pci's config vmstate up to END_OF_STATE. Both versions write the
 * same records: QEMU 7.2's v1 save loop one DEV_DATA_STATE per iteration
 * (a size of 0 when nothing was pending), QEMU 8+'s v2 loop one per read of
 * the data_fd (never empty); the payloads in order are the device's stream.
 */
import { VfioMarker, be64, vfioDataSize, vfioMarkerName, vfioPciConfigHead } from './framing.js';
import { hex, type StreamReader } from './reader.js';

/** Which part of the save a section belongs to, from its type. */
export type VfioPhase = 'setup' | 'iterate' | 'complete' | 'config';

export interface VfioRecord {
  marker: string;
  /** Of the marker. */
  offset: number;
  /** DEV_DATA_STATE: the payload's size; DEV_CONFIG_STATE: the config bytes between the markers. */
  bytes?: number;
  /** Where the payload starts. */
  dataOffset?: number;
}

export interface VfioPciConfig {
  /** The config vmstate's bytes between DEV_CONFIG_STATE and END_OF_STATE. */
  bytes: number;
  offset: number;
  /** Decoded when the payload is vfio-pci's (at least version_id, a 256-byte config space and irq_state). */
  pci?: { version: number; vendorId: number; deviceId: number; classCode: number; revision: number };
}

export interface VfioSectionWalk {
  records: VfioRecord[];
  /** The marker that ended the section's records. */
  end: 'END_OF_STATE' | 'DEV_INIT_DATA_SENT' | 'DEV_CONFIG_LOAD_READY';
  config?: VfioPciConfig;
}

const END_BYTES = Buffer.alloc(8);
END_BYTES.writeBigUInt64BE(VfioMarker.END_OF_STATE);
/** vmstate_vfio_pci_config: be32 version_id, config space (256 or 4096 bytes), 4 x be32 irq_state, then MSI-X when the device has it. */
const PCI_MIN = 4 + 256 + 16;

/** Walks one VFIO section's records from the reader's position to the marker that ends them. */
export function walkVfioSection(r: StreamReader, idstr: string): VfioSectionWalk {
  const records: VfioRecord[] = [];
  let config: VfioPciConfig | undefined;
  for (;;) {
    const offset = r.pos;
    const marker = r.read(be64, `VFIO marker of ${idstr}`).value;
    const name = vfioMarkerName(marker);
    if (name === undefined)
      throw r.fail(
        `unknown VFIO marker ${hex(marker, 16)} in ${idstr} (known: 0xffffffffef100001 to 0xffffffffef100006)`,
        offset,
      );
    switch (marker) {
      case VfioMarker.END_OF_STATE:
      case VfioMarker.DEV_INIT_DATA_SENT:
      case VfioMarker.DEV_CONFIG_LOAD_READY:
        return { records, end: name as VfioSectionWalk['end'], ...(config ? { config } : {}) };
      case VfioMarker.DEV_SETUP_STATE:
        records.push({ marker: name, offset });
        break;
      case VfioMarker.DEV_DATA_STATE: {
        const size = r.read(vfioDataSize, `DEV_DATA_STATE size of ${idstr}`).size;
        if (size > BigInt(r.left))
          throw r.fail(
            `VFIO DEV_DATA_STATE record of ${idstr} cut short: it says ${size} bytes of device state, the file has ${r.left} left`,
            offset,
          );
        records.push({ marker: name, offset, bytes: Number(size), dataOffset: r.pos });
        r.pos += Number(size);
        break;
      }
      case VfioMarker.DEV_CONFIG_STATE: {
        // Not length-prefixed: vfio-pci's config vmstate runs to the END_OF_STATE that closes it.
        const start = r.pos;
        const end = r.buf.indexOf(END_BYTES, start);
        if (end < 0)
          throw r.fail(`VFIO DEV_CONFIG_STATE record of ${idstr} cut short: no END_OF_STATE marker follows it`, offset);
        const bytes = end - start;
        config = { bytes, offset: start, ...(bytes >= PCI_MIN ? { pci: decodePci(r.buf.subarray(start, end)) } : {}) };
        records.push({ marker: name, offset, bytes, dataOffset: start });
        r.pos = end + 8;
        return { records, end: 'END_OF_STATE', config };
      }
    }
  }
}

function decodePci(b: Buffer): VfioPciConfig['pci'] {
  const h = vfioPciConfigHead.parser.parse(b) as {
    pci_version: number;
    vendor_id: number;
    device_id: number;
    revision: number;
    class_code: number;
  };
  return {
    version: h.pci_version,
    vendorId: h.vendor_id,
    deviceId: h.device_id,
    classCode: h.class_code,
    revision: h.revision,
  };
}
