// Domain tests: upstreams as configuration — SLUICE_UPSTREAMS parsing, routes and pools, limits at start and at run time.
import { describe, expect, it } from 'vitest';
import { applyConfigPatch, configFromEnv, DEFAULT_CONFIG, withDefaults } from '../../lib/domain/config.js';
import { ValidationError } from '../../lib/domain/errors.js';
import { defaultRoutes, parseRoutes, resolveRoute } from '../../lib/domain/routes.js';
import { checkFitsTpm, estimateRequestTokens, poolTpm } from '../../lib/domain/token-estimate.js';
import {
  grantWindowMs,
  parseUpstreamList,
  poolWindowMs,
  upstreamDefs,
  upstreamLimits,
  upstreamRoutes,
} from '../../lib/domain/upstreams.js';
import { readRuntimeEnv } from '../../lib/runtime/env.js';

const DEFAULTS = { windowMs: 60_000, tpm: 0, maxInflight: 0, retreatPreset: 'probe' } as const;
const QUEUES = {
  SLUICE_STATE_TABLE: 's',
  SLUICE_TICKETS_TABLE: 't',
  SLUICE_KEYS_TABLE: 'k',
  SLUICE_QUEUE_URGENT_URL: 'u',
  SLUICE_QUEUE_HIGH_URL: 'h',
  SLUICE_QUEUE_NORMAL_URL: 'n',
  SLUICE_QUEUE_LOW_URL: 'l',
};
const TWO_KEYS = JSON.stringify([
  { name: 'nv-a', key_env: 'NV_A_KEY', limit: 40, window_s: 60 },
  { name: 'nv-b', key_env: 'NV_B_KEY', limit: 40, window_s: 60, max_inflight: 8 },
  {
    name: 'oai',
    url: 'https://api.example.com/v1',
    key_env: 'OAI_KEY',
    limit: 500,
    tpm: 30000,
    models: ['gpt-4o*'],
  },
]);

describe('SLUICE_UPSTREAMS parsing', () => {
  it('reads names, URLs, credentials, limits and models (defaults for what an entry leaves out)', () => {
    const [a, b, oai] = parseUpstreamList(TWO_KEYS, DEFAULTS);
    expect(a).toEqual({
      name: 'nv-a',
      url: 'https://integrate.api.nvidia.com/v1',
      keyEnv: 'NV_A_KEY',
      limits: { limit: 40, windowMs: 60_000, tpm: 0, maxInflight: 0, retreatPreset: 'probe' },
      limitsGiven: ['limit', 'windowMs'],
    });
    expect(b?.limits?.maxInflight).toBe(8);
    expect(oai).toMatchObject({ url: 'https://api.example.com/v1', models: ['gpt-4o*'] });
    expect(oai?.limits).toMatchObject({ limit: 500, tpm: 30_000 });
  });

  it('an entry without limit is open (not metered)', () => {
    const [open] = parseUpstreamList(
      '[{"name":"local","url":"http://127.0.0.1:9000/v1","models":["x/"]}]',
      DEFAULTS,
    );
    expect(open?.limits).toBeUndefined();
  });

  it.each([
    ['not JSON', '[oops', /is not valid JSON/],
    ['an empty list', '[]', /non-empty JSON list/],
    ['a bad name', '[{"name":"NV A","limit":1}]', /name must be/],
    ['a name used twice', '[{"name":"a","limit":2},{"name":"a","limit":2}]', /used twice/],
    ['a bad URL', '[{"name":"a","url":"ftp://x","limit":2}]', /url must be an http/],
    ['a limit out of range', '[{"name":"a","limit":0}]', /limit must be an integer from 1/],
    ['a fractional window', '[{"name":"a","limit":5,"window_s":1.5}]', /window_s must be an integer/],
    ['limits on an open upstream', '[{"name":"a","tpm":100}]', /tpm needs limit/],
    ['an unknown field', '[{"name":"a","limit":5,"rpm":5}]', /unknown field rpm/],
    ['empty models', '[{"name":"a","limit":5,"models":[]}]', /models must be a non-empty list/],
    [
      'an unknown preset',
      '[{"name":"a","limit":5,"retreat_preset":"fast"}]',
      /retreat_preset must be one of/,
    ],
  ])('refuses %s', (_what, json, message) => {
    expect(() => parseUpstreamList(json, DEFAULTS)).toThrow(message);
    expect(() => parseUpstreamList(json, DEFAULTS)).toThrow(ValidationError);
  });
});

