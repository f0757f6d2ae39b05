/** The shape of one check and the uAPI text the rules quote. */
import type { CheckContext } from './context.js';
import type { CheckGroup } from './types.js';

export interface Check {
  /** Stable id: group.name. */
  id: string;
  group: CheckGroup;
  title: string;
  /** The rule, quoted. */
  rule: string;
  /** Where the rule comes from. */
  source: string;
  /** Whether the check moves the device out of RUNNING (every such check returns it to RUNNING). */
  changesState: boolean;
  run(ctx: CheckContext): Promise<void>;
}

export const VFIO_H = 'include/uapi/linux/vfio.h (Linux 6.12)';
