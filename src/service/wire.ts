/**
 * The interposer <-> bridge service wire format (interposer/wire.h): one
 * Unix stream connection per bridged device, each request answered in
 * order. Little-endian; the layouts below mirror the C structs field for field.
 */
import { defineStruct } from '../struct.js';

export const WireOp = { HELLO: 1, SECTION: 2, READ: 3, WRITE: 4, BYE: 5, STATUS: 6 } as const;

/**
 * STATUS's answer (JSON in the reply payload): the bridged sessions open
 * now that the asker may see, those of its own uid, or all for root.
 */
export interface StatusReply {
  /** The asker's uid, as the service saw it (SO_PEERCRED). */
  uid: number;
  sessions: { vmm: number; uid: number; device: string; headerAccesses: number }[];
}

export const vmw_request = defineStruct('vmw_request', 24, {
  op: { offset: 0, type: 'u32' },
  payload_len: { offset: 4, type: 'u32' },
  offset: { offset: 8, type: 'u64' },
  length: { offset: 16, type: 'u32' },
  reserved: { offset: 20, type: 'u32' },
});
export const vmw_reply = defineStruct('vmw_reply', 8, {
  result: { offset: 0, type: 's32' },
  payload_len: { offset: 4, type: 'u32' },
});
export const vmw_hello = defineStruct('vmw_hello', 16, {
  pid: { offset: 0, type: 'u32' },
  fd: { offset: 4, type: 's32' },
  num_regions: { offset: 8, type: 'u32' },
  reserved: { offset: 12, type: 'u32' },
});
export const vmw_hello_reply = defineStruct('vmw_hello_reply', 16, {
  bridged: { offset: 0, type: 'u32' },
  reserved: { offset: 4, type: 'u32' },
  section_size: { offset: 8, type: 'u64' },
});
export const vmw_region = defineStruct('vmw_region', 40, {
  index: { offset: 0, type: 'u32' },
  info_len: { offset: 4, type: 'u32' },
  region_offset: { offset: 8, type: 'u64' },
  region_size: { offset: 16, type: 'u64' },
  data_offset: { offset: 24, type: 'u64' },
  section_size: { offset: 32, type: 'u64' },
});
export const vmw_bye = defineStruct('vmw_bye', 24, {
  data_reads: { offset: 0, type: 'u64' },
  data_writes: { offset: 8, type: 'u64' },
  data_mmaps: { offset: 16, type: 'u64' },
});

export interface WireRequest {
  op: number;
  offset: bigint;
  length: number;
  payload: Uint8Array;
}

/** Largest payload a request may carry: HELLO's name, a header write. */
export const MAX_REQUEST_PAYLOAD = 4096;

/**
 * Splits a byte stream into requests, one at a time: the caller takes a
 * request only when it can serve one, so a client that pipelines many
 * requests is held by what is still unparsed here (back-pressure) rather
 * than turned into a queue of work. A request that claims more than
 * MAX_REQUEST_PAYLOAD bytes is a protocol error.
 */
export class RequestReader {
  #chunks: Uint8Array[] = [];
  #bytes = 0;

  /** Bytes received and not yet taken as requests. */
  get buffered(): number {
    return this.#bytes;
  }

  push(data: Uint8Array): void {
    if (data.length === 0) return;
    this.#chunks.push(data);
    this.#bytes += data.length;
  }

  /** The next complete request, or null until more bytes come. */
  next(): WireRequest | null {
    if (this.#bytes < vmw_request.size) return null;
    const head = this.#peek(vmw_request.size);
    const h = vmw_request.decode(head);
    if (h.payload_len > MAX_REQUEST_PAYLOAD)
      throw new RangeError(`request payload of ${h.payload_len} bytes (at most ${MAX_REQUEST_PAYLOAD})`);
    const end = vmw_request.size + h.payload_len;
    if (this.#bytes < end) return null;
    const all = this.#peek(end);
    this.#drop(end);
    return { op: h.op, offset: h.offset, length: h.length, payload: all.slice(vmw_request.size, end) };
  }

  /** The first n buffered bytes, joined into one chunk. */
  #peek(n: number): Uint8Array {
    if (this.#chunks[0]!.length < n) this.#chunks = [Buffer.concat(this.#chunks)];
    return this.#chunks[0]!.subarray(0, n);
  }

  #drop(n: number): void {
    const first = this.#chunks[0]!;
    if (first.length === n) this.#chunks.shift();
    else this.#chunks[0] = first.subarray(n);
    this.#bytes -= n;
  }
}

export function encodeReply(result: number, payload: Uint8Array = new Uint8Array(0)): Uint8Array {
  const out = new Uint8Array(vmw_reply.size + payload.length);
  vmw_reply.encode({ result, payload_len: payload.length }, out);
  out.set(payload, vmw_reply.size);
  return out;
}
