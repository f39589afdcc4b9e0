// Function app (status): /status, /health, /health/ready and the admin API behind one buffered REST proxy
// handler. Thin adapter: parse → lib/status use case → OpenAI-shaped reply; CORS for the dashboard's origin.

import { Router } from '@aws-lambda-powertools/event-handler/http';
import type { Middleware, RequestContext } from '@aws-lambda-powertools/event-handler/types';
import type { Logger } from '@aws-lambda-powertools/logger';
import { injectLambdaContext } from '@aws-lambda-powertools/logger/middleware';
import type { Metrics } from '@aws-lambda-powertools/metrics';
import { MetricUnit } from '@aws-lambda-powertools/metrics';
import { logMetrics } from '@aws-lambda-powertools/metrics/middleware';
import middy from '@middy/core';
import type { APIGatewayProxyEvent, APIGatewayProxyResult, Context } from 'aws-lambda';
import { DynamoBudgetStore } from '../../lib/adapters/dynamo/budget-store.js';
import { DynamoKeyStore } from '../../lib/adapters/dynamo/key-store.js';
import { DynamoLeaseStore } from '../../lib/adapters/dynamo/lease-store.js';
import { DynamoResponseCacheStore } from '../../lib/adapters/dynamo/response-cache-store.js';
import { DynamoUsageStore } from '../../lib/adapters/dynamo/usage-store.js';
import { SqsTicketQueue } from '../../lib/adapters/sqs/ticket-queue.js';
import { KeyAuthenticator } from '../../lib/domain/auth.js';
import { type Clock, systemClock } from '../../lib/domain/clock.js';
import type { GatewayConfig } from '../../lib/domain/config.js';
import type { ConfigService } from '../../lib/domain/config-service.js';
import { GatewayError, NotFoundError, UnavailableError, ValidationError } from '../../lib/domain/errors.js';
import type { BucketState } from '../../lib/domain/gcra.js';
import { PRIORITIES } from '../../lib/domain/priority.js';
import { errorBody, errorReply, type HttpReply, jsonReply, retryHeaders } from '../../lib/http/reply.js';
import { type Clients, makeClients } from '../../lib/runtime/clients.js';
import { readRuntimeEnv } from '../../lib/runtime/env.js';
import { primaryUpstreamState, ticketStore, upstreamRowSources } from '../../lib/runtime/lanes.js';
import { liveConfig } from '../../lib/runtime/live-config.js';
import { secretReader } from '../../lib/runtime/secrets.js';
import { StatusAccess, type TokenSource } from '../../lib/status/access.js';
import { AdminService } from '../../lib/status/admin.js';
import { fetchModelsProbe, liveness, Readiness } from '../../lib/status/health.js';
import { Memo } from '../../lib/status/memo.js';
import { SnapshotBuilder, type StatusSnapshot } from '../../lib/status/snapshot.js';
import { poolsOf, upstreamRows } from '../../lib/status/upstream-rows.js';
import { corsHeaders, toResponse } from '../shared/http.js';
import { makeLogger, makeMetrics } from '../shared/observability.js';

/** How long a browser may reuse a CORS preflight answer (each poll would otherwise cost two requests). */
const PREFLIGHT_MAX_AGE_S = 600;
/** Snapshots are rebuilt at most this often per container, whatever the number of dashboards. */
export const SNAPSHOT_MAX_AGE_MS = 1_000;

/** Everything the status routes need, built once per container (or by a test). */
export interface StatusDeps {
  snapshots: Pick<Memo<StatusSnapshot>, 'get' | 'invalidate'>;
  access: StatusAccess;
  admin: AdminService;
  readiness: Pick<Readiness, 'check'>;
  config: Pick<ConfigService, 'config'>;
  clock: Clock;
  /** Container start, for the liveness uptime. */
  startedAt: number;
  /** The dashboard's origin; unset = no CORS headers. */
  allowedOrigin?: string;
}

type Ctx = RequestContext;

const authorization = (ctx: Ctx): string | undefined => ctx.req.headers.get('authorization') ?? undefined;

const readJson = async (ctx: Ctx): Promise<unknown> => {
  const text = await ctx.req.text();
  if (!text.trim())
    throw new ValidationError('Request body is empty; send a JSON object.', null, 'empty_body');
  try {
    return JSON.parse(text);
  } catch {
    throw new ValidationError('Request body is not valid JSON.', null, 'invalid_json');
  }
};

const NO_STORE = { 'cache-control': 'no-store' };

/**
 * Builds the status function's handler around its dependencies (tests and the local runtime pass their own).
 * @param obs logger and metrics; default Powertools ones for the `status` service
 */
