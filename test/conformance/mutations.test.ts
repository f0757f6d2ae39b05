/**
 * The checker checked: for every check, a device with exactly that rule
 * broken, and the checker must fail that check and no other. A clean
 * simulated device of every flag set passes everything.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { release, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  CONFORMANCE_CHECKS,
  MigState,
  VfioError,
  checkConformance,
  createSimDevice,
  migStateName,
  type V2Device,
} from '../../src/index.js';
import { Mutant, spuriousStream, type Hooks } from './mutant.js';

const S = MigState;
const SIZE = 64 * 1024; // small states keep the 8-byte v1 access quick
const dir = mkdtempSync(join(tmpdir(), 'conformance-')); // the fake debugfs files
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function failing(
  dev: V2Device,
  peer?: V2Device,
  extra: { cycles?: number; debugfsState?: string } = {},
): Promise<string[]> {
  const r = await checkConformance(dev, { peer, cycles: extra.cycles ?? 6, debugfsState: extra.debugfsState });
  return r.checks.filter((c) => c.verdict === 'fail').map((c) => `${c.id}: ${c.findings[0]}`);
}

const ids = (lines: string[]) => lines.map((l) => l.split(':')[0]);

/** One entry per check id: the bug, and (optionally) how to run it. */
// self: the mutant is its own peer (the bug is on the resuming side).
const MUTANTS: Record<
  string,
  { bug: string; hooks: Hooks; cycles?: number; debugfs?: boolean; options?: object; self?: boolean }
