// Ingress use case: one agent request end to end — parse into a request context, admit, wait for the claim,
// relay the upstream's answer (lib/ingress/upstream-relay.ts), requeue on an early 429 while allowed.
import { type Admission, type Admitted, farPollMaxMs } from '../domain/admission.js';
import { budgetOf } from '../domain/agent-budget.js';
import type { KeyAuthenticator } from '../domain/auth.js';
import type { TokenBucket } from '../domain/bucket.js';
import type { Clock } from '../domain/clock.js';
import { nonStreamingWaitCapMs } from '../domain/config.js';
import type { ConfigService } from '../domain/config-service.js';
import {
  GatewayError,
  NotFoundError,
  RateLimitedError,
  StoreUnavailableError,
  UnavailableError,
  ValidationError,
} from '../domain/errors.js';
import { isForwardedPath } from '../domain/forward-paths.js';
import type { AgentKey, OutcomeStore } from '../domain/ports.js';
import type { Priority } from '../domain/priority.js';
import { bucketParamsFor } from '../domain/retreat-controller.js';
import { type Route, resolveRoute, type UpstreamDef } from '../domain/routes.js';
import type { Ticket } from '../domain/tickets.js';
import { checkFitsTpm, estimateRequestTokens, poolTpm, tokensToReserve } from '../domain/token-estimate.js';
import { tokenNeed } from '../domain/token-window.js';
import { applyLiveReserve, laneOf, type UpstreamLane } from '../domain/upstream-lanes.js';
import type { UpstreamClient } from '../domain/upstream-port.js';
import { grantWindowMs, poolWindowMs } from '../domain/upstreams.js';
import { asGatewayError, errorReply, type HttpReply } from '../http/reply.js';
import type { IngressRequest, RequestContext } from './context.js';
import { ReplyChannel } from './reply-channel.js';
import {
  assertSafePath,
  decodeBody,
  idempotencyKey,
  type ParsedBody,
  parseModelRequest,
  requestPriority,
  withModel,
} from './request.js';
import type { CacheFront, ResponseCache } from './response-cache.js';
import { formatReset } from './upstream-http.js';
import { UpstreamRelay } from './upstream-relay.js';

export type { IngressRequest } from './context.js';

/** Counters the function layer turns into metrics (bounded dimensions only). */
export interface IngressTelemetry {
  request(priority: Priority | 'none', outcome: string): void;
  upstream(kind: string, ms: number): void;
}

export interface IngressDeps {
  auth: KeyAuthenticator;
  config: ConfigService;
  admission: Admission;
  bucket: TokenBucket;
  outcomes: OutcomeStore;
  upstream: UpstreamClient;
  /** The limited upstream's key (Secrets Manager in AWS, env locally). Never logged. */
  /** This upstream's own key (Secrets Manager in AWS, env locally), undefined for none. Never logged. */
  upstreamKey: (upstream: UpstreamDef) => Promise<string | undefined>;
  routes: readonly Route[];
  upstreams: ReadonlyMap<string, UpstreamDef>;
  /** Several limited upstreams: one lane each; a ticket is called on the upstream its token came from. */
  lanes?: readonly UpstreamLane[];
  clock: Clock;
  telemetry: IngressTelemetry;
  log: {
    warn(msg: string, extra?: Record<string, unknown>): void;
    error(msg: string, extra?: Record<string, unknown>): void;
  };
  /** Largest body accepted. @default 6 MiB (Lambda's request payload limit) */
  maxBodyBytes?: number;
  /** The response cache; none = requests that opt in are served uncached. */
  cache?: ResponseCache;
}

/** Time kept free at the end of the function for recording the outcome. */
const FUNCTION_MARGIN_MS = 5_000;
const MODELS_CACHE_MS = 60_000;

export class IngressService {
  private modelsCache: { at: number; reply: HttpReply } | undefined;
  private readonly relay: UpstreamRelay;

  constructor(private readonly d: IngressDeps) {
    this.relay = new UpstreamRelay(d);
  }

