// The README stays true: its config table is the one CONFIG_FIELDS generates, and the commands it names exist.
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { CONFIG_FIELDS, CONFIG_KEYS } from '../../lib/domain/config.js';
import { configTable } from '../../scripts/config-table.js';

const readme = readFileSync('README.md', 'utf8');
const pkg = JSON.parse(readFileSync('package.json', 'utf8')) as { scripts: Record<string, string> };

describe('README', () => {
  it('lists every config field with its env var, as generated (run `npm run readme` after a change)', () => {
    expect(readme).toContain(configTable());
    for (const key of CONFIG_KEYS) expect(readme).toContain(CONFIG_FIELDS[key].env);
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