> = {
  'discovery.flags': { bug: 'reports an undefined flag bit (8)', hooks: { flags: (f) => f | 8 } },
  'discovery.data-size': {
    bug: 'MIG_DATA_SIZE fails with EINVAL in STOP',
    hooks: {
      stopCopySize: async (m, next) =>
        m.state === S.STOP ? Promise.reject(new VfioError('EINVAL', 'MIG_DATA_SIZE', m.name, 'mutant')) : next(),
    },
  },
  'fsm.paths': {
    bug: 'STOP->RUNNING stops at RUNNING_P2P',
    hooks: {
      setState: (m, t, next) => (m.state === S.STOP && t === S.RUNNING ? m.inner.setState(S.RUNNING_P2P) : next()),
    },
  },
  'fsm.einval': {
    bug: 'accepts STOP_COPY->PRE_COPY (by starting a new pre-copy session)',
    hooks: {
      setState: async (m, t, next) => {
        if (m.state !== S.STOP_COPY || t !== S.PRE_COPY) return next();
        await m.inner.reset();
        return m.inner.setState(S.PRE_COPY);
      },
    },
  },
  'fsm.no-unasked-saving': {
    bug: 'RUNNING->STOP goes through PRE_COPY and returns its data_fd',
    hooks: {
      setState: async (m, t, next) => {
        if (m.state !== S.RUNNING || t !== S.STOP) return next();
        const s = await m.inner.setState(S.PRE_COPY);
        await m.inner.setState(S.STOP);
        return s;
      },
    },
  },
  'fsm.failure-state': {
    bug: 'refuses STOP_COPY->PRE_COPY with EINVAL but moves to STOP first',
    hooks: {
      setState: async (m, t, next) => {
        if (m.state !== S.STOP_COPY || t !== S.PRE_COPY) return next();
        await m.inner.setState(S.STOP);
        throw new VfioError('EINVAL', 'SET_STATE', m.name, 'mutant');
      },
    },
  },
  'streams.data-fd': {
    bug: 'RUNNING->RUNNING_P2P returns a data_fd',
    hooks: {
      setState: async (m, t, next) => {
        if (m.state !== S.RUNNING || t !== S.RUNNING_P2P) return next();
        await next();
        return spuriousStream(m.name);
      },
    },
  },
  'streams.precopy-end': {
    bug: 'the first temporary end of pre-copy is EIO, not ENOMSG',
    hooks: {
      read: async (s, _into, next) => {
        try {
          return await next();
        } catch (e) {
          if ((e as VfioError).code !== 'ENOMSG' || s.dev.count++ > 0) throw e;
          throw new VfioError('EIO', 'data_fd.read', s.dev.name, 'mutant');
        }
      },
    },
  },
  'streams.saving-group': {
    bug: 'PRE_COPY->PRE_COPY_P2P tears down the session',
    hooks: {
      setState: (m, t, next) => {
        if (m.state === S.PRE_COPY && t === S.PRE_COPY_P2P) for (const s of m.streams) s.torn = true;
        return next();
      },
    },
  },
  'streams.stop-copy-end': {
    bug: 'a read after the end of a STOP_COPY stream fails with EIO',
    hooks: {
      read: (s, _into, next) =>
        s.zeroSeen && s.dev.state === S.STOP_COPY
          ? Promise.reject(new VfioError('EIO', 'data_fd.read', s.dev.name, 'mutant'))
          : next(),
    },
  },
  'streams.no-enomsg-stop-copy': {
    bug: 'the first STOP_COPY read of the device is ENOMSG',
    hooks: {
      read: (s, _into, next) =>
        s.dev.state === S.STOP_COPY && s.dev.count++ === 0
          ? Promise.reject(new VfioError('ENOMSG', 'data_fd.read', s.dev.name, 'mutant'))
          : next(),
    },
  },
  'streams.dead-after-end': {
    bug: 'a data_fd whose session a state change ended still gives bytes',
    hooks: {
      read: async (s, into, next) => {
        try {
          return await next();
        } catch (e) {
          if ((e as VfioError).code !== 'ENODEV' || s.endedByReset) throw e;
          into.fill(0xee);
          return into.length;
        }
      },
    },
  },
  'precopy.info-einval': {
    bug: 'PRECOPY_INFO answers in STOP_COPY',
    hooks: {
      precopyInfo: (s, next) =>
        s.dev.state === S.STOP_COPY ? Promise.resolve({ initialBytes: 0n, dirtyBytes: 0n }) : next(),
    },
  },
  'precopy.info-mandatory': {
    bug: 'PRECOPY_INFO is ENOTTY in PRE_COPY_P2P',
    hooks: {
      precopyInfo: (s, next) =>
        s.dev.state === S.PRE_COPY_P2P
          ? Promise.reject(new VfioError('ENOTTY', 'PRECOPY_INFO', s.dev.name, 'mutant'))
          : next(),
    },
  },
  'precopy.initial-no-grow': {
    bug: 'initial_bytes jumps up by 1 MB after the second read',
    hooks: {
      precopyInfo: async (s, next) => {
        const i = await next();
        return s.reads >= 2 ? { ...i, initialBytes: i.initialBytes + 1_000_000n } : i;
      },
    },
  },
  'resume.roundtrip': {
    self: true,
    bug: 'a resumed device changes one page of its state',
    hooks: {
      setState: async (m, t, next) => {
        const from = m.state;
        const s = await next();
        if (from === S.RESUMING && t === S.RUNNING) m.inner.runFor(1);
        return s;
      },
    },
  },
  'resume.bad-streams': {
    self: true,
    bug: 'an empty resume is accepted',
    hooks: {
      write: (s, from, next) => {
        s.dev.count += from.length;
        return next();
      },
      setState: async (m, t, next) => {
        if (m.state !== S.RESUMING || t === S.RESUMING) {
          if (t === S.RESUMING) m.count = 0;
          return next();
        }
        if (m.count > 0) return next();
        await m.inner.reset();
        if (t !== S.RUNNING) await m.inner.setState(t);
        return null;
      },
    },
  },
  'resume.partial-writes': {
    self: true,
    bug: '1-byte writes are taken and dropped',
    hooks: { write: (_s, from, next) => (from.length === 1 ? Promise.resolve(1) : next()) },
  },
  'resume.reset-recovers': {
    bug: 'reset in RESUMING leaves the device in STOP',
    hooks: {
      reset: async (m, next) => {
        const was = m.state;
        await next();
        if (was === S.RESUMING) await m.inner.setState(S.STOP);
      },
    },
  },
  'stress.cycles': {
    self: true,
    bug: "resumes 20 to 24 of the device's life fail with EIO (it wears out)",
    cycles: 40,
    hooks: {
      setState: async (m, t, next) => {
        if (m.state !== S.RESUMING || t === S.RESUMING) return next();
        const n = ++m.count;
        if (n >= 20 && n <= 24) throw new VfioError('EIO', 'SET_STATE', m.name, 'mutant: worn out');
        return next();
      },
    },
  },
  'v1.bridge': {
    bug: 'reads of more than 60000 bytes fail with EINVAL (the bridge reads a whole 1 MiB section at once)',
    options: { stateSize: 1 << 20 },
    hooks: {
      read: (s, into, next) =>
        into.length > 60000
          ? Promise.reject(new VfioError('EINVAL', 'data_fd.read', s.dev.name, 'mutant: read too large'))
          : next(),
    },
  },
  'debugfs.state': {
    bug: 'its (fake) debugfs file says RUNNING while the device is in STOP',
    debugfs: true,
    hooks: {},
  },
};

