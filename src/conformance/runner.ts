/**
 * checkConformance(): runs the selected checks one after another on a
 * device (and its peer), each starting from RUNNING, and leaves the devices
 * RUNNING or says why it could not.
 */
import { release } from 'node:os';
import { VfioError } from '../errors.js';
import type { V2Device } from '../v2/device.js';
import { MIG_FLAGS_ALL, MigFlag, MigState, isMigFlagSet, migFlagNames, migStateName } from '../v2/uapi.js';
import { CheckContext, Evidence, Unsettled, errText } from './context.js';
import { debugfsStatePath } from './debugfs.js';
import { selectChecks } from './registry.js';
import { Skip, type CheckResult, type ConformanceOptions, type ConformanceReport, type DeviceEnd } from './types.js';

const DEFAULT_CYCLES = 20;

export async function checkConformance(device: V2Device, options: ConformanceOptions = {}): Promise<ConformanceReport> {
  let checks;
  try {
    checks = selectChecks(options.only);
  } catch (e) {
    throw new VfioError('EINVAL', 'checkConformance', device.name, (e as Error).message);
  }
  const cycles = options.cycles ?? DEFAULT_CYCLES;
  if (!Number.isSafeInteger(cycles) || cycles < 1)
    throw new VfioError(
      'EINVAL',
      'checkConformance',
      device.name,
      `cycles must be a whole number of at least 1 (got ${cycles})`,
    );
  const debugfs = options.debugfsState ?? (device.kind === 'kernel' ? debugfsStatePath(device.name) : null);
  const ctx = new CheckContext(device, options.peer, cycles, debugfs);

  const rawFlags = await device.migrationFlags();
  ctx.rawFlags = rawFlags;
  // Predictions use the defined bits; discovery.flags judges the rest.
  ctx.flags = rawFlags & MIG_FLAGS_ALL;
  const usable = (ctx.flags & MigFlag.STOP_COPY) !== 0 && isMigFlagSet(ctx.flags);
  if (!ctx.samePeer) {
    const peerFlags = await options.peer!.migrationFlags();
    if ((peerFlags & MIG_FLAGS_ALL) !== ctx.flags)
      throw new VfioError(
        'EINVAL',
        'checkConformance',
        options.peer!.name,
        `the peer's migration flags (${peerFlags}) differ from the device's (${rawFlags}): a peer must be of the same model`,
      );
  }
  for (const d of ctx.samePeer ? [device] : [device, options.peer!]) {
    const s = await d.getState();
    if (s !== MigState.RUNNING)
      throw new VfioError(
        'EBUSY',
        'checkConformance',
        d.name,
        `device is in ${migStateName(s)}: the checker starts from RUNNING (reset it: \`vfio-mig state DEVICE --reset\`)`,
      );
  }

  const results: CheckResult[] = [];
  let stopped: string | null = null;
  for (const check of checks) {
    ctx.evidence = new Evidence();
    ctx.fails = [];
    ctx.warns = [];
    ctx.notes = [];
    const started = Date.now();
    let verdict: CheckResult['verdict'];
    let findings: string[];
    if (stopped) {
      verdict = 'skip';
      findings = [stopped];
    } else if (!usable && check.id !== 'discovery.flags') {
      verdict = 'skip';
      findings = [`flags 0x${rawFlags.toString(16)} have no STOP_COPY: nothing to predict from`];
    } else {
      try {
        await check.run(ctx);
        verdict = ctx.fails.length ? 'fail' : ctx.warns.length ? 'warn' : 'pass';
        findings = [...ctx.fails, ...ctx.warns, ...ctx.notes];
      } catch (e) {
        if (e instanceof Skip) {
          verdict = ctx.fails.length ? 'fail' : 'skip';
          findings = [...ctx.fails, e.message];
        } else if (e instanceof Unsettled) {
          verdict = 'fail';
          findings = [...ctx.fails, e.message];
        } else {
          verdict = 'fail';
          findings = [
            ...ctx.fails,
            `the check could not finish: ${errText(e)}${e instanceof VfioError ? ` (${e.message})` : ''}`,
          ];
        }
      }
      // Every check starts from RUNNING; one that cannot get back there stops the run.
      try {
        if (check.changesState) await ctx.settleAll();
        else await ctx.dev.closeStreams();
      } catch (e) {
        stopped = `not run: ${e instanceof Unsettled ? e.message : `returning to RUNNING failed (${errText(e)})`} after ${check.id}`;
      }
    }
    const r: CheckResult = {
      id: check.id,
      group: check.group,
      title: check.title,
      rule: check.rule,
      source: check.source,
      verdict,
      findings,
      evidence: ctx.evidence.lines(),
      ms: Date.now() - started,
    };
    results.push(r);
    options.onResult?.(r);
  }

  const left: DeviceEnd[] = [];
  for (const d of ctx.samePeer ? [device] : [device, options.peer!]) {
    const state = await d.getState().catch(() => null);
    const end: DeviceEnd = { device: d.name, state: state === null ? null : migStateName(state) };
    if (state !== MigState.RUNNING)
      end.recover = `VFIO_DEVICE_RESET (\`vfio-mig state ${d.name} --reset\`)${d.kind === 'kernel' ? ', or unbind and rebind its driver' : ''}`;
    left.push(end);
  }
  const summary = { pass: 0, fail: 0, warn: 0, skip: 0 };
  for (const r of results) summary[r.verdict]++;
  return {
    device: device.name,
    peer: ctx.samePeer ? null : options.peer!.name,
    flags: rawFlags,
    flagNames: migFlagNames(ctx.flags),
    kernel: device.kind === 'kernel' ? release() : null,
    checks: results,
    summary,
    left,
    ok: summary.fail === 0,
  };
}
