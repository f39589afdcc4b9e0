// Domain: the gateway's run-time configuration — fields, defaults, validation and the derived bucket.
import { ValidationError } from './errors.js';
import {
  DEFAULT_PRIORITY_WEIGHTS,
  PRIORITY_POLICIES,
  type PriorityPolicy,
  parseWeights,
} from './priority-policy.js';
import { CACHE_MAX_TTL_S, CACHE_SCOPES, type CacheScope } from './response-cache.js';
import {
  externalLimits,
  mergeUpstreamLimits,
  parseUpstreamList,
  patchUpstreamLimits,
  primaryUpstream,
  type UpstreamLimits,
} from './upstreams.js';

export const QUEUE_FULL_POLICIES = ['reject', 'drop_lowest', 'passthrough'] as const;
export type QueueFullPolicy = (typeof QUEUE_FULL_POLICIES)[number];

/** `sluice`: ADR-009 paced by time; `seed`: ADR-009 stepping per response; `probe`: cut to the accepted rate, probe up. */
export const RETREAT_PRESETS = ['sluice', 'seed', 'probe'] as const;
export type RetreatPreset = (typeof RETREAT_PRESETS)[number];

/**
 * Every field an operator can change at run time (admin API) or set at start (env vars).
 * Times are in milliseconds, rates in requests per minute.
 */
