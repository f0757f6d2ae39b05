/**
 * The docs the code cites are in the repo: every `docs/protocol.md#anchor`
 * in src/, test/, bench/, scripts/, interposer/ and the docs exists, and
 * nothing cites the background notes the project started from (they are
 * not part of the repo; docs/protocol.md replaced them).
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const SKIP = new Set(['node_modules', 'dist', '.cache', '.git', 'fixtures']);

function files(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const p = join(dir, name);
    if (SKIP.has(name)) return [];
    if (statSync(p).isDirectory()) return files(p);
    return /\.(ts|mjs|js|c|h|sh|md)$/.test(name) ? [p] : [];
  });
}

const sources = [...['src', 'test', 'bench', 'scripts', 'interposer', 'docs', 'examples'].flatMap((d) => files(join(root, d))), join(root, 'README.md'), join(root, 'RELIABILITY.md')];
const protocol = readFileSync(join(root, 'docs/protocol.md'), 'utf8');
const anchors = new Set([...protocol.matchAll(/<a id="([^"]+)"><\/a>/g)].map((m) => m[1]));

describe('documentation citations', () => {
  it('every docs/protocol.md anchor the code and docs cite exists', () => {
    const missing: string[] = [];
    let cited = 0;
    for (const f of sources.filter((x) => !x.endsWith('docs.test.ts'))) {
      for (const m of readFileSync(f, 'utf8').matchAll(/protocol\.md#([a-z0-9-]+)/g)) {
        cited++;
        if (!anchors.has(m[1]!)) missing.push(`${relative(root, f)}: #${m[1]}`);
      }
    }
    expect(cited).toBeGreaterThan(10);
    expect(missing).toEqual([]);
  });

  it('nothing cites a document outside the repo', () => {
    // The background notes' names and their rule numbers (X1, Q14, R55 ...).
    const outside = /DESIGN\.md|seeds?-(digest|00)|qemu-callers|ecosystem\.md|STYLE\.md|\.\.\/shared\/|\b(X[0-9]+b?|Q[0-9]+|R[0-9]+)\b(?![@])/;
    const hits: string[] = [];
    for (const f of sources.filter((x) => !x.endsWith('docs.test.ts'))) {
      readFileSync(f, 'utf8').split('\n').forEach((line, i) => {
        if (outside.test(line)) hits.push(`${relative(root, f)}:${i + 1}: ${line.trim()}`);
      });
    }
    expect(hits).toEqual([]);
  });
});
