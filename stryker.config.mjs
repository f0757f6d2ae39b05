// npm run test:mutation: mutation testing of the bridge, the FSM and the
// bridge service: where a wrong branch silently corrupts a migration, or
// lets one client reach another's devices. Not in CI (tens
// of minutes on two cores); incremental (.stryker-incremental.json, kept
// locally), so a rerun tests only what changed.
// Error-message strings are left out (StringLiteral): a changed message is
// not a logic fault. RELIABILITY.md lists the score and the survivors.
/** @type {import('@stryker-mutator/api/core').PartialStrykerOptions} */
export default {
  testRunner: 'vitest',
  vitest: { configFile: 'vitest.mutation.config.ts' },
  mutate: ['src/bridge/*.ts', 'src/v2/fsm.ts', 'src/service/*.ts'],
  mutator: { excludedMutations: ['StringLiteral'] },
  coverageAnalysis: 'perTest',
  incremental: true,
  incrementalFile: '.stryker-incremental.json',
  reporters: ['clear-text', 'progress', 'json'],
  jsonReporter: { fileName: '.stryker-report.json' },
  concurrency: 2,
  // Not copied into the sandbox: the fetched QEMU trees (scripts/kernel/fetch-qemu.sh).
  ignorePatterns: ['.cache'],
  tempDirName: '.stryker-tmp',
  cleanTempDir: 'always',
};