describe('conformance checker: clean simulated devices', () => {
  it.each([1, 3, 5, 7])(
    'flags %i: nothing fails; only recovery from ERROR, which this device never enters, warns as not exercised',
    async (flags) => {
      const r = await checkConformance(createSimDevice({ flags, stateSize: SIZE }), {
        peer: createSimDevice({ flags, stateSize: SIZE, seed: 7 }),
        cycles: 6,
      });
      const bad = r.checks.filter((c) => c.verdict === 'fail' || c.verdict === 'warn');
      expect(bad.map((c) => `${c.id}: ${c.findings.join('; ')}`)).toEqual([
        expect.stringMatching(/^resume\.reset-recovers: recovery from ERROR not exercised: /),
      ]);
      expect(r.ok).toBe(true);
      expect(r.left.map((l) => l.state)).toEqual(['RUNNING', 'RUNNING']);
      // Only what needs a PRE_COPY device or a kernel device is skipped.
      const skipped = r.checks.filter((c) => c.verdict === 'skip').map((c) => c.id);
      expect(skipped).toEqual(
        [
          'streams.precopy-end',
          'streams.saving-group',
          'precopy.info-mandatory',
          'precopy.initial-no-grow',
          'debugfs.state',
        ].filter((id) => !(flags & 4) || id === 'debugfs.state'),
      );
    },
  );

  it('the mtty profile, on itself (no peer): nothing fails; its 0 at the temporary end warns, and recovery from ERROR is not exercised', async () => {
    const r = await checkConformance(createSimDevice({ profile: 'mtty' }), { cycles: 6 });
    expect(r.checks.filter((c) => c.verdict === 'fail').map((c) => c.findings)).toEqual([]);
    expect(r.checks.filter((c) => c.verdict === 'warn').map((c) => c.id)).toEqual([
      'streams.precopy-end',
      'resume.reset-recovers',
    ]);
  });

  it("a device whose reset keeps its state (as mtty's does), resuming into itself: nothing fails", async () => {
    // Loads change what the device holds for the rest of the run: no check may compare with a stale save.
    const dev = createSimDevice({ stateSize: SIZE, resetKeepsState: true });
    const r = await checkConformance(dev, { cycles: 4 });
    expect(r.checks.filter((c) => c.verdict === 'fail').map((c) => `${c.id}: ${c.findings.join('; ')}`)).toEqual([]);
  });

  it('a device that fails a refused resume into ERROR: reset from ERROR is exercised and passes', async () => {
    const r = await checkConformance(createSimDevice({ stateSize: SIZE, resumeFailure: 'error' }), { cycles: 2 });
    expect(r.ok).toBe(true);
    const reset = r.checks.find((c) => c.id === 'resume.reset-recovers')!;
    expect(reset.verdict).toBe('pass');
    expect(reset.evidence.join('\n')).toMatch(/GET_STATE = ERROR/);
    expect(reset.findings.join(' ')).not.toMatch(/not exercised/);
  });
});

