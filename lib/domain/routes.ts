// Domain: which upstream serves a model, and whether that upstream's calls are metered by the bucket.

/** An upstream the gateway may call. Only `limited` upstreams spend tokens. */
export interface UpstreamDef {
  name: string;
  baseUrl: string;
  limited: boolean;
}

/**
 * Maps a model id (exact, or prefix ending in `/` or `*`, or `*`) to an upstream. `strip` removes a gateway prefix
 * such as `nvidia/` when what follows is itself `publisher/model` (so `nvidia/llama-…` keeps its name).
 */
export interface Route {
  match: string;
  upstream: string;
  strip?: boolean;
}

/**
 * Publisher prefixes of NVIDIA's API catalog: every one of them spends the same key, so all are metered.
 * The gateway aliases (`nvidia/…` and the seed's `nvidia-gateway`, `nvidiavx…`) are stripped.
 */
export const DEFAULT_LIMITED_PREFIXES = [
  'meta/',
  'deepseek-ai/',
  'mistralai/',
  'nv-mistralai/',
  'qwen/',
  'google/',
  'microsoft/',
  'ibm/',
  'moonshotai/',
  'openai/',
  'writer/',
  'snowflake/',
  'baai/',
  'upstage/',
  'nvidia/',
  'minimaxai/',
  'bigcode/',
  'databricks/',
  'abacusai/',
  'ai21labs/',
  'zhipuai/',
  'thudm/',
  'tiiuae/',
  'stepfun-ai/',
  'bytedance/',
  'sarvamai/',
];
export const DEFAULT_GATEWAY_ALIASES = ['nvidia/', 'nvidia-gateway/', 'nvidiavx/'];

export const defaultRoutes = (limitedUpstream: string): Route[] => [
  ...DEFAULT_GATEWAY_ALIASES.map((match) => ({ match, upstream: limitedUpstream, strip: true })),
  ...DEFAULT_LIMITED_PREFIXES.map((match) => ({ match, upstream: limitedUpstream })),
];

export interface ResolvedRoute {
  upstream: UpstreamDef;
  /** The model id to send upstream. */
  model: string;
  /**
   * Every upstream with a route of the same `match` as the one that hit, `upstream` first: several keys or
   * providers serving the same models (a pool).
   */
  pool: UpstreamDef[];
}

const routeMatches = (match: string, lowerModel: string): boolean =>
  match === '*' ||
  (match.endsWith('/')
    ? lowerModel.startsWith(match)
    : match.endsWith('*')
      ? lowerModel.startsWith(match.slice(0, -1))
      : lowerModel === match);

export const resolveRoute = (
  model: string,
  routes: readonly Route[],
  upstreams: ReadonlyMap<string, UpstreamDef>,
): ResolvedRoute | undefined => {
  const lower = model.toLowerCase();
  for (const r of routes) {
    const m = r.match.toLowerCase();
    if (!routeMatches(m, lower)) continue;
    const upstream = upstreams.get(r.upstream);
    if (!upstream) continue;
    let target = model;
    if (r.strip && m.endsWith('/')) {
      const rest = model.slice(m.length);
      if (rest.includes('/')) target = rest;
    }
    const pool = [upstream];
    for (const other of routes) {
      const member = other.match.toLowerCase() === m ? upstreams.get(other.upstream) : undefined;
      if (member && !pool.includes(member)) pool.push(member);
    }
    return { upstream, model: target, pool };
  }
  return undefined;
};

/** Parses `SLUICE_ROUTES` (JSON array of routes); throws at start on a bad value. */
export const parseRoutes = (json: string): Route[] => {
  const v: unknown = JSON.parse(json);
  if (!Array.isArray(v)) throw new Error('SLUICE_ROUTES must be a JSON array');
  return v.map((r, i) => {
    const o = r as Partial<Route>;
    if (typeof o?.match !== 'string' || typeof o.upstream !== 'string') {
      throw new Error(`SLUICE_ROUTES[${i}] needs string "match" and "upstream"`);
    }
    return { match: o.match, upstream: o.upstream, ...(o.strip ? { strip: true } : {}) };
  });
};
