// Vitest configuration: shared emulators via globalSetup, tests under test/.
import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    globalSetup: ['test/setup/global-setup.ts'],
    include: ['test/**/*.test.ts'],
    // Generous: CDK synths and real-time e2e tests run on loaded 2-core machines too.
    testTimeout: 60_000,
    hookTimeout: 90_000,
    pool: 'forks',
    // Most tests wait on real time (rate limits, windows), not on the CPU: two files at a time halve the wall
    // time on a 2-core machine (≈ 7 min instead of ≈ 11) and pass under extra load (the default would be one).
    maxWorkers: 2,
  },
});
