/**
 * A run's resources belong to its CliContext (src/cli/context.ts): no CLI
 * module keeps mutable state at top level, where in-process runs would
 * share it and an interrupt handler would have to find it.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

const cliDir = join(import.meta.dirname, '../../src/cli');

describe('src/cli holds no module-level mutable state', () => {
  for (const file of readdirSync(cliDir).filter((f) => f.endsWith('.ts'))) {
    it(file, () => {
      // Tables (`as const`, Record literals) are data, not state; a collection or a variable is state.
      const topLevel = readFileSync(join(cliDir, file), 'utf8')
        .split('\n')
        .filter((l) =>
          /^(export )?(let|var) |^(export )?const \w+(: [^=]+)? = (new (Set|Map|WeakMap|WeakSet|Array)\b|\[\])/.test(l),
        );
      expect(topLevel).toEqual([]);
    });
  }
});
