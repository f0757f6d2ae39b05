/**
 * The convergence rule both pre-copy callers (v1 saveV1, v2 saveV2) apply
 * after a round: pre-copy stops when what is still pending is above the
 * threshold and more than three quarters of what was pending before the
 * round; the rest then goes in stop-copy.
 */
export function precopyStalled(before: bigint, after: bigint, threshold: bigint): boolean {
  return after >= threshold && after * 4n > before * 3n;
}
