// Bench support: the setups a fleet of agents is run against — straight to the upstream, client-side AWS
// adaptive limiting, a shared Bottleneck limiter on Redis, and sluice — each behind one `send` function.
import { DefaultRateLimiter, type DefaultRateLimiterOptions } from '@smithy/util-retry';
import Bottleneck from 'bottleneck';
import Redis from 'ioredis';
import type OpenAI from 'openai';
import { DEFAULT_CONFIG } from '../../lib/domain/config.js';
import type { Priority } from '../../lib/domain/priority.js';
import { type FakeUpstream, type FakeUpstreamOptions, startFakeUpstream } from '../../local/fake-upstream.js';
import { type LocalSystem, startLocalSystem } from '../../local/runtime.js';
import type { RedisServer } from './redis.js';
import type { TimeScale } from './sim.js';
import { benchClient, chatRequest, type Send } from './workload.js';

export const UPSTREAM_KEY = 'nvapi-bench';

/** What every setup gets: the same upstream settings, scale and agents. */
export interface SetupContext {
  scale: TimeScale;
  priorities: readonly Priority[];
  /** The hidden limit in modelled time (calls per window). */
  limit: { requests: number; windowMs: number };
  /** Fake upstream options in real time (already scaled). */
  upstream: FakeUpstreamOptions;
  emulators: { dynamoEndpoint: string; sqsEndpoint: string };
  redis: RedisServer | undefined;
  runId: string;
}

export interface RunningSetup {
  send: Send;
  /** The upstream (a pool: its first member). */
  upstream: FakeUpstream;
  /** A pool of several limited upstreams: every member by its name (`upstream` is the first). */
  pool?: { name: string; upstream: FakeUpstream }[];
  /** sluice only: the running system (retreat record, stores). */
  system?: LocalSystem;
  stop(): Promise<void>;
}

export interface Setup {
  name: string;
  label: string;
  /** Printed with the results. */
  settings: Record<string, unknown>;
  /** Limited upstreams behind it, each with the hidden limit (a pool); the hidden total is this × the limit. @default 1 */
  upstreamCount?: number;
  /** Why it cannot run here, if so (e.g. no redis-server). */
  unavailable?: (ctx: Pick<SetupContext, 'redis'>) => string | undefined;
  start(ctx: SetupContext): Promise<RunningSetup>;
}

const perAgent =
  (clients: readonly OpenAI[]): Send =>
  (r) =>
    chatRequest(clients[r.agent] as OpenAI, r);

/** 1. Straight to the upstream with the official client and its default retries. */
export const directSetup: Setup = {
  name: 'direct',
  label: 'direct (openai client, default retries)',
  settings: { client: 'openai', maxRetries: 2, backoff: '0.5 s doubling to 8 s, jitter 25 %' },
  async start(ctx) {
    const upstream = await startFakeUpstream({ apiKey: UPSTREAM_KEY, ...ctx.upstream });
    const clients = ctx.priorities.map(() =>
      benchClient({ baseURL: `${upstream.url}/v1`, apiKey: UPSTREAM_KEY, scale: ctx.scale }),
    );
    return { send: perAgent(clients), upstream, stop: () => upstream.stop() };
  },
};

type LimiterLike = { getSendToken(): Promise<void>; updateClientSendingRate(response: unknown): void };
const LimiterBase = DefaultRateLimiter as unknown as new (o?: DefaultRateLimiterOptions) => LimiterLike;
const limiterStatics = DefaultRateLimiter as unknown as {
  setTimeoutFn: (fn: () => void, delay: number) => unknown;
};

/**
 * 2. Each agent throttles itself with the AWS SDK's adaptive-mode limiter (CUBIC) around every HTTP attempt,
 * as the SDK's adaptive retry strategy does; the limiter's clock runs in modelled time.
 */