  /** Handles one `/v1/*` request. Never throws: every failure is an OpenAI-shaped reply. */
  async handle(req: IngressRequest): Promise<HttpReply> {
    const base = { 'x-request-id': req.requestId };
    let priority: Priority | 'none' = 'none';
    try {
      const key = await this.d.auth.authenticate(req.headers.authorization);
      const requested = requestPriority(req.headers['x-priority'], key.maxPriority);
      priority = requested.priority;
      const reply = await this.proxy(req, key, requested.priority, { ...base, ...requested.headers });
      this.d.telemetry.request(requested.priority, String(reply.status));
      return await this.withRateHeaders(reply, requested.priority);
    } catch (err) {
      if (err instanceof StoreUnavailableError) this.d.log.warn('ingress failed', { error: err.message });
      else if (!(err instanceof GatewayError))
        this.d.log.error('ingress failed', { error: (err as Error).message, stack: (err as Error).stack });
      const reply = errorReply(err, base);
      this.d.telemetry.request(priority, String(reply.status));
      return await this.withRateHeaders(reply, priority === 'none' ? 'normal' : priority);
    }
  }

  private async proxy(
    req: IngressRequest,
    key: AgentKey,
    priority: Priority,
    headers: Record<string, string>,
  ): Promise<HttpReply> {
    const config = await this.d.config.config();
    // The buckets' reserve is live config, read from the same cached config as every other field (as the
    // dispatcher does): a PATCH of reserve_fraction reaches the fast path on every lane, the passthrough policy
    // and the rate headers too.
    applyLiveReserve(config, this.d.bucket, this.d.lanes);
    assertSafePath(req.path);
    if (!isForwardedPath(req.path, config.forwardPaths))
      throw new NotFoundError(`No route ${req.method} ${req.path.split('?')[0]} (not in forward_paths).`);
    const isModels = req.method === 'GET' && /^\/v1\/models\/?(\?.*)?$/.test(req.path);
    if (isModels && this.modelsCache && this.d.clock.now() - this.modelsCache.at < MODELS_CACHE_MS) {
      return {
        ...this.modelsCache.reply,
        headers: { ...this.modelsCache.reply.headers, ...headers, 'x-sluice-cache': 'hit' },
      };
    }
    let body: ParsedBody | undefined;
    const text = decodeBody(req.body, req.isBase64Encoded);
    if (req.method === 'POST' || req.method === 'PUT' || req.method === 'PATCH') {
      body = parseModelRequest(req.headers['content-type'], text, this.d.maxBodyBytes ?? 6 * 1024 * 1024);
    } else if (text) {
      throw new ValidationError(`${req.method} requests take no body.`, null, 'unexpected_body');
    }
    const limited = [...this.d.upstreams.values()].find((u) => u.limited);
    const route = body
      ? resolveRoute(body.model, this.d.routes, this.d.upstreams)
      : limited && { upstream: limited, model: '', pool: [limited] };
    if (!route) {
      throw new ValidationError(`No route for model \`${body?.model}\`.`, 'model', 'model_not_found');
    }
    const ctx: RequestContext = {
      req,
      config,
      priority,
      upstream: route.upstream,
      upstreamBody: body ? withModel(body, route.model) : undefined,
      stream: body?.stream ?? false,
      headers,
      channel: new ReplyChannel(),
    };
    if (!route.upstream.limited) {
      if (!config.passthroughUnlimited) {
        throw new ValidationError(
          `Model \`${body?.model}\` is not served by this gateway.`,
          'model',
          'model_not_found',
        );
      }
      req.waitUntil?.(this.relay.callAndRelay(ctx, undefined, headers));
      return ctx.channel.reply;
    }
    // Tokens per minute: a request larger than a whole minute of its upstreams could never be served.
    if (body) checkFitsTpm(estimateRequestTokens(body.raw, body.json), poolTpm(config, route.pool));
    const idemKey = idempotencyKey(req.headers['idempotency-key']);
    if (config.draining) {
      throw new UnavailableError('The gateway is draining for maintenance; retry later.', 60_000, 'draining');
    }
    const cache = await this.cacheFront(ctx, key, body, route.model);
    if (cache?.kind === 'hit') return cache.reply;
    try {
      return await this.admitAndServe(ctx, key, body, route, idemKey, cache, isModels);
    } catch (err) {
      await cache?.done();
      throw err;
    }
  }

