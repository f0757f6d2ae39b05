import { isVfioError, readSome, saveV2 as saveV2Native, loadV2 as loadV2Native, type DataStream, type V2Device } from '../src/index.js';

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

/** Native v2 save into one buffer. */
export async function saveV2(dev: V2Device, precopy = true): Promise<Buffer> {
  const parts: Uint8Array[] = [];
  await saveV2Native(dev, (c) => void parts.push(c), { precopy });
  return Buffer.concat(parts);
}

/** Native v2 load of one buffer. */
export async function loadV2(dev: V2Device, data: Uint8Array): Promise<void> {
  await loadV2Native(dev, [data]);
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
