// Regenerates the README's generated parts (`npm run readme`): the config table from CONFIG_FIELDS and the
// measured figures (benchmark tables, the fleet's heavy-overload table, the soak) from bench/results; the docs
// test checks every generated part is current.
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { configTable } from './config-table.js';

/** Replaces the text between `<!-- name:start -->` and `<!-- name:end -->`. */
export const replaceSection = (text: string, name: string, body: string): string => {
  const start = `<!-- ${name}:start -->`;
  const end = `<!-- ${name}:end -->`;
  const i = text.indexOf(start);
  const j = text.indexOf(end);
  if (i < 0 || j < i) throw new Error(`README has no ${name} section`);
  return `${text.slice(0, i + start.length)}\n${body}\n${text.slice(j)}`;
};

const benchTable = (name: string): string => {
  const file = `bench/results/${name}.md`;
  if (!existsSync(file)) return `_Run \`npm run bench -- ${name}\` to produce this table._`;
  // Demote headings so they sit under the README's Benchmarks section.
  return readFileSync(file, 'utf8')
    .trim()
    .replace(/^(#+) /gm, (_m, h: string) => `${'#'.repeat(Math.min(6, h.length + 2))} `);
};

/**
 * One scenario of a fleet result (from its `### <title>` heading to its charts), demoted one level.
 * @param name the result's name: `fleet` (time-scaled, every setup) or `fleet-1x` (sluice at real time)
 */
const fleetScenario = (title: string, name = 'fleet'): string => {
  const file = `bench/results/${name}.md`;
  if (!existsSync(file))
    return `_Run \`SLUICE_BENCH_NAME=${name} npm run bench -- fleet\` to produce this table._`;
  const text = readFileSync(file, 'utf8');
  const start = text.indexOf(`### ${title}`);
  if (start < 0) throw new Error(`${file} has no scenario "${title}"`);
  const end = text.indexOf('\n![', start);
  // The run's line (date, machine, load, code, wall time) goes with its table.
  const run = text.split('\n').find((l) => /^\d{4}-\d{2}-\d{2} · /.test(l));
  const table = `#${text.slice(start, end < 0 ? undefined : end).trim()}`;
  return run ? `${run}\n\n${table}` : table;
};

/** The header line (date, machine, load, code) and the table of a retreat result, demoted one level. */
const retreatTable = (name: string): string => {
  const file = `bench/results/${name}.md`;
  if (!existsSync(file))
    return `_Run \`SLUICE_BENCH_NAME=${name} npm run bench -- retreat\` to produce this table._`;
  const lines = readFileSync(file, 'utf8').split('\n');
  const header = lines.find((l) => /^\d{4}-\d{2}-\d{2} · /.test(l)) ?? '';
  const table = lines.filter((l) => l.startsWith('|'));
  return [header, '', ...table].join('\n');
};

interface SoakResult {
  settings: { minutes: number; agents: number };
  requests: { sent: number };
  tickets: { total: number; open: number };
  accounted: boolean;
  upstream: { maxInWindow: number; limit: number; windowMs: number };
  memory: { rssChangePct: number; idleAfter: { handles: number } };
}

/** The soak's headline figures, from bench/results/soak.json. */
const soakFigures = (): string => {
  const file = 'bench/results/soak.json';
  if (!existsSync(file)) return '_Run `npm run bench -- soak` to produce these figures._';
  const r = JSON.parse(readFileSync(file, 'utf8')) as SoakResult;
  const n = (x: number) => x.toLocaleString('en-US');
  const terminal =
    r.accounted && r.tickets.open === 0
      ? 'every one in exactly one terminal state'
      : `${n(r.tickets.open)} still open`;
  return (
    `The soak (\`npm run bench -- soak\`, ${n(r.settings.agents)} agents for ${r.settings.minutes} minutes with ` +
    `upstream fault bursts): ${n(r.requests.sent)} requests, ${n(r.tickets.total)} tickets, ${terminal}; at most ` +
    `${n(r.upstream.maxInWindow)} upstream calls in any ${r.upstream.windowMs / 1000} s window for a limit of ` +
    `${n(r.upstream.limit)}; RSS ${r.memory.rssChangePct >= 0 ? '+' : ''}${r.memory.rssChangePct} % from warm-up ` +
    `to the end of the load (bound ±10 %), open handles back to ${r.memory.idleAfter.handles} after the drain.`
  );
};

export const renderReadme = (text: string): string => {
  let out = replaceSection(text, 'config-table', configTable());
  for (const name of ['core', 'path', 'controls'])
    out = replaceSection(out, `bench-${name}`, benchTable(name));
  out = replaceSection(out, 'bench-fleet-heavy', fleetScenario('Heavy overload'));
  out = replaceSection(out, 'bench-retreat-1x', retreatTable('retreat-1x'));
  out = replaceSection(out, 'bench-soak', soakFigures());
  return out;
};

if (import.meta.url === `file://${process.argv[1]}`) {
  writeFileSync('README.md', renderReadme(readFileSync('README.md', 'utf8')));
  console.log('README.md updated');
}
