/**
 * Where the LD_PRELOAD interposer is: `dist/interposer/` as `npm run build`
 * leaves it (and the npm package ships it, x86_64), else built once from
 * `interposer/*.c` with the machine's C compiler into a cache folder.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, renameSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { VfioError } from '../errors.js';

export const PRELOAD_NAME = 'libvfio-mig-preload.so';

const packageRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

/**
 * Compiles the interposer into `out` (the cc command line is the one `npm run build` uses).
 * `root` is the package's folder (tests pass another).
 */
export function buildPreloadLibrary(out: string, root = packageRoot): void {
  const src = join(root, 'interposer', 'vfio-mig-preload.c');
  if (!existsSync(src))
    throw new VfioError('ENOENT', 'build interposer', src, 'the interposer source is missing from the package');
  mkdirSync(dirname(out), { recursive: true });
  const tmp = `${out}.${process.pid}.tmp`;
  const cc = process.env.CC || 'cc';
  const r = spawnSync(cc, ['-O2', '-Wall', '-shared', '-fPIC', '-o', tmp, src, '-ldl', '-lpthread'], {
    encoding: 'utf8',
  });
  if (r.error || r.status !== 0) {
    throw new VfioError(
      'ENOEXEC',
      'build interposer',
      src,
      `${cc} failed: ${r.error?.message ?? r.stderr.trim()} (install gcc and libc6-dev, or set CC)`,
    );
  }
  renameSync(tmp, out);
}

/** The interposer's path, building it into the cache when the package (`root`: tests pass another) has none. */
export function preloadLibrary(root = packageRoot): string {
  const shipped = join(root, 'dist', 'interposer', PRELOAD_NAME);
  if (existsSync(shipped)) return shipped;
  const cache = join(process.env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'vfio-mig', PRELOAD_NAME);
  if (!existsSync(cache)) buildPreloadLibrary(cache, root);
  return cache;
}
