// The README stays true: its config table and measured figures are the generated ones, and the commands it names
// exist.
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { CONFIG_FIELDS, CONFIG_KEYS } from '../../lib/domain/config.js';
import { configTable } from '../../scripts/config-table.js';
import { renderReadme } from '../../scripts/readme.js';

const readme = readFileSync('README.md', 'utf8');
const pkg = JSON.parse(readFileSync('package.json', 'utf8')) as { scripts: Record<string, string> };

describe('README', () => {
  it('lists every config field with its env var, as generated (run `npm run readme` after a change)', () => {
    expect(readme).toContain(configTable());
    for (const key of CONFIG_KEYS) expect(readme).toContain(CONFIG_FIELDS[key].env);
  });

  it('holds the measured figures bench/results holds, as generated (run `npm run readme` after a bench)', () => {
    // The benchmark tables, the fleet's heavy-overload table and the soak figures are generated between markers.
    for (const name of ['bench-core', 'bench-path', 'bench-controls', 'bench-fleet-heavy', 'bench-soak'])
      expect(readme).toContain(`<!-- ${name}:start -->`);
    expect(readme).toBe(renderReadme(readme));
  });

  it.each(['start', 'test', 'bench', 'keys', 'synth', 'deploy', 'typecheck', 'lint'])(
    'names an existing npm script: %s',
    (script) => {
      expect(pkg.scripts[script]).toBeTruthy();
      expect(readme).toMatch(new RegExp(`npm (run )?${script}\\b`));
    },
  );

  it('gives the two commands a newcomer runs', () => {
    expect(readme).toContain('npm ci && npm start');
    expect(readme).toContain('npm test');
  });
});
