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
  },
});
