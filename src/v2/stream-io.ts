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
      if (++stalls > 1000) throw new VfioError('EIO', 'data_fd.write', device, `device accepted no bytes at offset ${done}`);
      continue;
    }
    stalls = 0;
    done += n;
  }
}
