/**
 * The native v2 migration caller, as a v2 VMM (QEMU 8.x) drives a device:
 * RUNNING -> PRE_COPY rounds -> STOP_COPY drained to end of stream -> STOP,
 * and RESUMING -> data -> the final state.
 */
import { precopyStalled } from '../precopy.js';
import { sinkWatch, type Sink } from '../sink-watch.js';
import { VfioError, isVfioError } from '../errors.js';
import type { DataStream, V2Device } from './device.js';
import { MigFlag, MigState, migStateName } from './uapi.js';
import { readSome, writeAll } from './stream-io.js';
import { holdsSession } from './fsm.js';

export interface SaveV2Options {
  /** Use PRE_COPY when the device has it (default true). */
  precopy?: boolean;
  /** Leave pre-copy once initial + dirty bytes fall below this (default 1: until both are 0). */
  threshold?: bigint;
  /**
   * At most this many pre-copy rounds (default 100). A round reads at most the
   * bytes pending when it began (as QEMU's iteration does), and pre-copy ends
   * early when a round does not shrink what is pending to 3/4 or less.
   */
  maxRounds?: number;
  /** State to leave the source in (default STOP). */
  finalState?: MigState;
  /** Read size (default 1 MiB). */
  chunkSize?: number;
  /**
   * Read every chunk into one buffer, allocated once (default false: a new
   * buffer per chunk). Only for a sink that is done with each chunk when its
   * promise resolves: the next read overwrites it.
   */
  reuseBuffer?: boolean;
  onProgress?: (p: { phase: 'precopy' | 'stopcopy'; bytes: number; rounds: number }) => void;
}

export interface SaveV2Result {
  bytes: number;
  precopyBytes: number;
  rounds: number;
  /** False when pre-copy ended with data still pending above the threshold (too many rounds, or dirtied as fast as read). */
  converged: boolean;
  /** initial + dirty bytes pending when pre-copy ended (0n without pre-copy). */
  precopyPending: bigint;
}

export type { Sink };

/**
 * Reads into `sink` until end of stream (0), in pre-copy the temporary end
 * (ENOMSG or 0), or `limit` bytes. With `buffer`, every chunk is read into
 * it (the sink must be done with a chunk when its promise resolves); else
 * each chunk gets a buffer of its own.
 */
export async function drainStream(
  stream: DataStream,
  sink: Sink,
  chunkSize = 1 << 20,
  onBytes: (n: number) => void = () => undefined,
  limit = Infinity,
  buffer?: Uint8Array,
): Promise<void> {
  for (let left = limit; left > 0;) {
    const size = Math.min(buffer?.length ?? chunkSize, left);
    const buf = buffer ? buffer.subarray(0, size) : new Uint8Array(size);
    let n: number;
    try {
      n = await readSome(stream, buf);
    } catch (e) {
      if (isVfioError(e, 'ENOMSG')) return;
      throw e;
    }
    if (n === 0) return;
    await sink(buf.subarray(0, n));
    onBytes(n);
    left -= n;
  }
}

/**
 * A device found mid-session belongs to whoever holds its data_fd, or to a
 * process that died holding it: starting over from there would step an arc
 * out of a session nobody owns (which oopses mtty, docs/decisions.md #10).
 */
export async function assertNoSession(device: V2Device, op: string): Promise<MigState> {
  const state = await device.getState();
  if (holdsSession(state)) {
    throw new VfioError(
      'EBUSY',
      op,
      device.name,
      `device is in ${migStateName(state)}: another process holds its data session, or one died holding it (VFIO_DEVICE_RESET ends it: \`vfio-mig state DEVICE --reset\`)`,
    );
  }
  return state;
}

export async function saveV2(device: V2Device, sink: Sink, options: SaveV2Options = {}): Promise<SaveV2Result> {
  const chunkSize = options.chunkSize ?? 1 << 20;
  const buffer = options.reuseBuffer ? new Uint8Array(chunkSize) : undefined;
  const flags = await device.migrationFlags();
  const startState = await assertNoSession(device, 'saveV2');
  let bytes = 0;
  let rounds = 0;
  let pending = 0n;
  let converged = true;
  let stream: DataStream | null = null;
  const taker = sinkWatch(sink);
  sink = taker.sink;
  try {
    if (options.precopy !== false && flags & MigFlag.PRE_COPY) {
      stream = await device.setState(MigState.PRE_COPY);
      const threshold = options.threshold ?? 1n;
      const pendingNow = async () => {
        const info = await stream!.precopyInfo();
        return info.initialBytes + info.dirtyBytes;
      };
      pending = await pendingNow();
      for (;;) {
        if (pending < threshold) break;
        if (rounds >= (options.maxRounds ?? 100)) {
          converged = false;
          break;
        }
        // Read what was pending when the round began, no more: a device that dirties as fast as it is read never reaches its temporary end.
        await drainStream(
          stream!,
          sink,
          chunkSize,
          (n) => {
            bytes += n;
            options.onProgress?.({ phase: 'precopy', bytes, rounds });
          },
          Number(pending),
          buffer,
        );
        rounds++;
        const before = pending;
        pending = await pendingNow();
        if (precopyStalled(before, pending, threshold)) {
          converged = false; // not shrinking: the rest goes in stop-copy
          break;
        }
      }
    }
    const precopyBytes = bytes;
    stream = (await device.setState(MigState.STOP_COPY)) ?? stream;
    await drainStream(
      stream!,
      sink,
      chunkSize,
      (n) => {
        bytes += n;
        options.onProgress?.({ phase: 'stopcopy', bytes, rounds });
      },
      Infinity,
      buffer,
    );
    await device.setState(options.finalState ?? MigState.STOP);
    return { bytes, precopyBytes, rounds, converged, precopyPending: pending };
  } catch (e) {
    // The taker failed (a closed pipe, a full disk), not the device: end the session while its
    // data_fd is still open, back where the save began, as QEMU does on a failed migration.
    if (taker.failed)
      await device.setState(startState).then(
        (s) => s?.close(),
        () => undefined,
      );
    throw e;
  } finally {
    await stream?.close();
  }
}

export async function loadV2(
  device: V2Device,
  source: AsyncIterable<Uint8Array> | Iterable<Uint8Array>,
  options: { finalState?: MigState; onProgress?: (bytes: number) => void } = {},
): Promise<{ bytes: number }> {
  await assertNoSession(device, 'loadV2');
  const stream = await device.setState(MigState.RESUMING);
  let bytes = 0;
  try {
    for await (const chunk of source) {
      await writeAll(stream!, chunk, device.name);
      bytes += chunk.length;
      options.onProgress?.(bytes);
    }
    await device.setState(options.finalState ?? MigState.RUNNING);
    return { bytes };
  } finally {
    await stream?.close();
  }
}
