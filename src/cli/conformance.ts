/** vfio-mig conformance: runs the checker and prints its table (or one JSON object). */
import { isVfioError } from '../errors.js';
import { checkConformance } from '../conformance/runner.js';
import { CHECKS, CHECK_GROUPS, CHECK_IDS } from '../conformance/registry.js';
import type { CheckResult, ConformanceReport } from '../conformance/types.js';
import type { V2Device } from '../v2/device.js';
import type { CliContext } from './context.js';
import { EXIT } from './exit-codes.js';
import { CliError, progressEnabled, toJson } from './output.js';

const MARK: Record<CheckResult['verdict'], string> = { pass: 'pass', fail: 'FAIL', warn: 'warn', skip: 'skip' };

/** --help: the checks, and which of them move the device out of RUNNING. */
export function conformanceHelp(): string {
  const width = Math.max(...CHECK_IDS.map((id) => id.length));
  const rows = CHECKS.map(
    (c) => `  ${c.id.padEnd(width)}  ${c.changesState ? 'changes state' : 'read-only    '}  ${c.title}`,
  );
  return [
    '',
    `Checks (--only takes ids or group names: ${CHECK_GROUPS.join(', ')}):`,
    ...rows,
    '',
    'Checks that change state move the device through its migration states, save and resume it, and reset it',
    '(VFIO_DEVICE_RESET) between steps: run it on a device no VM is using. The device (and the peer) are left',
    'RUNNING; where that fails, the output says so and how to recover. docs/conformance.md quotes each rule.',
    '',
    'Exit 0 when no check failed (warnings and skips allowed), 1 when one did, 5 when a device was left in ERROR.',
    '',
    'Example:',
    '  vfio-mig conformance sim:flags=STOP_COPY+P2P',
    '  vfio-mig conformance /dev/vfio/devices/vfio0 --peer /dev/vfio/devices/vfio1 --cycles 200 --json',
    '  vfio-mig conformance sim --only fsm,streams.data-fd',
  ].join('\n');
}

export function parseOnly(text: string): string[] {
  const names = text
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  const groups: readonly string[] = CHECK_GROUPS;
  for (const n of names) {
    if (!CHECK_IDS.includes(n) && !groups.includes(n))
      throw new CliError(
        `vfio-mig: --only: unknown check "${n}" (\`vfio-mig conformance --help\` lists them)`,
        EXIT.USAGE,
      );
  }
  if (!names.length) throw new CliError('vfio-mig: --only: no check named', EXIT.USAGE);
  return names;
}

function table(r: ConformanceReport): string {
  const width = Math.max(...r.checks.map((c) => c.id.length));
  const lines = [
    `device   ${r.device}${r.peer ? `  (peer ${r.peer})` : '  (resumes into itself)'}`,
    `flags    ${r.flagNames.join(' | ')} (0x${r.flags.toString(16)})${r.kernel ? `   kernel ${r.kernel}` : ''}`,
    '',
    `${'CHECK'.padEnd(width)}  RESULT  FINDING`,
  ];
  for (const c of r.checks) {
    const [first = '', ...rest] = c.findings;
    lines.push(`${c.id.padEnd(width)}  ${MARK[c.verdict].padEnd(6)}  ${first}`);
    // Failures and warnings show every finding; passes only their first note.
    if (c.verdict === 'fail' || c.verdict === 'warn')
      for (const f of rest) lines.push(`${''.padEnd(width)}          ${f}`);
  }
  const s = r.summary;
  lines.push('', `${s.pass} passed, ${s.fail} failed, ${s.warn} warned, ${s.skip} skipped`);
  for (const l of r.left)
    lines.push(
      l.state === 'RUNNING'
        ? `${l.device} left RUNNING`
        : `${l.device} left in ${l.state ?? 'an unknown state'}: recover with ${l.recover}`,
    );
  return lines.join('\n');
}

export async function conformanceCommand(
  ctx: CliContext,
  dev: V2Device,
  peer: V2Device | undefined,
  opts: { json?: boolean; only?: string[]; cycles?: number },
): Promise<number> {
  const progress = !opts.json && progressEnabled(ctx.stderr);
  let report: ConformanceReport;
  try {
    report = await checkConformance(dev, {
      peer,
      only: opts.only,
      cycles: opts.cycles,
      onResult: progress ? (c) => ctx.stderr.write(`\r${c.id} ${c.verdict}`.padEnd(60)) : undefined,
    });
  } catch (e) {
    // A peer of another model is a bad argument, not a device failure.
    if (isVfioError(e, 'EINVAL') && e.op === 'checkConformance')
      throw new CliError(`vfio-mig conformance: ${e.reason}`, EXIT.USAGE, e);
    throw e;
  }
  if (progress) ctx.stderr.write(`\r${''.padEnd(60)}\r`);
  ctx.log(opts.json ? toJson(report) : table(report));
  // The table (or report.left) says where each device was left and how to recover.
  if (report.left.some((l) => l.state === 'ERROR')) return EXIT.DEVICE_LEFT_BAD;
  return report.ok ? EXIT.OK : EXIT.FAILED;
}