export const adaptiveSetup = (variant: 'default' | 'fair'): Setup => ({
  name: variant === 'default' ? 'adaptive' : 'adaptive-fair',
  label:
    variant === 'default'
      ? 'client-side adaptive (AWS SDK DefaultRateLimiter, defaults)'
      : 'client-side adaptive (minFillRate = fair share)',
  settings: {
    limiter: '@smithy/util-retry DefaultRateLimiter (CUBIC), one per agent',
    minFillRate:
      variant === 'default' ? '0.5 req/s per agent (default)' : 'limit / window / agents per agent',
    signal: 'every attempt: 429 → THROTTLING, else success',
    client: 'openai, default retries',
  },
  async start(ctx) {
    const upstream = await startFakeUpstream({ apiKey: UPSTREAM_KEY, ...ctx.upstream });
    const { scale } = ctx;
    const epoch = Date.now();
    // Modelled seconds; the limiter's own sleeps are modelled time too (restored on stop).
    class ScaledLimiter extends LimiterBase {
      getCurrentTimeInSeconds(): number {
        return 1_000 + scale.sim(Date.now() - epoch) / 1000;
      }
    }
    const original = limiterStatics.setTimeoutFn;
    limiterStatics.setTimeoutFn = (fn, delay) => setTimeout(fn, scale.real(delay));
    const fair = ctx.limit.requests / (ctx.limit.windowMs / 1000) / ctx.priorities.length;
    const clients = ctx.priorities.map(() => {
      const limiter = new ScaledLimiter(variant === 'fair' ? { minFillRate: fair } : undefined);
      return benchClient({
        baseURL: `${upstream.url}/v1`,
        apiKey: UPSTREAM_KEY,
        scale,
        fetch: async (url, init) => {
          await limiter.getSendToken();
          try {
            const res = await fetch(url, init);
            limiter.updateClientSendingRate(res.status === 429 ? { errorType: 'THROTTLING' } : {});
            return res;
          } catch (err) {
            limiter.updateClientSendingRate({ errorType: 'TRANSIENT' });
            throw err;
          }
        },
      });
    });
    return {
      send: perAgent(clients),
      upstream,
      stop: async () => {
        limiterStatics.setTimeoutFn = original;
        await upstream.stop();
      },
    };
  },
});

const BOTTLENECK_PRIORITY: Record<Priority, number> = { urgent: 0, high: 2, normal: 5, low: 8 };

/**
 * 3. One Bottleneck limiter shared through Redis (cluster mode): one instance per agent, as separate
 * processes would have, a reservoir of `limit` refilled every window, priorities 0–9.
 */
export const bottleneckSetup: Setup = {
  name: 'bottleneck',
  label: 'Bottleneck + Redis (shared reservoir)',
  settings: {
    library: 'bottleneck 2.19.5 (ioredis datastore), one instance per agent',
    reservoir: 'limit, refreshed to limit every window',
    priority: 'urgent 0, high 2, normal 5, low 8 (Bottleneck orders each instance’s own queue)',
    heartbeatInterval: '5 s (default), modelled',
    client: 'openai, default retries; every attempt is a Bottleneck job',
  },
  unavailable: (ctx) => (ctx.redis ? undefined : 'redis-server is not installed'),
  async start(ctx) {
    const redis = ctx.redis;
    if (!redis) throw new Error('no redis');
    const upstream = await startFakeUpstream({ apiKey: UPSTREAM_KEY, ...ctx.upstream });
    const options = (clear: boolean): Bottleneck.ConstructorOptions => ({
      id: `fleet-${ctx.runId}`,
      datastore: 'ioredis',
      Redis,
      clientOptions: { host: redis.host, port: redis.port },
      clearDatastore: clear,
      reservoir: ctx.limit.requests,
      reservoirRefreshAmount: ctx.limit.requests,
      reservoirRefreshInterval: ctx.scale.real(ctx.limit.windowMs),
      heartbeatInterval: ctx.scale.real(5_000),
    });
    const first = new Bottleneck(options(true));
    await first.ready();
    const limiters = [first];
    for (let i = 1; i < ctx.priorities.length; i++) limiters.push(new Bottleneck(options(false)));
    await Promise.all(limiters.map((l) => l.ready()));
    const clients = ctx.priorities.map((priority, i) => {
      const limiter = limiters[i] as Bottleneck;
      return benchClient({
        baseURL: `${upstream.url}/v1`,
        apiKey: UPSTREAM_KEY,
        scale: ctx.scale,
        fetch: (url, init) =>
          limiter.schedule({ priority: BOTTLENECK_PRIORITY[priority] }, () => fetch(url, init)),
      });
    });
    return {
      send: perAgent(clients),
      upstream,
      stop: async () => {
        for (const l of limiters) {
          await l.stop({ dropWaitingJobs: true }).catch(() => undefined);
          await l.disconnect(true).catch(() => undefined);
        }
        await upstream.stop();
      },
    };
  },
};

