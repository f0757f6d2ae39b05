/** vfio-mig trace: a save through the bridge, printing each v1 access and the v2 operations it caused. */
import { openV1Bridge, type V1TraceEvent } from '../bridge/v1-bridge.js';
import { saveV1 } from '../v1/reference-caller.js';
import { v1StateName } from '../v1/uapi.js';
import type { V2Device } from '../v2/device.js';
import { signalTurns, type CliContext } from './context.js';
import { countOf, failedOn, toJson } from './output.js';

function describe(e: V1TraceEvent): string {
  const access = `${e.op === 'read' ? 'R' : 'W'}${e.length}@${e.offset}`;
  let what: string = e.field;
  if (e.field === 'device_state' && typeof e.value === 'number')
    what += ` ${e.op === 'read' ? '=' : ':='} ${v1StateName(e.value)}`;
  else if (e.value !== undefined) what += ` ${e.op === 'read' ? '=' : ':='} ${e.value}`;
  const v2 = e.v2.length ? `  ->  ${e.v2.join('; ')}` : '';
  return `${access.padEnd(12)} ${what}${e.error ? `  ! ${e.error}` : ''}${v2}`;
}

export async function traceCommand(
  ctx: CliContext,
  dev: V2Device,
  opts: { json?: boolean; sectionSize: number; precopy: boolean; dataAccess: 'bulk' | 'qemu' },
): Promise<void> {
  const print = (e: V1TraceEvent) => ctx.log(opts.json ? toJson({ event: 'access', ...e }) : describe(e));
  const bridge = await openV1Bridge(dev, { sectionSize: opts.sectionSize, trace: print });
  let result;
  try {
    // The data is dropped; each chunk is a chance to take a signal.
    result = await saveV1(bridge, signalTurns(), {
      precopy: opts.precopy,
      dataAccess: opts.dataAccess,
      device: dev.name,
    });
  } catch (e) {
    throw await failedOn(dev, e);
  }
  const summary = {
    event: 'summary',
    device: dev.name,
    bytes: BigInt(result.bytes),
    precopyBytes: BigInt(result.precopyBytes),
    rounds: result.rounds,
    finalState: v1StateName(result.finalState),
  };
  ctx.log(
    opts.json
      ? toJson(summary)
      : `# saved ${result.bytes} bytes through the v1 bridge (${countOf(result.rounds, 'pre-copy round')}); device_state ${summary.finalState}`,
  );
}
