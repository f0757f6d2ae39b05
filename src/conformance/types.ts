/** The conformance checker's vocabulary: checks, verdicts, the report. */
import type { V2Device } from '../v2/device.js';

export type Verdict = 'pass' | 'fail' | 'warn' | 'skip';

export type CheckGroup = 'discovery' | 'fsm' | 'streams' | 'precopy' | 'resume' | 'stress' | 'v1' | 'debugfs';

export interface CheckResult {
  id: string;
  group: CheckGroup;
  title: string;
  /** The rule, quoted from include/uapi/linux/vfio.h or the project's docs. */
  rule: string;
  source: string;
  verdict: Verdict;
  /** Why it failed, warned or was skipped; what was noted on a pass. */
  findings: string[];
  /** The calls made and what came back, in order (long runs are elided in the middle). */
  evidence: string[];
  ms: number;
}

export interface ConformanceOptions {
  /** A second device of the same model to resume into (default: the device itself). */
  peer?: V2Device;
  /** Check ids (or group names) to run; default all. */
  only?: string[];
  /** Save/resume/reset cycles of the stress check (default 20). */
  cycles?: number;
  /**
   * The debugfs migration state file to cross-check; default: derived from a
   * kernel device's path (/sys/kernel/debug/vfio/<dev>/migration/state).
   */
  debugfsState?: string;
  /** Called as each check finishes (progress). */
  onResult?: (r: CheckResult) => void;
}

export interface DeviceEnd {
  device: string;
  /** The state the checker left the device in, or null when GET failed. */
  state: string | null;
  /** How to recover when it is not RUNNING. */
  recover?: string;
}

export interface ConformanceReport {
  device: string;
  peer: string | null;
  flags: number;
  flagNames: string[];
  /** uname -r, for a kernel device. */
  kernel: string | null;
  checks: CheckResult[];
  summary: Record<Verdict, number>;
  /** Where each device was left. */
  left: DeviceEnd[];
  ok: boolean;
}

/** Thrown inside a check to skip it with a reason. */
export class Skip extends Error {}