/** sluice's settings for a time scale: every duration divided by it, every rate multiplied (same ratios). */
export const sluiceEnv = (
  scale: TimeScale,
  limit: { requests: number; windowMs: number },
  preset: string,
  extra: Record<string, string> = {},
): Record<string, string> => {
  const s = (simMs: number) => String(scale.real(simMs) / 1000);
  return {
    POWERTOOLS_METRICS_DISABLED: 'true',
    POWERTOOLS_LOG_LEVEL: 'ERROR',
    LOG_LEVEL: 'ERROR',
    SLUICE_UPSTREAM_LIMIT: String(limit.requests),
    SLUICE_UPSTREAM_WINDOW_S: s(limit.windowMs),
    // The defaults, scaled (a hand-copied value went stale when the defaults changed).
    SLUICE_LOW_TIMEOUT_S: s(DEFAULT_CONFIG.lowPriorityTimeoutMs),
    SLUICE_REQUEST_TIMEOUT_S: s(DEFAULT_CONFIG.requestTimeoutMs),
    SLUICE_FIRST_BYTE_TIMEOUT_S: s(DEFAULT_CONFIG.firstByteTimeoutMs),
    SLUICE_MAX_WAIT_S: s(DEFAULT_CONFIG.maxWaitMs),
    SLUICE_STREAM_MAX_WAIT_S: s(DEFAULT_CONFIG.streamMaxWaitMs),
    SLUICE_HEARTBEAT_S: s(15_000),
    SLUICE_RETREAT_PRESET: preset,
    SLUICE_RETREAT_WINDOW_S: s(60_000),
    SLUICE_RECOVER_WINDOW_S: s(120_000),
    SLUICE_RETREAT_EVAL_S: s(5_000),
    SLUICE_RETREAT_STEP_S: s(10_000),
    SLUICE_RETREAT_FLOOR_RPM: String(5 * scale.factor),
    SLUICE_RECOVER_STEP_RPM: String(2 * scale.factor),
    ...extra,
  };
};

/** 4. The whole local system (DynamoDB Local, fauxqs, real handlers), one key per agent. */
export const sluiceSetup = (preset: string, extraEnv: Record<string, string> = {}): Setup => ({
  name: preset === 'sluice' ? 'sluice' : `sluice-${preset}`,
  label: `sluice (retreat preset ${preset})`,
  settings: {
    system: 'local runtime: DynamoDB Local + fauxqs, real ingress/dispatcher handlers, local API Gateway',
    retreatPreset: preset,
    config: 'defaults with every duration and rate scaled (see sluiceEnv)',
    client: 'openai, default retries, X-Priority header, one key per agent',
  },
  async start(ctx) {
    const upstream = await startFakeUpstream({ apiKey: UPSTREAM_KEY, ...ctx.upstream });
    let system: LocalSystem;
    try {
      system = await startLocalSystem({
        port: 0,
        prefix: `bench-${ctx.runId}`,
        emulators: ctx.emulators,
        upstreamUrl: `${upstream.url}/v1`,
        upstreamApiKey: UPSTREAM_KEY,
        scheduleMs: ctx.scale.real(60_000),
        env: sluiceEnv(ctx.scale, ctx.limit, preset, extraEnv),
      });
    } catch (err) {
      await upstream.stop();
      throw err;
    }
    const keys = await Promise.all(ctx.priorities.map((_, i) => system.createKey(`agent-${i}`, 'urgent')));
    const clients = keys.map((key) =>
      benchClient({ baseURL: `${system.url}/v1`, apiKey: key, scale: ctx.scale }),
    );
    return {
      send: perAgent(clients),
      upstream,
      system,
      stop: async () => {
        await system.stop();
        await upstream.stop();
      },
    };
  },
});

