/** vfio-mig state: get, set by v2 name, or set v1 bits through the bridge; prints the path taken. */
import { openV1Bridge } from '../bridge/v1-bridge.js';
import { readU32, writeU32 } from '../v1/region-access.js';
import { VfioError, isVfioError } from '../errors.js';
import { MIGRATION_INFO, V1, v1StateName } from '../v1/uapi.js';
import type { V2Device } from '../v2/device.js';
import { holdsSession, migrationPath } from '../v2/fsm.js';
import { MigState, migStateName } from '../v2/uapi.js';
import type { CliContext } from './context.js';
import { EXIT } from './exit-codes.js';
import { parseStateArg, pathText } from './fsm.js';
import { CliError, failedOn, toJson } from './output.js';

const V1_NAMES: Record<string, number> = {
  STOP: V1.STOP,
  RUNNING: V1.RUNNING,
  SAVING: V1.SAVING,
  'SAVING|RUNNING': V1.SAVING | V1.RUNNING,
  PRECOPY: V1.SAVING | V1.RUNNING,
  RESUMING: V1.RESUMING,
};

function parseV1(text: string): number {
  const t = text.trim().toUpperCase();
  if (/^[01]{3}$/.test(t)) return parseInt(t, 2);
  if (/^\d$/.test(t)) return Number(t);
  const v = V1_NAMES[t];
  if (v === undefined)
    throw new CliError(
      `vfio-mig: unknown v1 state "${text}" (000..111 bits, or STOP, RUNNING, SAVING, SAVING|RUNNING, RESUMING)`,
      EXIT.USAGE,
    );
  return v;
}

export async function stateCommand(
  ctx: CliContext,
  dev: V2Device,
  target: string | undefined,
  opts: { v1?: boolean; reset?: boolean; json?: boolean },
): Promise<number> {
  // --json is one object per run: with a STATE too, the reset is a field of the transition's object.
  const out = (obj: Record<string, unknown>, text: string) =>
    ctx.log(opts.json ? toJson(opts.reset ? { device: obj.device, reset: true, ...obj } : obj) : text);
  if (opts.reset) {
    await dev.reset();
    const after = migStateName(await dev.getState());
    if (target === undefined) {
      out({ device: dev.name, state: after }, `reset: ${after}`);
      return EXIT.OK;
    }
    if (!opts.json) ctx.log(`reset: ${after}`);
  }
  const cur = await dev.getState();
  if (target === undefined) {
    out({ device: dev.name, state: migStateName(cur) }, migStateName(cur));
    if (holdsSession(cur)) {
      // We could open it, so nobody holds it: its data session died with the process that had it.
      ctx.stderr.write(
        `vfio-mig: ${dev.name} is in ${migStateName(cur)} with no process holding its data session; closing it now resets it to RUNNING\n`,
      );
    }
    return EXIT.OK;
  }
  if (opts.v1) {
    const ops: string[] = [];
    const traced = await openV1Bridge(dev, { trace: (e) => ops.push(...e.v2) });
    const from = await readU32(traced, MIGRATION_INFO.DEVICE_STATE);
    const to = parseV1(target);
    try {
      await writeU32(traced, MIGRATION_INFO.DEVICE_STATE, to);
    } catch (e) {
      const now = await readU32(traced, MIGRATION_INFO.DEVICE_STATE);
      throw await failedOn(dev, e, ` (device_state ${v1StateName(now)}${ops.length ? `; v2: ${ops.join(', ')}` : ''})`);
    }
    out(
      {
        device: dev.name,
        from: v1StateName(from),
        to: v1StateName(to),
        v2: ops,
        state: migStateName(await dev.getState()),
      },
      `${v1StateName(from)} -> ${v1StateName(to)}${ops.length ? `: ${ops.join(', ')}` : ' (no v2 operation)'}`,
    );
    return EXIT.OK;
  }
  const want = parseStateArg(target, true);
  const flags = await dev.migrationFlags();
  let path: MigState[];
  try {
    path = migrationPath(cur, want, flags);
  } catch (e) {
    // Refused before the device is asked, as the kernel would refuse it.
    if (!isVfioError(e)) throw e;
    throw new VfioError('EINVAL', `SET_STATE ${migStateName(cur)}->${migStateName(want)}`, dev.name, e.reason, {
      cause: e,
      hint: 'fsm-path',
    });
  }
  let stream;
  try {
    stream = await dev.setState(want);
  } catch (e) {
    throw await failedOn(dev, e, ` (path was ${pathText(path)})`);
  }
  // The session's data is not wanted here: closing the fd ends the transfer side only.
  await stream?.close();
  out(
    {
      device: dev.name,
      path: path.map(migStateName),
      dataFd: stream !== null,
      state: migStateName(await dev.getState()),
    },
    `${pathText(path)}${stream ? ' (a data_fd was opened and closed)' : ''}`,
  );
  return EXIT.OK;
}
