/**
 * Layout-table codec for the fixed little-endian uAPI structs. One table per
 * struct, with the kernel's field names, so a grep finds both. u64 fields are
 * bigint, everything narrower is number. A RangeError here is a bug of the
 * caller (a buffer it sized itself); input of outside length is checked
 * before it gets here and refused as a VfioError.
 */
export type FieldType = 'u8' | 'u16' | 'u32' | 's32' | 'u64';

export interface FieldSpec {
  readonly offset: number;
  readonly type: FieldType;
}

type ValueOf<T extends FieldType> = T extends 'u64' ? bigint : number;
export type StructValue<L extends Record<string, FieldSpec>> = { [K in keyof L]: ValueOf<L[K]['type']> };

export interface StructCodec<L extends Record<string, FieldSpec>> {
  readonly name: string;
  readonly size: number;
  readonly layout: L;
  encode(value: Partial<StructValue<L>>, into?: Uint8Array, at?: number): Uint8Array;
  decode(from: Uint8Array, at?: number): StructValue<L>;
}

const WIDTH: Record<FieldType, number> = { u8: 1, u16: 2, u32: 4, s32: 4, u64: 8 };

/** One field of a layout with its width, for code that works by offset (the v1 region's access rules). */
export interface FieldPlace<N extends string = string> {
  readonly name: N;
  readonly offset: number;
  readonly width: number;
}

/** The fields of a layout in table order, each with its byte width. */
export function fieldPlaces<L extends Record<string, FieldSpec>>(
  layout: L,
): ReadonlyArray<FieldPlace<keyof L & string>> {
  return Object.entries(layout).map(([name, spec]) => ({ name, offset: spec.offset, width: WIDTH[spec.type] }));
}

export function defineStruct<L extends Record<string, FieldSpec>>(
  name: string,
  size: number,
  layout: L,
): StructCodec<L> {
  for (const [field, spec] of Object.entries(layout)) {
    if (spec.offset + WIDTH[spec.type] > size) throw new RangeError(`${name}.${field} runs past the struct`);
  }
  const entries = Object.entries(layout) as [keyof L & string, FieldSpec][];
  return {
    name,
    size,
    layout,
    encode(value, into, at = 0) {
      const buf = into ?? new Uint8Array(size);
      if (at + size > buf.length) throw new RangeError(`${name}: buffer too small`);
      const dv = new DataView(buf.buffer, buf.byteOffset + at, size);
      for (const [field, spec] of entries) {
        const v = (value as Record<string, number | bigint | undefined>)[field];
        writeField(dv, spec, v ?? (spec.type === 'u64' ? 0n : 0));
      }
      return buf;
    },
    decode(from, at = 0) {
      if (at + size > from.length)
        throw new RangeError(`${name}: need ${size} bytes at ${at}, have ${from.length - at}`);
      const dv = new DataView(from.buffer, from.byteOffset + at, size);
      const out: Record<string, number | bigint> = {};
      for (const [field, spec] of entries) out[field] = readField(dv, spec);
      return out as StructValue<L>;
    },
  };
}

function writeField(dv: DataView, spec: FieldSpec, v: number | bigint): void {
  switch (spec.type) {
    case 'u8':
      dv.setUint8(spec.offset, Number(v));
      break;
    case 'u16':
      dv.setUint16(spec.offset, Number(v), true);
      break;
    case 'u32':
      dv.setUint32(spec.offset, Number(v), true);
      break;
    case 's32':
      dv.setInt32(spec.offset, Number(v), true);
      break;
    case 'u64':
      dv.setBigUint64(spec.offset, BigInt(v), true);
      break;
  }
}

function readField(dv: DataView, spec: FieldSpec): number | bigint {
  switch (spec.type) {
    case 'u8':
      return dv.getUint8(spec.offset);
    case 'u16':
      return dv.getUint16(spec.offset, true);
    case 'u32':
      return dv.getUint32(spec.offset, true);
    case 's32':
      return dv.getInt32(spec.offset, true);
    case 'u64':
      return dv.getBigUint64(spec.offset, true);
  }
}

// Little-endian u32/u64 in a byte array, byte by byte. For the hot 4- and
// 8-byte v1 header accesses: a DataView needs `.buffer`, and asking a small
// new Uint8Array for its buffer moves its bytes off the V8 heap (an
// allocation and a GC-tracked backing store per access).

export function getU32LE(b: Uint8Array, at = 0): number {
  if (at + 4 > b.length) throw new RangeError(`need 4 bytes at ${at}, have ${b.length - at}`);
  return (b[at]! | (b[at + 1]! << 8) | (b[at + 2]! << 16) | (b[at + 3]! << 24)) >>> 0;
}

export function getU64LE(b: Uint8Array, at = 0): bigint {
  return (BigInt(getU32LE(b, at + 4)) << 32n) | BigInt(getU32LE(b, at));
}

export function putU32LE(b: Uint8Array, v: number, at = 0): void {
  b[at] = v;
  b[at + 1] = v >>> 8;
  b[at + 2] = v >>> 16;
  b[at + 3] = v >>> 24;
}

export function putU64LE(b: Uint8Array, v: bigint, at = 0): void {
  putU32LE(b, Number(BigInt.asUintN(32, v)), at);
  putU32LE(b, Number(BigInt.asUintN(32, v >> 32n)), at + 4);
}