export interface GatewayConfig {
  /** The upstream's stated limit: at most `upstreamLimit` calls in any window of `upstreamWindowMs`. */
  upstreamLimit: number;
  /** @default 60000 */
  upstreamWindowMs: number;
  /** Tokens per minute the (first) upstream allows; 0 = not metered in tokens. @default 0 */
  upstreamTpm: number;
  /**
   * The window tokens-per-minute limits count over (every upstream's `tpm`): a minute, as providers state them;
   * shorter only for time-scaled runs. @default 60000
   */
  tpmWindowMs: number;
  /**
   * Completion tokens a request without `max_completion_tokens`/`max_tokens` is assumed to spend, for the
   * reservation on an upstream with `tpm` (the answer's usage corrects it). @default 1024
   */
  tpmDefaultMaxTokens: number;
  /** Grants the bucket may give back to back after idling; small, so burst + rate·window ≤ limit. @default 2 */
  bucketBurst: number;
  /**
   * Longest time from a grant to its upstream call (a staler grant is requeued and refunded): the bucket caps
   * every window of upstream window + this, so the limit holds for calls. At most a tenth of the window.
   * @default 1000
   */
  grantSlackMs: number;
  /** Part of the burst that LOW (and NORMAL when `reserveForNormal`) may not spend. @default 0.5 */
  reserveFraction: number;
  /** @default false */
  reserveForNormal: boolean;
  /** Queued tickets at most (exact, admission counter). @default 500 */
  queueMaxSize: number;
  /** @default 'reject' */
  queueFullPolicy: QueueFullPolicy;
  /** Queued tickets one agent may have (429 `agent_queue_full` above); 0 = a quarter of `queueMaxSize`. @default 0 */
  maxQueuedPerAgent: number;
  /** `strict`: most important first (the seed); `weighted`: shares by `priorityWeights`. @default 'strict' */
  priorityPolicy: PriorityPolicy;
  /** Shares urgent:high:normal:low under the weighted policy (grants in proportion while backlogged). @default '8:4:2:1' */
  priorityWeights: string;
  /**
   * A LOW ticket that cannot get a token this long after the dispatcher first sees it is refused. Four token
   * intervals of the default key (1.5 s): a lone LOW request waits at most burst × interval (3 s) behind the
   * grants just before it, so it is served whenever nothing more important waits. Strict order only: under
   * `weighted` LOW has an assured share and waits for it like the other priorities. @default 6000
   */
  lowPriorityTimeoutMs: number;
  /** Upstream call timeout (whole response). @default 120000 */
  requestTimeoutMs: number;
  /** Upstream first-byte timeout. @default 30000 */
  firstByteTimeoutMs: number;
  /**
   * Longest queue wait of a non-streaming request. It sends nothing while it waits nor while the upstream answers,
   * and API Gateway drops a connection idle for 5 minutes: this plus `requestTimeoutMs` must fit under that
   * (validated; see nonStreamingWaitCapMs). @default 170000
   */
  maxWaitMs: number;
  /** Longest queue wait of a streaming request (kept alive by heartbeats). @default 540000 */
  streamMaxWaitMs: number;
  /** Interval of SSE heartbeats while a streaming request waits; 0 disables them. @default 15000 */
  heartbeatMs: number;
  /** Requeues after an upstream 429 / capacity error before the agent sees it. @default 2 */
  maxRequeues: number;
  /** Proxy models routed to unlimited upstreams; when false they get 400. @default true */
  passthroughUnlimited: boolean;
  /** Let anyone read /status (private networks only). @default false */
  statusPublic: boolean;
  /** Upstream calls running at once at most (granted or claimed, not finished); 0 = no cap. @default 0 */
  maxInflight: number;
  /** Stop granting; queued tickets wait, new ones queue. @default false */
  paused: boolean;
  /** Refuse new requests with 503 while the queue empties (maintenance). @default false */
  draining: boolean;
  // Retreat (ADR-009 thresholds; the probe preset won the retreat bench, see docs/performance.md).
  /** @default 'probe' */
  retreatPreset: RetreatPreset;
  /** @default 60000 */
  retreatWindowMs: number;
  /** @default 0.05 */
  retreatThreshold: number;
  /** While retreating, step again at this 429 rate. @default 0.10 */
  retreatAgainThreshold: number;
  /** @default 0.75 */
  retreatFactor: number;
  /** @default 5 */
  retreatFloorRpm: number;
  /** @default 120000 */
  recoverWindowMs: number;
  /** @default 0.02 */
  recoverThreshold: number;
  /** @default 2 */
  recoverStepRpm: number;
  /** How often the dispatcher evaluates retreat. @default 5000 */
  retreatEvalIntervalMs: number;
  /** At most one step per this interval. @default 10000 */
  retreatStepIntervalMs: number;
  /** Outcomes needed since the last step before another step. @default 8 */
  retreatMinSample: number;
  /** probe: a cut aims at this fraction of the rate the upstream accepted. @default 1 */
  retreatProbeTarget: number;
  /** probe: probe steps after the first add this fraction of the rate. @default 0.2 */
  retreatProbeGrowth: number;
  /** probe: after a refused probe the hold doubles, up to this many recover windows. @default 1.5 */
  retreatProbeHoldFactor: number;
  /**
   * Paths below `/v1/` the gateway forwards (exact; an entry ending in `/*` also covers what lies below it);
   * anything else is 404. Files, batches or stored completions on an OpenAI-like upstream belong to whoever
   * holds the key — every agent, through the gateway — so they stay out unless listed.
   */
  forwardPaths: readonly string[];
  /**
   * Response cache default TTL for requests without `X-Sluice-Cache` (an agent key's own `cache_ttl_s` wins);
   * 0 = off. Sampled requests (`n > 1`, nonzero `temperature`) are cached only by the header. @default 0
   */
  cacheTtlMs: number;
  /** Who shares cached answers: every agent of the deployment, or each agent only its own. @default 'deployment' */
  cacheScope: CacheScope;
  /**
   * Limits of the limited upstreams after the first, by name (the first one's are the top-level fields). Filled
   * from `SLUICE_UPSTREAMS` at start; `PATCH /admin/config` changes limits only, never a URL or a credential.
   * @default {}
   */
  upstreams: Readonly<Record<string, UpstreamLimits>>;
}

/** The OpenAI model endpoints: all an agent needs of a shared key. */
export const DEFAULT_FORWARD_PATHS: readonly string[] = Object.freeze([
  'chat/completions',
  'completions',
  'embeddings',
  'models',
  'models/*',
]);

