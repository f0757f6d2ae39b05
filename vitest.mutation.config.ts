import { defineConfig } from 'vitest/config';

// The host tests that exercise src/bridge and src/v2/fsm.ts in-process: what
// Stryker runs against each mutant (npm run test:mutation). The CLI and
// interposer tests drive dist/ in child processes, so a mutant of src/ never
// reaches them.
export default defineConfig({
  test: {
    include: ['test/bridge/**/*.test.ts', 'test/v2/**/*.test.ts', 'test/service/**/*.test.ts'],
    testTimeout: 60_000,
    env: { VFIO_MIG_MUTATION: '1' },
  },
});
