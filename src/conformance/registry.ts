/** Every check, in the order they run (ids are stable: tools and docs refer to them). */
import type { Check } from './check.js';
import type { CheckGroup } from './types.js';
import { debugfsChecks } from './debugfs.js';
import { discoveryChecks } from './discovery.js';
import { fsmChecks } from './fsm.js';
import { precopyChecks } from './precopy.js';
import { resumeChecks } from './resume.js';
import { streamChecks } from './streams.js';
import { stressChecks } from './stress.js';
import { v1Checks } from './v1-compat.js';

export const CHECKS: readonly Check[] = [
  ...discoveryChecks,
  ...fsmChecks,
  ...streamChecks,
  ...precopyChecks,
  ...resumeChecks,
  ...stressChecks,
  ...v1Checks,
  ...debugfsChecks,
];

export const CHECK_IDS: readonly string[] = CHECKS.map((c) => c.id);

/** The groups, in the order their first check runs: read off the checks, never typed again. */
export const CHECK_GROUPS: readonly CheckGroup[] = [...new Set(CHECKS.map((c) => c.group))];

/** Checks selected by ids or group names; an unknown name is an error naming the known ones. */
export function selectChecks(only: readonly string[] | undefined): Check[] {
  if (!only || only.length === 0) return [...CHECKS];
  const groups: readonly string[] = CHECK_GROUPS;
  for (const name of only) {
    if (!CHECK_IDS.includes(name) && !groups.includes(name))
      throw new RangeError(
        `unknown check "${name}" (known: ${CHECK_IDS.join(', ')}; or a group: ${groups.join(', ')})`,
      );
  }
  return CHECKS.filter((c) => only.includes(c.id) || only.includes(c.group));
}