export const DEFAULT_CONFIG: Readonly<GatewayConfig> = Object.freeze({
  upstreamLimit: 40,
  upstreamWindowMs: 60_000,
  upstreamTpm: 0,
  tpmWindowMs: 60_000,
  tpmDefaultMaxTokens: 1024,
  bucketBurst: 2,
  grantSlackMs: 1_000,
  reserveFraction: 0.5,
  reserveForNormal: false,
  queueMaxSize: 500,
  queueFullPolicy: 'reject',
  priorityPolicy: 'strict',
  priorityWeights: DEFAULT_PRIORITY_WEIGHTS,
  maxQueuedPerAgent: 0,
  lowPriorityTimeoutMs: 6_000,
  requestTimeoutMs: 120_000,
  firstByteTimeoutMs: 30_000,
  maxWaitMs: 170_000,
  streamMaxWaitMs: 540_000,
  heartbeatMs: 15_000,
  maxRequeues: 2,
  passthroughUnlimited: true,
  statusPublic: false,
  maxInflight: 0,
  paused: false,
  draining: false,
  retreatPreset: 'probe',
  retreatWindowMs: 60_000,
  retreatThreshold: 0.05,
  retreatAgainThreshold: 0.1,
  retreatFactor: 0.75,
  retreatFloorRpm: 5,
  recoverWindowMs: 120_000,
  recoverThreshold: 0.02,
  recoverStepRpm: 2,
  retreatEvalIntervalMs: 5_000,
  retreatStepIntervalMs: 10_000,
  retreatMinSample: 8,
  retreatProbeTarget: 1,
  retreatProbeGrowth: 0.2,
  retreatProbeHoldFactor: 1.5,
  forwardPaths: DEFAULT_FORWARD_PATHS,
  cacheTtlMs: 0,
  cacheScope: 'deployment',
  upstreams: Object.freeze({}),
});

type FieldKind = 'int' | 'number' | 'bool' | 'enum' | 'weights' | 'list' | 'upstreams';

/** A value as the admin API shows it. */
export type ExternalConfigValue =
  | number
  | string
  | boolean
  | readonly string[]
  | Record<string, Record<string, number | string>>;

/** One `forward_paths` entry: path segments below /v1 (no dot segments), optionally ending in `/*`. */
const FORWARD_PATH = /^(?!.*(^|\/)\.{1,2}(\/|$))[A-Za-z0-9._~-]+(\/[A-Za-z0-9._~-]+)*(\/\*)?$/;
interface FieldSpec {
  kind: FieldKind;
  env: string;
  min?: number;
  max?: number;
  values?: readonly string[];
  /** Env var and admin API take seconds for *Ms fields. */
  seconds?: boolean;
  doc: string;
}

const ms = (env: string, min: number, max: number, doc: string): FieldSpec => ({
  kind: 'number',
  env,
  min,
  max,
  seconds: true,
  doc,
});

