/** debugfs.state: the kernel's own view of the state, where it has one. */
import { Skip } from './types.js';
import { existsSync, readFileSync, realpathSync } from 'node:fs';
import { basename } from 'node:path';
import { isStateSupported } from '../v2/fsm.js';
import { MigState, migStateName } from '../v2/uapi.js';
import type { Check } from './check.js';

const S = MigState;
const DEBUGFS = '/sys/kernel/debug/vfio';

/** The debugfs state file of a kernel device path (cdev or group:NAME), or null when the name says nothing. */
export function debugfsStatePath(device: string): string | null {
  let dev: string | null = null;
  const cdev = /^\/dev\/vfio\/devices\/(vfio\d+)$/.exec(device);
  const group = /^\/dev\/vfio\/\d+:(.+)$/.exec(device);
  if (cdev) {
    try {
      dev = basename(realpathSync(`/sys/class/vfio-dev/${cdev[1]}/device`));
    } catch {
      return null;
    }
  } else if (group) dev = group[1]!;
  return dev ? `${DEBUGFS}/${dev}/migration/state` : null;
}

export const debugfsChecks: Check[] = [
  {
    id: 'debugfs.state',
    group: 'debugfs',
    title: "debugfs's migration state agrees with GET_STATE",
    rule: "debugfs (Linux 6.8+, CONFIG_VFIO_DEBUGFS) shows the device's migration state in /sys/kernel/debug/vfio/<device>/migration/state: it must name the state GET_STATE returns",
    source: 'docs/conformance.md (VFIO debugfs, Linux 6.8+)',
    changesState: true,
    async run(ctx) {
      const file = ctx.debugfsState;
      if (!file) throw new Skip('not a kernel device: no debugfs file to compare with');
      if (!existsSync(file)) {
        throw new Skip(
          existsSync(DEBUGFS) || file !== debugfsStatePath(ctx.dev.name)
            ? `${file} does not exist (a kernel before 6.8, or a driver without migration debugfs)`
            : `${DEBUGFS} does not exist: the kernel has no CONFIG_VFIO_DEBUGFS (Linux 6.8+) or debugfs is not mounted (mount -t debugfs none /sys/kernel/debug)`,
        );
      }
      for (const state of [S.RUNNING, S.STOP, S.STOP_COPY, S.RESUMING, S.RUNNING_P2P, S.PRE_COPY, S.PRE_COPY_P2P]) {
        if (!isStateSupported(state, ctx.flags)) continue;
        await ctx.settle();
        if (state !== S.RUNNING) await ctx.dev.setState(state);
        const got = await ctx.dev.getState();
        const shown = readFileSync(file, 'utf8').trim();
        ctx.note(`${file}: ${shown} (GET ${migStateName(got)})`);
        if (shown !== migStateName(got)) ctx.fail(`in ${migStateName(got)} debugfs says "${shown}"`);
      }
    },
  },
];
