// Regenerates the README's generated parts (`npm run readme`): the config table from CONFIG_FIELDS and the
// benchmark tables from bench/results; a test checks the config table is current.
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

export const renderReadme = (text: string): string => {
  let out = replaceSection(text, 'config-table', configTable());
  for (const name of ['core', 'path', 'controls'])
    out = replaceSection(out, `bench-${name}`, benchTable(name));
  return out;
};

if (import.meta.url === `file://${process.argv[1]}`) {
  writeFileSync('README.md', renderReadme(readFileSync('README.md', 'utf8')));
  console.log('README.md updated');
}