describe('conformance checker: one broken rule fails exactly its check', () => {
  it('every check has a mutant here', () => {
    expect(Object.keys(MUTANTS).sort()).toEqual(CONFORMANCE_CHECKS.map((c) => c.id).sort());
  });

  for (const [id, m] of Object.entries(MUTANTS)) {
    it(`${id}: ${m.bug}`, async () => {
      let debugfsState: string | undefined;
      const hooks: Hooks = { ...m.hooks };
      if (m.debugfs) {
        debugfsState = join(mkdtempSync(join(dir, 'debugfs-')), 'state');
        hooks.changed = (d) =>
          writeFileSync(debugfsState!, `${d.state === S.STOP ? 'RUNNING' : migStateName(d.state)}\n`);
        writeFileSync(debugfsState, 'RUNNING\n');
      }
      const options = { stateSize: SIZE, ...m.options };
      const dev = new Mutant(hooks, options);
      const peer = m.self ? undefined : createSimDevice({ ...options, seed: 9 });
      const failed = await failing(dev, peer, { cycles: m.cycles, debugfsState });
      expect(ids(failed), failed.join('\n')).toEqual([id]);
    });
  }

  it("mtty's deviations warn, not fail: 0 at the temporary end, ENOTTY from a resuming fd, a bad header refused only by write()", async () => {
    // As mtty does: its resuming fd has no ioctl; a write whose header is bad is EFAULT, yet leaving RESUMING then succeeds.
    const dev = new Mutant(
      {
        precopyInfo: (s, next) =>
          s.dev.state === S.RESUMING
            ? Promise.reject(new VfioError('ENOTTY', 'PRECOPY_INFO', s.dev.name, 'mutant'))
            : next(),
        write: async (s, from, next) => {
          try {
            return await next();
          } catch (e) {
            s.dev.count = 1; // the bytes were taken all the same
            throw e;
          }
        },
        setState: async (m, t, next) => {
          if (t === S.RESUMING) m.count = 0;
          if (m.state !== S.RESUMING || t === S.RESUMING || m.count === 0) return next();
          await m.inner.reset();
          return null;
        },
      },
      { profile: 'mtty' },
    );
    const r = await checkConformance(dev, { cycles: 2 });
    expect(r.checks.filter((c) => c.verdict === 'fail').map((c) => c.id)).toEqual([]);
    // The mtty profile adds its 0 at the temporary end: this is the set real mtty gets (docs/conformance.md).
    expect(r.checks.filter((c) => c.verdict === 'warn').map((c) => c.id)).toEqual([
      'streams.precopy-end',
      'precopy.info-einval',
      'resume.bad-streams',
      'resume.reset-recovers',
    ]);
    expect(r.checks.find((c) => c.id === 'resume.bad-streams')!.findings[0]).toMatch(
      /write\(\) refused it .* but leaving RESUMING afterwards succeeded/,
    );
  });

  it('a device that cannot be returned to RUNNING stops the run and the report says how to recover', async () => {
    // Reset does nothing, and the way out of STOP (STOP -> RUNNING_P2P) fails.
    const dev = new Mutant(
      { reset: async () => undefined },
      { stateSize: SIZE, faults: { failArc: [{ from: S.STOP, to: S.RUNNING_P2P, errno: 'EIO' }] } },
    );
    const r = await checkConformance(dev, { cycles: 2 });
    const dataSize = r.checks.find((c) => c.id === 'discovery.data-size')!;
    expect(dataSize.verdict).toBe('fail');
    expect(dataSize.findings.join(' ')).toMatch(/could not be returned to RUNNING \(it is in STOP\)/);
    const later = r.checks.filter((c) => c.id !== 'discovery.flags' && c.id !== 'discovery.data-size');
    expect(new Set(later.map((c) => c.verdict))).toEqual(new Set(['skip']));
    expect(later[0]!.findings[0]).toMatch(/^not run: .* after discovery\.data-size/);
    expect(r.ok).toBe(false);
    expect(r.left).toEqual([
      { device: dev.name, state: 'STOP', recover: `VFIO_DEVICE_RESET (\`vfio-mig state ${dev.name} --reset\`)` },
    ]);
  });

  it("the device's kind, not its name, picks the kernel-only parts: release, debugfs, rebinding", async () => {
    const stuck = { reset: async () => undefined };
    const faults = { failArc: [{ from: S.STOP, to: S.RUNNING_P2P, errno: 'EIO' }] };
    // A sim named like a kernel node is still a sim.
    const sim = await checkConformance(
      new Mutant(stuck, { stateSize: SIZE, name: '/dev/vfio/devices/vfio0', faults }),
      { only: ['debugfs', 'discovery'], cycles: 1 },
    );
    expect(sim.kernel).toBeNull();
    expect(sim.checks.find((c) => c.id === 'debugfs.state')!.findings).toEqual([
      expect.stringMatching(/^not a kernel device|^not run/),
    ]);
    expect(sim.left[0]!.recover).not.toMatch(/rebind/);
    // A device that says it is a kernel one gets them whatever it is called.
    const kernel = await checkConformance(new Mutant({ ...stuck, kind: 'kernel' }, { stateSize: SIZE, faults }), {
      only: ['discovery'],
      cycles: 1,
    });
    expect(kernel.kernel).toBe(release());
    expect(kernel.left[0]!.recover).toMatch(/, or unbind and rebind its driver$/);
  });

  it('debugfs.state passes with a faithful fake debugfs file', async () => {
    const file = join(mkdtempSync(join(dir, 'debugfs-')), 'state');
    writeFileSync(file, 'RUNNING\n');
    const dev = new Mutant({ changed: (d) => writeFileSync(file, `${migStateName(d.state)}\n`) }, { stateSize: SIZE });
    const r = await checkConformance(dev, { only: ['debugfs'], debugfsState: file });
    expect(r.checks.map((c) => [c.id, c.verdict])).toEqual([['debugfs.state', 'pass']]);
    expect(r.checks[0]!.evidence.join('\n')).toMatch(/PRE_COPY_P2P \(GET PRE_COPY_P2P\)/);
  });
});
