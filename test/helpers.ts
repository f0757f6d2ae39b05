import { isVfioError, MigState, readSome, writeAll, type DataStream, type V2Device } from '../src/index.js';

/** Reads a saving stream until the temporary end (ENOMSG or 0 in pre-copy) or the real end. */
export async function drain(stream: DataStream, chunk = 65536): Promise<Buffer> {
  const parts: Buffer[] = [];
  const buf = new Uint8Array(chunk);
  for (;;) {
    let n: number;
    try {
      n = await readSome(stream, buf);
    } catch (e) {
      if (isVfioError(e, 'ENOMSG')) break;
      throw e;
    }
    if (n === 0) break;
    parts.push(Buffer.from(buf.subarray(0, n)));
  }
  return Buffer.concat(parts);
}

/** Native v2 save: RUNNING -> (PRE_COPY drained ->) STOP_COPY drained -> STOP. */
export async function saveV2(dev: V2Device, precopy = true): Promise<Buffer> {
  const flags = await dev.migrationFlags();
  const parts: Buffer[] = [];
  let stream: DataStream | null = null;
  if (precopy && flags & 4) {
    stream = await dev.setState(MigState.PRE_COPY);
    parts.push(await drain(stream!));
  }
  stream = (await dev.setState(MigState.STOP_COPY)) ?? stream;
  parts.push(await drain(stream!));
  await dev.setState(MigState.STOP);
  await stream!.close();
  return Buffer.concat(parts);
}

/** Native v2 load: RESUMING, write everything, RUNNING. */
export async function loadV2(dev: V2Device, data: Uint8Array): Promise<void> {
  const stream = await dev.setState(MigState.RESUMING);
  await writeAll(stream!, data, dev.name);
  try {
    await dev.setState(MigState.RUNNING);
  } finally {
    await stream!.close();
  }
}

/**
 * A one-chunk rendezvous between a producer's sink and a consumer's async
 * iterable, so a save and a load run interleaved like a pipe between hosts.
 */
export function chunkPipe(): { sink: (c: Uint8Array) => Promise<void>; end: () => void; source: AsyncIterable<Uint8Array> } {
  let slot: Uint8Array | null = null;
  let done = false;
  let wakeConsumer: (() => void) | null = null;
  let wakeProducer: (() => void) | null = null;
  const sink = async (c: Uint8Array) => {
    while (slot) await new Promise<void>((r) => (wakeProducer = r));
    slot = c;
    wakeConsumer?.();
  };
  const end = () => {
    done = true;
    wakeConsumer?.();
  };
  const source = {
    async *[Symbol.asyncIterator]() {
      for (;;) {
        while (!slot && !done) await new Promise<void>((r) => (wakeConsumer = r));
        if (!slot) return;
        const c: Uint8Array = slot;
        slot = null;
        wakeProducer?.();
        yield c;
      }
    },
  };
  return { sink, end, source };
}