export const makeStatusHandler = (deps: StatusDeps, obs: { logger?: Logger; metrics?: Metrics } = {}) => {
  const logger = obs.logger ?? makeLogger('status');
  const metrics = obs.metrics ?? makeMetrics('status');
  const app = new Router();

  /** Runs one use case; any error becomes an OpenAI-shaped reply (a 500 without internals, logged). */
  const route =
    (name: string, fn: (ctx: Ctx) => Promise<HttpReply>) =>
    async (ctx: Ctx): Promise<Response> => {
      metrics.addDimension('route', name);
      try {
        return toResponse(await fn(ctx));
      } catch (err) {
        const reply = errorReply(err);
        if (reply.status >= 500) logger.error('status request failed', { route: name, error: err as Error });
        return toResponse(reply);
      }
    };

  // CORS on every answer (Lambda proxy integrations must send it themselves); preflights answered here.
  const cors: Middleware = async ({ reqCtx, next }) => {
    const headers = corsHeaders(deps.allowedOrigin, reqCtx.event as APIGatewayProxyEvent);
    if (reqCtx.req.method === 'OPTIONS') {
      metrics.addDimension('route', 'preflight');
      const preflight = Object.keys(headers).length
        ? { ...headers, 'access-control-max-age': String(PREFLIGHT_MAX_AGE_S) }
        : {};
      return new Response(null, { status: 204, headers: preflight });
    }
    await next();
    for (const [k, v] of Object.entries(headers)) reqCtx.res.headers.set(k, v);
  };
  app.use(cors);

  app.get(
    '/status',
    route('status', async (ctx) => {
      const config = await deps.config.config();
      await deps.access.reader(authorization(ctx), config.statusPublic);
      const snapshot = await deps.snapshots.get();
      return jsonReply(200, snapshot, { 'cache-control': 'max-age=1' });
    }),
  );

  app.get(
    '/health',
    route('health', async () =>
      jsonReply(200, liveness('sluice-status', deps.startedAt, deps.clock.now()), NO_STORE),
    ),
  );

  app.get(
    '/health/ready',
    route('ready', async () => {
      const report = await deps.readiness.check();
      if (report.ready) return jsonReply(200, { status: 'ready', ...report }, NO_STORE);
      const failed = Object.entries(report.checks)
        .filter(([, c]) => !c.ok)
        .map(([name, c]) => `${name}: ${c.error}`);
      const err = new UnavailableError(`Not ready (${failed.join('; ')}).`, 5_000, 'not_ready');
      // The OpenAI error shape, with the per-check detail next to it.
      return jsonReply(
        503,
        { ...errorBody(err), ...report },
        { ...NO_STORE, ...retryHeaders(err.retryAfterMs) },
      );
    }),
  );

  app.get(
    '/admin/config',
    route('admin_config_get', async (ctx) => {
      await deps.access.admin(authorization(ctx));
      return jsonReply(200, await deps.admin.getConfig(), NO_STORE);
    }),
  );

  app.patch(
    '/admin/config',
    route('admin_config_patch', async (ctx) => {
      await deps.access.admin(authorization(ctx));
      const result = await deps.admin.patchConfig(await readJson(ctx), 'admin');
      if (result.changes.length > 0) {
        deps.snapshots.invalidate();
        metrics.addMetric('config_changes', MetricUnit.Count, result.changes.length);
        logger.info('config changed', { version: result.version, changes: result.changes });
      }
      return jsonReply(200, result, NO_STORE);
    }),
  );

  app.post(
    '/admin/retreat/reset',
    route('retreat_reset', async (ctx) => {
      await deps.access.admin(authorization(ctx));
      const retreat = await deps.admin.resetRetreat('admin');
      deps.snapshots.invalidate();
      metrics.addMetric('retreat_resets', MetricUnit.Count, 1);
      logger.info('retreat reset', { retreat });
      return jsonReply(200, { retreat }, NO_STORE);
    }),
  );

  for (const mode of ['pause', 'resume', 'drain'] as const) {
    app.post(
      `/admin/${mode}`,
      route(`admin_${mode}`, async (ctx) => {
        await deps.access.admin(authorization(ctx));
        const result = await deps.admin.setMode(mode, 'admin');
        deps.snapshots.invalidate();
        logger.info(`gateway ${mode}`, { version: result.version, changes: result.changes });
        return jsonReply(200, result, NO_STORE);
      }),
    );
  }

  app.get(
    '/admin/usage',
    route('admin_usage', async (ctx) => {
      await deps.access.admin(authorization(ctx));
      return jsonReply(200, await deps.admin.usage(), NO_STORE);
    }),
  );

  app.delete(
    '/admin/cache',
    route('admin_cache_purge', async (ctx) => {
      await deps.access.admin(authorization(ctx));
      return jsonReply(200, await deps.admin.purgeCache(), NO_STORE);
    }),
  );

  const notFound = route('not_found', async (ctx) => {
    const known = [
      '/status',
      '/health',
      '/health/ready',
      '/admin/config',
      '/admin/retreat/reset',
      '/admin/pause',
      '/admin/resume',
      '/admin/drain',
      '/admin/usage',
      '/admin/cache',
    ];
    const path = new URL(ctx.req.url).pathname;
    if (known.includes(path)) {
      throw new GatewayError(
        405,
        'invalid_request_error',
        'method_not_allowed',
        `${ctx.req.method} is not allowed on ${path}.`,
      );
    }
    throw new NotFoundError(`No route ${ctx.req.method} ${path}.`);
  });
  app.notFound((_err, ctx) => notFound(ctx));

  const handle = async (event: APIGatewayProxyEvent, context: Context): Promise<APIGatewayProxyResult> => {
    // A GET body means nothing here, and the router's web Request would throw on it (a 502): drop it.
    const ev =
      (event.httpMethod === 'GET' || event.httpMethod === 'HEAD') && event.body
        ? { ...event, body: null }
        : event;
    const result = await app.resolve(ev, context);
    metrics.addMetric('requests', MetricUnit.Count, 1);
    return { ...result, headers: { ...result.headers, 'x-request-id': context.awsRequestId } };
  };
  return middy(handle).use(injectLambdaContext(logger)).use(logMetrics(metrics));
};

