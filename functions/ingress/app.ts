// Function app (ingress): API Gateway REST proxy event in, streamed response out. Thin adapter over lib/ingress.
import { AsyncLocalStorage } from 'node:async_hooks';
import { MethodNotAllowedError, Router } from '@aws-lambda-powertools/event-handler/http';
import { MetricUnit } from '@aws-lambda-powertools/metrics';
import type { APIGatewayProxyEvent, Context } from 'aws-lambda';
import { FetchUpstream } from '../../lib/adapters/upstream/fetch-upstream.js';
import { Admission } from '../../lib/domain/admission.js';
import { KeyAuthenticator } from '../../lib/domain/auth.js';
import { GatewayError, NotFoundError, ValidationError } from '../../lib/domain/errors.js';
import { OutcomeTriggeredRetreat } from '../../lib/domain/retreat-controller.js';
import { errorReply } from '../../lib/http/reply.js';
import { ResponseCache } from '../../lib/ingress/response-cache.js';
import { type IngressDeps, IngressService } from '../../lib/ingress/service.js';
import { upstreamCredentials } from '../../lib/runtime/credentials.js';
import { readRuntimeEnv } from '../../lib/runtime/env.js';
import { dispatcherWaker, makeClients, makeStores } from '../../lib/runtime/wiring.js';
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

/** Composition root: clients and stores once per container; config validated at cold start. */
export const buildIngressDeps = (processEnv: Record<string, string | undefined> = process.env) => {
  const env = readRuntimeEnv(processEnv);
  const clients = makeClients(env);
  const stores = makeStores(env, clients, processEnv);
  const logger = makeLogger('ingress');
  const metrics = makeMetrics('ingress');
  const upstreamKey = upstreamCredentials(env.upstreamCredentials, (upstream, e) =>
    logger.error('reading an upstream key failed', { upstream, error: e.message }),
  );
  const admission = new Admission({
    tickets: stores.tickets,
    queue: stores.queue,
    lease: stores.lease,
    outcomes: stores.outcomes,
    bucket: stores.bucket,
    ...(stores.lanes ? { lanes: stores.lanes } : {}),
    wakeDispatcher: dispatcherWaker(env, clients),
    clock: stores.clock,
    newId: stores.newId,
    usage: stores.usage,
    budgets: stores.budgets,
  });
  const deps: IngressHandlerDeps = {
    auth: new KeyAuthenticator(stores.keys, stores.clock),
    config: stores.config,
    admission,
    bucket: stores.bucket,
    // Seed preset: retreat judged after every upstream response; probe: after every 429.
    outcomes: new OutcomeTriggeredRetreat(
      stores.outcomes,
      stores.retreat,
      () => stores.config.config(),
      (e) => logger.warn('retreat evaluation after an outcome failed', { error: e.message }),
    ),
    upstream: new FetchUpstream(),
    upstreamKey,
    routes: env.routes,
    upstreams: env.upstreams,
    ...(stores.lanes ? { lanes: stores.lanes } : {}),
    maxBodyBytes: env.maxBodyBytes,
    clock: stores.clock,
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
    ...(stores.responseCache
      ? {
          cache: new ResponseCache({
            store: stores.responseCache,
            clock: stores.clock,
            outcomes: stores.outcomes,
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
  return { deps, env, stores, clients };
};
