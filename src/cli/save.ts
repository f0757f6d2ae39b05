/**
 * vfio-mig save: device state to a file (written under a temporary name,
 * synced, then renamed, so a failed or interrupted save leaves nothing under
 * the target name) or to stdout.
 */
import { once } from 'node:events';
import { finished } from 'node:stream/promises';
import { existsSync, fstatSync, lstatSync, statSync } from 'node:fs';
import type { Stats } from 'node:fs';
import { lstat, open, readlink, realpath, rename, stat, unlink, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { openV1Bridge } from '../bridge/v1-bridge.js';
import { saveV1 } from '../v1/reference-caller.js';
import type { V2Device } from '../v2/device.js';
import { saveV2 } from '../v2/native-caller.js';
import { MigState } from '../v2/uapi.js';
import { VfioError } from '../errors.js';
import { encodeHeader, encodeTrailer, newHash, stateFileHeader, type SavedProtocol } from './state-file.js';
import { CliError, countOf, failedOn, fileError, progressEnabled, progressReporter, toJson } from './output.js';
import { signalTurns, stateDigestOf, type CliContext, type CliStream } from './context.js';
import { openFifo, openSocket } from './byte-source.js';
import { EXIT } from './exit-codes.js';
import { isTerminal } from './terminal.js';

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
async function outputTarget(
  output: string,
  stdout: CliStream,
): Promise<{
  file: string;
  atomic: boolean;
  replaces?: Stats | null;
  socket?: boolean;
  fifo?: boolean;
  stdout?: boolean;
}> {
  // Not there yet is fine; not allowed to look is not.
  const absent = (e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return null;
    throw fileError(e, 'save', output);
  };
  // A symlink is followed, also when its target does not exist yet (it is created). A magic link
  // (/dev/fd/N of >(cmd), whose text is "pipe:[N]") is only followed by stat, so stat comes first.
  let path = output;
  const st = await stat(output).catch(absent);
  const link = st ? null : await lstat(output).catch(absent);
  if (link?.isSymbolicLink()) path = resolve(dirname(output), await readlink(output));
  if (st?.isDirectory()) throw new VfioError('EISDIR', 'save', output, 'is a directory: give a file name');
  if (st?.isCharacterDevice() && isTerminal(path))
    throw new CliError(`vfio-mig: refusing to write binary device state to a terminal (${output})`, EXIT.USAGE);
  if (st && !st.isFile())
    return { file: path, atomic: false, socket: st.isSocket(), fifo: st.isFIFO(), stdout: isFileOf(stdout, st) };
  const file = st ? await realpath(path) : resolve(path);
  if (!existsSync(dirname(file))) throw new VfioError('ENOENT', 'save', output, `no directory ${dirname(file)}`);
  if (st) await assertReplaceable(file, st, output);
  return { file, atomic: true, replaces: st };
}

/**
 * In a sticky directory (/tmp) only the file's or the directory's owner may
 * replace a file (rename(2) gives EPERM). Found only at the rename, after the
 * device was stopped and its state read: say so before the device is touched.
 */
async function assertReplaceable(file: string, st: Stats, output: string): Promise<void> {
  const uid = process.getuid?.();
  if (uid === undefined || uid === 0 || uid === st.uid) return;
  const dir = await stat(dirname(file));
  if (dir.mode & 0o1000 /* S_ISVTX */ && uid !== dir.uid) {
    throw new VfioError(
      'EPERM',
      'save',
      output,
      `another user's file in a sticky directory (${dirname(file)}) cannot be replaced`,
      { details: { file } },
    );
  }
}

/** A new state file is private (device state can carry guest memory); one that replaces a file keeps its mode and, where allowed, owner. */
const NEW_FILE_MODE = 0o600;

async function takeOver(fh: FileHandle, old: Stats): Promise<void> {
  if (old.uid !== process.getuid?.() || old.gid !== process.getgid?.()) {
    // Root gives the file back to its owner; anyone else can at most set the group (one of theirs), else keeps it.
    await fh.chown(process.getuid?.() === 0 ? old.uid : -1, old.gid).catch((e: NodeJS.ErrnoException) => {
      if (e.code !== 'EPERM') throw e;
    });
  }
  await fh.chmod(old.mode & 0o777); // after chown, which may clear bits
}

/** Whether `path` is a symbolic link to what `stream` writes to (/dev/stdout, /dev/fd/1). */
function isLinkTo(path: string, stream: CliStream): boolean {
  try {
    return lstatSync(path).isSymbolicLink() && isFileOf(stream, statSync(path));
  } catch {
    return false;
  }
}

/** Whether `stream` writes to the file `st` describes (-o /dev/stdout). */
function isFileOf(stream: CliStream, st: Stats): boolean {
  const fd = (stream as { fd?: unknown }).fd;
  if (typeof fd !== 'number') return false;
  try {
    const own = fstatSync(fd);
    return own.dev === st.dev && own.ino === st.ino;
  } catch {
    return false; // closed
  }
}

/** Whether `stream` writes to /dev/null: what Node puts on a closed stdout (`>&-`) before any code of ours runs. */
function isDevNull(stream: CliStream): boolean {
  const fd = (stream as { fd?: unknown }).fd;
  if (typeof fd !== 'number') return false;
  try {
    const own = fstatSync(fd);
    return own.isCharacterDevice() && own.rdev === statSync('/dev/null').rdev;
  } catch {
    return false;
  }
}

export async function saveCommand(ctx: CliContext, dev: V2Device, opts: SaveOptions): Promise<void> {
  if (opts.output === '-' && ctx.stdout.isTTY) {
    throw new CliError(
      'vfio-mig: refusing to write binary device state to a terminal: redirect stdout or use -o FILE',
      EXIT.USAGE,
    );
  }
  // A closed stdout cannot be told from one sent to /dev/null: both would report a save of state that went nowhere.
  // -o /dev/null (not a link to stdout, as /dev/stdout is) says the loss is meant.
  const viaStdout = opts.output === '-' || isLinkTo(opts.output, ctx.stdout);
  if (viaStdout && isDevNull(ctx.stdout)) {
    throw new CliError(
      'vfio-mig: refusing to save to stdout: it is /dev/null (a closed stdout, >&-, is reopened there), so the state would be lost; -o /dev/null discards it on purpose',
      EXIT.USAGE,
    );
  }
  const target = opts.output === '-' ? null : await outputTarget(opts.output, ctx.stdout);
  // -o /dev/stdout on a pipe or socket is -o -: the summary must not go into the data.
  const toStdout = !target || target.stdout === true;
  const flags = await dev.migrationFlags();
  const tmp = target?.atomic ? join(dirname(target.file), `.${basename(target.file)}.${process.pid}.tmp`) : null;
  // A stream: stdout, a socket (which open(2) refuses) or a FIFO (see openFifo); else a file handle.
  const out = toStdout
    ? ctx.stdout
    : target.socket || target.fifo
      ? await (target.socket ? openSocket : openFifo)(target.file, 'w').catch((e) => {
          throw fileError(e, 'save', opts.output);
        })
      : null;
  const fh =
    target && !out
      ? await open(tmp ?? target.file, tmp ? 'wx' : 'w', NEW_FILE_MODE).catch((e) => {
          throw fileError(e, 'save', opts.output, tmp ? `creating a file in ${dirname(tmp)}` : undefined);
        })
      : null;
  const write = (data: Uint8Array) => (fh ? fh.write(data) : writeStream(out!, data));
  if (tmp) ctx.unfinished(tmp); // an interrupt removes it
  const hash = newHash();
  let count = 0n;
  // MIG_DATA_SIZE is an estimate (pre-copy may send more); ENOTTY: no percentage.
  const estimate = progressEnabled(ctx.stderr) ? await dev.stopCopySize().catch(() => null) : null;
  const progress = progressReporter(
    ctx.stderr,
    `save ${dev.name}`,
    estimate ? { bytes: estimate, estimate: true } : null,
  );
  try {
    if (tmp && target?.replaces) await takeOver(fh!, target.replaces);
    const header = encodeHeader({ protocol: opts.protocol, flags, byteCount: null });
    await write(header);
    const letSignalsIn = signalTurns();
    const sink = async (chunk: Uint8Array) => {
      await letSignalsIn();
      hash.update(chunk);
      count += BigInt(chunk.length);
      await write(chunk);
    };
    let result: { bytes: number; precopyBytes: number; rounds: number; converged?: boolean; precopyPending?: bigint };
    if (opts.protocol === 'v1') {
      const bridge = await openV1Bridge(dev, { sectionSize: opts.sectionSize });
      result = await saveV1(bridge, sink, {
        precopy: opts.precopy,
        threshold: opts.threshold,
        maxRounds: opts.rounds,
        device: dev.name,
        onProgress: (p) => progress(p.phase, p.bytes),
      });
    } else {
      result = await saveV2(dev, sink, {
        precopy: opts.precopy,
        threshold: opts.threshold,
        maxRounds: opts.rounds,
        finalState: MigState.STOP,
        onProgress: (p) => progress(p.phase, p.bytes),
      });
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
      await write(trailer);
      if (out !== ctx.stdout) await finished(out!.end(), { readable: false }); // flushed before the summary says saved
    }
    progress.done(result.bytes);
    const summary = {
      device: dev.name,
      output: target ? opts.output : 'stdout',
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
      : `saved ${result.bytes} bytes (${result.precopyBytes} in ${countOf(result.rounds, 'pre-copy round')}) from ${dev.name} to ${summary.output} with the ${opts.protocol} protocol; device left in STOP` +
        (result.converged === false
          ? `\npre-copy did not converge: ${result.precopyPending} bytes were still pending after ${countOf(result.rounds, 'round')} and went in stop-copy`
          : '');
    if (toStdout) ctx.stderr.write(`${text}\n`);
    else ctx.log(text);
  } catch (e) {
    progress.done();
    if (fh) await fh.close().catch(() => undefined);
    if (out && out !== ctx.stdout) out.destroy();
    if (tmp) {
      await unlink(tmp).catch(() => undefined);
      ctx.finished(tmp);
    }
    throw await failedOn(dev, fileError(e, 'save', target ? opts.output : 'stdout'));
  }
}