  /**
   * The response cache before admission (no ticket for a hit). A miss fetches for itself and for identical requests
   * that wait on it meanwhile, at most as long as a non-streaming request may wait (they send nothing meanwhile).
   */
  private async cacheFront(
    ctx: RequestContext,
    key: AgentKey,
    body: ParsedBody | undefined,
    model: string,
  ): Promise<Extract<CacheFront, { kind: 'miss' | 'hit' }> | undefined> {
    if (!this.d.cache || !body) return undefined;
    const { config, req } = ctx;
    const now = this.d.clock.now();
    const callMs = config.requestTimeoutMs + FUNCTION_MARGIN_MS;
    const waitCap = ctx.stream ? config.streamMaxWaitMs : config.maxWaitMs;
    const front = await this.d.cache.front(ctx, {
      agent: key.agent,
      keyTtlS: key.cacheTtlS,
      body: body.json,
      model,
      waitUntil: now + Math.max(0, Math.min(nonStreamingWaitCapMs(config), req.remainingMs - callMs)),
      holdUntil: now + Math.max(0, Math.min(req.remainingMs, waitCap + callMs)),
    });
    if (front.kind === 'bypass') return undefined;
    if (front.kind === 'miss') ctx.answerSink = front.sink;
    return front;
  }

  /** Admission and the ticket's service; the reply as soon as it starts. */
  private async admitAndServe(
    ctx: RequestContext,
    key: AgentKey,
    body: ParsedBody | undefined,
    route: { upstream: UpstreamDef; pool: UpstreamDef[] },
    idemKey: string | undefined,
    cache: Extract<CacheFront, { kind: 'miss' }> | undefined,
    isModels: boolean,
  ): Promise<HttpReply> {
    const { req, config, priority, headers } = ctx;
    // Tokens per minute: what its grant reserves on an upstream with `tpm` (the answer's usage corrects it).
    const tokens = tokensToReserve(config, route.pool, body);
    // The key is resolved (and cached) before admission: a gateway that cannot call spends no token.
    await this.d.upstreamKey(route.upstream);
    const now = this.d.clock.now();
    const waitCap = ctx.stream ? config.streamMaxWaitMs : config.maxWaitMs;
    const deadline =
      now + Math.max(0, Math.min(waitCap, req.remainingMs - config.requestTimeoutMs - FUNCTION_MARGIN_MS));
    const admitted = await this.d.admission.admit(
      {
        ...(idemKey ? { idempotencyKey: idemKey } : {}),
        agent: key.agent,
        priority,
        model: body?.model ?? req.path,
        stream: ctx.stream,
        deadline,
        ...(key.quotaRpm !== undefined ? { quotaRpm: key.quotaRpm } : {}),
        ...(key.quotaShare !== undefined ? { quotaShare: key.quotaShare } : {}),
        ...budgetOf(key),
        callBudgetMs: config.requestTimeoutMs + FUNCTION_MARGIN_MS,
        ...(tokens !== undefined ? { tokens } : {}),
        ...((this.d.lanes?.length ?? 0) > 1
          ? { pool: route.pool.filter((u) => u.limited).map((u) => u.name) }
          : {}),
      },
      config,
    );
    const served = this.serveTicket(ctx, admitted)
      .catch((err: unknown) => {
        const storeDown = err instanceof StoreUnavailableError;
        this.d.log[storeDown ? 'warn' : 'error']('ticket handling failed', {
          error: (err as Error).message,
          ...(storeDown ? {} : { stack: (err as Error).stack }),
        });
        void ctx.channel.fail(
          storeDown
            ? asGatewayError(err)
            : new UnavailableError('The gateway failed while handling the request.', 1_000, 'internal_error'),
          headers,
        );
      })
      .finally(() => cache?.done());
    req.waitUntil?.(served);
    const reply = await ctx.channel.reply;
    if (isModels && reply.status === 200 && typeof reply.body === 'string')
      this.modelsCache = { at: this.d.clock.now(), reply };
    return reply;
  }

