// Function app (ingress): API Gateway REST proxy event in, streamed response out. Thin adapter over lib/ingress.
import { AsyncLocalStorage } from 'node:async_hooks';
import { randomUUID } from 'node:crypto';
import { MethodNotAllowedError, Router } from '@aws-lambda-powertools/event-handler/http';
import { MetricUnit } from '@aws-lambda-powertools/metrics';
import type { APIGatewayProxyEvent, Context } from 'aws-lambda';
import { DynamoBudgetStore } from '../../lib/adapters/dynamo/budget-store.js';
import { DynamoKeyStore } from '../../lib/adapters/dynamo/key-store.js';
import { DynamoLeaseStore } from '../../lib/adapters/dynamo/lease-store.js';
import { DynamoResponseCacheStore } from '../../lib/adapters/dynamo/response-cache-store.js';
import { DynamoUsageStore } from '../../lib/adapters/dynamo/usage-store.js';
import { SqsTicketQueue } from '../../lib/adapters/sqs/ticket-queue.js';
import { FetchUpstream } from '../../lib/adapters/upstream/fetch-upstream.js';
import { Admission } from '../../lib/domain/admission.js';
import { KeyAuthenticator } from '../../lib/domain/auth.js';
import { systemClock } from '../../lib/domain/clock.js';
import { GatewayError, NotFoundError, ValidationError } from '../../lib/domain/errors.js';
import { OutcomeTriggeredRetreat } from '../../lib/domain/retreat-controller.js';
import { errorReply } from '../../lib/http/reply.js';
import { ResponseCache } from '../../lib/ingress/response-cache.js';
import { type IngressDeps, IngressService } from '../../lib/ingress/service.js';
import { type Clients, dispatcherWaker, makeClients } from '../../lib/runtime/clients.js';
import { upstreamCredentials } from '../../lib/runtime/credentials.js';
import { readRuntimeEnv } from '../../lib/runtime/env.js';
import { primaryUpstreamState, ticketStore, upstreamLanes } from '../../lib/runtime/lanes.js';
import { liveConfig } from '../../lib/runtime/live-config.js';
import { corsHeaders, lowerHeaders, pathWithQuery, toResponse } from '../shared/http.js';
import { makeLogger, makeMetrics } from '../shared/observability.js';

interface RequestScope {
  signal: AbortSignal;
  allowedOrigin: string | undefined;
  /** Work that must finish before the invocation ends (the ticket's terminal write after the reply). */
  pending: Promise<unknown>[];
  /** Settles when the reply has been written whole to the response stream (or it failed): see IngressRequest. */
  replied: Promise<void>;
}

/** The OpenAI endpoints routed here, with the one method each takes. */
const ROUTED_METHODS: Record<string, string> = {
  '/v1/chat/completions': 'POST',
  '/v1/completions': 'POST',
  '/v1/embeddings': 'POST',
  '/v1/models': 'GET',
};
/** Methods the `/v1/*` catch-all forwards. */
const FORWARDED_METHODS = new Set(['GET', 'POST']);

/** The streaming wrapper hands the client-disconnect signal to the route via this request scope. */
const scope = new AsyncLocalStorage<RequestScope>();

/** Everything the ingress handler needs, built once per container (or by a test). */
export interface IngressHandlerDeps extends IngressDeps {
  /** The dashboard's origin, answered in CORS headers. */
  allowedOrigin?: string;
}

