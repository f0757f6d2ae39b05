import { readFileSync } from 'node:fs';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  MigState,
  migrationPath,
  nextState,
  arcOpensStream,
  arcEndsStream,
  isStateSupported,
} from '../../src/index.js';
import { kernelFsmTable } from '../../scripts/kernel-fsm-table.mjs';

// Produced by compiling vfio_mig_get_next_state() out of Debian's
// linux-source-6.12 (6.12.117) with scripts/kernel-fsm-table.mjs.
const GOLDEN = join(__dirname, '../fixtures/kernel-fsm-6.12.117.txt');

function parseTable(text: string): Map<string, string> {
  const m = new Map<string, string>();
  for (const line of text.trim().split('\n')) {
    const [f, c, n, r] = line.split(' ');
    m.set(`${f} ${c} ${n}`, r!);
  }
  return m;
}

function ours(flags: number, cur: number, target: number): string {
  try {
    return String(nextState(cur, target, flags));
  } catch (e) {
    return (e as { code: string }).code;
  }
}

describe('nextState', () => {
  const golden = parseTable(readFileSync(GOLDEN, 'utf8'));

  it('has the kernel table for all 8x8x4 cases', () => {
    expect(golden.size).toBe(256);
    for (const flags of [1, 3, 5, 7]) {
      for (let cur = 0; cur < 8; cur++) {
        for (let target = 0; target < 8; target++) {
          expect(ours(flags, cur, target), `flags ${flags} ${cur}->${target}`).toBe(
            golden.get(`${flags} ${cur} ${target}`),
          );
        }
      }
    }
  });

  const src = process.env.VFIO_KERNEL_SRC;
  it.skipIf(!src || !existsSync(join(src ?? '', 'drivers/vfio/vfio_main.c')))(
    'golden table equals the kernel function compiled from VFIO_KERNEL_SRC now',
    () => {
      expect(kernelFsmTable(src!)).toBe(readFileSync(GOLDEN, 'utf8')); // set: skipped otherwise
    },
  );

  it('rejects ERROR as a target and as a current state with EINVAL', () => {
    expect(() => nextState(MigState.RUNNING, MigState.ERROR, 7)).toThrow(
      expect.objectContaining({ code: 'EINVAL', errno: 22 }),
    );
    expect(() => nextState(MigState.ERROR, MigState.RUNNING, 7)).toThrow(expect.objectContaining({ code: 'EINVAL' }));
  });

  it('blocks STOP_COPY -> PRE_COPY with EINVAL instead of looping', () => {
    expect(() => nextState(MigState.STOP_COPY, MigState.PRE_COPY, 7)).toThrow(
      expect.objectContaining({ code: 'EINVAL' }),
    );
    expect(() => nextState(MigState.STOP_COPY, MigState.PRE_COPY_P2P, 7)).toThrow(
      expect.objectContaining({ code: 'EINVAL' }),
    );
  });
});

describe('migrationPath', () => {
  // Transcribed from the combination-transition list in the 6.12 kernel comment.
  const S = MigState;
  const cases: Array<[number, MigState, MigState, MigState[]]> = [
    [7, S.RUNNING, S.STOP_COPY, [S.RUNNING, S.RUNNING_P2P, S.STOP, S.STOP_COPY]],
    [7, S.PRE_COPY, S.STOP_COPY, [S.PRE_COPY, S.PRE_COPY_P2P, S.STOP_COPY]],
    [7, S.RESUMING, S.RUNNING, [S.RESUMING, S.STOP, S.RUNNING_P2P, S.RUNNING]],
    [7, S.PRE_COPY, S.RESUMING, [S.PRE_COPY, S.RUNNING, S.RUNNING_P2P, S.STOP, S.RESUMING]],
    [7, S.STOP, S.PRE_COPY, [S.STOP, S.RUNNING_P2P, S.RUNNING, S.PRE_COPY]],
    [7, S.RESUMING, S.PRE_COPY_P2P, [S.RESUMING, S.STOP, S.RUNNING_P2P, S.PRE_COPY_P2P]],
    [1, S.RUNNING, S.STOP_COPY, [S.RUNNING, S.STOP, S.STOP_COPY]],
    [5, S.PRE_COPY, S.STOP_COPY, [S.PRE_COPY, S.STOP_COPY]],
    [3, S.STOP_COPY, S.RUNNING, [S.STOP_COPY, S.STOP, S.RUNNING_P2P, S.RUNNING]],
    [7, S.RUNNING, S.RUNNING, [S.RUNNING]],
  ];
  it.each(cases)('flags %i: %s -> %s', (flags, from, to, path) => {
    expect(migrationPath(from, to, flags)).toEqual(path);
  });

  it('fails for unsupported targets', () => {
    expect(() => migrationPath(S.RUNNING, S.RUNNING_P2P, 1)).toThrow(expect.objectContaining({ code: 'EINVAL' }));
    expect(() => migrationPath(S.RUNNING, S.PRE_COPY, 3)).toThrow(expect.objectContaining({ code: 'EINVAL' }));
  });

  it('opens a stream only on the last arc of every path', () => {
    for (const flags of [1, 3, 5, 7]) {
      for (let a = 1; a < 8; a++) {
        for (let b = 1; b < 8; b++) {
          let path: MigState[];
          try {
            path = migrationPath(a, b, flags);
          } catch {
            continue;
          }
          for (let i = 0; i + 2 < path.length; i++) expect(arcOpensStream(path[i]!, path[i + 1]!)).toBe(false);
        }
      }
    }
  });
});

describe('edges the mutation run found untested', () => {
  const S = MigState;
  it('isStateSupported is false for anything that is not a state', () => {
    for (const s of [-1, 8, 1.5, Number.NaN, 2 ** 32]) expect(isStateSupported(s, 7)).toBe(false);
    expect(isStateSupported(S.ERROR, 7)).toBe(false);
    expect(isStateSupported(S.RUNNING, 1)).toBe(true);
  });

  it('an impossible arc names both states in its details', () => {
    expect(() => migrationPath(S.STOP_COPY, S.PRE_COPY, 7)).toThrow(
      expect.objectContaining({ code: 'EINVAL', details: { cur: S.STOP_COPY, target: S.PRE_COPY, hint: 'fsm-path' } }),
    );
  });

  it('staying in RESUMING neither ends nor opens its stream', () => {
    expect(arcEndsStream(S.RESUMING, S.RESUMING)).toBe(false);
    expect(arcOpensStream(S.RESUMING, S.RESUMING)).toBe(false);
    expect(arcEndsStream(S.RESUMING, S.STOP)).toBe(true);
  });
});