/** Validation rules and env var names, one row per field; the README's config table mirrors it. */
export const CONFIG_FIELDS: { readonly [K in keyof GatewayConfig]: FieldSpec } = {
  upstreamLimit: {
    kind: 'int',
    env: 'SLUICE_UPSTREAM_LIMIT',
    min: 1,
    max: 100_000,
    doc: 'upstream calls allowed per window',
  },
  upstreamWindowMs: ms('SLUICE_UPSTREAM_WINDOW_S', 1_000, 3_600_000, 'the upstream limit window'),
  upstreamTpm: {
    kind: 'int',
    env: 'SLUICE_UPSTREAM_TPM',
    min: 0,
    max: 1_000_000_000,
    doc: 'upstream tokens per minute (0 = not metered in tokens)',
  },
  tpmWindowMs: ms(
    'SLUICE_TPM_WINDOW_S',
    1_000,
    3_600_000,
    'the window every upstream tpm counts over (60 s; shorter for time-scaled runs)',
  ),
  tpmDefaultMaxTokens: {
    kind: 'int',
    env: 'SLUICE_TPM_DEFAULT_MAX_TOKENS',
    min: 0,
    max: 1_000_000,
    doc: 'completion tokens reserved on a tpm upstream for a request without max_tokens',
  },
  bucketBurst: {
    kind: 'int',
    env: 'SLUICE_BUCKET_BURST',
    min: 1,
    max: 10_000,
    doc: 'grants allowed back to back',
  },
  // The ingress requeues (with a refund) a grant older than this instead of calling, right before the call.
  grantSlackMs: ms(
    'SLUICE_GRANT_SLACK_S',
    1_000,
    60_000,
    'longest grant → upstream call delay (windows are capped at window + this)',
  ),
  reserveFraction: {
    kind: 'number',
    env: 'SLUICE_RESERVE_FRACTION',
    min: 0,
    max: 1,
    doc: 'part of the burst kept for urgent/high',
  },
  reserveForNormal: {
    kind: 'bool',
    env: 'SLUICE_RESERVE_FOR_NORMAL',
    doc: 'normal may not spend the reserve either',
  },
  queueMaxSize: {
    kind: 'int',
    env: 'SLUICE_QUEUE_MAX',
    min: 1,
    max: 1_000_000,
    doc: 'queued requests at most',
  },
  queueFullPolicy: {
    kind: 'enum',
    env: 'SLUICE_QUEUE_FULL_POLICY',
    values: QUEUE_FULL_POLICIES,
    doc: 'what a full queue does',
  },
  priorityPolicy: {
    kind: 'enum',
    env: 'SLUICE_PRIORITY_POLICY',
    values: PRIORITY_POLICIES,
    doc: 'strict order, or weighted shares (start-time fair queuing, work conserving)',
  },
  priorityWeights: {
    kind: 'weights',
    env: 'SLUICE_PRIORITY_WEIGHTS',
    min: 1,
    max: 1000,
    doc: 'weighted policy: shares urgent:high:normal:low',
  },
  maxQueuedPerAgent: {
    kind: 'int',
    env: 'SLUICE_MAX_QUEUED_PER_AGENT',
    min: 0,
    max: 1_000_000,
    doc: 'queued requests per agent at most (0 = a quarter of queue_max_size)',
  },
  lowPriorityTimeoutMs: ms(
    'SLUICE_LOW_TIMEOUT_S',
    0,
    3_600_000,
    'low tickets refused after waiting this long for a token (strict order only)',
  ),
  requestTimeoutMs: ms('SLUICE_REQUEST_TIMEOUT_S', 1_000, 900_000, 'upstream call timeout'),
  firstByteTimeoutMs: ms('SLUICE_FIRST_BYTE_TIMEOUT_S', 500, 900_000, 'upstream first-byte timeout'),
  maxWaitMs: ms('SLUICE_MAX_WAIT_S', 1_000, 290_000, 'longest queue wait, non-streaming'),
  streamMaxWaitMs: ms('SLUICE_STREAM_MAX_WAIT_S', 1_000, 840_000, 'longest queue wait, streaming'),
  heartbeatMs: ms('SLUICE_HEARTBEAT_S', 0, 240_000, 'SSE heartbeat interval while queued (0 = off)'),
  maxRequeues: {
    kind: 'int',
    env: 'SLUICE_MAX_REQUEUES',
    min: 0,
    max: 10,
    doc: 'requeues after an upstream 429',
  },
  passthroughUnlimited: { kind: 'bool', env: 'SLUICE_PASSTHROUGH', doc: 'proxy models of unlimited routes' },
  statusPublic: { kind: 'bool', env: 'SLUICE_STATUS_PUBLIC', doc: '/status readable without a token' },
  maxInflight: {
    kind: 'int',
    env: 'SLUICE_MAX_INFLIGHT',
    min: 0,
    max: 100_000,
    doc: 'concurrent upstream calls at most (0 = no cap)',
  },
  paused: { kind: 'bool', env: 'SLUICE_PAUSED', doc: 'stop granting (admin pause/resume)' },
  draining: {
    kind: 'bool',
    env: 'SLUICE_DRAINING',
    doc: 'refuse new requests while the queue empties (admin drain)',
  },
  retreatPreset: {
    kind: 'enum',
    env: 'SLUICE_RETREAT_PRESET',
    values: RETREAT_PRESETS,
    doc: 'retreat policy',
  },
  retreatWindowMs: ms('SLUICE_RETREAT_WINDOW_S', 1_000, 3_600_000, '429-rate window'),
  retreatThreshold: {
    kind: 'number',
    env: 'SLUICE_RETREAT_THRESHOLD',
    min: 0,
    max: 1,
    doc: 'enter retreat at this 429 rate',
  },
  retreatAgainThreshold: {
    kind: 'number',
    env: 'SLUICE_RETREAT_AGAIN_THRESHOLD',
    min: 0,
    max: 1,
    doc: 'step again while retreating',
  },
  retreatFactor: {
    kind: 'number',
    env: 'SLUICE_RETREAT_FACTOR',
    min: 0.05,
    max: 0.99,
    doc: 'rate multiplier per step',
  },
  retreatFloorRpm: {
    kind: 'number',
    env: 'SLUICE_RETREAT_FLOOR_RPM',
    min: 1,
    max: 100_000,
    doc: 'lowest effective rate',
  },
  recoverWindowMs: ms('SLUICE_RECOVER_WINDOW_S', 1_000, 3_600_000, 'quiet time before recovering'),
  recoverThreshold: {
    kind: 'number',
    env: 'SLUICE_RECOVER_THRESHOLD',
    min: 0,
    max: 1,
    doc: 'recover below this 429 rate',
  },
  recoverStepRpm: {
    kind: 'number',
    env: 'SLUICE_RECOVER_STEP_RPM',
    min: 0.1,
    max: 100_000,
    doc: 'rate added per recover step',
  },
  retreatEvalIntervalMs: ms('SLUICE_RETREAT_EVAL_S', 100, 600_000, 'retreat evaluation interval'),
  retreatStepIntervalMs: ms('SLUICE_RETREAT_STEP_S', 0, 600_000, 'minimum time between two steps'),
  retreatMinSample: {
    kind: 'int',
    env: 'SLUICE_RETREAT_MIN_SAMPLE',
    min: 1,
    max: 100_000,
    doc: 'outcomes needed per step',
  },
  retreatProbeTarget: {
    kind: 'number',
    env: 'SLUICE_RETREAT_PROBE_TARGET',
    min: 0.5,
    max: 1,
    doc: 'probe: cut to this fraction of the accepted rate',
  },
  retreatProbeGrowth: {
    kind: 'number',
    env: 'SLUICE_RETREAT_PROBE_GROWTH',
    min: 0.01,
    max: 1,
    doc: 'probe: rate added per probe step, as a fraction',
  },
  retreatProbeHoldFactor: {
    kind: 'number',
    env: 'SLUICE_RETREAT_PROBE_HOLD_FACTOR',
    min: 1,
    max: 10,
    doc: 'probe: longest hold between probes, in recover windows',
  },
  forwardPaths: {
    kind: 'list',
    env: 'SLUICE_FORWARD_PATHS',
    min: 0,
    max: 32,
    doc: 'paths below /v1/ forwarded upstream (comma-separated; `x/*` covers below x); others 404',
  },
  cacheTtlMs: {
    kind: 'int',
    env: 'SLUICE_CACHE_TTL_S',
    min: 0,
    max: CACHE_MAX_TTL_S * 1000,
    seconds: true,
    doc: 'response cache TTL for requests without X-Sluice-Cache (0 = off; see Response cache)',
  },
  cacheScope: {
    kind: 'enum',
    env: 'SLUICE_CACHE_SCOPE',
    values: CACHE_SCOPES,
    doc: 'who shares cached answers: the whole deployment, or each agent alone',
  },
  upstreams: {
    kind: 'upstreams',
    env: 'SLUICE_UPSTREAMS',
    doc: 'several keys or providers: the upstream list (env, JSON; see below); at run time the limits of those after the first',
  },
};

