/**
 * Where the service finds the LD_PRELOAD interposer (src/service/preload-library.ts):
 * the one `npm run build` put in dist/, or one compiled from interposer/ with
 * the machine's C compiler, which must fail saying what to install.
 */
import {
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { isMainThread } from 'node:worker_threads';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { PRELOAD_NAME, buildPreloadLibrary, preloadLibrary } from '../../src/service/preload-library.js';

const root = resolve(import.meta.dirname, '../..');
const saved = { CC: process.env.CC, XDG_CACHE_HOME: process.env.XDG_CACHE_HOME, HOME: process.env.HOME };
let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'vfio-mig-preload-'));
});
afterEach(() => {
  for (const [k, v] of Object.entries(saved)) {
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
});

/** A package folder as npm unpacks it without dist/: only the interposer's sources (package.json "files"). */
function packageWithoutDist(name: string): string {
  const pkg = join(dir, name);
  cpSync(join(root, 'interposer'), join(pkg, 'interposer'), { recursive: true });
  return pkg;
}
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

  it('a package without dist/ has it compiled once into $XDG_CACHE_HOME/vfio-mig, and takes that one after', () => {
    const pkg = packageWithoutDist('no-dist');
    process.env.XDG_CACHE_HOME = join(dir, 'xdg');
    delete process.env.CC;
    const want = join(dir, 'xdg', 'vfio-mig', PRELOAD_NAME);
    expect(preloadLibrary(pkg)).toBe(want);
    expect(readFileSync(want).subarray(0, 4).toString('latin1')).toBe('\x7fELF');
    const built = statSync(want);
    process.env.CC = 'false'; // a second build would fail
    expect(preloadLibrary(pkg)).toBe(want);
    expect(statSync(want)).toMatchObject({ ino: built.ino, mtimeMs: built.mtimeMs });
  });

  // $HOME set here reaches os.homedir() only in the main thread: a worker's process.env is its own copy.
  it.skipIf(!isMainThread)('without $XDG_CACHE_HOME (unset or empty) the cache is ~/.cache/vfio-mig', () => {
    const pkg = packageWithoutDist('no-dist-home');
    process.env.HOME = join(dir, 'home');
    process.env.CC = 'false'; // what is cached is taken, never rebuilt
    const want = join(dir, 'home', '.cache', 'vfio-mig', PRELOAD_NAME);
    mkdirSync(join(dir, 'home', '.cache', 'vfio-mig'), { recursive: true });
    writeFileSync(want, 'cached');
    for (const xdg of [undefined, '']) {
      if (xdg === undefined) delete process.env.XDG_CACHE_HOME;
      else process.env.XDG_CACHE_HOME = xdg;
      expect(preloadLibrary(pkg)).toBe(want);
    }
    expect(readFileSync(want, 'utf8')).toBe('cached');
  });

  it('a package that has dist/ never looks at the cache', () => {
    const pkg = join(dir, 'with-dist');
    mkdirSync(join(pkg, 'dist', 'interposer'), { recursive: true });
    writeFileSync(join(pkg, 'dist', 'interposer', PRELOAD_NAME), 'shipped');
    process.env.XDG_CACHE_HOME = join(dir, 'xdg-unused');
    expect(preloadLibrary(pkg)).toBe(join(pkg, 'dist', 'interposer', PRELOAD_NAME));
    expect(existsSync(join(dir, 'xdg-unused'))).toBe(false);
  });

  it('a package without the interposer source is ENOENT naming it; nothing is made', () => {
    const pkg = join(dir, 'empty-package');
    mkdirSync(pkg);
    const out = join(dir, 'never', PRELOAD_NAME);
    expect(() => buildPreloadLibrary(out, pkg)).toThrow(
      `build interposer on ${join(pkg, 'interposer', 'vfio-mig-preload.c')}: ENOENT (2): the interposer source is missing from the package`,
    );
    expect(existsSync(join(dir, 'never'))).toBe(false);
  });
});