describe('routes: extending the defaults is the easy case, pools by shared models', () => {
  const single = [{ name: 'limited', url: 'https://x/v1', limits: { limit: 40, ...DEFAULTS } }];

  it('no SLUICE_ROUTES: exactly the built-in catalog routes', () => {
    expect(upstreamRoutes(single)).toEqual(defaultRoutes('limited'));
  });

  it('SLUICE_ROUTES adds to the catalog (it used to replace it)', () => {
    const entries = [...single, { name: 'open', url: 'http://127.0.0.1:1/v1', models: [] }];
    const routes = upstreamRoutes(entries, parseRoutes('[{"match":"acme/","upstream":"open"}]'));
    const defs = upstreamDefs(entries);
    expect(resolveRoute('acme/m', routes, defs)?.upstream.name).toBe('open');
    expect(resolveRoute('meta/llama-3.1-8b-instruct', routes, defs)?.upstream.name).toBe('limited');
    expect(resolveRoute('nvidia/meta/llama', routes, defs)).toMatchObject({ model: 'meta/llama' });
  });

  it('a route naming a catalog prefix takes it over instead of pooling with the catalog upstream', () => {
    const entries = [...single, { name: 'open', url: 'http://127.0.0.1:1/v1', models: [] }];
    const routes = upstreamRoutes(entries, parseRoutes('[{"match":"qwen/","upstream":"open"}]'));
    const hit = resolveRoute('qwen/qwen3', routes, upstreamDefs(entries));
    expect(hit?.pool.map((u) => u.name)).toEqual(['open']);
  });

  it('SLUICE_DEFAULT_ROUTES=false drops the catalog', () => {
    expect(upstreamRoutes(single, [], false)).toEqual([]);
  });

  it('two keys without models pool the whole catalog; a provider with models serves its own', () => {
    const entries = parseUpstreamList(TWO_KEYS, DEFAULTS);
    const routes = upstreamRoutes(entries);
    const defs = upstreamDefs(entries);
    expect(resolveRoute('meta/llama', routes, defs)?.pool.map((u) => u.name)).toEqual(['nv-a', 'nv-b']);
    const aliased = resolveRoute('nvidia/deepseek-ai/deepseek-r1', routes, defs);
    expect(aliased).toMatchObject({ model: 'deepseek-ai/deepseek-r1' });
    expect(aliased?.pool.map((u) => u.name)).toEqual(['nv-a', 'nv-b']);
    expect(resolveRoute('gpt-4o-mini', routes, defs)?.pool.map((u) => u.name)).toEqual(['oai']);
    expect(resolveRoute('gpt-5', routes, defs)).toBeUndefined();
  });
});

