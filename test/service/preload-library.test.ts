/**
 * Where the service finds the LD_PRELOAD interposer (src/service/preload-library.ts):
 * the one `npm run build` put in dist/, or one compiled from interposer/ with
 * the machine's C compiler, which must fail saying what to install.
 */
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { PRELOAD_NAME, buildPreloadLibrary, preloadLibrary } from '../../src/service/preload-library.js';

const root = resolve(import.meta.dirname, '../..');
const savedCC = process.env.CC;
let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'vfio-mig-preload-'));
});
afterEach(() => {
  if (savedCC === undefined) delete process.env.CC;
  else process.env.CC = savedCC;
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('the interposer library', () => {
  it('is the one npm run build left in dist/ when there is one', () => {
    expect(preloadLibrary()).toBe(join(root, 'dist', 'interposer', PRELOAD_NAME));
  });

  it('is compiled into a directory made for it, as a shared object, with no temporary file left', () => {
    process.env.CC = ''; // empty: the default compiler, cc
    const out = join(dir, 'a', 'b', PRELOAD_NAME);
    buildPreloadLibrary(out);
    const elf = readFileSync(out);
    expect(elf.subarray(0, 4).toString('latin1')).toBe('\x7fELF');
    expect(elf.readUInt16LE(16)).toBe(3); // ET_DYN
    expect(readdirSync(join(dir, 'a', 'b'))).toEqual([PRELOAD_NAME]);
  });

  it('a compiler that fails is ENOEXEC, naming it and what to install; nothing is left at the path', () => {
    process.env.CC = 'false';
    const out = join(dir, 'failed', PRELOAD_NAME);
    expect(() => buildPreloadLibrary(out)).toThrow(
      /ENOEXEC.*false failed: .*\(install gcc and libc6-dev, or set CC\)$/,
    );
    expect(existsSync(out)).toBe(false);
  });

  it('a compiler that is not there is ENOEXEC with the spawn error', () => {
    process.env.CC = join(dir, 'no-such-cc');
    expect(() => buildPreloadLibrary(join(dir, 'none', PRELOAD_NAME))).toThrow(/no-such-cc failed: .*ENOENT/);
  });
});
