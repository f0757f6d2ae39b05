/**
 * The linter and the formatter over the whole repo (eslint.config.mjs,
 * .prettierrc.json), as part of the suite CI runs: a lint error is a failed
 * test with the linter's own report, not a step that stops the run.
 */
import { spawnSync } from 'node:child_process';
import { resolve } from 'node:path';
import { expect, it } from 'vitest';

const root = resolve(import.meta.dirname, '..');
const bin = (name: string) => resolve(root, 'node_modules/.bin', name);

it('eslint (typescript-eslint, type-aware) reports nothing', () => {
  const r = spawnSync(bin('eslint'), ['.'], { cwd: root, encoding: 'utf8' });
  expect(r.error).toBeUndefined();
  expect(`${r.stdout}${r.stderr}`.trim()).toBe('');
  expect(r.status).toBe(0);
}, 300_000);

it('prettier finds every file formatted', () => {
  const r = spawnSync(bin('prettier'), ['--check', '.'], { cwd: root, encoding: 'utf8' });
  expect(r.error).toBeUndefined();
  expect(r.status, `${r.stdout}${r.stderr}`).toBe(0);
}, 120_000);