/** The per-agent queue cap in force: the configured one, or a quarter of the queue (at least 1). */
export const agentQueueCap = (config: Pick<GatewayConfig, 'maxQueuedPerAgent' | 'queueMaxSize'>): number =>
  config.maxQueuedPerAgent > 0 ? config.maxQueuedPerAgent : Math.max(1, Math.ceil(config.queueMaxSize / 4));

export const CONFIG_KEYS = Object.keys(CONFIG_FIELDS) as (keyof GatewayConfig)[];

/** snake_case name of a field as the admin API and docs show it (`*_ms` fields as `*_s`). */
export const externalName = (key: keyof GatewayConfig): string => {
  const snake = key.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
  return CONFIG_FIELDS[key].seconds ? snake.replace(/_ms$/, '_s') : snake;
};

const parseField = (key: keyof GatewayConfig, raw: unknown, source: string): GatewayConfig[typeof key] => {
  const spec = CONFIG_FIELDS[key];
  const name = source === 'env' ? spec.env : externalName(key);
  if (spec.kind === 'upstreams') throw new Error('upstreams are parsed with their base (applyConfigPatch)');
  if (spec.kind === 'bool') {
    if (typeof raw === 'boolean') return raw;
    if (typeof raw === 'string' && /^(true|1|yes|on)$/i.test(raw.trim())) return true;
    if (typeof raw === 'string' && /^(false|0|no|off)$/i.test(raw.trim())) return false;
    throw new ValidationError(`${name} must be a boolean`, name);
  }
  if (spec.kind === 'weights') {
    const text = Array.isArray(raw) ? raw.join(':') : typeof raw === 'string' ? raw : '';
    const weights = parseWeights(text);
    if (!weights) {
      throw new ValidationError(
        `${name} must be four integers from 1 to 1000 as urgent:high:normal:low, e.g. 8:4:2:1`,
        name,
      );
    }
    return Object.values(weights).join(':');
  }
  if (spec.kind === 'list') {
    const list =
      typeof raw === 'string'
        ? raw.split(',')
        : Array.isArray(raw) && raw.every((x) => typeof x === 'string')
          ? (raw as string[])
          : undefined;
    // `/v1/embeddings`, `v1/embeddings` and `embeddings` name the same path.
    const items = list?.map((x) => x.trim().replace(/^\/?(v1\/)?/, '')).filter((x) => x !== '');
    if (!items) throw new ValidationError(`${name} must be a list of paths`, name);
    const bad = items.find((x) => !FORWARD_PATH.test(x));
    if (bad !== undefined) throw new ValidationError(`${name}: \`${bad}\` is not a path below /v1/`, name);
    if (items.length > (spec.max ?? Infinity))
      throw new ValidationError(`${name} takes at most ${spec.max} entries`, name);
    return Object.freeze([...new Set(items)]) as GatewayConfig[typeof key];
  }
  if (spec.kind === 'enum') {
    if (typeof raw === 'string' && spec.values?.includes(raw.trim()))
      return raw.trim() as GatewayConfig[typeof key];
    throw new ValidationError(`${name} must be one of ${spec.values?.join(', ')}`, name);
  }
  const num =
    typeof raw === 'number' ? raw : typeof raw === 'string' && raw.trim() !== '' ? Number(raw) : Number.NaN;
  if (!Number.isFinite(num)) throw new ValidationError(`${name} must be a number`, name);
  if (spec.kind === 'int' && !Number.isInteger(num))
    throw new ValidationError(`${name} must be an integer`, name);
  const value = spec.seconds ? Math.round(num * 1000) : num;
  const { min = -Infinity, max = Infinity } = spec;
  if (value < min || value > max) {
    const scale = spec.seconds ? 1000 : 1;
    throw new ValidationError(`${name} must be between ${min / scale} and ${max / scale}`, name);
  }
  return value;
};

