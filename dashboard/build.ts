// Dashboard build: bundles dashboard/src (TypeScript, uPlot, CSS) with esbuild into dashboard/dist, next to
// index.html. Run `npx tsx dashboard/build.ts`; the local runtime and the deployment call buildDashboard().
import { copyFile, mkdir, readdir, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { build } from 'esbuild';

/** The dashboard's source folder. */
export const DASHBOARD_DIR = dirname(fileURLToPath(import.meta.url));
/** Where the static site is written (git-ignored). */
export const DEFAULT_OUT_DIR = join(DASHBOARD_DIR, 'dist');

export interface BuildDashboardOptions {
  /** @default dashboard/dist */
  outDir?: string;
  /** @default true */
  minify?: boolean;
}

/**
 * Builds the static site: `index.html`, `app.js` (one ES module, uPlot included) and `app.css`. Nothing is
 * loaded from a CDN at run time; `config.json` (the API URL) is written by whoever serves the site.
 * @returns the output folder and the files in it
 * @example
 * const { outDir } = await buildDashboard();
 */
export const buildDashboard = async (
  opts: BuildDashboardOptions = {},
): Promise<{ outDir: string; files: string[] }> => {
  const outDir = opts.outDir ?? DEFAULT_OUT_DIR;
  await rm(outDir, { recursive: true, force: true });
  await mkdir(outDir, { recursive: true });
  await build({
    entryPoints: { app: join(DASHBOARD_DIR, 'src', 'main.ts') },
    outdir: outDir,
    bundle: true,
    format: 'esm',
    platform: 'browser',
    target: ['es2022', 'chrome110', 'firefox110', 'safari16'],
    minify: opts.minify ?? true,
    sourcemap: true,
    logLevel: 'warning',
  });
  await copyFile(join(DASHBOARD_DIR, 'index.html'), join(outDir, 'index.html'));
  return { outDir, files: (await readdir(outDir)).sort() };
};

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const { outDir, files } = await buildDashboard();
  console.log(`dashboard built in ${outDir}: ${files.join(', ')}`);
}
