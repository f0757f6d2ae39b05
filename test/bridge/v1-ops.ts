/** Random v1 region accesses for the property tests: what a v1 caller can do to the region. */
import fc from 'fast-check';
import type { V1Bridge } from '../../src/index.js';
import { readU64, writeU32, writeU64 } from '../../src/v1/region-access.js';

export const STATE = 0,
  PENDING = 8,
  OFFSET = 16,
  SIZE = 24;

export type Op =
  | { op: 'state'; v: number }
  | { op: 'pending' | 'offset' | 'size' | 'reset' }
  | { op: 'data' | 'wdata'; len: number }
  | { op: 'wsize'; n: number };

/** Accesses with device_state values from `states`, data of 1..section bytes and data_size writes up to `maxSize`. */
export function opArb(o: {
  states: fc.Arbitrary<number>;
  section: number;
  maxSize: number;
  registerWeight: number;
}): fc.Arbitrary<Op> {
  return fc.oneof(
    { weight: 4, arbitrary: fc.record({ op: fc.constant('state' as const), v: o.states }) },
    {
      weight: o.registerWeight,
      arbitrary: fc.record({ op: fc.constantFrom('pending' as const, 'offset' as const, 'size' as const) }),
    },
    { weight: 1, arbitrary: fc.record({ op: fc.constant('reset' as const) }) },
    {
      weight: 2,
      arbitrary: fc.record({
        op: fc.constantFrom('data' as const, 'wdata' as const),
        len: fc.integer({ min: 1, max: o.section }),
      }),
    },
    {
      weight: 2,
      arbitrary: fc.record({ op: fc.constant('wsize' as const), n: fc.integer({ min: 0, max: o.maxSize }) }),
    },
  );
}

/** Carries one access out; a data read comes back as base64, so outcomes compare with toEqual. */
export function runOp(br: V1Bridge, o: Op): Promise<unknown> {
  switch (o.op) {
    case 'state':
      return writeU32(br, STATE, o.v);
    case 'pending':
      return readU64(br, PENDING);
    case 'offset':
      return readU64(br, OFFSET);
    case 'size':
      return readU64(br, SIZE);
    case 'reset':
      return br.reset();
    case 'data':
      return br.read(br.dataOffset, o.len).then((b) => Buffer.from(b).toString('base64'));
    case 'wdata':
      return br.write(br.dataOffset, new Uint8Array(o.len).fill(o.len & 0xff));
    case 'wsize':
      return writeU64(br, SIZE, BigInt(o.n));
  }
}