describe('limits as config: the first upstream is the top-level fields, the others a map', () => {
  it('no SLUICE_UPSTREAMS: today’s config exactly', () => {
    expect(configFromEnv({})).toEqual({ ...DEFAULT_CONFIG });
    expect(upstreamLimits(DEFAULT_CONFIG, 'limited')).toEqual({
      limit: 40,
      windowMs: 60_000,
      tpm: 0,
      maxInflight: 0,
      retreatPreset: 'probe',
    });
  });

  it('SLUICE_UPSTREAMS sets the first one’s top-level fields and the others’ entries', () => {
    const config = configFromEnv({ SLUICE_UPSTREAMS: TWO_KEYS, SLUICE_MAX_INFLIGHT: '4' });
    expect(config).toMatchObject({ upstreamLimit: 40, upstreamWindowMs: 60_000, maxInflight: 4 });
    expect(Object.keys(config.upstreams)).toEqual(['nv-b', 'oai']);
    expect(upstreamLimits(config, 'nv-b')).toMatchObject({ limit: 40, maxInflight: 8 });
    expect(upstreamLimits(config, 'oai')).toMatchObject({ limit: 500, tpm: 30_000, maxInflight: 0 });
  });

  it('a top-level variable that disagrees with the first entry is refused at start', () => {
    expect(() => configFromEnv({ SLUICE_UPSTREAMS: TWO_KEYS, SLUICE_UPSTREAM_LIMIT: '30' })).toThrow(
      /SLUICE_UPSTREAM_LIMIT disagrees with the first limited upstream in SLUICE_UPSTREAMS \(nv-a\)/,
    );
    expect(configFromEnv({ SLUICE_UPSTREAMS: TWO_KEYS, SLUICE_UPSTREAM_LIMIT: '40' }).upstreamLimit).toBe(40);
  });

  it('each upstream’s limit must fit the shared burst and the retreat floor', () => {
    const small = JSON.stringify([
      { name: 'a', limit: 40 },
      { name: 'b', limit: 2 },
    ]);
    expect(() => configFromEnv({ SLUICE_UPSTREAMS: small })).toThrow(
      /upstream b: limit \(2\) must be above bucket_burst/,
    );
    const slow = JSON.stringify([
      { name: 'a', limit: 40 },
      { name: 'b', limit: 4, window_s: 60 },
    ]);
    expect(() => configFromEnv({ SLUICE_UPSTREAMS: slow })).toThrow(
      /upstream b: its rate \(4 rpm\) is below/,
    );
  });

  describe('PATCH /admin/config', () => {
    const base = configFromEnv({ SLUICE_UPSTREAMS: TWO_KEYS });

    it('changes an upstream’s limits, leaving the others and the first one alone', () => {
      const next = applyConfigPatch(base, { upstreams: { 'nv-b': { limit: 30, window_s: 30 } } });
      expect(next.upstreams['nv-b']).toMatchObject({ limit: 30, windowMs: 30_000, maxInflight: 8 });
      expect(next.upstreams.oai).toEqual(base.upstreams.oai);
      expect(next.upstreamLimit).toBe(40);
    });

    it.each([
      [{ 'nv-b': { url: 'https://evil.example/v1' } }, /url is fixed at deploy time/],
      [{ 'nv-b': { key_env: 'OTHER' } }, /key_env is fixed at deploy time/],
      [{ 'nv-a': { limit: 30 } }, /no limited upstream nv-a besides the first .*upstream_limit/],
      [{ 'nv-b': { limit: 1 } }, /upstream nv-b: limit \(1\) must be above bucket_burst/],
      [{ 'nv-b': { max_inflight: -1 } }, /max_inflight must be an integer from 0/],
      [{ 'nv-b': 5 }, /must be an object of limits/],
    ])('refuses %j', (upstreams, message) => {
      expect(() => applyConfigPatch(base, { upstreams })).toThrow(message);
    });
  });

  it('a stored config keeps its limits for upstreams still deployed, takes start values for new ones', () => {
    const deployed = configFromEnv({ SLUICE_UPSTREAMS: TWO_KEYS });
    const stored = {
      ...DEFAULT_CONFIG,
      upstreams: { 'nv-b': { ...deployed.upstreams['nv-b']!, limit: 20 }, gone: deployed.upstreams.oai! },
    };
    const merged = withDefaults(deployed, stored);
    expect(Object.keys(merged.upstreams).sort()).toEqual(['nv-b', 'oai']);
    expect(merged.upstreams['nv-b']?.limit).toBe(20);
    // A config stored before upstreams existed.
    const { upstreams: _none, ...old } = DEFAULT_CONFIG;
    expect(withDefaults(deployed, old).upstreams).toEqual(deployed.upstreams);
  });
});

describe("a grant's window: its own upstream's, not the first one's", () => {
  const config = configFromEnv({
    SLUICE_UPSTREAMS: JSON.stringify([
      { name: 'first', limit: 40, window_s: 60 },
      { name: 'second', limit: 10, window_s: 5, models: ['s/'] },
    ]),
  });
  it.each([
    { upstream: undefined, windowMs: 60_000 },
    { upstream: 'second', windowMs: 5_000 },
    // Not (or no longer) deployed: the first upstream's, as its bucket is the fallback too.
    { upstream: 'gone', windowMs: 60_000 },
  ])('grantWindowMs: a ticket naming $upstream → $windowMs ms', ({ upstream, windowMs }) => {
    expect(grantWindowMs(config, upstream)).toBe(windowMs);
  });
  it.each([
    { pool: undefined, windowMs: 60_000 },
    { pool: ['first'], windowMs: 60_000 },
    { pool: ['second'], windowMs: 5_000 },
    { pool: ['first', 'second'], windowMs: 5_000 },
  ])('poolWindowMs: the shortest of $pool → $windowMs ms', ({ pool, windowMs }) => {
    expect(poolWindowMs(config, pool)).toBe(windowMs);
  });
  it("follows a run-time change of the second upstream's window", () => {
    const patched = applyConfigPatch(config, { upstreams: { second: { window_s: 10 } } });
    expect(grantWindowMs(patched, 'second')).toBe(10_000);
  });
});

