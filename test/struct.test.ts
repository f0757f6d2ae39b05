import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { getU32LE, getU64LE, putU32LE, putU64LE } from '../src/struct.js';

describe('little-endian u32/u64 helpers', () => {
  it('agree with DataView at any offset', () => {
    fc.assert(
      fc.property(fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }), fc.integer({ min: 0, max: 2 ** 32 - 1 }), fc.integer({ min: 0, max: 8 }), (u64, u32, at) => {
        const b = new Uint8Array(24);
        const dv = new DataView(b.buffer);
        putU64LE(b, u64, at);
        expect(dv.getBigUint64(at, true)).toBe(u64);
        expect(getU64LE(b, at)).toBe(u64);
        putU32LE(b, u32, at + 8);
        expect(dv.getUint32(at + 8, true)).toBe(u32);
        expect(getU32LE(b, at + 8)).toBe(u32);
        expect(dv.getBigUint64(at, true)).toBe(u64); // neighbours untouched
      }),
    );
  });

  it('wrap out-of-range values as DataView does, and refuse a read past the end', () => {
    const b = new Uint8Array(8);
    putU64LE(b, -1n);
    expect(getU64LE(b)).toBe(2n ** 64n - 1n);
    putU32LE(b, -1);
    expect(getU32LE(b)).toBe(2 ** 32 - 1);
    expect(() => getU32LE(new Uint8Array(3))).toThrow(RangeError);
    expect(() => getU64LE(new Uint8Array(8), 1)).toThrow(RangeError);
  });
});
