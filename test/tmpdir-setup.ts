/**
 * Each test file gets a TMPDIR of its own (os.tmpdir() in the file, and every
 * process it starts), and fails if it leaves anything there: what a test
 * creates, it removes in afterAll/afterEach or finally, also when it fails.
 */
import { chmodSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll } from 'vitest';

const base = (process.env.VFIO_MIG_TEST_TMPDIR_BASE ??= tmpdir());
const dir = mkdtempSync(join(base, 'vfio-mig-test-'));
// As /tmp is: tests that run a command as an unprivileged user reach their own folders inside.
chmodSync(dir, 0o755);
process.env.TMPDIR = dir;

// Registered first, so it runs after the file's own afterAll hooks.
afterAll(() => {
  const left = readdirSync(dir);
  rmSync(dir, { recursive: true, force: true });
  process.env.TMPDIR = base;
  if (left.length)
    throw new Error(
      `this file left ${left.join(', ')} in its TMPDIR: remove what a test creates in afterAll/afterEach`,
    );
});
