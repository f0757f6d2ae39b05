/**
 * The legacy reference caller: the save and resume loops of a v1 VMM
 * (QEMU 5.2-7.2 hw/vfio/migration.c; docs/protocol.md#v1-save-loop,
 * #v1-resume-loop, #qemu-v1-caller), talking to any V1Region by
 * offsets only. It is the CLI's v1 mode and the bridge's test driver.
 */
import { precopyStalled } from '../precopy.js';
import { sinkWatch, type Sink } from '../sink-watch.js';
import { VfioError } from '../errors.js';
import { readData, readU32, readU64, writeData, writeU32, writeU64, type DataAccess } from './region-access.js';
import { MIGRATION_INFO as F, V1, isValidV1, v1StateName, type V1Region } from './uapi.js';

export interface SaveV1Options {
  /** Run pre-copy rounds (011) before stop-and-copy (default true). */
  precopy?: boolean;
  /** Stop pre-copy once pending_bytes is below this (default 1: until 0). */
  threshold?: bigint;
  /** At most this many pre-copy rounds (default 100); a round reads what was pending when it began. */
  maxRounds?: number;
  /** 'qemu': the data section in 8-byte reads as QEMU without mmap; 'bulk': one read per chunk (default). */
  dataAccess?: DataAccess;
  /**
   * Read every chunk into one buffer (as QEMU reads into its own), allocated
   * once (default false: a new buffer per chunk). Only for a sink that is
   * done with each chunk when its promise resolves: the next chunk overwrites it.
   */
  reuseBuffer?: boolean;
  /** Device name for error messages. */
  device?: string;
  onProgress?: (p: SaveProgress) => void;
}

export interface SaveProgress {
  phase: 'precopy' | 'stopcopy';
  bytes: number;
  rounds: number;
}

export interface SaveV1Result {
  bytes: number;
  precopyBytes: number;
  rounds: number;
  /** device_state at the end (000). */
  finalState: number;
  /** false when pre-copy stopped at the round limit or stopped shrinking; precopyPending was still pending then. */
  converged: boolean;
  precopyPending: bigint;
}

export interface LoadV1Options {
  dataAccess?: DataAccess;
  /** v1 state after the data is in: RUNNING (default, QEMU's VM start) or STOP. */
  finalState?: 'running' | 'stop';
  device?: string;
  onProgress?: (bytes: number) => void;
}

/** @deprecated The same type as Sink (src/sink-watch.ts), kept for callers that named it. */
export type ChunkSink = Sink;

/**
 * vfio_migration_set_state(): read-modify-write of device_state. An invalid
 * result is never written; a failed write is followed by a read-back so the
 * error says where the device is.
 */
export async function setStateV1(region: V1Region, mask: number, value: number, device = 'v1 region'): Promise<number> {
  const old = await readU32(region, F.DEVICE_STATE);
  const next = ((old & mask) | value) >>> 0;
  if (!isValidV1(next))
    throw new VfioError(
      'EINVAL',
      `v1 set_state ${v1StateName(old)}->${v1StateName(next)}`,
      device,
      'invalid v1 state, not written',
    );
  try {
    await writeU32(region, F.DEVICE_STATE, next);
  } catch (e) {
    let now = 'unreadable';
    try {
      now = v1StateName(await readU32(region, F.DEVICE_STATE));
    } catch {
      // keep 'unreadable'
    }
    const code = e instanceof VfioError ? e.code : 'EIO';
    throw new VfioError(
      code,
      `v1 set_state ${v1StateName(old)}->${v1StateName(next)}`,
      device,
      `device_state now ${now}`,
      { cause: e, details: { deviceState: now } },
    );
  }
  return next;
}

/** One chunk (vfio_save_buffer): data_offset, then data_size, then the data. */
async function saveBuffer(
  region: V1Region,
  sink: Sink,
  mode: DataAccess,
  device: string,
  buffer?: Uint8Array,
): Promise<number> {
  const dataOffset = await readU64(region, F.DATA_OFFSET);
  const dataSize = await readU64(region, F.DATA_SIZE);
  if (dataOffset < BigInt(F.SIZE) || dataOffset > BigInt(region.size) || dataSize > BigInt(region.size) - dataOffset) {
    // QEMU would loop forever on a data_size past the region end; say so instead.
    throw new VfioError(
      'EINVAL',
      'v1 save',
      device,
      `data_offset ${dataOffset} + data_size ${dataSize} runs past the region (${region.size} bytes)`,
    );
  }
  const n = Number(dataSize);
  if (n > 0) await sink(await readData(region, Number(dataOffset), n, mode, buffer));
  return n;
}