describe('runtime env: each upstream its own credential', () => {
  it('no SLUICE_UPSTREAMS: today’s single upstream, routes and key', () => {
    const env = readRuntimeEnv({ ...QUEUES, UPSTREAM_API_KEY: 'k1' });
    expect([...env.upstreams.values()]).toEqual([
      { name: 'limited', baseUrl: 'https://integrate.api.nvidia.com/v1', limited: true },
    ]);
    expect(env.primaryUpstream).toBe('limited');
    expect(env.routes).toEqual(defaultRoutes('limited'));
    expect(env.upstreamCredentials.get('limited')).toEqual({ value: 'k1' });
  });

  it('SLUICE_UPSTREAMS: every upstream its own key; the first one falls back to the single-upstream key only', () => {
    const env = readRuntimeEnv({
      ...QUEUES,
      SLUICE_UPSTREAMS: JSON.stringify([
        { name: 'nv-a', limit: 40 },
        { name: 'nv-b', key_secret: 'arn:aws:secretsmanager:eu-west-1:1:secret:b', limit: 40 },
        { name: 'oai', key_env: 'OAI_KEY', limit: 500, models: ['gpt-'] },
        { name: 'nokey', key_env: 'UNSET_KEY', limit: 10, models: ['x/'] },
      ]),
      UPSTREAM_API_KEY: 'legacy',
      OAI_KEY: 'sk-oai',
    });
    expect(env.primaryUpstream).toBe('nv-a');
    expect(Object.fromEntries(env.upstreamCredentials)).toEqual({
      'nv-a': { value: 'legacy' },
      'nv-b': { secretId: 'arn:aws:secretsmanager:eu-west-1:1:secret:b' },
      oai: { value: 'sk-oai' },
    });
  });

  it('refuses a list without a limited upstream', () => {
    expect(() => readRuntimeEnv({ ...QUEUES, SLUICE_UPSTREAMS: '[{"name":"o","models":["x/"]}]' })).toThrow(
      /at least one upstream needs a limit/,
    );
  });
});

describe('tokens per minute: a request larger than a whole minute is refused', () => {
  it.each([
    // body length, json, default completion → estimate
    ['x'.repeat(400), {}, 0, 100],
    ['x'.repeat(401), { max_tokens: 50 }, 0, 151],
    ['x'.repeat(400), { max_tokens: 50, max_completion_tokens: 20 }, 0, 120],
    ['x'.repeat(400), {}, 256, 356],
  ])('estimate(%#) = %i', (raw, json, fallback, estimate) => {
    expect(estimateRequestTokens(raw, json, fallback)).toBe(estimate);
  });

  it('a pool allows the most of its members, nothing when one is not metered in tokens', () => {
    const config = configFromEnv({ SLUICE_UPSTREAMS: TWO_KEYS });
    const def = (name: string) => ({ name, baseUrl: 'x', limited: true });
    expect(poolTpm(config, [def('oai')])).toBe(30_000);
    expect(poolTpm(config, [def('oai'), def('nv-b')])).toBe(0);
    expect(poolTpm(config, [{ name: 'open', baseUrl: 'x', limited: false }])).toBe(0);
  });

  it('refuses with a 400 naming the limit; 0 = not metered', () => {
    expect(() => checkFitsTpm(30_001, 30_000)).toThrow(
      /about 30001 tokens .* allows 30000 tokens per minute/,
    );
    expect(() => checkFitsTpm(30_001, 30_000)).toThrow(ValidationError);
    expect(() => checkFitsTpm(30_000, 30_000)).not.toThrow();
    expect(() => checkFitsTpm(10 ** 9, 0)).not.toThrow();
  });
});
