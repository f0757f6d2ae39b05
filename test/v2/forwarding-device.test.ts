/**
 * ForwardingDevice (src/v2/forwarding-device.ts) forwards every member a
 * device has. The members are read off real devices, not listed here, so a
 * member added to V2Device (and implemented by the sim) that the base does
 * not forward fails this test.
 */
import { describe, expect, it } from 'vitest';
import {
  createSimDevice,
  ForwardingDevice,
  KernelDevice,
  MigState,
  type SimDevice,
  type V2Device,
} from '../../src/index.js';

/** The sim's own members beyond V2Device: the compiler refuses a V2Device key here. */
const SIM_ONLY: readonly Exclude<keyof SimDevice, keyof V2Device>[] = [
  'flags',
  'stateSize',
  'pageSize',
  'pageCount',
  'profile',
  'model',
  'dirtyRatio',
  'resumeFailure',
  'resetKeepsState',
  'initialSeed',
  'setFaults',
  'faults',
  'state',
  'arcs',
  'content',
  'runFor',
];
/** The kernel device's own members beyond V2Device. */
const KERNEL_ONLY: readonly Exclude<keyof KernelDevice, keyof V2Device>[] = ['regionRead', 'regionWrite'];

/** Every public member name of an object: own properties and those of its prototypes. */
function members(o: object): string[] {
  const names = new Set<string>();
  for (let p: object | null = o; p && p !== Object.prototype; p = Object.getPrototypeOf(p) as object | null) {
    for (const k of Object.getOwnPropertyNames(p)) if (k !== 'constructor') names.add(k);
  }
  return [...names].sort();
}

/** The device behind a proxy that records which member each call went to, and with what. */
function recorded<T extends object>(dev: T): { dev: T; calls: [string, unknown[]][] } {
  const calls: [string, unknown[]][] = [];
  const proxy = new Proxy(dev, {
    get(target, key, _receiver) {
      const v: unknown = Reflect.get(target, key, target);
      if (typeof v !== 'function' || typeof key !== 'string') return v;
      return (...args: unknown[]) => {
        calls.push([key, args]);
        return (v as (...a: unknown[]) => unknown).apply(target, args);
      };
    },
  });
  return { dev: proxy, calls };
}

/** Arguments that make each member's call succeed on a fresh sim device. */
const ARGS: Record<string, unknown[]> = { setState: [MigState.STOP] };

describe('ForwardingDevice', () => {
  it('the sim-only list names members the sim has (so the check below sees every V2Device member)', () => {
    const sim = members(createSimDevice());
    for (const k of SIM_ONLY) expect(sim).toContain(k);
  });

  it('forwards every V2Device member of a sim device, with its arguments and result', async () => {
    const sim = createSimDevice({ stateSize: 10_000 });
    const keys = members(sim).filter((k) => !(SIM_ONLY as readonly string[]).includes(k));
    expect(keys).toEqual(
      expect.arrayContaining([
        'close',
        'getState',
        'migrationFlags',
        'name',
        'reset',
        'setState',
        'stateDigest',
        'stopCopySize',
      ]),
    );
    for (const key of keys) {
      const { dev: inner, calls } = recorded(createSimDevice({ stateSize: 10_000 }));
      const direct = createSimDevice({ stateSize: 10_000 }) as unknown as Record<string, unknown>;
      const fwd = new ForwardingDevice(inner) as unknown as Record<string, unknown>;
      expect(
        key in fwd,
        `${key}: a V2Device member the forwarding device lacks (or, if only the sim has it, add it to SIM_ONLY)`,
      ).toBe(true);
      const own = direct[key];
      if (typeof own !== 'function') {
        expect(fwd[key], key).toEqual(own);
        continue;
      }
      const args = ARGS[key] ?? [];
      const got: unknown = await (fwd[key] as (...a: unknown[]) => unknown)(...args);
      const want: unknown = await (own as (...a: unknown[]) => unknown).apply(direct, args);
      expect(calls, key).toEqual([[key, args]]);
      // A stream is a fresh object each time: compare what it is, not which.
      if (want && typeof want === 'object') expect(typeof got, key).toBe('object');
      else expect(got, key).toEqual(want);
    }
  });

  it("forwards the kernel device's members too (its regions capability)", async () => {
    const keys = members(KernelDevice.prototype).filter((k) => !(KERNEL_ONLY as readonly string[]).includes(k));
    const inner = Object.fromEntries(keys.map((k) => [k, () => Promise.resolve(k)])) as unknown as V2Device;
    const fwd = new ForwardingDevice(inner) as unknown as Record<string, () => unknown>;
    for (const k of keys) {
      expect(k in fwd, k).toBe(true);
      if (k !== 'name') await expect(fwd[k]!(), k).resolves.toBe(k);
    }
  });

  it('has an optional capability only when the inner device has it', async () => {
    const bare: V2Device = {
      name: 'bare',
      migrationFlags: async () => 1,
      getState: async () => MigState.RUNNING,
      setState: async () => null,
      stopCopySize: async () => 0n,
      reset: async () => undefined,
      close: async () => undefined,
    };
    const fwd = new ForwardingDevice(bare);
    expect('stateDigest' in fwd).toBe(false);
    expect('regions' in fwd).toBe(false);
    expect(typeof fwd.stateDigest).toBe('undefined');
    expect(typeof fwd.regions).toBe('undefined');
    const sim = createSimDevice({ stateSize: 10_000 });
    const withDigest = new ForwardingDevice(sim);
    expect(withDigest.stateDigest?.()).toBe(sim.stateDigest());
    expect(await withDigest.stateDigest?.(async () => undefined)).toBe(sim.stateDigest());
  });

  it('a subclass overrides one member and keeps the rest forwarded', async () => {
    class Renamed extends ForwardingDevice {
      override get name(): string {
        return `renamed:${this.inner.name}`;
      }
      override stateDigest(): string {
        return 'mine';
      }
    }
    const sim = createSimDevice({ stateSize: 10_000, name: 'x' });
    const r = new Renamed(sim);
    expect(r.name).toBe('renamed:x');
    expect(r.stateDigest()).toBe('mine');
    await r.setState(MigState.STOP);
    expect(sim.state).toBe(MigState.STOP);
  });
});