/** API Gateway drops a connection that sent nothing for this long. */
export const API_GATEWAY_IDLE_MS = 300_000;
/** Kept free of the idle cut for the claim, the key lookup and the upstream connection. */
export const IDLE_CUT_MARGIN_MS = 5_000;

/**
 * Longest queue wait a non-streaming request can have so that its wait plus the upstream call (up to
 * `requestTimeoutMs`) stays under API Gateway's idle cut. validateConfig keeps `maxWaitMs` within it; the
 * ingress caps a non-streaming request's deadline with it (phase 2), so a config written before this rule
 * still cannot send a request past the cut.
 */
export const nonStreamingWaitCapMs = (
  config: Pick<GatewayConfig, 'maxWaitMs' | 'requestTimeoutMs'>,
): number =>
  Math.max(0, Math.min(config.maxWaitMs, API_GATEWAY_IDLE_MS - IDLE_CUT_MARGIN_MS - config.requestTimeoutMs));

/** Cross-field rules: the bucket must fit the window limit at every effective rate; waits fit the platform. */
export const validateConfig = (config: GatewayConfig): GatewayConfig => {
  const idleBudgetMs = API_GATEWAY_IDLE_MS - IDLE_CUT_MARGIN_MS;
  if (config.maxWaitMs + config.requestTimeoutMs > idleBudgetMs) {
    throw new ValidationError(
      `max_wait_s (${config.maxWaitMs / 1000}) + request_timeout_s (${config.requestTimeoutMs / 1000}) must not exceed ${idleBudgetMs / 1000}: a non-streaming request sends nothing while it waits and while the upstream answers, and API Gateway drops a connection idle for ${API_GATEWAY_IDLE_MS / 60_000} minutes`,
      'max_wait_s',
    );
  }
  if (config.bucketBurst >= config.upstreamLimit) {
    throw new ValidationError(
      `bucket_burst (${config.bucketBurst}) must be below upstream_limit (${config.upstreamLimit}) so burst + rate × window stays within the limit`,
      'bucket_burst',
    );
  }
  const baseRpm = (config.upstreamLimit * 60_000) / config.upstreamWindowMs;
  if (config.retreatFloorRpm > baseRpm) {
    throw new ValidationError(
      `retreat_floor_rpm (${config.retreatFloorRpm}) must not exceed the base rate (${baseRpm} rpm = upstream_limit per upstream_window_s)`,
      'retreat_floor_rpm',
    );
  }
  for (const [name, l] of Object.entries(config.upstreams)) {
    if (config.bucketBurst >= l.limit)
      throw new ValidationError(
        `upstream ${name}: limit (${l.limit}) must be above bucket_burst (${config.bucketBurst})`,
        'upstreams',
      );
    if (config.retreatFloorRpm > (l.limit * 60_000) / l.windowMs)
      throw new ValidationError(
        `upstream ${name}: its rate (${(l.limit * 60_000) / l.windowMs} rpm) is below retreat_floor_rpm (${config.retreatFloorRpm})`,
        'upstreams',
      );
  }
  if (config.retreatAgainThreshold < config.retreatThreshold) {
    throw new ValidationError(
      'retreat_again_threshold must be ≥ retreat_threshold',
      'retreat_again_threshold',
    );
  }
  return config;
};

