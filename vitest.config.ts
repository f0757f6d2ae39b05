import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    exclude: ['test/kernel/**'],
    testTimeout: 60_000,
    setupFiles: ['test/tmpdir-setup.ts'],
    // The JSON report is what .ci/run counts.
    reporters: ['default', 'json'],
    outputFile: { json: '.ci-host.json' },
  },
});
