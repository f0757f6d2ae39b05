import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { defineStruct, fieldPlaces, getU32LE, getU64LE, putU32LE, putU64LE } from '../src/struct.js';
import { MIGRATION_INFO, MIGRATION_INFO_FIELDS } from '../src/v1/uapi.js';

describe('little-endian u32/u64 helpers', () => {
  it('agree with DataView at any offset', () => {
    fc.assert(
      fc.property(
        fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
        fc.integer({ min: 0, max: 2 ** 32 - 1 }),
        fc.integer({ min: 0, max: 8 }),
        (u64, u32, at) => {
          const b = new Uint8Array(24);
          const dv = new DataView(b.buffer);
          putU64LE(b, u64, at);
          expect(dv.getBigUint64(at, true)).toBe(u64);
          expect(getU64LE(b, at)).toBe(u64);
          putU32LE(b, u32, at + 8);
          expect(dv.getUint32(at + 8, true)).toBe(u32);
          expect(getU32LE(b, at + 8)).toBe(u32);
          expect(dv.getBigUint64(at, true)).toBe(u64); // neighbours untouched
        },
      ),
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

describe('fieldPlaces', () => {
  it('lists each field in table order with the width of its type', () => {
    const s = defineStruct('s', 16, {
      a: { offset: 8, type: 'u64' },
      b: { offset: 0, type: 'u8' },
      c: { offset: 2, type: 'u16' },
      d: { offset: 4, type: 's32' },
    });
    expect(fieldPlaces(s.layout)).toEqual([
      { name: 'a', offset: 8, width: 8 },
      { name: 'b', offset: 0, width: 1 },
      { name: 'c', offset: 2, width: 2 },
      { name: 'd', offset: 4, width: 4 },
    ]);
  });

  it('gives the v1 header as the kernel lays it out (the offsets and widths the bridge accepts)', () => {
    expect(MIGRATION_INFO_FIELDS.map((f) => [f.name, f.offset, f.width])).toEqual([
      ['device_state', 0, 4],
      ['reserved', 4, 4],
      ['pending_bytes', 8, 8],
      ['data_offset', 16, 8],
      ['data_size', 24, 8],
    ]);
    expect(MIGRATION_INFO).toEqual({
      DEVICE_STATE: 0,
      RESERVED: 4,
      PENDING_BYTES: 8,
      DATA_OFFSET: 16,
      DATA_SIZE: 24,
      SIZE: 32,
    });
  });
});
