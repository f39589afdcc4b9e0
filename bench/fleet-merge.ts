// Merges the rows of a later fleet run into an earlier result and renders its table and charts again:
// `npx tsx bench/fleet-merge.ts <into> <from> [dump dir]`, e.g. sluice's 1× rows rerun alone on newer code
// (SLUICE_BENCH_NAME=fleet-sluice … npm run bench -- fleet) into the whole comparison (`fleet`). Each merged row
// names its run's date, code and load.
import { mergeFleetResults } from './fleet.js';

const [into, from, dumpDir] = process.argv.slice(2);
if (!into || !from) {
  console.error('usage: tsx bench/fleet-merge.ts <into> <from> [dump dir]');
  process.exitCode = 2;
} else {
  const merged = mergeFleetResults(into, from, dumpDir);
  console.log(
    `bench/results/${into}.md: ${merged.scenarios.map((s) => `${s.name} ${s.results.length} rows`).join(', ')}`,
  );
}
