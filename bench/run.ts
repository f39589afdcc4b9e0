// Bench entry point (`npm run bench [name...]`): runs the registered benches in order and prints their tables.
import { runCoreBench } from './core.js';

/** What every bench returns: at least its markdown table (the JSON it writes is its own business). */
export interface BenchResult {
  markdown: string;
}

export interface BenchOptions {
  log: (line: string) => void;
}

/** Registered benches, run in this order by default. Add yours with one line. */
export const BENCHES: Record<string, (opts: BenchOptions) => Promise<BenchResult>> = {
  core: runCoreBench,
  controls: (o) => import('./controls.js').then((m) => m.runControlsBench(o)),
  path: (o) =>
    import('./path.js').then(async (m) => ({
      markdown: m.writePathResults(await m.runPathBench({ progress: o.log })),
    })),
  fleet: (o) => import('./fleet.js').then((m) => m.runFleetBench(o)),
  retreat: (o) => import('./retreat.js').then((m) => m.runRetreatBench(o)),
  soak: (o) => import('./soak.js').then((m) => m.runSoakBench(o)),
  throughput: (o) => import('./throughput.js').then((m) => m.runThroughputBench(o)),
};

const main = async (argv: readonly string[]): Promise<number> => {
  // `--name value` pairs are options for the benches (e.g. `soak --minutes 10`), not bench names.
  const given = argv.filter((a, i) => !a.startsWith('--') && !argv[i - 1]?.startsWith('--'));
  const names = given.length ? given : Object.keys(BENCHES);
  const unknown = names.filter((n) => !(n in BENCHES));
  if (unknown.length) {
    console.error(`unknown bench: ${unknown.join(', ')} (known: ${Object.keys(BENCHES).join(', ')})`);
    return 2;
  }
  const started = Date.now();
  const log = (line: string) =>
    console.log(`[${((Date.now() - started) / 1000).toFixed(1).padStart(6)} s] ${line}`);
  const tables: string[] = [];
  for (const name of names) {
    const bench = BENCHES[name];
    if (!bench) continue;
    log(`${name}: start`);
    const result = await bench({ log });
    log(`${name}: done`);
    tables.push(result.markdown);
  }
  console.log(`\n${tables.join('\n')}`);
  return 0;
};

process.exitCode = await main(process.argv.slice(2));
