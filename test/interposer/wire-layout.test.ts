/**
 * interposer/wire.h and src/service/wire.ts describe the same bytes. The
 * struct and field lists are read from wire.h, the C compiler says where
 * each field is (sizeof, offsetof), and every defineStruct table in wire.ts
 * must say the same: a field added, moved, resized or renamed on one side
 * only fails here. The v1 header (struct vmw_v1_header) is checked against
 * src/v1/uapi.ts, where the service reads it from.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as wire from '../../src/service/wire.js';
import { fieldPlaces, type FieldSpec, type StructCodec } from '../../src/struct.js';
import { vfio_device_migration_info } from '../../src/v1/uapi.js';

const root = resolve(import.meta.dirname, '../..');
const header = join(root, 'interposer/wire.h');
let dir: string;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'vfio-mig-wire-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** The C name of each table wire.ts does not name after its struct. */
const TS_FOR_C: Record<string, StructCodec<Record<string, FieldSpec>>> = { vmw_v1_header: vfio_device_migration_info };

const C_TYPE: Record<string, string> = {
  uint8_t: 'u8',
  uint16_t: 'u16',
  uint32_t: 'u32',
  int32_t: 's32',
  uint64_t: 'u64',
};

interface Layout {
  size: number;
  fields: Record<string, { offset: number; width: number; type: string }>;
}

/** wire.h's structs and their fields' declared types; a declaration this cannot read fails the test. */
function parseHeader(text: string): { structs: Map<string, Map<string, string>>; ops: string[] } {
  const code = text.replace(/\/\*[\s\S]*?\*\//g, '').replace(/\/\/.*$/gm, '');
  const structs = new Map<string, Map<string, string>>();
  for (const m of code.matchAll(/struct\s+(\w+)\s*\{([^}]*)\}\s*;/g)) {
    const fields = new Map<string, string>();
    for (const decl of m[2]!
      .split(';')
      .map((s) => s.trim())
      .filter(Boolean)) {
      const f = /^(\w+)\s+(\w+)$/.exec(decl);
      if (!f || !C_TYPE[f[1]!])
        throw new Error(`wire.h: struct ${m[1]}: cannot read "${decl}" (one fixed-width integer per declaration)`);
      fields.set(f[2]!, f[1]!);
    }
    structs.set(m[1]!, fields);
  }
  const ops = [...code.matchAll(/^#define\s+VMW_(\w+)\s/gm)].map((m) => m[1]!);
  return { structs, ops };
}

/** What the compiler makes of wire.h: every struct's size and every field's offset and width. */
function compiledLayouts(): { layouts: Record<string, Layout>; ops: Record<string, number> } {
  const { structs, ops } = parseHeader(readFileSync(header, 'utf8'));
  const lines: string[] = [];
  for (const [s, fields] of structs) {
    lines.push(`printf("S %s %zu\\n", "${s}", sizeof(struct ${s}));`);
    for (const f of fields.keys()) {
      lines.push(
        `printf("F %s %s %zu %zu\\n", "${s}", "${f}", offsetof(struct ${s}, ${f}), sizeof(((struct ${s} *)0)->${f}));`,
      );
    }
  }
  for (const op of ops) lines.push(`printf("O %s %d\\n", "${op}", (int)VMW_${op});`);
  const src = join(dir, 'layout.c');
  writeFileSync(
    src,
    `#include <stddef.h>\n#include <stdio.h>\n#include "${header}"\nint main(void)\n{\n\t${lines.join('\n\t')}\n\treturn 0;\n}\n`,
  );
  const bin = join(dir, 'layout');
  const cc = spawnSync('cc', ['-Wall', '-Werror', '-o', bin, src], { encoding: 'utf8' });
  expect(cc.status, cc.stderr).toBe(0);
  const run = spawnSync(bin, { encoding: 'utf8' });
  expect(run.status).toBe(0);
  const layouts: Record<string, Layout> = {};
  const opValues: Record<string, number> = {};
  for (const line of run.stdout.trim().split('\n')) {
    const [kind, a, b, c, d] = line.split(' ');
    if (kind === 'S') layouts[a!] = { size: Number(b), fields: {} };
    else if (kind === 'F')
      layouts[a!]!.fields[b!] = { offset: Number(c), width: Number(d), type: C_TYPE[structs.get(a!)!.get(b!)!]! };
    else opValues[a!] = Number(b);
  }
  return { layouts, ops: opValues };
}

const isCodec = (v: unknown): v is StructCodec<Record<string, FieldSpec>> =>
  typeof v === 'object' && v !== null && 'layout' in v && 'size' in v && 'name' in v && 'decode' in v;

/** The same, from the TypeScript tables. */
function tsLayouts(): Record<string, Layout> {
  const codecs: [string, StructCodec<Record<string, FieldSpec>>][] = (Object.values(wire) as unknown[])
    .filter(isCodec)
    .map((c) => [c.name, c]);
  codecs.push(...Object.entries(TS_FOR_C));
  const out: Record<string, Layout> = {};
  for (const [name, codec] of codecs) {
    const fields: Layout['fields'] = {};
    for (const p of fieldPlaces(codec.layout))
      fields[p.name] = { offset: p.offset, width: p.width, type: codec.layout[p.name]!.type };
    out[name] = { size: codec.size, fields };
  }
  return out;
}

describe('wire format', () => {
  it('every struct in interposer/wire.h has the size, fields, offsets and widths of its TypeScript table', () => {
    const c = compiledLayouts().layouts;
    const ts = tsLayouts();
    expect(Object.keys(c).length).toBeGreaterThanOrEqual(7);
    expect(c).toEqual(ts);
  });

  it('the request codes agree', () => {
    expect(compiledLayouts().ops).toEqual(wire.WireOp);
  });
});
