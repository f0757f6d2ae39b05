/**
 * vfio-mig load: a state file or stdin into a device. A file's header and
 * checksum are checked before the device is touched; stdin is checked as
 * it streams, and a bad checksum abandons the resume.
 */
import { stat } from 'node:fs/promises';
import { openV1Bridge } from '../bridge/v1-bridge.js';
import { VfioError, asVfioError } from '../errors.js';
import { loadV1 } from '../v1/reference-caller.js';
import type { V2Device } from '../v2/device.js';
import { assertNoSession, loadV2 } from '../v2/native-caller.js';
import { MigState, migStateName } from '../v2/uapi.js';
import { ByteSource, fileChunks } from './byte-source.js';
import { stateDigestOf, type CliContext } from './context.js';
import { EXIT } from './exit-codes.js';
import { CliError, errorLine, progressReporter, toJson } from './output.js';
import { HEADER_SIZE, TRAILER_SIZE, checkTrailer, decodeHeader, newHash, type StateFileHeader } from './state-file.js';

export interface LoadOptions {
  input: string;
  protocol: 'v1' | 'v2';
  finalState: 'running' | 'stop';
  sectionSize: number;
  json?: boolean;
}

/** The stream bytes, holding back the trailer, which is checked at the end (throws on mismatch). */
async function* verifiedBody(src: ByteSource, name: string, counted?: (n: bigint) => void): AsyncGenerator<Uint8Array> {
  const hash = newHash();
  let count = 0n;
  let tail: Buffer = Buffer.alloc(0);
  for await (const c of src.rest()) {
    const buf = tail.length ? Buffer.concat([tail, c]) : c;
    if (buf.length <= TRAILER_SIZE) {
      tail = buf;
      continue;
    }
    const body = buf.subarray(0, buf.length - TRAILER_SIZE);
    tail = Buffer.from(buf.subarray(buf.length - TRAILER_SIZE));
    hash.update(body);
    count += BigInt(body.length);
    yield body;
  }
  checkTrailer(tail, count, hash, name);
  counted?.(count);
}

/** `stdin` is asked for only when `input` is `-`. */
async function openInput(input: string, stdin?: () => AsyncIterable<Uint8Array>): Promise<{ src: ByteSource; header: StateFileHeader; name: string }> {
  const name = input === '-' ? 'stdin' : input;
  if (input === '-' && !stdin) throw new Error('vfio-mig: reading - needs the stdin of the run');
  const src = new ByteSource(input === '-' ? stdin!() : fileChunks(input));
  try {
    const header = decodeHeader(await src.readUpTo(HEADER_SIZE), name);
    return { src, header, name };
  } catch (e) {
    if (input !== '-') await src.close();
    throw e;
  }
}

/** For a file: header, size and checksum, all before the device is touched. */
export async function verifyStateFile(path: string): Promise<void> {
  const { src, header, name } = await openInput(path);
  try {
    const size = BigInt((await stat(path)).size);
    if (header.byteCount !== null && size !== BigInt(HEADER_SIZE + TRAILER_SIZE) + header.byteCount) {
      throw new VfioError('EINVAL', 'load', name, `truncated or padded: header says ${header.byteCount} stream bytes, the file holds ${size - BigInt(HEADER_SIZE + TRAILER_SIZE)}`);
    }
    for await (const _ of verifiedBody(src, name)) void _;
  } finally {
    await src.close();
  }
}

export async function loadCommand(ctx: CliContext, devSpec: string, opts: LoadOptions): Promise<void> {
  if (opts.input !== '-') {
    const st = await stat(opts.input).catch(() => null);
    if (!st) throw new VfioError('ENOENT', 'load', opts.input, 'no such file');
    if (st.isDirectory()) throw new VfioError('EISDIR', 'load', opts.input, 'is a directory: give the state file');
    await verifyStateFile(opts.input);
  }
  const { src, header: h, name } = await openInput(opts.input, () => ctx.stdin());
  try {
    await ctx.withDevice(devSpec, (dev) => loadInto(ctx, dev, src, h, name, opts));
  } finally {
    if (opts.input !== '-') await src.close(); // a load that failed midway stops reading the file now
  }
}

/** The device is opened: from here a failure after the first change abandons the resume and resets it. */
async function loadInto(ctx: CliContext, dev: V2Device, src: ByteSource, h: StateFileHeader, name: string, opts: LoadOptions): Promise<void> {
  const progress = progressReporter(ctx.stderr, `load ${dev.name}`, h.byteCount !== null ? { bytes: h.byteCount, estimate: false } : null);
  const body = verifiedBody(src, name);
  let touched = false;
  let flags: number | null = null;
  try {
    flags = await dev.migrationFlags();
    await assertNoSession(dev, 'load'); // someone else's session is not ours to abandon
    touched = true;
    let bytes: number;
    if (opts.protocol === 'v1') {
      const bridge = await openV1Bridge(dev, { sectionSize: opts.sectionSize });
      bytes = (await loadV1(bridge, body, { finalState: opts.finalState, device: dev.name, onProgress: (b) => progress('resume', b) })).bytes;
    } else {
      const final = opts.finalState === 'stop' ? MigState.STOP : MigState.RUNNING;
      bytes = (await loadV2(dev, body, { finalState: final, onProgress: (b) => progress('resume', b) })).bytes;
    }
    progress.done();
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
    ctx.log(opts.json ? toJson(summary) : `loaded ${bytes} bytes (saved with ${h.protocol}) into ${dev.name} with the ${opts.protocol} protocol; device now ${state}`);
  } catch (e) {
    progress.done();
    const err = asVfioError(e, 'load', dev.name);
    if (!touched) throw err;
    // The resume is abandoned: the device must not run half-loaded state.
    let after: string;
    try {
      await dev.reset();
      after = `device reset to ${migStateName(await dev.getState())}; the state it had before the load is gone`;
    } catch (re) {
      after = `the reset failed too (${errorLine(re)}); the device state is unknown`;
    }
    // Flag sets may differ between compatible devices, so they are not refused up front; but a refusal is likely why.
    const differ = flags !== null && flags !== h.flags ? ` (the file was saved from a device with migration flags 0x${h.flags.toString(16)}, this one has 0x${flags.toString(16)})` : '';
    throw new CliError(`${errorLine(err)}${differ}; load abandoned: ${after}`, EXIT.DEVICE_LEFT_BAD, err);
  }
}