/**
 * Saves the device behind a v1 region: 001 -> 011 pre-copy rounds (pending,
 * data_offset, data_size, data) until pending is below the threshold or the
 * round limit, -> 010 drained until pending is 0, -> 000.
 */
export async function saveV1(region: V1Region, sink: Sink, options: SaveV1Options = {}): Promise<SaveV1Result> {
  const device = options.device ?? 'v1 region';
  const state = await readU32(region, F.DEVICE_STATE);
  const taker = sinkWatch(sink);
  try {
    return await saveV1Steps(region, taker.sink, options, state);
  } catch (e) {
    // The taker failed, not the device: clear SAVING back to where the save began (QEMU's notifier on a failed migration).
    if (taker.failed)
      await setStateV1(region, ~(V1.SAVING | V1.RESUMING), state & V1.RUNNING, device).catch(() => undefined);
    throw e;
  }
}

async function saveV1Steps(region: V1Region, sink: Sink, options: SaveV1Options, state: number): Promise<SaveV1Result> {
  const device = options.device ?? 'v1 region';
  const mode = options.dataAccess ?? 'bulk';
  const threshold = options.threshold ?? 1n;
  const maxRounds = options.maxRounds ?? 100;
  // data_offset + data_size never run past the region (saveBuffer checks), so a region-sized buffer holds any chunk.
  const buffer = options.reuseBuffer ? new Uint8Array(region.size) : undefined;
  let bytes = 0;
  let rounds = 0;
  let pending = 0n;
  let converged = true;
  if (options.precopy !== false && state & V1.RUNNING) {
    await setStateV1(region, V1.MASK, V1.SAVING, device); // 001 -> 011
    pending = await readU64(region, F.PENDING_BYTES);
    // A round reads what was pending when it began, no more, as saveV2 does: a
    // device that dirties as fast as it is read would otherwise never leave it.
    while (pending >= threshold && pending > 0n) {
      if (rounds >= maxRounds) {
        converged = false;
        break;
      }
      const start = pending;
      let inRound = 0n;
      for (;;) {
        const n = await saveBuffer(region, sink, mode, device, buffer);
        bytes += n;
        inRound += BigInt(n);
        options.onProgress?.({ phase: 'precopy', bytes, rounds });
        pending = await readU64(region, F.PENDING_BYTES); // ends the chunk; the next one starts here
        if (n === 0 || pending === 0n || inRound >= start) break;
      }
      rounds++;
      if (precopyStalled(start, pending, threshold)) {
        converged = false; // not shrinking: the rest goes in stop-copy
        break;
      }
    }
  }
  const precopyBytes = bytes;
  const precopyPending = pending;
  await setStateV1(region, ~V1.RUNNING, V1.SAVING, device); // -> 010
  let left = await readU64(region, F.PENDING_BYTES);
  while (left > 0n) {
    const n = await saveBuffer(region, sink, mode, device, buffer);
    if (n === 0) break;
    bytes += n;
    options.onProgress?.({ phase: 'stopcopy', bytes, rounds });
    left = await readU64(region, F.PENDING_BYTES);
  }
  const finalState = await setStateV1(region, ~V1.SAVING, 0, device); // -> 000
  return { bytes, precopyBytes, rounds, finalState, converged, precopyPending };
}

/**
 * Loads state into the device behind a v1 region: -> 100, for each piece
 * data_offset, the data, data_size (re-chunked to the window), -> 001.
 */
export async function loadV1(
  region: V1Region,
  source: AsyncIterable<Uint8Array> | Iterable<Uint8Array>,
  options: LoadV1Options = {},
): Promise<{ bytes: number; finalState: number }> {
  const device = options.device ?? 'v1 region';
  const mode = options.dataAccess ?? 'bulk';
  let bytes = 0;
  await setStateV1(region, ~V1.MASK, V1.RESUMING, device);
  for await (const record of source) {
    let done = 0;
    while (done < record.length) {
      const dataOffset = Number(await readU64(region, F.DATA_OFFSET));
      if (dataOffset < F.SIZE || dataOffset >= region.size)
        throw new VfioError('EINVAL', 'v1 load', device, `data_offset ${dataOffset} is outside the region`);
      const piece = Math.min(record.length - done, region.size - dataOffset);
      await writeData(region, dataOffset, record.subarray(done, done + piece), mode);
      await writeU64(region, F.DATA_SIZE, BigInt(piece));
      done += piece;
      bytes += piece;
      options.onProgress?.(bytes);
    }
  }
  const finalState = await setStateV1(region, ~V1.MASK, options.finalState === 'stop' ? V1.STOP : V1.RUNNING, device);
  return { bytes, finalState };
}
