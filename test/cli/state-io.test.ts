/**
 * What a new-user trial found in save/load state-file handling (findings
 * 1 to 7 of the state I/O trial). Each test failed before its fix.
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { CLI, runInProcess } from './run-cli.js';

const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-stateio-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('finding 6: an empty -o or -i is a usage error, before anything is written', () => {
  it.each([
    [['save', 'sim:size=4K', '-o', ''], '-o/--output'],
    [['load', 'sim:size=4K', '-i', ''], '-i/--input'],
  ])('%j', async (args, option) => {
    const r = await runInProcess(args);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe(`vfio-mig: ${option} needs a file name, or - (got an empty string)\n`);
  });

  it('save -o "" leaves no file in the working directory or its parent', () => {
    const cwd = join(dir, 'empty-o', 'cwd');
    mkdirSync(cwd, { recursive: true });
    const r = spawnSync(process.execPath, [CLI, 'save', 'sim:size=4K', '-o', ''], { cwd, encoding: 'utf8' });
    expect(r.status).toBe(2);
    expect(readdirSync(join(dir, 'empty-o'))).toEqual(['cwd']);
    expect(readdirSync(cwd)).toEqual([]);
  });

  it('--help says -o and -i are required', async () => {
    expect((await runInProcess(['save', '--help'])).stdout).toMatch(/-o, --output <file> +target file, or - for stdout \(required\)/);
    expect((await runInProcess(['load', '--help'])).stdout).toMatch(/-i, --input <file> +state file.*\(required\)/);
  });
});