/** A token that may legitimately be absent (then nobody can present it). */
const optionalToken = (secretId: string | undefined, plain: string | undefined, what: string): TokenSource =>
  secretId || plain ? secretReader(secretId, plain, what) : async () => undefined;

/**
 * Composition root: clients, stores and use cases once per container; the env is validated at cold start.
 * @param clients the container's SDK clients @default built from the env
 */
export const buildStatusDeps = (
  processEnv: Record<string, string | undefined> = process.env,
  clients?: Clients,
): StatusDeps => {
  const env = readRuntimeEnv(processEnv);
  const sdk = clients ?? makeClients(env);
  const clock = systemClock;
  const config = liveConfig(env, sdk, processEnv, clock);
  const primary = primaryUpstreamState(env, sdk, clock, config.defaults);
  const tickets = ticketStore(env, sdk);
  const queue = new SqsTicketQueue(sdk.sqs, env.queueUrls);
  const lease = new DynamoLeaseStore(sdk.dynamo, env.stateTable);
  const usage = new DynamoUsageStore(sdk.dynamo, env.stateTable);
  const sources = upstreamRowSources(env, sdk, primary, tickets);
  const builder = new SnapshotBuilder({
    bucket: { get: () => primary.bucket.refresh() },
    retreat: primary.retreatStore,
    tickets,
    queue,
    lease,
    outcomes: primary.outcomes,
    config: config.service,
    configHistory: config.store,
    clock,
    ingressMemoryMb: env.ingressMemoryMb,
    ...(sources
      ? {
          upstreams: (current: GatewayConfig, firstBucket?: BucketState) =>
            upstreamRows(
              sources,
              poolsOf(
                env.routes,
                sources.map((s) => s.name),
              ),
              current,
              clock,
              firstBucket,
            ),
        }
      : {}),
  });
  const limited = [...env.upstreams.values()].find((u) => u.limited);
  if (!limited) throw new Error('no limited upstream configured');
  return {
    snapshots: new Memo(() => builder.build(), clock, SNAPSHOT_MAX_AGE_MS),
    access: new StatusAccess({
      keys: new KeyAuthenticator(new DynamoKeyStore(sdk.dynamo, env.keysTable), clock),
      adminToken: optionalToken(env.adminTokenSecret, env.adminTokenValue, 'admin token'),
      viewerToken: optionalToken(env.viewerTokenSecret, env.viewerTokenValue, 'viewer token'),
    }),
    admin: new AdminService({
      usage,
      budgets: new DynamoBudgetStore(sdk.dynamo, env.stateTable),
      config: config.service,
      history: config.store,
      tickets,
      retreat: primary.retreat,
      clock,
      ...(env.cacheTable ? { cache: new DynamoResponseCacheStore(sdk.dynamo, env.cacheTable) } : {}),
    }),
    readiness: new Readiness({
      dynamodb: async () => {
        await lease.get();
      },
      sqs: async () => {
        await Promise.all(PRIORITIES.map((p) => queue.depth(p)));
      },
      upstream: fetchModelsProbe(
        limited.baseUrl,
        optionalToken(env.upstreamKeySecret, env.upstreamKeyValue, 'upstream API key'),
      ),
      clock,
    }),
    config: config.service,
    clock,
    startedAt: clock.now(),
    ...(env.allowedOrigin ? { allowedOrigin: env.allowedOrigin } : {}),
  };
};
