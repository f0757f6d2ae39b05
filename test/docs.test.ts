/**
 * The docs the code cites are in the repo: every `docs/protocol.md#anchor`
 * in src/, test/, bench/, scripts/, interposer/ and the docs exists, and
 * nothing cites the background notes the project started from (they are
 * not part of the repo; docs/protocol.md replaced them). ARCHITECTURE.md and
 * CONTRIBUTING.md name files and link documents: each of those exists, and
 * so does every link of the README.
 */
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
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

const sources = [
  ...['src', 'test', 'bench', 'scripts', 'interposer', 'docs', 'examples'].flatMap((d) => files(join(root, d))),
  join(root, 'README.md'),
  join(root, 'RELIABILITY.md'),
  join(root, 'ARCHITECTURE.md'),
  join(root, 'CONTRIBUTING.md'),
];
const protocol = readFileSync(join(root, 'docs/protocol.md'), 'utf8');
const anchors = new Set([...protocol.matchAll(/<a id="([^"]+)"><\/a>/g)].map((m) => m[1]));

describe('documentation citations', () => {
  it('every docs/protocol.md anchor the code and docs cite exists', () => {
    const missing: string[] = [];
    let cited = 0;
    for (const f of sources.filter((x) => !x.endsWith('docs.test.ts'))) {
      for (const m of readFileSync(f, 'utf8').matchAll(/protocol\.md#([a-z0-9-]+)/g)) {
        cited++;
        if (!anchors.has(m[1])) missing.push(`${relative(root, f)}: #${m[1]}`);
      }
    }
    expect(cited).toBeGreaterThan(10);
    expect(missing).toEqual([]);
  });

  it('nothing cites a document outside the repo', () => {
    // The background notes' names and their rule numbers (X1, Q14, R55 ...).
    const outside =
      /DESIGN\.md|seeds?-(digest|00)|qemu-callers|ecosystem\.md|STYLE\.md|\.\.\/shared\/|\b(X[0-9]+b?|Q[0-9]+|R[0-9]+)\b(?![@])/;
    const hits: string[] = [];
    for (const f of sources.filter((x) => !x.endsWith('docs.test.ts'))) {
      readFileSync(f, 'utf8')
        .split('\n')
        .forEach((line, i) => {
          if (outside.test(line)) hits.push(`${relative(root, f)}:${i + 1}: ${line.trim()}`);
        });
    }
    expect(hits).toEqual([]);
  });
});

/** GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens; plus explicit <a id>s. */
function anchorsOf(markdown: string): Set<string> {
  const heads = [...markdown.matchAll(/^#+ +(.+)$/gm)].map((m) =>
    m[1]!
      .trim()
      .toLowerCase()
      .replace(/[^\p{L}\p{N} _-]/gu, '')
      .replace(/ /g, '-'),
  );
  return new Set([...heads, ...[...markdown.matchAll(/<a id="([^"]+)"><\/a>/g)].map((m) => m[1]!)]);
}

describe('the guides name what exists', () => {
  // Top-level folders of the repo: a backticked path starting with one is a claim about the tree.
  const topDirs = new Set(readdirSync(root).filter((n) => !SKIP.has(n) && statSync(join(root, n)).isDirectory()));
  const rootFile = /^([A-Z][A-Z_]*\.md|[\w-]+\.config\.[mc]?[jt]s|package(-lock)?\.json|tsconfig[\w.]*\.json)$/;

  it('every repo path in backticks in ARCHITECTURE.md and CONTRIBUTING.md exists', () => {
    const missing: string[] = [];
    let named = 0;
    for (const doc of ['ARCHITECTURE.md', 'CONTRIBUTING.md']) {
      for (const m of readFileSync(join(root, doc), 'utf8').matchAll(/`([^`\s]+)`/g)) {
        const p = m[1]!.replace(/[#:].*$/, '');
        const first = p.split('/')[0]!;
        if (!(p.includes('/') ? topDirs.has(first) : rootFile.test(p))) continue;
        named++;
        // A glob names its folder: the part before the first wildcard must exist.
        const path = p.includes('*') ? p.slice(0, p.indexOf('*')).replace(/[^/]*$/, '') : p;
        if (!existsSync(join(root, path))) missing.push(`${doc}: ${m[1]}`);
      }
    }
    expect(named).toBeGreaterThan(40);
    expect(missing).toEqual([]);
  });

  it('every relative link in them and in the README reaches a file, and its anchor a heading', () => {
    const broken: string[] = [];
    for (const doc of ['ARCHITECTURE.md', 'CONTRIBUTING.md', 'README.md']) {
      for (const m of readFileSync(join(root, doc), 'utf8').matchAll(/\]\(([^)\s]+)\)/g)) {
        const [file, anchor] = m[1]!.split('#') as [string, string | undefined];
        if (/^[a-z]+:/.test(file)) continue; // https: and the like
        const target = join(root, file || doc);
        if (!existsSync(target)) broken.push(`${doc}: ${m[1]}`);
        else if (anchor && target.endsWith('.md') && !anchorsOf(readFileSync(target, 'utf8')).has(anchor))
          broken.push(`${doc}: ${m[1]} (no such heading)`);
      }
    }
    expect(broken).toEqual([]);
  });
});