  /**
   * Waits for the claim (with heartbeats for streams) unless the fast path claimed it at admission, calls
   * upstream, requeues on 429 while allowed.
   */
  private async serveTicket(ctx: RequestContext, admitted: Admitted): Promise<void> {
    const { admission } = this.d;
    const { config, channel, headers } = ctx;
    const signal = AbortSignal.any([ctx.req.signal, channel.cancelled.signal]);
    const heartbeat = this.heartbeat(ctx);
    let ticket = admitted.ticket;
    let fromAdmission = admitted.passthrough;
    let fastGrant = admitted.claimed === true;
    for (;;) {
      let claimed: Ticket;
      // Judged once more right before the send (the fast path's grant too); `calledAt`: an earlier attempt's call.
      let sendCheck: { calledAt?: number } | undefined = fastGrant ? {} : undefined;
      if (fastGrant) {
        claimed = ticket;
        // The fast grant's own write told this container the bucket's state: no read for the rate headers.
        this.bucketReadAt = this.d.clock.now();
      } else {
        const res = await admission.untilClaimed(ticket, {
          signal,
          passthrough: fromAdmission,
          grantSlackMs: config.grantSlackMs,
          // Several upstreams: reads paced by the shortest slack of the pool, each grant judged by its own upstream's.
          windowMs: poolWindowMs(config, ticket.pool),
          windowOf: (granted) => grantWindowMs(config, granted.upstream),
          tokensOf: (granted) => tokenNeed(config, granted.upstream, granted.tokens),
          callBudgetMs: config.requestTimeoutMs + FUNCTION_MARGIN_MS,
          intervalMs: () => this.intervalMs(ctx),
          ...(fromAdmission || admitted.estimatedWaitMs === undefined || ticket !== admitted.ticket
            ? {}
            : { estimatedWaitMs: admitted.estimatedWaitMs }),
          ...(admitted.recheckAt !== undefined && !fromAdmission ? { recheckAt: admitted.recheckAt } : {}),
          onWaiting: heartbeat.onWaiting,
          readBy: heartbeat.readBy,
          farPollMs: farPollMaxMs(
            config.priorityPolicy,
            poolWindowMs(config, ticket.pool),
            config.grantSlackMs,
          ),
          onWaitStart: heartbeat.start,
          onWaitEnd: heartbeat.stop,
        });
        if (res.kind === 'gone') return;
        if (res.kind === 'refused') {
          await channel.fail(res.error, headers);
          return;
        }
        claimed = res.ticket;
        if (res.judged) sendCheck = res.calledAt !== undefined ? { calledAt: res.calledAt } : {};
      }
      const replyHeaders = await this.replyHeaders(ctx, claimed);
      // Several upstreams: the call goes to the upstream whose token it holds, with that upstream's key.
      const lane = (this.d.lanes?.length ?? 0) > 1 ? laneOf(claimed, this.d.lanes) : undefined;
      const upstream = lane ? this.d.upstreams.get(lane.name) : undefined;
      const callCtx = upstream ? { ...ctx, upstream } : ctx;
      const called = await this.relay.callAndRelay(callCtx, claimed, replyHeaders, {
        fastGrant,
        ...(sendCheck ? { sendCheck } : {}),
      });
      if (typeof called === 'object') {
        // Handed back before the send (the grant grew too old): wait for the next grant at its place.
        ticket = called.requeued;
        fromAdmission = false;
        fastGrant = false;
        continue;
      }
      if (called !== 'requeue') return;
      const requeued = await admission.requeue(claimed, 'upstream_throttled');
      if (!requeued) {
        await channel.fail(
          new RateLimitedError('Upstream rate limited the request.', 5_000, 'upstream_rate_limited'),
          headers,
        );
        return;
      }
      ticket = requeued;
      fromAdmission = false;
      fastGrant = false;
    }
  }

  /** The reply headers of one attempt: the request's, the bucket's rate headers and the queue time. */
  private async replyHeaders(ctx: RequestContext, claimed: Ticket): Promise<Record<string, string>> {
    const queueMs = (claimed.grantedAt ?? this.d.clock.now()) - claimed.enqueuedAt;
    return {
      ...ctx.headers,
      // Between the claim and the send: no bucket read unless the last is over 10 s old (the grant's age counts).
      ...(await this.rateHeaders(ctx, claimed.priority, 10_000)),
      'x-sluice-queue-ms': String(Math.max(0, queueMs)),
    };
  }

