const started = Date.now();
const log = (line: string) =>
  console.log(`[${((Date.now() - started) / 1000).toFixed(1).padStart(6)} s] ${line}`);
const which = process.argv[2] ?? 'fleet';
const m =
  which === 'fleet'
    ? await import('./fleet.js').then((x) => x.runFleetBench({ log }))
    : await import('./retreat.js').then((x) => x.runRetreatBench({ log }));
console.log(m.markdown);
