import { defineConfig } from 'vitest/config';

// npm run bench -- --kernel: the guest side (bench/kernel/*.kbench.ts), booted like the kernel suite by test/kernel/run-vm.mjs.
export default defineConfig({
  test: {
    include: ['bench/kernel/**/*.kbench.ts'],
    fileParallelism: false,
    pool: 'forks',
    maxWorkers: 1,
  },
});