/**
 * Applies a patch given in external (snake_case, seconds) form on top of `base`.
 * @throws ValidationError naming the first bad field; unknown fields are refused too.
 */
export const applyConfigPatch = (base: GatewayConfig, patch: Record<string, unknown>): GatewayConfig => {
  const byName = new Map(CONFIG_KEYS.map((k) => [externalName(k), k]));
  const next: GatewayConfig = { ...base };
  for (const [name, raw] of Object.entries(patch)) {
    const key = byName.get(name);
    if (!key) throw new ValidationError(`unknown config field ${name}`, name);
    if (key === 'upstreams') {
      next.upstreams = patchUpstreamLimits(next.upstreams, raw);
      continue;
    }
    (next as unknown as Record<string, unknown>)[key] = parseField(key, raw, 'api');
  }
  return validateConfig(next);
};

/** Config from `SLUICE_*` env vars over the defaults; throws at start on a bad value. */
export const configFromEnv = (
  env: Record<string, string | undefined>,
  base = DEFAULT_CONFIG,
): GatewayConfig => {
  const next: GatewayConfig = { ...base };
  for (const key of CONFIG_KEYS) {
    const raw = env[CONFIG_FIELDS[key].env];
    if (key === 'upstreams') continue;
    if (raw !== undefined && raw !== '') {
      (next as unknown as Record<string, unknown>)[key] = parseField(key, raw, 'env');
    }
  }
  return validateConfig({ ...next, ...upstreamDefaultsFromEnv(env, next) });
};

