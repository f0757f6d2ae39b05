/** Takes a save's bytes: the one sink type of saveV1 and saveV2. */
export type Sink = (chunk: Uint8Array) => void | Promise<void>;

/**
 * Whether the taker of a save's bytes (a pipe, a file), rather than the
 * device, ended it: then the device is healthy and the session still ours,
 * so the caller can end it cleanly. Shared by saveV1 and saveV2 (v1 may not
 * import v2).
 */
export function sinkWatch<T extends (chunk: Uint8Array) => unknown>(sink: T): { sink: T; readonly failed: boolean } {
  let failed = false;
  const watched = (async (chunk: Uint8Array) => {
    try {
      return await sink(chunk);
    } catch (e) {
      failed = true;
      throw e;
    }
  }) as T;
  return {
    sink: watched,
    get failed() {
      return failed;
    },
  };
}
