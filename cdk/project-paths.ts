// CDK support: absolute paths of the project's sources the stack bundles and deploys.
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The repository root (where package.json and package-lock.json live). */
export const PROJECT_ROOT = dirname(dirname(fileURLToPath(import.meta.url)));

/** The lock file NodejsFunction hashes and uses to find the project root. */
export const LOCK_FILE = join(PROJECT_ROOT, 'package-lock.json');

/** Entry module (exports `handler`) of each function. */
export const FUNCTION_ENTRIES = {
  ingress: join(PROJECT_ROOT, 'functions/ingress/handler.ts'),
  dispatcher: join(PROJECT_ROOT, 'functions/dispatcher/handler.ts'),
  status: join(PROJECT_ROOT, 'functions/status/handler.ts'),
} as const;

/** Where `dashboard/build.ts` writes the static dashboard. */
export const DASHBOARD_DIST = join(PROJECT_ROOT, 'dashboard/dist');
export const DASHBOARD_BUILD_MODULE = join(PROJECT_ROOT, 'dashboard/build.ts');

/** Fails with a message naming the missing entry rather than an esbuild stack trace. */
export const assertEntriesExist = (): void => {
  const missing = Object.values(FUNCTION_ENTRIES).filter((entry) => !existsSync(entry));
  if (missing.length > 0) {
    throw new Error(
      `function entry missing: ${missing.map((m) => m.slice(PROJECT_ROOT.length + 1)).join(', ')}`,
    );
  }
};