/** Builds the ingress handler from its deps (the Lambda entry and the local runtime alike). */
export const makeIngressHandler = (deps: IngressHandlerDeps) => {
  const service = new IngressService(deps);
  const opts = { allowedOrigin: deps.allowedOrigin };
  const app = new Router();
  const serve = async ({ event, context }: { event: unknown; context: Context }) => {
    const ev = event as APIGatewayProxyEvent;
    const s = scope.getStore();
    const reply = await service.handle({
      requestId: context.awsRequestId,
      method: ev.httpMethod,
      path: pathWithQuery(ev),
      headers: lowerHeaders(ev),
      body: ev.body,
      isBase64Encoded: ev.isBase64Encoded,
      signal: s?.signal ?? new AbortController().signal,
      remainingMs: context.getRemainingTimeInMillis(),
      ...(s ? { waitUntil: (work: Promise<unknown>) => s.pending.push(work), replied: s.replied } : {}),
    });
    return toResponse(reply, corsHeaders(s?.allowedOrigin, ev));
  };
  app.post('/v1/chat/completions', serve);
  app.post('/v1/completions', serve);
  app.post('/v1/embeddings', serve);
  app.get('/v1/models', serve);
  app.get('/v1/models/:id', serve);
  app.get('/v1/models/:publisher/:id', serve);
  app.options(
    '/v1/:rest',
    ({ event }) =>
      new Response(null, {
        status: 204,
        headers: corsHeaders(opts.allowedOrigin, event as APIGatewayProxyEvent),
      }),
  );
  // Other /v1/* paths are forwarded as the seed's catch-all did (they spend the key, so they queue too) — with
  // GET or POST only; a routed endpoint with another method is refused before it could cost a token.
  app.notFound(async (_err, reqCtx) => {
    const ev = reqCtx.event as APIGatewayProxyEvent;
    if (ev.path?.startsWith('/v1/')) {
      const method = ev.httpMethod.toUpperCase();
      if (method === 'OPTIONS')
        return new Response(null, { status: 204, headers: corsHeaders(opts.allowedOrigin, ev) });
      const path = ev.path.replace(/\/+$/, '');
      const routed = ROUTED_METHODS[path] ?? (path.startsWith('/v1/models/') ? 'GET' : undefined);
      if (routed === undefined && FORWARDED_METHODS.has(method))
        return serve({ event: ev, context: reqCtx.context });
      return toResponse(
        errorReply(
          new GatewayError(
            405,
            'invalid_request_error',
            'method_not_allowed',
            routed
              ? `${method} is not allowed on ${path}; use ${routed}.`
              : `${method} is not forwarded; only GET and POST reach the upstream.`,
          ),
          { 'x-request-id': reqCtx.context.awsRequestId },
        ),
      );
    }
    return toResponse(
      errorReply(new NotFoundError(`No route ${ev.httpMethod} ${ev.path}.`), {
        'x-request-id': reqCtx.context.awsRequestId,
      }),
    );
  });
  app.errorHandler(MethodNotAllowedError, async (_err, reqCtx) => {
    const ev = reqCtx.event as APIGatewayProxyEvent;
    return toResponse(
      errorReply(
        new GatewayError(
          405,
          'invalid_request_error',
          'method_not_allowed',
          `${ev.httpMethod} is not allowed on ${ev.path}.`,
        ),
        {
          'x-request-id': reqCtx.context.awsRequestId,
        },
      ),
    );
  });

  return awslambda.streamifyResponse(async (event: unknown, responseStream, context: Context) => {
    const ev = event as APIGatewayProxyEvent;
    if ((ev.httpMethod === 'GET' || ev.httpMethod === 'HEAD') && ev.body) {
      // The router's web Request cannot carry a GET body (it would throw, a 502): refuse it as the service would.
      const reply = errorReply(
        new ValidationError(`${ev.httpMethod} requests take no body.`, null, 'unexpected_body'),
        { 'x-request-id': context.awsRequestId, ...corsHeaders(opts.allowedOrigin, ev) },
      );
      const out = awslambda.HttpResponseStream.from(responseStream, {
        statusCode: reply.status,
        headers: reply.headers,
      });
      out.end(reply.body as string);
      return;
    }
    const disconnected = new AbortController();
    // Locally the API Gateway adapter exposes a signal; in Lambda the stream closing early is the only hint.
    const local = (responseStream as { clientSignal?: AbortSignal }).clientSignal;
    local?.addEventListener('abort', () => disconnected.abort(), { once: true });
    responseStream.on('close', () => {
      if (!responseStream.writableFinished) disconnected.abort();
    });
    const pending: Promise<unknown>[] = [];
    let markReplied!: () => void;
    const replied = new Promise<void>((resolve) => {
      markReplied = resolve;
    });
    try {
      await scope.run(
        { signal: disconnected.signal, allowedOrigin: opts.allowedOrigin, pending, replied },
        () => app.resolveStream(event, context, { responseStream }),
      );
    } finally {
      // The reply has ended (or failed); the invocation lasts until the outcome is recorded (Lambda freezes it on
      // return), which starts only now.
      markReplied();
      await Promise.allSettled(pending);
    }
  });
};

