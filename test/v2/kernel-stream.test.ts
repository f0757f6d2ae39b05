/**
 * The kernel backend's data stream over an ordinary file: the same koffi
 * read()/write() path a data_fd takes, without a VFIO device.
 */
import { describe, expect, it } from 'vitest';
import { closeSync, fstatSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { drainStream, kernelDataStream, writeAll } from '../../src/index.js';

function withDir(fn: (dir: string) => Promise<void>) {
  return async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-kstream-'));
    try {
      await fn(dir);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  };
}

describe('kernelDataStream', () => {
  it(
    'reads a file to its end through read(), in the chunks asked for',
    withDir(async (dir) => {
      const data = randomBytes(300_001);
      writeFileSync(join(dir, 'f'), data);
      const s = kernelDataStream(openSync(join(dir, 'f'), 'r'), 'file');
      const parts: Buffer[] = [];
      await drainStream(s, (c) => void parts.push(Buffer.from(c)), 65536, undefined, Infinity, new Uint8Array(65536));
      expect(parts.length).toBe(5);
      expect(Buffer.concat(parts).equals(data)).toBe(true);
      expect(await s.read(new Uint8Array(10))).toBe(0);
      await s.close();
    }),
  );

  it(
    'writes through write()',
    withDir(async (dir) => {
      const data = randomBytes(100_000);
      const s = kernelDataStream(openSync(join(dir, 'g'), 'w'), 'file');
      await writeAll(s, data, 'file');
      await s.close();
      expect(readFileSync(join(dir, 'g')).equals(data)).toBe(true);
    }),
  );

  it(
    'owns the descriptor: close() closes it once, and later calls fail with EBADF',
    withDir(async (dir) => {
      writeFileSync(join(dir, 'f'), 'abc');
      const fd = openSync(join(dir, 'f'), 'r');
      const s = kernelDataStream(fd, 'file');
      await s.close();
      expect(s.closed).toBe(true);
      expect(() => fstatSync(fd)).toThrow(/EBADF/);
      await expect(s.read(new Uint8Array(3))).rejects.toMatchObject({ code: 'EBADF', op: 'data_fd.read' });
      const next = openSync(join(dir, 'f'), 'r'); // likely the same number again
      await s.close();
      expect(fstatSync(next).size).toBe(3); // the second close left it alone
      closeSync(next);
    }),
  );

  it(
    'passes the kernel errno on: a write to a read-only descriptor is EBADF from write()',
    withDir(async (dir) => {
      writeFileSync(join(dir, 'f'), 'abc');
      const fd = openSync(join(dir, 'f'), 'r');
      const s = kernelDataStream(fd, 'file');
      await expect(s.write(new Uint8Array(3))).rejects.toMatchObject({ code: 'EBADF', op: 'data_fd.write' });
      await s.close();
    }),
  );

  it('refuses what is not a descriptor', () => {
    for (const fd of [-1, 1.5, NaN])
      expect(() => kernelDataStream(fd, 'x')).toThrow(expect.objectContaining({ code: 'EBADF' }));
  });
});
