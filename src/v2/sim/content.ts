/**
 * Deterministic device content for the simulated device: a page's bytes are
 * a window into one fixed pseudo-random pattern, at an offset derived from
 * (seed, page, version). Producing or checking a page costs one copy or one
 * compare, and a state of any size needs only its version array in memory.
 */

/** A prime, so page windows of neighbouring pages do not line up. */
const PATTERN_PERIOD = 65521;
const patterns = new Map<number, Buffer>();

function xorshift32(x: number): number {
  x ^= x << 13;
  x ^= x >>> 17;
  x ^= x << 5;
  return x >>> 0;
}

/** The shared pattern: PERIOD bytes plus one page, so any window is contiguous. */
export function patternFor(pageSize: number): Buffer {
  let p = patterns.get(pageSize);
  if (!p) {
    p = Buffer.allocUnsafe(PATTERN_PERIOD + pageSize);
    let x = 0x9e3779b9;
    for (let i = 0; i < p.length; i++) {
      x = xorshift32(x);
      p[i] = x & 0xff;
    }
    patterns.set(pageSize, p);
  }
  return p;
}

/** Where the bytes of version `version` of page `page` start in the pattern. */
export function pageWindow(seed: number, page: number, version: number): number {
  let h = Math.imul(seed ^ 0x85ebca6b, 0xcc9e2d51);
  h = Math.imul(h ^ page, 0x1b873593) ^ Math.imul(version + 1, 0xe6546b64);
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  return (h >>> 0) % PATTERN_PERIOD;
}

/** A small deterministic PRNG for choosing which pages a running device dirties. */
export class Prng {
  #x: number;
  constructor(seed: number) {
    this.#x = (seed ^ 0x2545f491) >>> 0 || 1;
  }
  next(bound: number): number {
    this.#x = xorshift32(this.#x);
    return this.#x % bound;
  }
}

/** FNV-1a, for the model id carried in the stream header. */
export function fnv1a32(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193);
  return h >>> 0;
}
