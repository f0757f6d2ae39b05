/**
 * The service's side of the wire (src/service/wire.ts): requests taken off
 * a byte stream however it is cut, one at a time, with the payload bound
 * exact; replies encoded as interposer/wire.h reads them.
 */
import { describe, expect, it } from 'vitest';
import {
  MAX_REQUEST_PAYLOAD,
  RequestReader,
  WireOp,
  encodeReply,
  vmw_reply,
  vmw_request,
} from '../../src/service/wire.js';

function request(op: number, payload: Uint8Array, offset = 0n, length = 0, claimed = payload.length): Uint8Array {
  const head = vmw_request.encode({ op, payload_len: claimed, offset, length, reserved: 0 });
  return Buffer.concat([head, payload]);
}

describe('RequestReader', () => {
  it('takes each request whole, byte by byte or many at once, and counts what is buffered', () => {
    const a = request(WireOp.WRITE, Uint8Array.of(1, 2, 3, 4), 8n, 4);
    const b = request(WireOp.READ, new Uint8Array(0), 1n << 40n, 8);
    const stream = Buffer.concat([a, b]);

    const r = new RequestReader();
    const got = [];
    for (const byte of stream) {
      r.push(Uint8Array.of(byte));
      const rq = r.next();
      if (rq) got.push(rq);
    }
    expect(r.buffered).toBe(0);
    expect(r.next()).toBeNull();

    const all = new RequestReader();
    all.push(stream);
    expect(all.buffered).toBe(stream.length);
    const first = all.next();
    expect(all.buffered).toBe(b.length);
    const second = all.next();
    expect(all.buffered).toBe(0);
    expect(all.next()).toBeNull();

    for (const seen of [got, [first, second]]) {
      expect(seen.map((rq) => ({ ...rq!, payload: [...rq!.payload] }))).toEqual([
        { op: WireOp.WRITE, offset: 8n, length: 4, payload: [1, 2, 3, 4] },
        { op: WireOp.READ, offset: 1n << 40n, length: 8, payload: [] },
      ]);
    }
  });

  it('holds a request until its payload is complete, across chunks of any size', () => {
    const payload = Uint8Array.from({ length: 100 }, (_, i) => i);
    const bytes = request(WireOp.HELLO, payload);
    const r = new RequestReader();
    r.push(bytes.subarray(0, 23)); // not yet a header
    expect(r.next()).toBeNull();
    r.push(bytes.subarray(23, 50)); // a header, part of the payload
    expect(r.next()).toBeNull();
    expect(r.buffered).toBe(50);
    r.push(bytes.subarray(50, bytes.length - 1));
    expect(r.next()).toBeNull();
    r.push(bytes.subarray(bytes.length - 1));
    const rq = r.next();
    expect(rq?.op).toBe(WireOp.HELLO);
    expect([...rq!.payload]).toEqual([...payload]);
    expect(r.buffered).toBe(0);
  });

  it('an empty push changes nothing', () => {
    const r = new RequestReader();
    r.push(new Uint8Array(0));
    expect(r.buffered).toBe(0);
    expect(r.next()).toBeNull();
    r.push(request(WireOp.BYE, new Uint8Array(0)));
    r.push(new Uint8Array(0));
    expect(r.next()?.op).toBe(WireOp.BYE);
    expect(r.next()).toBeNull();
  });

  it(`a payload of ${MAX_REQUEST_PAYLOAD} bytes is taken; one byte more is refused from its header alone`, () => {
    const r = new RequestReader();
    r.push(request(WireOp.WRITE, new Uint8Array(MAX_REQUEST_PAYLOAD), 0n, MAX_REQUEST_PAYLOAD));
    expect(r.next()?.payload.length).toBe(MAX_REQUEST_PAYLOAD);
    r.push(request(WireOp.WRITE, new Uint8Array(0), 0n, 0, MAX_REQUEST_PAYLOAD + 1));
    expect(() => r.next()).toThrow(
      `request payload of ${MAX_REQUEST_PAYLOAD + 1} bytes (at most ${MAX_REQUEST_PAYLOAD})`,
    );
  });
});

describe('encodeReply', () => {
  it('is the result, the payload length and the payload', () => {
    const out = encodeReply(-22, Uint8Array.of(7, 8, 9));
    expect(vmw_reply.decode(out)).toEqual({ result: -22, payload_len: 3 });
    expect(out.length).toBe(vmw_reply.size + 3);
    expect([...out.subarray(vmw_reply.size)]).toEqual([7, 8, 9]);
  });

  it('without a payload, only the header', () => {
    const out = encodeReply(0);
    expect(out.length).toBe(vmw_reply.size);
    expect(vmw_reply.decode(out)).toEqual({ result: 0, payload_len: 0 });
  });
});
