// CDK support: finds (or builds) the static dashboard the stack uploads.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { DASHBOARD_BUILD_MODULE, DASHBOARD_DIST } from './project-paths.js';

export interface DashboardAssets {
  /** `dashboard/dist`, or undefined when there is nothing to upload (the stack then uploads a placeholder). */
  dir: string | undefined;
  /** How the directory was obtained, for the synth log. */
  source: 'built' | 'existing' | 'missing';
}

type BuildFunction = () => unknown;

const builtDir = (): string | undefined =>
  existsSync(join(DASHBOARD_DIST, 'index.html')) ? DASHBOARD_DIST : undefined;

/** The build function `dashboard/build.ts` exports, whatever its name among the usual ones. */
const findBuild = (mod: Record<string, unknown>): BuildFunction | undefined => {
  for (const name of ['buildDashboard', 'build', 'default']) {
    const candidate = mod[name];
    if (typeof candidate === 'function') return candidate as BuildFunction;
  }
  return undefined;
};

/**
 * The dashboard to deploy. With `rebuild` (deploys), runs `dashboard/build.ts` so the upload is never stale;
 * without it (tests), reuses `dashboard/dist` when present and builds only when it is missing.
 */
export const prepareDashboardAssets = async (opts: { rebuild: boolean }): Promise<DashboardAssets> => {
  const existing = builtDir();
  if (existing && !opts.rebuild) return { dir: existing, source: 'existing' };
  if (existsSync(DASHBOARD_BUILD_MODULE)) {
    const mod = (await import(pathToFileURL(DASHBOARD_BUILD_MODULE).href)) as Record<string, unknown>;
    const build = findBuild(mod);
    if (build) {
      await build();
      const dir = builtDir();
      if (dir) return { dir, source: 'built' };
    }
  }
  return existing ? { dir: existing, source: 'existing' } : { dir: undefined, source: 'missing' };
};
