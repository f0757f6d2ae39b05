/**
 * vfio-mig qemu-stream: QEMU migration stream files (what `migrate
 * "exec:cat > FILE"` writes) listed, a VFIO device's state extracted into a
 * state file (state-file.ts) that `vfio-mig load` takes, and two streams
 * compared. The walking is src/qemu-stream/'s; this reads the files, writes
 * the state file and formats.
 */
import { open, readFile, rename, stat, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { VfioError } from '../errors.js';
import {
  diffStreams,
  findVfioDevice,
  isSection,
  savedWith,
  vfioDevices,
  vfioPayloads,
  walkStream,
  type QemuStream,
  type VfioDevice,
} from '../qemu-stream/index.js';
import { MigFlag, migFlagNames } from '../v2/uapi.js';
import type { CliContext } from './context.js';
import { EXIT } from './exit-codes.js';
import { CliError, fileError, toJson } from './output.js';
import { encodeHeader, encodeTrailer, newHash } from './state-file.js';

const OP = 'qemu-stream';

/** The whole file, walked (streams are read into memory). */
async function load(file: string): Promise<{ s: QemuStream; buf: Buffer }> {
  const st = await stat(file).catch((e) => {
    throw fileError(e, OP, file);
  });
  if (st.isDirectory()) throw new VfioError('EISDIR', OP, file, 'is a directory: give a migration stream file');
  const buf = await readFile(file).catch((e) => {
    throw fileError(e, OP, file);
  });
  return { s: walkStream(buf, file), buf };
}

const pciId = (d: VfioDevice) =>
  d.config?.pci
    ? `${d.config.pci.vendorId.toString(16).padStart(4, '0')}:${d.config.pci.deviceId.toString(16).padStart(4, '0')}`
    : null;

function vfioJson(d: VfioDevice) {
  return { ...d, pciId: pciId(d), savedWith: savedWith(d) };
}

function recordJson(r: QemuStream['records'][number]) {
  if (!isSection(r)) return r;
  const { ram, vfio, ...rest } = r;
  return {
    ...rest,
    ...(ram ? { ram } : {}),
    ...(vfio
      ? {
          vfio: {
            end: vfio.end,
            records: vfio.records.map((x) => ({
              marker: x.marker,
              offset: x.offset,
              ...(x.bytes !== undefined ? { bytes: x.bytes } : {}),
            })),
            ...(vfio.config ? { config: vfio.config } : {}),
          },
        }
      : {}),
  };
}

export async function qemuStreamList(ctx: CliContext, file: string, opts: { json?: boolean }): Promise<void> {
  const { s } = await load(file);
  const devices = vfioDevices(s);
  if (opts.json) {
    ctx.log(
      toJson({
        file,
        size: s.size,
        machine: s.machine,
        capabilities: s.capabilities,
        pageSize: s.pageSize,
        records: s.records.map(recordJson),
        vfio: devices.map(vfioJson),
      }),
    );
    return;
  }
  const lines = [
    `${file}: QEMU migration stream, ${s.size} bytes, machine ${s.machine ?? '(no CONFIGURATION)'}, page size ${s.pageSize}${s.capabilities.length ? `, capabilities ${s.capabilities.join(' ')}` : ''}`,
  ];
  lines.push(
    `  ${'offset'.padStart(10)}  ${'type'.padEnd(13)}  ${'id'.padStart(4)}  ${'idstr'.padEnd(28)} ${'inst'.padStart(4)} ${'ver'.padStart(4)}  ${'bytes'.padStart(10)}`,
  );
  for (const r of s.records) {
    if (!isSection(r)) {
      const note = r.type === 'CONFIGURATION' ? `machine ${r.machine}` : r.type === 'COMMAND' ? `command ${r.cmd}` : '';
      lines.push(
        `  ${String(r.offset).padStart(10)}  ${r.type.padEnd(13)}  ${''.padStart(4)}  ${note.padEnd(28)} ${''.padStart(4)} ${''.padStart(4)}  ${String(r.bytes).padStart(10)}`,
      );
      continue;
    }
    const note = r.ram
      ? `${r.ram.blocks.length ? `${r.ram.blocks.length} RAMBlocks, ` : ''}${r.ram.pages} pages, ${r.ram.zeroPages} zero pages`
      : r.vfio
        ? r.vfio.records
            .map((x) =>
              x.marker === 'DEV_DATA_STATE'
                ? `DATA ${x.bytes}`
                : x.marker === 'DEV_CONFIG_STATE'
                  ? `CONFIG ${x.bytes}`
                  : x.marker.replace(/^DEV_/, ''),
            )
            .concat(r.vfio.end === 'END_OF_STATE' ? [] : [r.vfio.end])
            .join(', ')
        : '';
    lines.push(
      `  ${String(r.offset).padStart(10)}  ${r.type.padEnd(13)}  ${String(r.sectionId).padStart(4)}  ${r.idstr.padEnd(28)} ${String(r.instanceId).padStart(4)} ${String(r.versionId).padStart(4)}  ${String(r.bytes).padStart(10)}${note ? `  ${note}` : ''}`,
    );
  }
  lines.push(devices.length ? 'VFIO devices' : 'no VFIO devices');
  for (const d of devices) {
    const p = d.phases;
    const phase = (n: keyof typeof p) =>
      `${p[n].bytes} bytes in ${p[n].records} DEV_DATA_STATE record${p[n].records === 1 ? '' : 's'}${p[n].emptyRecords ? ` (${p[n].emptyRecords} empty)` : ''}, ${p[n].sections} section${p[n].sections === 1 ? '' : 's'}`;
    const sw = savedWith(d);
    lines.push(
      `  ${d.idstr} (instance ${d.instanceId}, version ${d.versionId}, section id ${d.sectionId})`,
      `    config    ${d.config ? `${d.config.bytes} bytes${d.config.pci ? ` (vfio-pci, PCI ${pciId(d)}, class ${d.config.pci.classCode.toString(16).padStart(6, '0')})` : ''}` : 'none'}`,
      `    setup     ${phase('setup')}`,
      `    iterate   ${phase('iterate')}`,
      `    complete  ${phase('complete')}`,
      `    state     ${d.dataBytes} bytes in all${d.initDataSent ? '; DEV_INIT_DATA_SENT (switchover-ack)' : ''}${sw ? `; saved by a ${sw.protocol} caller (${sw.why})` : ''}`,
    );
  }
  ctx.log(lines.join('\n'));
}

export interface ExtractOptions {
  device: string;
  output: string;
  savedWith?: 'v1' | 'v2';
  json?: boolean;
}

/**
 * The device's DEV_DATA_STATE payloads as a state file. Its protocol byte
 * is what the stream shows (savedWith), else --saved-with, else v2; its
 * flags are the least the stream proves: STOP_COPY, and PRE_COPY when
 * state went before the stop.
 */
export async function qemuStreamExtract(ctx: CliContext, file: string, opts: ExtractOptions): Promise<void> {
  const { s, buf } = await load(file);
  const d = findVfioDevice(s, opts.device);
  const chunks = vfioPayloads(s, buf, d);
  const shown = savedWith(d);
  if (shown && opts.savedWith && shown.protocol !== opts.savedWith) {
    throw new CliError(
      `vfio-mig qemu-stream extract: --saved-with ${opts.savedWith}, but the stream shows a ${shown.protocol} caller (${shown.why})`,
      EXIT.USAGE,
    );
  }
  const protocol = shown?.protocol ?? opts.savedWith ?? 'v2';
  const why = shown
    ? shown.why
    : opts.savedWith
      ? '--saved-with'
      : 'assumed: the stream does not show which caller saved it (--saved-with says)';
  const flags = MigFlag.STOP_COPY | (d.phases.setup.bytes + d.phases.iterate.bytes > 0 ? MigFlag.PRE_COPY : 0);
  const count = BigInt(d.dataBytes);
  const hash = newHash();
  for (const c of chunks) hash.update(c);
  const parts = [encodeHeader({ protocol, flags, byteCount: count }), ...chunks, encodeTrailer(count, hash.digest())];
  if (opts.output === '-') {
    if (ctx.stdout.isTTY)
      throw new CliError(
        'vfio-mig: refusing to write binary device state to a terminal: redirect stdout or use -o FILE',
        EXIT.USAGE,
      );
    for (const p of parts) await new Promise<void>((done, fail) => ctx.stdout.write(p, (e) => (e ? fail(e) : done())));
  } else {
    const tmp = join(dirname(opts.output), `.${basename(opts.output)}.${process.pid}.tmp`);
    const fh = await open(tmp, 'wx', 0o600).catch((e) => {
      throw fileError(e, OP, opts.output, `creating a file in ${dirname(tmp)}`);
    });
    ctx.unfinished(tmp);
    try {
      for (const p of parts) await fh.write(p);
      await fh.sync();
      await fh.close();
      await rename(tmp, opts.output);
    } catch (e) {
      await fh.close().catch(() => undefined);
      await unlink(tmp).catch(() => undefined);
      throw fileError(e, OP, opts.output);
    } finally {
      ctx.finished(tmp);
    }
  }
  const summary = {
    file,
    device: d.idstr,
    instance: d.instanceId,
    output: opts.output === '-' ? 'stdout' : opts.output,
    bytes: count,
    records: d.phases.setup.records + d.phases.iterate.records + d.phases.complete.records,
    phases: { setup: d.phases.setup.bytes, iterate: d.phases.iterate.bytes, complete: d.phases.complete.bytes },
    savedWith: protocol,
    savedWithWhy: why,
    flags,
    flagNames: migFlagNames(flags),
  };
  const text = opts.json
    ? toJson(summary)
    : `extracted ${count} bytes of ${d.idstr}'s state (setup ${summary.phases.setup}, iterate ${summary.phases.iterate}, complete ${summary.phases.complete}) to ${summary.output}; recorded as saved with ${protocol} (${why}), flags ${summary.flagNames.join(' | ')}`;
  if (opts.output === '-') ctx.stderr.write(`${text}\n`);
  else ctx.log(text);
}

export async function qemuStreamDiff(
  ctx: CliContext,
  fileA: string,
  fileB: string,
  opts: { json?: boolean },
): Promise<void> {
  const a = await load(fileA);
  const b = await load(fileB);
  const d = diffStreams(a.s, a.buf, b.s, b.buf);
  if (opts.json) {
    ctx.log(
      toJson({
        a: { file: fileA, size: a.s.size, machine: a.s.machine },
        b: { file: fileB, size: b.s.size, machine: b.s.machine },
        ...d,
      }),
    );
    return;
  }
  const lines = [
    `A ${fileA}: ${a.s.size} bytes, ${a.s.sections.length} sections, machine ${a.s.machine ?? '(none)'}`,
    `B ${fileB}: ${b.s.size} bytes, ${b.s.sections.length} sections, machine ${b.s.machine ?? '(none)'}`,
  ];
  for (const x of d.differences) lines.push(`${x.kind.padEnd(12)}  ${x.text}`);
  lines.push(
    d.identical
      ? 'no differences'
      : `${d.same.length} device${d.same.length === 1 ? '' : 's'} in both with nothing different; ${d.differences.length} difference${d.differences.length === 1 ? '' : 's'}`,
  );
  ctx.log(lines.join('\n'));
}

export const QEMU_STREAM_HELP = `
A QEMU migration stream is what QEMU writes to \`migrate "exec:cat > FILE"\` (QEMU 7.2 through
\`vfio-mig exec\`, or QEMU 8+ natively). The file is read into memory and walked record by record:
the "ram" section by its own records, VFIO devices by their markers, every other device by the
JSON VMDESCRIPTION QEMU puts at the end. A framing error is refused naming its byte offset (exit 1,
EBADMSG; EINVAL when the file is no migration stream at all).

Example:
  vfio-mig qemu-stream list vm.mig
  vfio-mig qemu-stream extract vm.mig --device 0000:00:03.0 -o dev.vfio && vfio-mig load /dev/vfio/devices/vfio1 -i dev.vfio
  vfio-mig qemu-stream diff from-7.2.mig from-10.mig`;
