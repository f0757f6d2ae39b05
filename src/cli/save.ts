/**
 * vfio-mig save: device state to a file (written under a temporary name,
 * synced, then renamed, so a failed or interrupted save leaves nothing under
 * the target name) or to stdout.
 */
import { once } from 'node:events';
import { closeSync, constants, existsSync, openSync } from 'node:fs';
import { lstat, open, readlink, realpath, rename, stat, unlink } from 'node:fs/promises';
import { isatty } from 'node:tty';
import { basename, dirname, join, resolve } from 'node:path';
import { openV1Bridge } from '../bridge/v1-bridge.js';
import { saveV1 } from '../v1/reference-caller.js';
import type { V2Device } from '../v2/device.js';
import { saveV2 } from '../v2/native-caller.js';
import { MigState } from '../v2/uapi.js';
import { VfioError, asVfioError } from '../errors.js';
import { encodeHeader, encodeTrailer, newHash, stateFileHeader, type SavedProtocol } from './state-file.js';
import { CliError, failedOn, progressEnabled, progressReporter, toJson } from './output.js';
import { signalTurns, stateDigestOf, type CliContext, type CliStream } from './context.js';
import { EXIT } from './exit-codes.js';

export interface SaveOptions {
  output: string;
  protocol: SavedProtocol;
  precopy: boolean;
  rounds: number;
  threshold: bigint;
  sectionSize: number;
  json?: boolean;
}

async function writeStream(out: CliStream, data: Uint8Array): Promise<void> {
  if (!out.write(data)) await once(out, 'drain'); // rejects on 'error', removes its listeners
}

/**
 * Where the state goes: a regular file (new or existing, through a symlink
 * too) is replaced atomically from a temporary file next to it; a character
 * device, FIFO or socket is written straight through; a directory is refused.
 */
async function outputTarget(output: string): Promise<{ file: string; atomic: boolean }> {
  // A symlink is followed, also when its target does not exist yet (it is created).
  const link = await lstat(output).catch(() => null);
  const path = link?.isSymbolicLink() ? resolve(dirname(output), await readlink(output)) : output;
  const st = await stat(path).catch(() => null);
  if (st?.isDirectory()) throw new VfioError('EISDIR', 'save', output, 'is a directory: give a file name');
  if (st?.isCharacterDevice() && isTerminal(path)) throw new CliError(`vfio-mig: refusing to write binary device state to a terminal (${output})`, EXIT.USAGE);
  if (st && !st.isFile()) return { file: path, atomic: false };
  const file = st ? await realpath(path) : resolve(path);
  if (!existsSync(dirname(file))) throw new VfioError('ENOENT', 'save', output, `no directory ${dirname(file)}`);
  return { file, atomic: true };
}

/** Whether a character device is a terminal (opened without becoming our controlling tty). */
function isTerminal(path: string): boolean {
  let fd = -1;
  try {
    fd = openSync(path, constants.O_WRONLY | constants.O_NOCTTY | constants.O_NONBLOCK);
    return isatty(fd);
  } catch {
    return false;
  } finally {
    if (fd >= 0) closeSync(fd);
  }
}

export async function saveCommand(ctx: CliContext, dev: V2Device, opts: SaveOptions): Promise<void> {
  const toStdout = opts.output === '-';
  const writeStdout = (data: Uint8Array) => writeStream(ctx.stdout, data);
  if (toStdout && ctx.stdout.isTTY) {
    throw new CliError('vfio-mig: refusing to write binary device state to a terminal: redirect stdout or use -o FILE', EXIT.USAGE);
  }
  const target = toStdout ? null : await outputTarget(opts.output);
  const flags = await dev.migrationFlags();
  const tmp = target?.atomic ? join(dirname(target.file), `.${basename(target.file)}.${process.pid}.tmp`) : null;
  const fh = target ? await open(tmp ?? target.file, tmp ? 'wx' : 'w') : null;
  if (tmp) ctx.unfinished(tmp); // an interrupt removes it
  const hash = newHash();
  let count = 0n;
  // MIG_DATA_SIZE is an estimate (pre-copy may send more); ENOTTY: no percentage.
  const estimate = progressEnabled(ctx.stderr) ? await dev.stopCopySize().catch(() => null) : null;
  const progress = progressReporter(ctx.stderr, `save ${dev.name}`, estimate ? { bytes: estimate, estimate: true } : null);
  try {
    const header = encodeHeader({ protocol: opts.protocol, flags, byteCount: null });
    if (fh) await fh.write(header);
    else await writeStdout(header);
    const letSignalsIn = signalTurns();
    const sink = async (chunk: Uint8Array) => {
      await letSignalsIn();
      hash.update(chunk);
      count += BigInt(chunk.length);
      if (fh) await fh.write(chunk);
      else await writeStdout(chunk);
    };
    let result: { bytes: number; precopyBytes: number; rounds: number; converged?: boolean; precopyPending?: bigint };
    if (opts.protocol === 'v1') {
      const bridge = await openV1Bridge(dev, { sectionSize: opts.sectionSize });
      result = await saveV1(bridge, sink, { precopy: opts.precopy, threshold: opts.threshold, maxRounds: opts.rounds, device: dev.name, onProgress: (p) => progress(p.phase, p.bytes) });
    } else {
      result = await saveV2(dev, sink, { precopy: opts.precopy, threshold: opts.threshold, maxRounds: opts.rounds, finalState: MigState.STOP, onProgress: (p) => progress(p.phase, p.bytes) });
    }
    const trailer = encodeTrailer(count, hash.digest());
    if (fh) {
      await fh.write(trailer);
      if (tmp) {
        // The byte count, now known, into the header (a stream target keeps "unknown").
        const b = Buffer.alloc(8);
        b.writeBigUInt64LE(count);
        await fh.write(b, 0, 8, stateFileHeader.layout.byte_count.offset);
        await fh.sync();
      }
      await fh.close();
      if (tmp) {
        await rename(tmp, target!.file);
        ctx.finished(tmp);
      }
    } else {
      await writeStdout(trailer);
    }
    progress.done();
    const summary = {
      device: dev.name,
      output: toStdout ? 'stdout' : opts.output,
      protocol: opts.protocol,
      bytes: BigInt(result.bytes),
      precopyBytes: BigInt(result.precopyBytes),
      rounds: result.rounds,
      ...(result.converged === false ? { converged: false, precopyPending: result.precopyPending } : {}),
      finalState: 'STOP',
      ...(dev.stateDigest ? { stateDigest: await stateDigestOf(dev) } : {}),
    };
    // With the data on stdout, the summary goes to stderr.
    const text = opts.json
      ? toJson(summary)
      : `saved ${result.bytes} bytes (${result.precopyBytes} in ${result.rounds} pre-copy rounds) from ${dev.name} to ${summary.output} with the ${opts.protocol} protocol; device left in STOP` +
        (result.converged === false ? `\npre-copy did not converge: ${result.precopyPending} bytes were still pending after ${result.rounds} rounds and went in stop-copy` : '');
    if (toStdout) ctx.stderr.write(`${text}\n`);
    else ctx.log(text);
  } catch (e) {
    progress.done();
    if (fh) await fh.close().catch(() => undefined);
    if (tmp) {
      await unlink(tmp).catch(() => undefined);
      ctx.finished(tmp);
    }
    throw await failedOn(dev, asVfioError(e, 'save', toStdout ? 'stdout' : opts.output));
  }
}