  /**
   * SSE comments while a streaming request waits (they commit a 200 with the event-stream headers). The first one
   * goes out only after a read of the ticket at its time found it still waiting (Admission.wait's `readBy`): a
   * refusal decided before then is answered as a plain 429, not as an error event after a 200.
   */
  private heartbeat(ctx: RequestContext) {
    const { channel, config } = ctx;
    const sseHeaders = { ...ctx.headers, 'content-type': 'text/event-stream', 'cache-control': 'no-cache' };
    let beat: ReturnType<typeof setInterval> | undefined;
    let waitInfo = { position: 0, etaMs: 0 };
    let firstAt: number | undefined;
    let committed = false;
    const send = () => {
      channel.commit(200, sseHeaders);
      void channel.write(`: queued position=${waitInfo.position} eta_ms=${Math.round(waitInfo.etaMs)}\n\n`);
    };
    const beating = () => {
      beat ??= setInterval(send, config.heartbeatMs);
    };
    return {
      onWaiting: (info: { position: number; etaMs: number }) => {
        waitInfo = info;
        if (committed || firstAt === undefined || this.d.clock.now() < firstAt) return;
        committed = true;
        send();
        beating();
      },
      readBy: () => (committed ? undefined : firstAt),
      start: () => {
        if (!ctx.stream || config.heartbeatMs <= 0) return;
        if (committed) beating();
        else firstAt ??= this.d.clock.now() + config.heartbeatMs;
      },
      stop: () => {
        clearInterval(beat);
        beat = undefined;
      },
    };
  }

  /**
   * The current token interval: the bucket as last known to this container (admission's fast grant and rate
   * headers keep it fresh; no read of its own), else derived from the config.
   */
  private async intervalMs({ config }: RequestContext): Promise<number> {
    return (
      this.d.bucket.state?.intervalMs ??
      bucketParamsFor({ effectiveRpm: (config.upstreamLimit * 60_000) / config.upstreamWindowMs }, config)
        .intervalMs
    );
  }

  /**
   * The bucket as last known (shared by all requests of this container), re-read when over 1 s old. The re-read
   * runs in the background when a state is known: the rate headers of the reply being built describe the bucket
   * as of at most ~1 s ago, and no read sits between a claim and its upstream call.
   */
  private bucketReadAt = 0;
  private async refreshBucket(maxAgeMs = 1_000): Promise<void> {
    const now = this.d.clock.now();
    // An empty read (the bucket item not written yet) is never reused: it would report 0 remaining.
    if (now - this.bucketReadAt <= maxAgeMs && this.d.bucket.state !== undefined) return;
    this.bucketReadAt = now;
    const read = this.d.bucket.refresh().catch(() => undefined);
    if (this.d.bucket.state === undefined) await read;
  }

  /**
   * Every reply carries the rate-limit headers (refusals, 401s and queue timeouts too, as the README says); those
   * of an upstream reply were set at its grant and are kept. Left out only when the config cannot be read.
   */
  private async withRateHeaders(reply: HttpReply, priority: Priority): Promise<HttpReply> {
    if ('x-ratelimit-limit-requests' in reply.headers) return reply;
    try {
      const config = await this.d.config.config();
      return { ...reply, headers: { ...reply.headers, ...(await this.rateHeaders({ config }, priority)) } };
    } catch {
      return reply;
    }
  }

  /** OpenAI-style rate-limit headers describing the shared bucket. */
  private async rateHeaders(
    { config }: Pick<RequestContext, 'config'>,
    priority: Priority,
    maxAgeMs?: number,
  ): Promise<Record<string, string>> {
    await this.refreshBucket(maxAgeMs);
    const now = this.d.clock.now();
    const state = this.d.bucket.state;
    const remaining = this.d.bucket.available(priority);
    const resetMs = state?.tat !== undefined ? Math.max(0, state.tat - now) : 0;
    return {
      'x-ratelimit-limit-requests': String(config.upstreamLimit),
      'x-ratelimit-remaining-requests': String(remaining),
      'x-ratelimit-reset-requests': formatReset(resetMs),
    };
  }
}
