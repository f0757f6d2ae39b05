/**
 * vfio-mig save: device state to a file (written under a temporary name,
 * synced, then renamed, so a failed or interrupted save leaves nothing under
 * the target name) or to stdout.
 */
import { open, rename, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { openV1Bridge } from '../bridge/v1-bridge.js';
import { saveV1 } from '../v1/reference-caller.js';
import type { V2Device } from '../v2/device.js';
import { saveV2 } from '../v2/native-caller.js';
import { MigState } from '../v2/uapi.js';
import { SimDevice } from '../v2/sim/sim-device.js';
import { asVfioError } from '../errors.js';
import { encodeHeader, encodeTrailer, newHash, stateFileHeader, type SavedProtocol } from './state-file.js';
import { progressReporter, toJson } from './output.js';

export interface SaveOptions {
  output: string;
  protocol: SavedProtocol;
  precopy: boolean;
  rounds: number;
  threshold: bigint;
  sectionSize: number;
  json?: boolean;
}

/** Files being written right now, removed if the process is interrupted. */
export const unfinishedFiles = new Set<string>();

async function writeStdout(data: Uint8Array): Promise<void> {
  if (!process.stdout.write(data)) await new Promise<void>((resolve, reject) => {
    process.stdout.once('drain', resolve);
    process.stdout.once('error', reject);
  });
}

export async function saveCommand(dev: V2Device, opts: SaveOptions): Promise<void> {
  const flags = await dev.migrationFlags();
  const toStdout = opts.output === '-';
  const tmp = toStdout ? null : join(dirname(opts.output), `.${basename(opts.output)}.${process.pid}.tmp`);
  const fh = tmp ? await open(tmp, 'wx') : null;
  if (tmp) unfinishedFiles.add(tmp);
  const hash = newHash();
  let count = 0n;
  const progress = progressReporter(`save ${dev.name}`);
  try {
    const header = encodeHeader({ protocol: opts.protocol, flags, byteCount: null });
    if (fh) await fh.write(header);
    else await writeStdout(header);
    const sink = async (chunk: Uint8Array) => {
      hash.update(chunk);
      count += BigInt(chunk.length);
      if (fh) await fh.write(chunk);
      else await writeStdout(chunk);
    };
    let result: { bytes: number; precopyBytes: number; rounds: number };
    if (opts.protocol === 'v1') {
      const bridge = await openV1Bridge(dev, { sectionSize: opts.sectionSize });
      result = await saveV1(bridge, sink, { precopy: opts.precopy, threshold: opts.threshold, maxRounds: opts.rounds, device: dev.name, onProgress: (p) => progress(p.phase, p.bytes) });
    } else {
      result = await saveV2(dev, sink, { precopy: opts.precopy, threshold: opts.threshold, maxRounds: opts.rounds, finalState: MigState.STOP, onProgress: (p) => progress(p.phase, p.bytes) });
    }
    const trailer = encodeTrailer(count, hash.digest());
    if (fh) {
      await fh.write(trailer);
      // The byte count, now known, into the header.
      const b = Buffer.alloc(8);
      b.writeBigUInt64LE(count);
      await fh.write(b, 0, 8, stateFileHeader.layout.byte_count.offset);
      await fh.sync();
      await fh.close();
      await rename(tmp!, opts.output);
      unfinishedFiles.delete(tmp!);
    } else {
      await writeStdout(trailer);
    }
    progress.done();
    const summary = {
      device: dev.name,
      output: toStdout ? 'stdout' : opts.output,
      protocol: opts.protocol,
      bytes: result.bytes,
      precopyBytes: result.precopyBytes,
      rounds: result.rounds,
      finalState: 'STOP',
      ...(dev instanceof SimDevice ? { stateDigest: dev.stateDigest() } : {}),
    };
    // With the data on stdout, the summary goes to stderr.
    const text = opts.json
      ? toJson(summary)
      : `saved ${result.bytes} bytes (${result.precopyBytes} in ${result.rounds} pre-copy rounds) from ${dev.name} to ${summary.output} with the ${opts.protocol} protocol; device left in STOP`;
    if (toStdout) process.stderr.write(`${text}\n`);
    else console.log(text);
  } catch (e) {
    progress.done();
    if (fh) {
      await fh.close().catch(() => undefined);
      await unlink(tmp!).catch(() => undefined);
      unfinishedFiles.delete(tmp!);
    }
    throw asVfioError(e, 'save', toStdout ? 'stdout' : opts.output);
  }
}
