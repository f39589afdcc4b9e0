// Domain: the upstreams the gateway calls — the `SLUICE_UPSTREAMS` list (or today's single-upstream variables),
// the routes their models make, pools, and each limited upstream's run-time limits.
import type { GatewayConfig, RetreatPreset } from './config.js';
import { ValidationError } from './errors.js';
import { defaultRoutes, type Route, type UpstreamDef } from './routes.js';

/** What an operator may change at run time about one limited upstream (its URL and credential are fixed). */
export interface UpstreamLimits {
  /** At most this many calls in any window of `windowMs`. */
  limit: number;
  windowMs: number;
  /** Tokens (prompt + completion) per minute; 0 = not metered in tokens. */
  tpm: number;
  /** Calls running at once at most; 0 = no cap. */
  maxInflight: number;
  retreatPreset: RetreatPreset;
}

/** One upstream as deployed: where it is, whose key it takes, what it serves and (limited ones) its limits. */
export interface UpstreamEntry {
  name: string;
  url: string;
  /** Local runs: the env var holding this upstream's key. */
  keyEnv?: string;
  /** AWS: the Secrets Manager secret holding this upstream's key (the CDK stack fills it in). */
  keySecret?: string;
  /** Absent: an open upstream, not metered. */
  limits?: UpstreamLimits;
  /** The limits the entry states (the others are defaults). */
  limitsGiven?: (keyof UpstreamLimits)[];
  /** Routes by model (`x/` prefix, `x*` prefix, exact id, `*`); absent: the built-in NVIDIA catalog. */
  models?: string[];
}

/** Today's single limited upstream (no `SLUICE_UPSTREAMS`): its name, so its state items keep their keys. */
export const DEFAULT_UPSTREAM_NAME = 'limited';
export const DEFAULT_UPSTREAM_URL = 'https://integrate.api.nvidia.com/v1';
/** Names are metric dimensions and item keys: short, lower case, bounded in number. */
export const UPSTREAM_NAME = /^[a-z0-9][a-z0-9_-]{0,31}$/;
export const MAX_UPSTREAMS = 16;

const PRESETS: Record<RetreatPreset, true> = { sluice: true, seed: true, probe: true };
const ENTRY_FIELDS = new Set([
  'name',
  'url',
  'key_env',
  'key_secret',
  'limit',
  'window_s',
  'tpm',
  'max_inflight',
  'retreat_preset',
  'models',
]);
/** The fields `PATCH /admin/config` may change in an upstream's entry, and the limit each one sets. */
const LIMIT_KEYS = [
  ['limit', 'limit'],
  ['window_s', 'windowMs'],
  ['tpm', 'tpm'],
  ['max_inflight', 'maxInflight'],
  ['retreat_preset', 'retreatPreset'],
] as const;
const LIMIT_FIELDS = new Set<string>(LIMIT_KEYS.map(([f]) => f));

const fail = (where: string, problem: string): never => {
  throw new ValidationError(`${where}: ${problem}`, 'upstreams');
};

const intIn = (where: string, field: string, raw: unknown, min: number, max: number): number => {
  const v = typeof raw === 'string' && raw.trim() !== '' ? Number(raw) : raw;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max)
    fail(where, `${field} must be an integer from ${min} to ${max}`);
  return v as number;
};

/**
 * Applies the limit fields of `raw` (the admin API's names: `limit`, `window_s`, `tpm`, `max_inflight`,
 * `retreat_preset`) over `base`.
 */
const limitsFrom = (where: string, raw: Record<string, unknown>, base: UpstreamLimits): UpstreamLimits => {
  const next = { ...base };
  if (raw.limit !== undefined) next.limit = intIn(where, 'limit', raw.limit, 1, 100_000);
  if (raw.window_s !== undefined) next.windowMs = intIn(where, 'window_s', raw.window_s, 1, 3_600) * 1000;
  if (raw.tpm !== undefined) next.tpm = intIn(where, 'tpm', raw.tpm, 0, 1_000_000_000);
  if (raw.max_inflight !== undefined)
    next.maxInflight = intIn(where, 'max_inflight', raw.max_inflight, 0, 100_000);
  if (raw.retreat_preset !== undefined) {
    const p = raw.retreat_preset;
    if (typeof p !== 'string' || !(p in PRESETS))
      fail(where, `retreat_preset must be one of ${Object.keys(PRESETS).join(', ')}`);
    next.retreatPreset = p as RetreatPreset;
  }
  return next;
};

const isObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * Parses `SLUICE_UPSTREAMS`: a JSON list of `{name, url, key_env, key_secret, limit, window_s, tpm, max_inflight,
 * retreat_preset, models}`. An entry with `limit` is metered; one without is open. Unset limit fields take
 * `defaults` (the gateway's own defaults).
 * @throws ValidationError naming the entry and the field
 */
export const parseUpstreamList = (json: string, defaults: Omit<UpstreamLimits, 'limit'>): UpstreamEntry[] => {
  let v: unknown;
  try {
    v = JSON.parse(json);
  } catch {
    return fail('SLUICE_UPSTREAMS', 'is not valid JSON');
  }
  if (!Array.isArray(v) || v.length === 0) return fail('SLUICE_UPSTREAMS', 'must be a non-empty JSON list');
  if (v.length > MAX_UPSTREAMS) fail('SLUICE_UPSTREAMS', `takes at most ${MAX_UPSTREAMS} upstreams`);
  const seen = new Set<string>();
  return v.map((raw, i): UpstreamEntry => {
    const where = `SLUICE_UPSTREAMS[${i}]`;
    if (!isObject(raw)) return fail(where, 'must be an object');
    const unknown = Object.keys(raw).find((k) => !ENTRY_FIELDS.has(k));
    if (unknown) fail(where, `unknown field ${unknown}`);
    const name = raw.name;
    if (typeof name !== 'string' || !UPSTREAM_NAME.test(name))
      fail(where, 'name must be 1–32 characters of a-z, 0-9, - and _ (it names metrics and state items)');
    const at = `upstream ${name as string}`;
    if (seen.has(name as string)) fail(at, 'the name is used twice');
    seen.add(name as string);
    const url = raw.url === undefined ? DEFAULT_UPSTREAM_URL : raw.url;
    if (typeof url !== 'string' || !/^https?:\/\/[^/\s]+/.test(url)) fail(at, 'url must be an http(s) URL');
    for (const f of ['key_env', 'key_secret'] as const) {
      if (raw[f] !== undefined && (typeof raw[f] !== 'string' || raw[f] === ''))
        fail(at, `${f} must be a string`);
    }
    if (raw.limit === undefined) {
      const limitField = [...LIMIT_FIELDS].find((f) => raw[f] !== undefined);
      if (limitField) fail(at, `${limitField} needs limit (an upstream without limit is not metered)`);
    }
    let models: string[] | undefined;
    if (raw.models !== undefined) {
      if (
        !Array.isArray(raw.models) ||
        raw.models.length === 0 ||
        !raw.models.every((m) => typeof m === 'string' && m.trim() !== '')
      )
        fail(at, 'models must be a non-empty list of model prefixes or ids');
      models = (raw.models as string[]).map((m) => m.trim());
    }
    return {
      name: name as string,
      url: (url as string).replace(/\/+$/, ''),
      ...(raw.key_env ? { keyEnv: raw.key_env as string } : {}),
      ...(raw.key_secret ? { keySecret: raw.key_secret as string } : {}),
      ...(raw.limit !== undefined
        ? {
            limits: limitsFrom(at, raw, { limit: 1, ...defaults }),
            limitsGiven: LIMIT_KEYS.filter(([f]) => raw[f] !== undefined).map(([, k]) => k),
          }
        : {}),
      ...(models ? { models } : {}),
    };
  });
};

/** The first limited upstream: its limits are the config's top-level fields (`upstream_limit`, …). */
export const primaryUpstream = <T extends { limits?: unknown }>(entries: readonly T[]): T | undefined =>
  entries.find((e) => e.limits !== undefined);

/**
 * The routes of a list of upstreams: `extra` (SLUICE_ROUTES) and each upstream's `models` first, in that order,
 * then the built-in NVIDIA catalog for every limited upstream that names no models (unless `catalog` is false).
 * A catalog prefix that an explicit route names is left to that route: extending the defaults never pools a
 * model with an upstream the operator did not name for it.
 */
export const upstreamRoutes = (
  entries: readonly UpstreamEntry[],
  extra: readonly Route[] = [],
  catalog = true,
): Route[] => {
  const explicit: Route[] = [
    ...extra,
    ...entries.flatMap((e) => (e.models ?? []).map((match) => ({ match, upstream: e.name }))),
  ];
  const named = new Set(explicit.map((r) => r.match.toLowerCase()));
  const catalogUpstreams = catalog ? entries.filter((e) => e.limits && !e.models) : [];
  const defaults = catalogUpstreams
    .flatMap((e) => defaultRoutes(e.name))
    .filter((r) => !named.has(r.match.toLowerCase()));
  return [...explicit, ...defaults];
};

/** The deployed upstreams as the router sees them. */
export const upstreamDefs = (entries: readonly UpstreamEntry[]): Map<string, UpstreamDef> =>
  new Map(entries.map((e) => [e.name, { name: e.name, baseUrl: e.url, limited: e.limits !== undefined }]));

/**
 * Limits of one limited upstream under `config`: the first upstream's are the top-level fields, the others' the
 * `upstreams` map (filled from SLUICE_UPSTREAMS, changed by PATCH /admin/config).
 */
export const upstreamLimits = (
  config: Pick<
    GatewayConfig,
    'upstreamLimit' | 'upstreamWindowMs' | 'upstreamTpm' | 'maxInflight' | 'retreatPreset' | 'upstreams'
  >,
  name: string,
): UpstreamLimits =>
  config.upstreams[name] ?? {
    limit: config.upstreamLimit,
    windowMs: config.upstreamWindowMs,
    tpm: config.upstreamTpm,
    maxInflight: config.maxInflight,
    retreatPreset: config.retreatPreset,
  };

/**
 * The limit window of the upstream a granted ticket's token came from (`Ticket.upstream`; the first upstream's
 * when it names none): its grant's age is judged against that window's slack and its refund bounded by it.
 */
export const grantWindowMs = (
  config: Pick<GatewayConfig, 'upstreamWindowMs' | 'upstreams'>,
  upstream: string | undefined,
): number =>
  upstream === undefined
    ? config.upstreamWindowMs
    : (config.upstreams[upstream]?.windowMs ?? config.upstreamWindowMs);

/**
 * The shortest limit window among the upstreams that may grant a ticket (`Ticket.pool`; the first upstream alone
 * when it names none): a wait for any of their grants is paced by that window's slack.
 */
export const poolWindowMs = (
  config: Pick<GatewayConfig, 'upstreamWindowMs' | 'upstreams'>,
  pool: readonly string[] | undefined,
): number =>
  pool?.length ? Math.min(...pool.map((name) => grantWindowMs(config, name))) : config.upstreamWindowMs;

/** External (admin API) form of one upstream's limits. */
export const externalLimits = (l: UpstreamLimits): Record<string, number | string> => ({
  limit: l.limit,
  window_s: l.windowMs / 1000,
  tpm: l.tpm,
  max_inflight: l.maxInflight,
  retreat_preset: l.retreatPreset,
});

/**
 * Applies `PATCH /admin/config`'s `upstreams` value (`{"nv-b": {"limit": 30}}`) over `base`: only limits, only of
 * upstreams beyond the first (those are the top-level fields), only of upstreams that are deployed.
 */
export const patchUpstreamLimits = (
  base: Readonly<Record<string, UpstreamLimits>>,
  raw: unknown,
): Record<string, UpstreamLimits> => {
  if (!isObject(raw)) return fail('upstreams', 'must be an object of upstream name → limits');
  const next = { ...base };
  for (const [name, patch] of Object.entries(raw)) {
    const current = base[name];
    if (!current) {
      const known = Object.keys(base);
      fail(
        'upstreams',
        `no limited upstream ${name} besides the first (${known.length ? `others: ${known.join(', ')}` : 'there are none'}); the first upstream's limits are upstream_limit, upstream_window_s, upstream_tpm, max_inflight and retreat_preset`,
      );
    }
    if (!isObject(patch)) return fail(`upstreams.${name}`, 'must be an object of limits');
    const fixed = Object.keys(patch).find((k) => !LIMIT_FIELDS.has(k));
    if (fixed)
      fail(
        `upstreams.${name}`,
        ENTRY_FIELDS.has(fixed)
          ? `${fixed} is fixed at deploy time; only ${[...LIMIT_FIELDS].join(', ')} change at run time`
          : `unknown field ${fixed}`,
      );
    next[name] = limitsFrom(`upstreams.${name}`, patch, current as UpstreamLimits);
  }
  return next;
};

/**
 * A stored config's upstream limits over the deployed ones: upstreams deployed since keep their start values,
 * removed ones are forgotten.
 */
export const mergeUpstreamLimits = (
  deployed: Readonly<Record<string, UpstreamLimits>>,
  stored: Readonly<Record<string, UpstreamLimits>> | undefined,
): Record<string, UpstreamLimits> =>
  Object.fromEntries(Object.entries(deployed).map(([name, l]) => [name, stored?.[name] ?? l]));

/**
 * The state-item key of an upstream after the first (its bucket, retreat record, in-flight count and outcome
 * slots); the first upstream keeps the single-upstream keys.
 */
export const upstreamStateKey = (name: string): string => `upstream:${name}`;