/** External (snake_case, seconds) view of a config, as the admin API returns it. */
export const externalConfig = (config: GatewayConfig): Record<string, ExternalConfigValue> => {
  const out: Record<string, ExternalConfigValue> = {};
  for (const key of CONFIG_KEYS) {
    const value = config[key];
    if (key === 'upstreams') {
      out[externalName(key)] = Object.fromEntries(
        Object.entries(config.upstreams).map(([name, l]) => [name, externalLimits(l)]),
      );
      continue;
    }
    out[externalName(key)] = (
      CONFIG_FIELDS[key].seconds && typeof value === 'number' ? value / 1000 : value
    ) as ExternalConfigValue;
  }
  return out;
};

/** The top-level fields that hold the first upstream's limits, by the name of the entry field that sets them. */
const PRIMARY_FIELDS = [
  ['limit', 'upstreamLimit'],
  ['windowMs', 'upstreamWindowMs'],
  ['tpm', 'upstreamTpm'],
  ['maxInflight', 'maxInflight'],
  ['retreatPreset', 'retreatPreset'],
] as const;

/**
 * `SLUICE_UPSTREAMS`' limits as config defaults: the first limited upstream's become the top-level fields, the
 * others' the `upstreams` map. A top-level variable (e.g. `SLUICE_UPSTREAM_LIMIT`) that says otherwise than the
 * first entry is refused: two sources for one number would leave the operator guessing which one holds.
 */
const upstreamDefaultsFromEnv = (
  env: Record<string, string | undefined>,
  /** The config with every other variable applied. */
  base: GatewayConfig,
): Partial<GatewayConfig> => {
  const json = env[CONFIG_FIELDS.upstreams.env];
  if (json === undefined || json.trim() === '') return {};
  // Upstreams after the first start from the built-in defaults (another key or provider), not the first's.
  const entries = parseUpstreamList(json, {
    windowMs: DEFAULT_CONFIG.upstreamWindowMs,
    tpm: 0,
    maxInflight: 0,
    retreatPreset: base.retreatPreset,
  });
  const first = primaryUpstream(entries);
  const out: Partial<GatewayConfig> = {
    upstreams: Object.fromEntries(
      entries.filter((e) => e !== first && e.limits).map((e) => [e.name, e.limits as UpstreamLimits]),
    ),
  };
  if (!first?.limits) return out;
  for (const [from, to] of PRIMARY_FIELDS) {
    if (!first.limitsGiven?.includes(from)) continue;
    const value = first.limits[from];
    const own = env[CONFIG_FIELDS[to].env];
    if (own !== undefined && own !== '' && base[to] !== value) {
      throw new ValidationError(
        `${CONFIG_FIELDS[to].env} disagrees with the first limited upstream in SLUICE_UPSTREAMS (${first.name}); set it in one place`,
        externalName(to),
      );
    }
    (out as Record<string, unknown>)[to] = value;
  }
  return out;
};

/** A stored config over the current defaults: fields added since take their defaults; upstreams as deployed. */
export const withDefaults = (defaults: GatewayConfig, stored: Partial<GatewayConfig>): GatewayConfig => ({
  ...defaults,
  ...stored,
  upstreams: mergeUpstreamLimits(defaults.upstreams, stored.upstreams),
});
