/**
 * The systemd units in contrib/systemd/ as systemd reads them: no unknown
 * keys or bad values (systemd-analyze verify, with ExecStart pointed at
 * this checkout's CLI), and the socket and options the service expects.
 * What the service does with a passed socket is in serve-shared.test.ts.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { expect, it } from 'vitest';
import { CLI } from '../cli/run-cli.js';

const units = resolve(import.meta.dirname, '../../contrib/systemd');

it('systemd-analyze verify accepts both units; the socket is root-only under /run/vfio-mig and the service keeps only CAP_SYS_PTRACE', () => {
  const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-units-'));
  try {
    const service = readFileSync(join(units, 'vfio-mig.service'), 'utf8');
    const socket = readFileSync(join(units, 'vfio-mig.socket'), 'utf8');
    expect(service).toMatch(/^ExecStart=\S+vfio-mig serve$/m);
    writeFileSync(
      join(dir, 'vfio-mig.service'),
      service.replace(/^ExecStart=.*$/m, `ExecStart=${process.execPath} ${CLI} serve`),
    );
    writeFileSync(join(dir, 'vfio-mig.socket'), socket);
    const r = spawnSync('systemd-analyze', ['verify', join(dir, 'vfio-mig.socket'), join(dir, 'vfio-mig.service')], {
      encoding: 'utf8',
    });
    expect(r.error).toBeUndefined();
    expect(`${r.stdout}${r.stderr}`.trim()).toBe('');
    expect(r.status).toBe(0);
    expect(socket).toMatch(/^ListenStream=\/run\/vfio-mig\/bridge\.sock$/m);
    expect(socket).toMatch(/^SocketMode=0600$/m);
    expect(service).toMatch(/^CapabilityBoundingSet=CAP_SYS_PTRACE$/m);
    expect(service).toMatch(/^NoNewPrivileges=yes$/m);
    expect(service).not.toMatch(/^MemoryDenyWriteExecute=/m);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
