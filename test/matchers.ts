/**
 * vitest's asymmetric string matchers, typed `unknown` where vitest says `any`:
 * as a property of an expected object they are only compared, never used.
 */
import { expect } from 'vitest';

export const stringContaining = (expected: string): unknown => expect.stringContaining(expected);
export const stringMatching = (expected: string | RegExp): unknown => expect.stringMatching(expected);
