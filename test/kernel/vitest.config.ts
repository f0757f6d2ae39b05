import { defineConfig } from 'vitest/config';

// The real-kernel suite: runs inside the test guest (test/kernel/run-vm.mjs).
export default defineConfig({
  test: {
    include: ['test/kernel/**/*.ktest.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    fileParallelism: false,
    // One process: the guest has one CPU and koffi loads once.
    pool: 'forks',
    maxWorkers: 1,
  },
});
