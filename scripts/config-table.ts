// Prints the README's configuration table from CONFIG_FIELDS (the single source of config names and defaults).
import { CONFIG_FIELDS, CONFIG_KEYS, DEFAULT_CONFIG, externalName } from '../lib/domain/config.js';

export const configTable = (): string => {
  const rows = CONFIG_KEYS.map((k) => {
    const spec = CONFIG_FIELDS[k];
    const d = DEFAULT_CONFIG[k];
    const shown = spec.seconds && typeof d === 'number' ? d / 1000 : Array.isArray(d) ? d.join(', ') : d;
    if (spec.kind === 'upstreams')
      return `| \`${externalName(k)}\` | \`${spec.env}\` | one upstream (upstream_*) | JSON, see below | ${spec.doc} |`;
    const range =
      spec.kind === 'list'
        ? `up to ${spec.max} paths`
        : spec.kind === 'enum'
          ? spec.values?.join(' \\| ')
          : spec.kind === 'bool'
            ? 'true \\| false'
            : spec.kind === 'weights'
              ? `u:h:n:l, each ${spec.min} – ${spec.max}`
              : `${(spec.min ?? 0) / (spec.seconds ? 1000 : 1)} – ${(spec.max ?? 0) / (spec.seconds ? 1000 : 1)}`;
    return `| \`${externalName(k)}\` | \`${spec.env}\` | ${shown} | ${range} | ${spec.doc} |`;
  });
  return [
    '| admin API field | env var (`npm start`, Lambda) | default | allowed | meaning |',
    '|---|---|---|---|---|',
    ...rows,
  ].join('\n');
};

if (import.meta.url === `file://${process.argv[1]}`) console.log(configTable());
