/** vfio-mig info: what a device offers for migration, and the v1 region the bridge would present. */
import { V1Bridge } from '../bridge/v1-bridge.js';
import { isVfioError } from '../errors.js';
import { vfio_device_migration_info } from '../v1/uapi.js';
import type { V2Device } from '../v2/device.js';
import { MigFlag, VFIO_REGION_INFO_FLAG_MMAP, migFlagNames, migStateName } from '../v2/uapi.js';
import { stateDigestOf, type CliContext } from './context.js';
import { formatBytes, toJson } from './output.js';

/** Up to this stop-copy size (MIG_DATA_SIZE) `info` hashes the state, in about 0.2 s; above it only with --digest. */
export const INFO_DIGEST_LIMIT = 256n << 20n;

export async function infoCommand(
  ctx: CliContext,
  dev: V2Device,
  opts: { json?: boolean; sectionSize: number; digest?: boolean },
): Promise<void> {
  const flags = await dev.migrationFlags();
  const state = await dev.getState();
  let stopCopySize: bigint | null = null;
  try {
    stopCopySize = await dev.stopCopySize();
  } catch (e) {
    if (!isVfioError(e, 'ENOTTY')) throw e;
  }
  const regions = dev.regions ? await dev.regions() : null;
  const bridge = new V1Bridge(dev, flags, { sectionSize: opts.sectionSize });
  const v1 = bridge.regionInfo;
  const info = {
    device: dev.name,
    flags,
    flagNames: migFlagNames(flags),
    state: migStateName(state),
    stopCopySize,
    // PRECOPY_INFO is an ioctl on a pre-copy data_fd: only the session's owner can ask it.
    precopyInfo: null,
    regions,
    v1Region: {
      index: v1.index,
      size: v1.size,
      dataOffset: bridge.dataOffset,
      sectionSize: bridge.sectionSize,
      flags: v1.flags,
      type: v1.type,
      precopy: flags & MigFlag.PRE_COPY ? 'real (PRE_COPY)' : 'virtual (RUNNING, pending_bytes 0)',
    },
    // null: not computed, the stop-copy size being over INFO_DIGEST_LIMIT (or unknown) and --digest not given.
    ...(dev.stateDigest
      ? {
          stateDigest:
            opts.digest || (stopCopySize !== null && stopCopySize <= INFO_DIGEST_LIMIT)
              ? await stateDigestOf(dev)
              : null,
        }
      : {}),
  };
  if (opts.json) {
    ctx.log(toJson(info));
    return;
  }
  const lines = [
    `device        ${info.device}`,
    `migration     ${info.flagNames.join(' | ')} (0x${flags.toString(16)})`,
    `state         ${info.state}`,
    `stop-copy     ${stopCopySize === null ? 'unknown (no MIG_DATA_SIZE)' : `${stopCopySize} bytes (${formatBytes(Number(stopCopySize))})`}`,
    flags & MigFlag.PRE_COPY
      ? 'pre-copy info only within a pre-copy session (VFIO_MIG_GET_PRECOPY_INFO is a data_fd ioctl)'
      : 'pre-copy      none (no PRE_COPY)',
  ];
  if (regions) {
    lines.push('regions');
    for (const r of regions)
      lines.push(
        `  ${String(r.index).padStart(2)}  size ${r.size}  offset 0x${r.offset.toString(16)}  flags 0x${r.flags.toString(16)}${r.type ? `  type ${r.type.type}/${r.type.subtype}` : ''}`,
      );
  }
  lines.push(
    `v1 region     index ${v1.index}, ${v1.size} bytes: header @0 (${vfio_device_migration_info.size} bytes), data section @${bridge.dataOffset} (${bridge.sectionSize} bytes), type ${v1.type?.type}/${v1.type?.subtype}, ${v1.flags & VFIO_REGION_INFO_FLAG_MMAP ? 'mmap' : 'read|write'}`,
    `v1 pre-copy   ${info.v1Region.precopy}`,
  );
  if ('stateDigest' in info)
    lines.push(
      `state digest  ${info.stateDigest ?? `not computed: stop-copy size over ${formatBytes(Number(INFO_DIGEST_LIMIT))} (--digest hashes the state, about 1 s per GiB)`}`,
    );
  ctx.log(lines.join('\n'));
}