/**
 * Composition root: clients, stores and the live config once per container; the env is validated at cold start.
 * @param clients the container's SDK clients @default built from the env
 */
export const buildIngressDeps = (
  processEnv: Record<string, string | undefined> = process.env,
  clients?: Clients,
): IngressHandlerDeps => {
  const env = readRuntimeEnv(processEnv);
  const sdk = clients ?? makeClients(env);
  const clock = systemClock;
  const logger = makeLogger('ingress');
  const metrics = makeMetrics('ingress');
  const upstreamKey = upstreamCredentials(env.upstreamCredentials, (upstream, e) =>
    logger.error('reading an upstream key failed', { upstream, error: e.message }),
  );
  const config = liveConfig(env, sdk, processEnv, clock);
  const primary = primaryUpstreamState(env, sdk, clock, config.defaults);
  const lanes = upstreamLanes(env, sdk, clock, primary, config.defaults);
  const { bucket, outcomes } = primary;
  const admission = new Admission({
    tickets: ticketStore(env, sdk),
    queue: new SqsTicketQueue(sdk.sqs, env.queueUrls),
    lease: new DynamoLeaseStore(sdk.dynamo, env.stateTable),
    outcomes,
    bucket,
    ...(lanes ? { lanes } : {}),
    wakeDispatcher: dispatcherWaker(env, sdk),
    clock,
    newId: () => randomUUID(),
    usage: new DynamoUsageStore(sdk.dynamo, env.stateTable),
    budgets: new DynamoBudgetStore(sdk.dynamo, env.stateTable),
  });
  const deps: IngressHandlerDeps = {
    auth: new KeyAuthenticator(new DynamoKeyStore(sdk.dynamo, env.keysTable), clock),
    config: config.service,
    admission,
    bucket,
    // Seed preset: retreat judged after every upstream response; probe: after every 429.
    outcomes: new OutcomeTriggeredRetreat(
      outcomes,
      primary.retreat,
      () => config.service.config(),
      (e) => logger.warn('retreat evaluation after an outcome failed', { error: e.message }),
    ),
    upstream: new FetchUpstream(),
    upstreamKey,
    routes: env.routes,
    upstreams: env.upstreams,
    ...(lanes ? { lanes } : {}),
    maxBodyBytes: env.maxBodyBytes,
    clock,
    telemetry: {
      // Metrics are flushed per request: the stream outlives any `after` hook.
      request: (priority, status) => {
        metrics.addDimensions({ priority, status_class: `${status[0]}xx` });
        metrics.addMetric('requests', MetricUnit.Count, 1);
        metrics.publishStoredMetrics();
      },
      upstream: (kind, ms) => {
        metrics.addDimensions({ outcome: kind });
        metrics.addMetric('upstream_latency', MetricUnit.Milliseconds, ms);
        metrics.publishStoredMetrics();
      },
    },
    log: { warn: (m, e) => logger.warn(m, e ?? {}), error: (m, e) => logger.error(m, e ?? {}) },
    ...(env.allowedOrigin ? { allowedOrigin: env.allowedOrigin } : {}),
    ...(env.cacheTable
      ? {
          cache: new ResponseCache({
            store: new DynamoResponseCacheStore(sdk.dynamo, env.cacheTable),
            clock,
            outcomes,
            telemetry: {
              cache: (event, bytes) => {
                metrics.addDimensions({ event });
                metrics.addMetric('response_cache', MetricUnit.Count, 1);
                if (bytes !== undefined && event === 'hit')
                  metrics.addMetric('response_cache_bytes_saved', MetricUnit.Bytes, bytes);
                metrics.publishStoredMetrics();
              },
            },
            log: { warn: (m, e) => logger.warn(m, e ?? {}) },
          }),
        }
      : {}),
  };
  return deps;
};