/**
 * 5. sluice with a pool: `SLUICE_UPSTREAMS` lists `members` limited upstreams serving the same models (the NVIDIA
 * catalog), each a fake upstream with its own key and its own hidden limit, so the fleet may get `members` × the
 * limit. The first member's limits are the top-level ones (`sluiceEnv`), the others' equal them.
 */
export const sluicePoolSetup = (preset: string, members = 2): Setup => {
  const names = Array.from({ length: members }, (_, i) => `nv-${String.fromCharCode(97 + i)}`);
  return {
    name: 'sluice-pool',
    label: `sluice, a pool of ${members} keys (SLUICE_UPSTREAMS ${names.join(', ')})`,
    upstreamCount: members,
    settings: {
      system: 'local runtime: DynamoDB Local + fauxqs, real ingress/dispatcher handlers, local API Gateway',
      retreatPreset: preset,
      pool: `SLUICE_UPSTREAMS: ${names.join(', ')}, each its own fake upstream, key (key_env) and hidden limit; limit and window_s as the single upstream's (scaled), no models (both serve the NVIDIA catalog: one pool)`,
      config: 'defaults with every duration and rate scaled (see sluiceEnv)',
      client: 'openai, default retries, X-Priority header, one key per agent',
    },
    async start(ctx) {
      const pool: { name: string; upstream: FakeUpstream }[] = [];
      const stopPool = () => Promise.all(pool.map((m) => m.upstream.stop()));
      let system: LocalSystem;
      try {
        for (const name of names)
          pool.push({
            name,
            upstream: await startFakeUpstream({ ...ctx.upstream, apiKey: `${UPSTREAM_KEY}-${name}` }),
          });
        const windowS = ctx.scale.real(ctx.limit.windowMs) / 1000;
        // window_s takes whole seconds: a time scale that makes the window fractional cannot model the pool.
        if (!Number.isInteger(windowS)) throw new Error(`sluice-pool: window of ${windowS} s is not whole`);
        const keyEnv = (name: string) => `BENCH_KEY_${name.replace(/-/g, '_').toUpperCase()}`;
        system = await startLocalSystem({
          port: 0,
          prefix: `bench-${ctx.runId}`,
          emulators: ctx.emulators,
          upstreamUrl: `${(pool[0] as (typeof pool)[number]).upstream.url}/v1`,
          // Never sent: every member has its own key_env.
          upstreamApiKey: 'unused-single-upstream-key',
          scheduleMs: ctx.scale.real(60_000),
          env: {
            ...sluiceEnv(ctx.scale, ctx.limit, preset),
            SLUICE_UPSTREAMS: JSON.stringify(
              pool.map((m) => ({
                name: m.name,
                url: `${m.upstream.url}/v1`,
                key_env: keyEnv(m.name),
                limit: ctx.limit.requests,
                window_s: windowS,
                retreat_preset: preset,
              })),
            ),
            ...Object.fromEntries(pool.map((m) => [keyEnv(m.name), `${UPSTREAM_KEY}-${m.name}`])),
          },
        });
      } catch (err) {
        await stopPool();
        throw err;
      }
      const keys = await Promise.all(ctx.priorities.map((_, i) => system.createKey(`agent-${i}`, 'urgent')));
      const clients = keys.map((key) =>
        benchClient({ baseURL: `${system.url}/v1`, apiKey: key, scale: ctx.scale }),
      );
      return {
        send: perAgent(clients),
        upstream: (pool[0] as (typeof pool)[number]).upstream,
        pool,
        system,
        stop: async () => {
          await system.stop();
          await stopPool();
        },
      };
    },
  };
};
