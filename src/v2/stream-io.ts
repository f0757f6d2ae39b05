/**
 * Loops every DataStream consumer needs: retry EINTR and EAGAIN, write
 * everything despite short writes.
 */
import { VfioError, isVfioError } from '../errors.js';
import type { DataStream } from './device.js';
import { setTimeout as sleep } from 'node:timers/promises';

/** How long EAGAIN may go on before it is reported (a stalled device). */
const EAGAIN_LIMIT_MS = 30_000;

async function retrying<T>(call: () => Promise<T>): Promise<T> {
  const started = Date.now();
  for (;;) {
    try {
      return await call();
    } catch (e) {
      if (isVfioError(e, 'EINTR')) continue;
      if (isVfioError(e, 'EAGAIN') && Date.now() - started < EAGAIN_LIMIT_MS) {
        await sleep(1);
        continue;
      }
      throw e;
    }
  }
}

/** One read(), retried on EINTR/EAGAIN. 0 = end of stream; ENOMSG still rejects. */
export function readSome(stream: DataStream, into: Uint8Array): Promise<number> {
  return retrying(() => stream.read(into));
}

/** Writes all of `data`, looping on short writes and retrying EINTR/EAGAIN. */
export async function writeAll(stream: DataStream, data: Uint8Array, device: string): Promise<void> {
  let done = 0;
  let stalls = 0;
  while (done < data.length) {
    const n = await retrying(() => stream.write(data.subarray(done)));
    if (n <= 0) {
      // A write that takes nothing and reports no error: do not spin forever.
      if (++stalls > 1000)
        throw new VfioError('EIO', 'data_fd.write', device, `device accepted no bytes at offset ${done}`);
      continue;
    }
    stalls = 0;
    done += n;
  }
}

/**
 * A one-chunk rendezvous between a producer's sink and a consumer's async
 * iterable, so a save and a load run interleaved in one process, like a
 * pipe between hosts, holding at most one chunk.
 */
export function chunkPipe(): {
  sink: (c: Uint8Array) => Promise<void>;
  end: () => void;
  source: AsyncIterable<Uint8Array>;
} {
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
