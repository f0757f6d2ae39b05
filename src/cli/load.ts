/**
 * vfio-mig load: a state file or stdin into a device. A regular file is
 * checked whole (header, byte counts, checksum, nothing after the trailer)
 * before the device is touched; stdin, a FIFO, a character device or a
 * socket can be read only once and gets the same checks as it streams: a
 * mismatch abandons the resume.
 */
import { stat } from 'node:fs/promises';
import { openV1Bridge } from '../bridge/v1-bridge.js';
import { VfioError, asVfioError } from '../errors.js';
import { loadV1 } from '../v1/reference-caller.js';
import type { V2Device } from '../v2/device.js';
import { assertNoSession, loadV2 } from '../v2/native-caller.js';
import { MigState, migStateName } from '../v2/uapi.js';
import { ByteSource, fifoChunks, fileChunks, socketChunks } from './byte-source.js';
import { stateDigestOf, type CliContext } from './context.js';
import { EXIT } from './exit-codes.js';
import { CliError, errorLine, fileError, progressReporter, toJson } from './output.js';
import { HEADER_SIZE, checkedStream, decodeHeader, type StateFileHeader } from './state-file.js';
import { isTerminal } from './terminal.js';

export interface LoadOptions {
  input: string;
  protocol: 'v1' | 'v2';
  finalState: 'running' | 'stop';
  sectionSize: number;
  json?: boolean;
}

/** Read errors name the input (its open too: fileChunks opens on the first read). */
async function* named(chunks: AsyncIterable<Uint8Array>, name: string): AsyncGenerator<Uint8Array> {
  try {
    yield* chunks;
  } catch (e) {
    throw fileError(e, 'load', name);
  }
}

/** The header, read from `chunks`, the bytes of the input messages call `name`; on a bad header the input is closed. */
async function openInput(
  name: string,
  chunks: AsyncIterable<Uint8Array>,
): Promise<{ src: ByteSource; header: StateFileHeader }> {
  const src = new ByteSource(named(chunks, name));
  try {
    return { src, header: decodeHeader(await src.readUpTo(HEADER_SIZE), name) };
  } catch (e) {
    await src.close();
    throw e;
  }
}

/** For a file: header, byte counts and checksum, all before the device is touched (`name` is what messages call it). */
export async function verifyStateFile(path: string, name = path): Promise<void> {
  const { src, header } = await openInput(name, fileChunks(path));
  try {
    for await (const _ of checkedStream(src.rest(), header, name)) void _;
  } finally {
    await src.close();
  }
}

export async function loadCommand(ctx: CliContext, devSpec: string, opts: LoadOptions): Promise<void> {
  let chunks: () => AsyncIterable<Uint8Array> = () => ctx.stdin();
  if (opts.input === '-' && ctx.stdinKind === 'terminal') {
    throw new CliError(
      'vfio-mig: refusing to read binary device state from a terminal: redirect stdin or use -i FILE',
      EXIT.USAGE,
    );
  }
  // `-i - < FILE` is a file like any other: checked whole before the device is touched (a reopened
  // /dev/stdin reads it from the start without moving stdin's own offset).
  if (opts.input === '-' && ctx.stdinKind === 'file') await verifyStateFile('/dev/stdin', 'stdin');
  if (opts.input !== '-') {
    const st = await stat(opts.input).catch((e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') return null;
      throw fileError(e, 'load', opts.input);
    });
    if (!st) throw new VfioError('ENOENT', 'load', opts.input, 'no such file');
    if (st.isDirectory()) throw new VfioError('EISDIR', 'load', opts.input, 'is a directory: give the state file');
    if (st.isCharacterDevice() && isTerminal(opts.input))
      throw new CliError(`vfio-mig: refusing to read binary device state from a terminal (${opts.input})`, EXIT.USAGE);
    // A FIFO, a character device or a socket can be read only once: checked as it streams, as stdin is.
    if (st.isFile()) await verifyStateFile(opts.input);
    chunks = st.isSocket()
      ? () => socketChunks(opts.input)
      : st.isFIFO()
        ? () => fifoChunks(opts.input)
        : () => fileChunks(opts.input);
  }
  const name = opts.input === '-' ? 'stdin' : opts.input;
  const { src, header: h } = await openInput(name, chunks());
  try {
    await ctx.withDevice(devSpec, (dev) => loadInto(ctx, dev, src, h, name, opts));
  } finally {
    await src.close(); // a load that failed midway stops reading its input now
  }
}

/** The device is opened: from here a failure after the first change abandons the resume and resets it. */
async function loadInto(
  ctx: CliContext,
  dev: V2Device,
  src: ByteSource,
  h: StateFileHeader,
  name: string,
  opts: LoadOptions,
): Promise<void> {
  const progress = progressReporter(
    ctx.stderr,
    `load ${dev.name}`,
    h.byteCount !== null ? { bytes: h.byteCount, estimate: false } : null,
  );
  const body = checkedStream(src.rest(), h, name);
  let touched = false;
  let flags: number | null = null;
  try {
    flags = await dev.migrationFlags();
    await assertNoSession(dev, 'load'); // someone else's session is not ours to abandon
    touched = true;
    let bytes: number;
    if (opts.protocol === 'v1') {
      const bridge = await openV1Bridge(dev, { sectionSize: opts.sectionSize });
      bytes = (
        await loadV1(bridge, body, {
          finalState: opts.finalState,
          device: dev.name,
          onProgress: (b) => progress('resume', b),
        })
      ).bytes;
    } else {
      const final = opts.finalState === 'stop' ? MigState.STOP : MigState.RUNNING;
      bytes = (await loadV2(dev, body, { finalState: final, onProgress: (b) => progress('resume', b) })).bytes;
    }
    progress.done(bytes);
    const state = migStateName(await dev.getState());
    const summary = {
      device: dev.name,
      input: name,
      protocol: opts.protocol,
      savedWith: h.protocol,
      sourceFlags: h.flags,
      deviceFlags: flags,
      bytes: BigInt(bytes),
      state,
      ...(dev.stateDigest ? { stateDigest: await stateDigestOf(dev) } : {}),
    };
    ctx.log(
      opts.json
        ? toJson(summary)
        : `loaded ${bytes} bytes (saved with ${h.protocol}) into ${dev.name} with the ${opts.protocol} protocol; device now ${state}`,
    );
  } catch (e) {
    progress.done();
    const err = asVfioError(e, 'load', dev.name);
    if (!touched) throw err;
    // The resume is abandoned: the device must not run half-loaded state.
    let after: string;
    try {
      await dev.reset();
      after = `${dev.name} reset to ${migStateName(await dev.getState())}; the state it had before the load is gone`;
    } catch (re) {
      after = `the reset failed too (${errorLine(re)}); the device state is unknown`;
    }
    // Flag sets may differ between compatible devices, so they are not refused up front; but a refusal is likely why.
    const differ =
      flags !== null && flags !== h.flags
        ? ` (the file was saved from a device with migration flags 0x${h.flags.toString(16)}, this one has 0x${flags.toString(16)})`
        : '';
    throw new CliError(`${errorLine(err)}${differ}; load abandoned: ${after}`, EXIT.DEVICE_LEFT_BAD, err);
  }
}
