// The pieces every benchmark case is built from: the one sink and the one
// source all cases share, the v1 caller QEMU 7.2 is with an mmap'd data
// section, and a v2 device whose data_fd is a file.
import { openSync } from 'node:fs';
import {
  kernelDataStream,
  loadV1,
  loadV2,
  MIGRATION_INFO as F,
  MigFlag,
  MigState,
  openV1Bridge,
  readSome,
  saveV1,
  saveV2,
  setStateV1,
  V1,
  VfioError,
  writeAll,
} from '../dist/index.js';
import { readU64, writeU64 } from '../dist/v1/region-access.js';

export const MiB = 1024 * 1024;
const CHUNK = MiB; // the raw caller's read size and the bridge's data section: one size, so calls per byte match

/**
 * The sink every save case hands its bytes to: the resuming stream of a
 * second simulated device, written as a raw v2 caller does. It checks every
 * byte (one compare per page) and its state is compared with the source's.
 */
export async function verifyingSink(dev) {
  const stream = await dev.setState(MigState.RESUMING);
  return {
    sink: (chunk) => writeAll(stream, chunk, dev.name),
    finish: async () => {
      await dev.setState(MigState.RUNNING);
      await stream.close();
    },
  };
}

/** The source every resume case reads from: a simulated device's stop-copy stream, read into the caller's buffer. */
export async function deviceSource(dev) {
  const stream = await dev.setState(MigState.STOP_COPY);
  return {
    fill: (into) => readSome(stream, into),
    finish: async () => {
      await dev.setState(MigState.STOP);
      await stream.close();
    },
  };
}

/** The source as chunks of one reused buffer (each is written before the next is read). */
async function* chunksOf(fill) {
  const buf = new Uint8Array(CHUNK);
  for (let n; (n = await fill(buf)) > 0;) yield buf.subarray(0, n);
}

/**
 * QEMU 7.2's save with the data section mmap'd (vfio_save_buffer): header
 * fields through the region, the data straight from the shared section, no
 * copy on the caller's side. The sink is done with a chunk when it resolves.
 */
export async function saveV1Mmap(bridge, sink) {
  const view = bridge.dataView();
  await setStateV1(bridge, ~V1.RUNNING, V1.SAVING); // 001 -> 010
  for (
    let pending = await readU64(bridge, F.PENDING_BYTES);
    pending > 0n;
    pending = await readU64(bridge, F.PENDING_BYTES)
  ) {
    const at = Number(await readU64(bridge, F.DATA_OFFSET)) - bridge.dataOffset;
    const size = Number(await readU64(bridge, F.DATA_SIZE));
    if (size === 0) break;
    await sink(view.subarray(at, at + size));
  }
  await setStateV1(bridge, ~V1.SAVING, 0); // -> 000
}

/**
 * QEMU 7.2's resume with the data section mmap'd (vfio_load_buffer): the
 * incoming bytes land in the section (QEMU's qemu_get_buffer into the
 * mapping; here the source's read()), then data_size is written.
 */
export async function loadV1Mmap(bridge, fill) {
  const view = bridge.dataView();
  await setStateV1(bridge, ~V1.MASK, V1.RESUMING);
  for (;;) {
    const at = Number(await readU64(bridge, F.DATA_OFFSET)) - bridge.dataOffset;
    const n = await fill(view.subarray(at));
    if (n === 0) break;
    await writeU64(bridge, F.DATA_SIZE, BigInt(n));
  }
  await setStateV1(bridge, ~V1.MASK, V1.RUNNING);
}

const bridgeOptions = { sectionSize: CHUNK };
/** The bridge service's default data section (what QEMU 7.2 maps through the interposer): fewer header accesses per byte. */
const SERVICE_SECTION = 4 * MiB;

/** How each path saves `dev` into `sink`. */
export const savePaths = {
  raw: (dev, sink) => saveV2(dev, sink, { precopy: false, chunkSize: CHUNK, reuseBuffer: true }),
  bulk: async (dev, sink) =>
    saveV1(await openV1Bridge(dev, bridgeOptions), sink, { precopy: false, reuseBuffer: true }),
  mmap: async (dev, sink) => saveV1Mmap(await openV1Bridge(dev, { ...bridgeOptions, mmap: true }), sink),
  mmap4: async (dev, sink) => saveV1Mmap(await openV1Bridge(dev, { sectionSize: SERVICE_SECTION, mmap: true }), sink),
  qemu: async (dev, sink) =>
    saveV1(await openV1Bridge(dev, bridgeOptions), sink, { precopy: false, dataAccess: 'qemu', reuseBuffer: true }),
};

/** How each path resumes `dev` from `fill`. */
export const resumePaths = {
  raw: (dev, fill) => loadV2(dev, chunksOf(fill)),
  bulk: async (dev, fill) => loadV1(await openV1Bridge(dev, bridgeOptions), chunksOf(fill)),
  mmap: async (dev, fill) => loadV1Mmap(await openV1Bridge(dev, { ...bridgeOptions, mmap: true }), fill),
  mmap4: async (dev, fill) => loadV1Mmap(await openV1Bridge(dev, { sectionSize: SERVICE_SECTION, mmap: true }), fill),
  qemu: async (dev, fill) => loadV1(await openV1Bridge(dev, bridgeOptions), chunksOf(fill), { dataAccess: 'qemu' }),
};

/**
 * A save-only v2 device whose data_fd is a file (on tmpfs, a real read()
 * at memory speed): STOP_COPY opens the file through the kernel backend's
 * stream, as the kernel hands out a data_fd.
 */
export class FileDevice {
  #state = MigState.RUNNING;
  #stream = null;
  constructor(path) {
    this.path = path;
    this.name = `file:${path}`;
  }
  async migrationFlags() {
    return MigFlag.STOP_COPY;
  }
  async getState() {
    return this.#state;
  }
  async setState(state) {
    if (state === MigState.RESUMING) throw new VfioError('EINVAL', 'SET_STATE', this.name, 'save only');
    let opened = null;
    if (state === MigState.STOP_COPY && this.#state !== state)
      opened = this.#stream = kernelDataStream(openSync(this.path, 'r'), this.name);
    else if (this.#state === MigState.STOP_COPY) await this.#stream?.close();
    this.#state = state;
    return opened;
  }
  async stopCopySize() {
    throw new VfioError('ENOTTY', 'FEATURE_MIG_DATA_SIZE', this.name, 'not offered');
  }
  async reset() {
    await this.#stream?.close();
    this.#state = MigState.RUNNING;
  }
  async close() {
    await this.#stream?.close();
  }
}
