/**
 * What a new-user trial found: commands that left a device in ERROR without
 * saying so (exit 1), info and trace deaf to signals on large simulated
 * devices, no limit on sim:size, a pre-copy line for a device without
 * PRE_COPY, and --cycles 0 passing stress.cycles. Each test failed before
 * its fix.
 */
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { bufferContext, runInProcess } from './run-cli.js';
import { conformanceCommand } from '../../src/cli/conformance.js';
import { createSimDevice, MigState, VfioError } from '../../src/index.js';

const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-left-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const json = (s: string) => JSON.parse(s.trim().split('\n').at(-1)!);

describe('a command that leaves the device in ERROR exits 5 and says so', () => {
  const toError = 'sim:fail=PRE_COPY_P2P:STOP_COPY:EIO:error';

  it.each(['v2', 'v1'])('save --protocol %s', async (protocol) => {
    const out = join(dir, `error-${protocol}.vfio`);
    const r = await runInProcess(['save', toError, '-o', out, '--protocol', protocol]);
    expect(r.code, r.stderr).toBe(5);
    expect(r.stderr).toMatch(/EIO \(5\).*; the device is now in ERROR\n$/);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(existsSync(out)).toBe(false);
    expect(readdirSync(dir).filter((f) => f.startsWith(`.error-${protocol}`))).toEqual([]);
  });

  it('save --json: one error object with the errno and exit 5', async () => {
    const r = await runInProcess(['save', toError, '-o', join(dir, 'error.vfio'), '--json']);
    expect(r.code).toBe(5);
    expect(json(r.stderr).error).toMatchObject({ code: 'EIO', errno: 5, op: 'SET_STATE PRE_COPY->STOP_COPY', exit: 5 });
    expect(json(r.stderr).error.message).toMatch(/the device is now in ERROR$/);
  });

  it('save: a failure that leaves the device elsewhere names that state and exits 1', async () => {
    const r = await runInProcess(['save', 'sim:fail=PRE_COPY_P2P:STOP_COPY:EIO', '-o', join(dir, 'stay.vfio')]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/EIO \(5\).*; the device is now in PRE_COPY_P2P\n$/);
  });

  it('trace', async () => {
    const r = await runInProcess(['trace', toError]);
    expect(r.code).toBe(5);
    expect(r.stdout).toMatch(/device_state = 110 ERROR/);
    expect(r.stderr).toMatch(/EIO \(5\).*; the device is now in ERROR\n$/);
  });

  it('state (v2 names) as before: the path and the state, exit 5', async () => {
    const r = await runInProcess(['state', 'sim:fail=STOP:STOP_COPY:EIO:error', 'STOP_COPY']);
    expect(r.code).toBe(5);
    expect(r.stderr).toMatch(/; the device is now in ERROR \(path was RUNNING -> RUNNING_P2P -> STOP -> STOP_COPY\)\n$/);
  });

  it('conformance: a device the checker could not bring back from ERROR', async () => {
    const dev = createSimDevice({ stateSize: 8192, faults: { failArc: [{ from: MigState.STOP, to: MigState.STOP_COPY, errno: 'EIO', leave: 'error' }] } });
    dev.reset = async () => {
      throw new VfioError('EIO', 'VFIO_DEVICE_RESET', dev.name, 'reset refused');
    };
    const { ctx, stdout } = bufferContext([]);
    const code = await conformanceCommand(ctx, dev, undefined, { only: ['fsm'] });
    expect(stdout.bytes().toString()).toMatch(/left in ERROR: recover with VFIO_DEVICE_RESET/);
    expect(code).toBe(5);
  });
});
