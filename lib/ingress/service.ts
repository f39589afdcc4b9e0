// Ingress application layer: one agent request end to end — authenticate, route, admit, wait, call, stream, record.
import { type Admission, idempotentRetry } from '../domain/admission.js';
import type { KeyAuthenticator } from '../domain/auth.js';
import type { TokenBucket } from '../domain/bucket.js';
import type { Clock } from '../domain/clock.js';
import type { GatewayConfig } from '../domain/config.js';
import type { ConfigService } from '../domain/config-service.js';
import {
  GatewayError,
  RateLimitedError,
  StoreUnavailableError,
  UnavailableError,
  UpstreamError,
  ValidationError,
} from '../domain/errors.js';
import type { OutcomeEvent } from '../domain/outcomes.js';
import type { AgentKey, OutcomeStore } from '../domain/ports.js';
import { capPriority, PRIORITIES, type Priority, parsePriority } from '../domain/priority.js';
import { bucketParamsFor } from '../domain/retreat-controller.js';
import { type Route, resolveRoute, type UpstreamDef } from '../domain/routes.js';
import type { Ticket } from '../domain/tickets.js';
import {
  classifyUpstream,
  embeddedErrorFromBody,
  parseRetryAfter,
  SseWatcher,
  type Usage,
  usageFromBody,
} from '../domain/upstream.js';
import {
  asGatewayError,
  asOpenAiErrorBody,
  errorReply,
  formatReset,
  forwardRequestHeaders,
  type HttpReply,
  passResponseHeaders,
  sseError,
} from './http.js';
import { assertSafePath, decodeBody, type ParsedBody, parseModelRequest, withModel } from './request.js';
import { UpstreamCallError, type UpstreamClient, type UpstreamResponse } from './upstream-port.js';

/** A request as the router hands it over (headers lower-cased). */
export interface IngressRequest {
  requestId: string;
  method: string;
  /** Path with query string, e.g. `/v1/chat/completions`. */
  path: string;
  headers: Record<string, string | undefined>;
  body: string | null;
  isBase64Encoded: boolean;
  /** Aborts when the agent disconnects (where the platform can tell). */
  signal: AbortSignal;
  /** Time left before the function is stopped. */
  remainingMs: number;
}

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
  upstreamKey: (upstream: UpstreamDef) => Promise<string>;
  routes: readonly Route[];
  upstreams: ReadonlyMap<string, UpstreamDef>;
  clock: Clock;
  telemetry: IngressTelemetry;
  log: {
    warn(msg: string, extra?: Record<string, unknown>): void;
    error(msg: string, extra?: Record<string, unknown>): void;
  };
  /** Largest body accepted. @default 6 MiB (Lambda's request payload limit) */
  maxBodyBytes?: number;
}

/** Time kept free at the end of the function for recording the outcome. */
const FUNCTION_MARGIN_MS = 5_000;
const MODELS_CACHE_MS = 60_000;
const ERROR_BODY_LIMIT = 16_384;

/** How the reply is delivered: a promise settled once with status and headers, then a byte stream. */
class ReplyChannel {
  private settle!: (r: HttpReply) => void;
  readonly reply: Promise<HttpReply>;
  private writer: WritableStreamDefaultWriter<Uint8Array> | undefined;
  private readonly enc = new TextEncoder();
  committed = false;
  closed = false;
  /** Set when the agent's side of a stream went away. */
  readonly cancelled = new AbortController();

  constructor() {
    this.reply = new Promise((resolve) => {
      this.settle = resolve;
    });
  }

  /** Sends a complete reply (only before anything was committed). */
  finish(reply: HttpReply): void {
    if (this.committed) return;
    this.committed = true;
    this.closed = true;
    this.settle(reply);
  }

  /** Commits status and headers; the body follows through write(). */
  commit(status: number, headers: Record<string, string>): void {
    if (this.committed) return;
    this.committed = true;
    const cancelled = this.cancelled;
    const { readable, writable } = new TransformStream<Uint8Array, Uint8Array>(undefined, undefined, {
      highWaterMark: 64,
    });
    this.writer = writable.getWriter();
    // The agent went away: the platform cancels the body, which we turn into an abort for the upstream call.
    this.writer.closed.catch(() => cancelled.abort());
    this.settle({ status, headers, body: withCancel(readable, () => cancelled.abort()) });
  }

  async write(chunk: Uint8Array | string): Promise<void> {
    if (!this.writer || this.closed) return;
    try {
      await this.writer.write(typeof chunk === 'string' ? this.enc.encode(chunk) : chunk);
    } catch {
      this.cancelled.abort();
    }
  }

  async end(): Promise<void> {
    if (!this.writer || this.closed) return;
    this.closed = true;
    try {
      await this.writer.close();
    } catch {
      // Already cancelled by the agent.
    }
  }
}

/** A stream that calls `onCancel` when its reader cancels (agent disconnect). */
const withCancel = (src: ReadableStream<Uint8Array>, onCancel: () => void): ReadableStream<Uint8Array> => {
  const reader = src.getReader();
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      const { value, done } = await reader.read();
      if (done) controller.close();
      else controller.enqueue(value);
    },
    cancel(reason) {
      onCancel();
      return reader.cancel(reason);
    },
  });
};

export class IngressService {
  private modelsCache: { at: number; reply: HttpReply } | undefined;

  constructor(private readonly d: IngressDeps) {}

  /** Handles one `/v1/*` request. Never throws: every failure is an OpenAI-shaped reply. */
  async handle(req: IngressRequest): Promise<HttpReply> {
    const base = { 'x-request-id': req.requestId };
    let priority: Priority | 'none' = 'none';
    try {
      const key = await this.d.auth.authenticate(req.headers.authorization);
      const requested = parsePriority(req.headers['x-priority']);
      if (requested === null) {
        throw new ValidationError(
          `X-Priority must be one of ${PRIORITIES.join(', ')} (case-insensitive).`,
          'X-Priority',
          'invalid_priority',
        );
      }
      const effective = capPriority(requested ?? 'normal', key.maxPriority);
      priority = effective;
      const headers = {
        ...base,
        'x-sluice-priority': effective,
        ...(requested && effective !== requested
          ? { 'x-sluice-priority-capped': `${requested}->${effective}` }
          : {}),
      };
      const config = await this.d.config.config();
      const reply = await this.proxy(req, key, effective, config, headers);
      this.d.telemetry.request(effective, String(reply.status));
      return await this.withRateHeaders(reply, effective);
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
    config: GatewayConfig,
    headers: Record<string, string>,
  ): Promise<HttpReply> {
    assertSafePath(req.path);
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
      : limited && { upstream: limited, model: '' };
    if (!route) {
      throw new ValidationError(`No route for model \`${body?.model}\`.`, 'model', 'model_not_found');
    }
    const upstreamBody = body ? withModel(body, route.model) : undefined;
    const stream = body?.stream ?? false;
    if (!route.upstream.limited) {
      if (!config.passthroughUnlimited) {
        throw new ValidationError(
          `Model \`${body?.model}\` is not served by this gateway.`,
          'model',
          'model_not_found',
        );
      }
      const channel = new ReplyChannel();
      void this.callAndRelay(
        req,
        route.upstream,
        upstreamBody,
        headers,
        channel,
        undefined,
        config,
        priority,
      );
      return channel.reply;
    }
    const idempotencyKey = req.headers['idempotency-key'];
    if (idempotencyKey !== undefined && !/^[\x21-\x7e]{1,255}$/.test(idempotencyKey)) {
      throw new ValidationError(
        'Idempotency-Key must be 1-255 printable ASCII characters.',
        'Idempotency-Key',
        'invalid_idempotency_key',
      );
    }
    if (config.draining) {
      throw new UnavailableError('The gateway is draining for maintenance; retry later.', 60_000, 'draining');
    }
    const now = this.d.clock.now();
    const waitCap = stream ? config.streamMaxWaitMs : config.maxWaitMs;
    const deadline =
      now + Math.max(0, Math.min(waitCap, req.remainingMs - config.requestTimeoutMs - FUNCTION_MARGIN_MS));
    const { ticket, passthrough } = await this.d.admission.admit(
      {
        ...(idempotencyKey ? { idempotencyKey } : {}),
        agent: key.agent,
        priority,
        model: body?.model ?? req.path,
        stream,
        deadline,
        ...(key.quotaRpm !== undefined ? { quotaRpm: key.quotaRpm } : {}),
        ...(key.quotaShare !== undefined ? { quotaShare: key.quotaShare } : {}),
      },
      config,
    );
    const channel = new ReplyChannel();
    void this.serveTicket(
      req,
      ticket,
      passthrough,
      route.upstream,
      upstreamBody,
      stream,
      headers,
      channel,
      config,
    ).catch((err: unknown) => {
      const storeDown = err instanceof StoreUnavailableError;
      this.d.log[storeDown ? 'warn' : 'error']('ticket handling failed', {
        error: (err as Error).message,
        ...(storeDown ? {} : { stack: (err as Error).stack }),
      });
      void this.deliverError(
        channel,
        storeDown
          ? asGatewayError(err)
          : new UnavailableError('The gateway failed while handling the request.', 1_000, 'internal_error'),
        headers,
      );
    });
    const reply = await channel.reply;
    if (isModels && reply.status === 200 && typeof reply.body === 'string')
      this.modelsCache = { at: this.d.clock.now(), reply };
    return reply;
  }

  /** Waits for the grant (with heartbeats for streams), calls upstream, requeues on 429 while allowed. */
  private async serveTicket(
    req: IngressRequest,
    first: Ticket,
    passthrough: boolean,
    upstream: UpstreamDef,
    body: string | undefined,
    stream: boolean,
    headers: Record<string, string>,
    channel: ReplyChannel,
    config: GatewayConfig,
  ): Promise<void> {
    const { admission, clock } = this.d;
    const signal = AbortSignal.any([req.signal, channel.cancelled.signal]);
    let ticket = first;
    let granted = passthrough ? first : undefined;
    let beat: ReturnType<typeof setInterval> | undefined;
    let waitInfo = { position: 0, etaMs: 0 };
    const sseHeaders = { ...headers, 'content-type': 'text/event-stream', 'cache-control': 'no-cache' };
    for (;;) {
      if (!granted) {
        if (stream && config.heartbeatMs > 0 && !beat) {
          beat = setInterval(() => {
            channel.commit(200, sseHeaders);
            void channel.write(
              `: queued position=${waitInfo.position} eta_ms=${Math.round(waitInfo.etaMs)}\n\n`,
            );
          }, config.heartbeatMs);
        }
        await this.refreshBucket();
        const interval =
          this.d.bucket.state?.intervalMs ??
          bucketParamsFor({ effectiveRpm: (config.upstreamLimit * 60_000) / config.upstreamWindowMs }, config)
            .intervalMs;
        const res = await admission.wait(ticket, interval, {
          signal,
          onWaiting: (info) => {
            waitInfo = info;
          },
        });
        if (res.kind === 'refused') {
          clearInterval(beat);
          await this.deliverError(channel, res.error, headers);
          return;
        }
        granted = res.ticket;
      }
      clearInterval(beat);
      beat = undefined;
      if (!(passthrough && granted === first) && admission.isStale(granted)) {
        // Seen too late to call on without risking the window limit: back to the queue at its place.
        const requeued = await admission.requeueStale(granted);
        if (requeued) {
          ticket = requeued;
          granted = undefined;
          continue;
        }
      }
      const now = clock.now();
      const claimed = await admission.claim(granted, now + config.requestTimeoutMs + FUNCTION_MARGIN_MS);
      if (!claimed) {
        // Another request with the same Idempotency-Key claimed it first, or the sweep ended it.
        const current = await admission.lookup(granted.id);
        if (
          current?.status === 'queued' ||
          (current?.status === 'granted' && current.attempt > granted.attempt)
        ) {
          // Another waiter on the same ticket requeued a grant it saw too late: wait for the next grant.
          ticket = current;
          granted = current.status === 'granted' ? current : undefined;
          continue;
        }
        await this.deliverError(
          channel,
          current?.status === 'claimed' || current?.status === 'completed'
            ? (idempotentRetry(current) as GatewayError)
            : new UnavailableError('The grant expired before it could be used; retry.', 1_000, 'grant_lost'),
          headers,
        );
        return;
      }
      if (signal.aborted) {
        await admission.finish(claimed, 'abandoned', { reason: 'client_disconnected' });
        return;
      }
      const queueMs = (claimed.grantedAt ?? now) - claimed.enqueuedAt;
      const replyHeaders = {
        ...headers,
        ...(await this.rateHeaders(config, ticket.priority)),
        'x-sluice-queue-ms': String(queueMs),
      };
      const result = await this.callAndRelay(
        req,
        upstream,
        body,
        replyHeaders,
        channel,
        claimed,
        config,
        ticket.priority,
      );
      if (result !== 'requeue') return;
      const requeued = await admission.requeue(claimed, 'upstream_throttled');
      if (!requeued) {
        await this.deliverError(
          channel,
          new RateLimitedError('Upstream rate limited the request.', 5_000, 'upstream_rate_limited'),
          headers,
        );
        return;
      }
      ticket = requeued;
      granted = undefined;
    }
  }

  /**
   * One upstream call and the relay of its answer. With a ticket, records its outcome and ends it;
   * returns 'requeue' when a 429 / capacity error came before any byte and requeues remain.
   */
  private async callAndRelay(
    req: IngressRequest,
    upstream: UpstreamDef,
    body: string | undefined,
    headers: Record<string, string>,
    channel: ReplyChannel,
    ticket: Ticket | undefined,
    config: GatewayConfig,
    priority: Priority,
  ): Promise<'done' | 'requeue'> {
    const { clock, admission } = this.d;
    const started = clock.now();
    const abort = new AbortController();
    const onCancel = () => abort.abort();
    req.signal.addEventListener('abort', onCancel, { once: true });
    channel.cancelled.signal.addEventListener('abort', onCancel, { once: true });
    const record = (event: OutcomeEvent) => this.d.outcomes.record(clock.now(), event).catch(() => undefined);
    const upstreamMs = () => clock.now() - started;
    try {
      let res: UpstreamResponse;
      try {
        res = await this.d.upstream.call({
          baseUrl: upstream.baseUrl,
          path: req.path,
          method: req.method,
          headers: forwardRequestHeaders(req.headers),
          ...(body !== undefined ? { body } : {}),
          apiKey: await this.d.upstreamKey(upstream),
          firstByteTimeoutMs: config.firstByteTimeoutMs,
          timeoutMs: config.requestTimeoutMs,
          signal: abort.signal,
        });
      } catch (err) {
        const e =
          err instanceof UpstreamCallError
            ? err
            : new UpstreamCallError('connection', (err as Error).message);
        this.d.telemetry.upstream(e.kind, upstreamMs());
        if (e.kind === 'aborted') {
          if (ticket) await admission.finish(ticket, 'abandoned', { reason: 'client_disconnected' });
          return 'done';
        }
        if (ticket) {
          await record({
            counts: { upstreamError: 1 },
            latencies: [{ name: 'upstream', priority, ms: upstreamMs() }],
          });
          await admission.finish(ticket, 'failed', { reason: `upstream_${e.kind}` });
        }
        const gw =
          e.kind === 'connection'
            ? new UpstreamError(502, `Upstream unreachable: ${e.message}`, 'upstream_connection')
            : new UpstreamError(504, `Upstream timed out: ${e.message}`, `upstream_${e.kind}`);
        await this.deliverError(channel, gw, headers);
        return 'done';
      }
      const isError = res.status >= 400;
      const errorText = isError ? await readLimited(res.body, ERROR_BODY_LIMIT) : '';
      const kind = classifyUpstream(res.status, errorText);
      this.d.telemetry.upstream(kind, upstreamMs());
      if (ticket && (kind === 'throttled' || kind === 'capacity')) {
        await record({
          counts: { [kind]: 1 },
          latencies: [{ name: 'upstream', priority, ms: upstreamMs() }],
        });
        const retryAfter = parseRetryAfter(res.headers.get('retry-after'), clock.now());
        if (retryAfter !== undefined && retryAfter > 0)
          await this.d.bucket.hold(clock.now() + Math.min(retryAfter, 300_000));
        // Nothing of the answer reached the agent yet (heartbeats are not answer bytes): try again later.
        if (ticket.attempt < config.maxRequeues) return 'requeue';
        await admission.finish(ticket, 'failed', { reason: `upstream_${kind}`, upstreamStatus: res.status });
        await this.deliverError(
          channel,
          new RateLimitedError(
            kind === 'capacity'
              ? 'Upstream is at capacity (worker concurrency limit); retried and still refused.'
              : 'Upstream rate limited the request; retried and still refused.',
            retryAfter ?? 10_000,
            kind === 'capacity' ? 'upstream_capacity' : 'upstream_rate_limited',
          ),
          headers,
        );
        return 'done';
      }
      if (isError) {
        // A 401 refuses the gateway's upstream key, not the agent's: the gateway's failure, not theirs.
        const keyRefused = res.status === 401;
        const failed = kind === 'upstream_error' || keyRefused;
        if (ticket) {
          await record({
            counts: failed ? { upstreamError: 1 } : { ok: 1 },
            latencies: [{ name: 'upstream', priority, ms: upstreamMs() }],
          });
          await admission.finish(ticket, failed ? 'failed' : 'completed', {
            reason: keyRefused ? 'upstream_auth' : failed ? 'upstream_5xx' : 'upstream_client_error',
            upstreamStatus: res.status,
          });
        }
        if (keyRefused) {
          this.d.log.error('upstream refused the gateway key', { status: res.status });
          await this.deliverError(
            channel,
            new UpstreamError(502, 'The upstream refused the gateway’s credentials.', 'upstream_auth_failed'),
            headers,
          );
        } else if (kind === 'upstream_error') {
          await this.deliverError(
            channel,
            new UpstreamError(
              502,
              `Upstream error ${res.status}: ${errorText.slice(0, 500)}`,
              'upstream_error',
            ),
            headers,
          );
        } else if (!channel.committed) {
          // The agent's own mistake as the upstream judged it: its status, in the OpenAI error shape.
          channel.finish({
            status: res.status,
            headers: { ...headers, ...passResponseHeaders(res.headers), 'content-type': 'application/json' },
            body: asOpenAiErrorBody(res.status, errorText),
          });
        } else {
          await channel.write(
            sseError(
              new ValidationError(
                `Upstream refused the request (${res.status}): ${errorText.slice(0, 500)}`,
                null,
                'upstream_client_error',
              ),
            ),
          );
          await channel.end();
        }
        return 'done';
      }
      return await this.relay(res, headers, channel, ticket, priority, started);
    } finally {
      req.signal.removeEventListener('abort', onCancel);
      channel.cancelled.signal.removeEventListener('abort', onCancel);
    }
  }

  /** Streams a 2xx answer through as it arrives, watching SSE for usage and embedded errors. */
  private async relay(
    res: UpstreamResponse,
    headers: Record<string, string>,
    channel: ReplyChannel,
    ticket: Ticket | undefined,
    priority: Priority,
    started: number,
  ): Promise<'done'> {
    const out = { ...headers, ...passResponseHeaders(res.headers) };
    const isSse = (res.headers.get('content-type') ?? '').includes('text/event-stream');
    const watcher = new SseWatcher();
    let usage: Usage | undefined;
    let failure: string | undefined;
    // The outcome is recorded before the reply completes: once the agent has its answer the function may be frozen.
    const recordEnd = () => this.recordEnd(ticket, failure, usage, res.status, priority, started);
    if (!isSse) {
      // A JSON answer is small; reading it whole lets us extract usage and send a proper content-length.
      let text = '';
      try {
        text = await new Response(res.body).text();
      } catch (err) {
        failure = channel.cancelled.signal.aborted ? 'client_disconnected' : 'upstream_cut';
        this.d.log.warn('upstream body failed', { error: (err as Error).message });
      }
      usage = usageFromBody(text);
      const embedded = failure ? undefined : embeddedErrorFromBody(text);
      if (embedded !== undefined) failure = 'embedded_error';
      await recordEnd();
      if (embedded !== undefined) {
        // A 200 that carries an error is not an answer: the agent gets an OpenAI-shaped 502, the ticket fails.
        await this.deliverError(
          channel,
          new UpstreamError(
            502,
            `Upstream answered with an error: ${embedded.slice(0, 500)}`,
            'upstream_error',
          ),
          headers,
        );
      } else if (failure) {
        await this.deliverError(
          channel,
          new UpstreamError(502, 'Upstream connection broke during the answer.', 'upstream_cut'),
          headers,
        );
      } else if (!channel.committed) channel.finish({ status: res.status, headers: out, body: text });
      else {
        await channel.write(text);
        await channel.end();
      }
      return 'done';
    }
    channel.commit(res.status, out);
    const reader = res.body?.getReader();
    try {
      for (;;) {
        if (!reader) break;
        const { value, done } = await reader.read();
        if (done) break;
        watcher.push(value);
        await channel.write(value);
        if (channel.cancelled.signal.aborted) {
          failure = 'client_disconnected';
          await reader.cancel();
          break;
        }
      }
    } catch (err) {
      failure = channel.cancelled.signal.aborted ? 'client_disconnected' : 'upstream_cut';
      if (failure === 'upstream_cut')
        this.d.log.warn('upstream stream cut', { error: (err as Error).message });
    }
    usage = watcher.usage;
    if (!failure && watcher.embeddedError) failure = 'embedded_error';
    await recordEnd();
    if (failure === 'upstream_cut') {
      await channel.write(
        sseError(new UpstreamError(502, 'Upstream connection broke mid-stream.', 'upstream_cut')),
      );
    }
    await channel.end();
    return 'done';
  }

  /** Outcome counters and the ticket's terminal state after a 2xx answer was relayed (or cut). */
  private async recordEnd(
    ticket: Ticket | undefined,
    failure: string | undefined,
    usage: Usage | undefined,
    status: number,
    priority: Priority,
    started: number,
  ): Promise<void> {
    if (!ticket) return;
    const { clock, admission } = this.d;
    const patch = {
      upstreamStatus: status,
      ...(usage?.total_tokens !== undefined ? { totalTokens: usage.total_tokens } : {}),
    };
    const end =
      failure === 'client_disconnected'
        ? admission.finish(ticket, 'abandoned', { ...patch, reason: failure })
        : failure
          ? admission.finish(ticket, 'failed', { ...patch, reason: failure })
          : admission.finish(ticket, 'completed', patch);
    // Independent writes, done together: the answer waits for both.
    await Promise.all([
      this.d.outcomes
        .record(clock.now(), {
          counts: failure && failure !== 'client_disconnected' ? { upstreamError: 1 } : { ok: 1 },
          latencies: [{ name: 'upstream', priority, ms: clock.now() - started }],
        })
        .catch(() => undefined),
      end,
    ]);
  }

  /** An error as a JSON reply, or as an SSE error event if the stream already started. */
  private async deliverError(
    channel: ReplyChannel,
    err: GatewayError,
    headers: Record<string, string>,
  ): Promise<void> {
    if (!channel.committed) {
      channel.finish(errorReply(err, headers));
      return;
    }
    await channel.write(sseError(err));
    await channel.end();
  }

  /** The bucket as last read, at most 1 s old (shared by all requests of this container). */
  private bucketReadAt = 0;
  private async refreshBucket(): Promise<void> {
    const now = this.d.clock.now();
    if (now - this.bucketReadAt <= 1_000) return;
    this.bucketReadAt = now;
    await this.d.bucket.refresh().catch(() => undefined);
  }

  /**
   * Every reply carries the rate-limit headers (refusals, 401s and queue timeouts too, as the README says); those
   * of an upstream reply were set at its grant and are kept. Left out only when the config cannot be read.
   */
  private async withRateHeaders(reply: HttpReply, priority: Priority): Promise<HttpReply> {
    if ('x-ratelimit-limit-requests' in reply.headers) return reply;
    try {
      const config = await this.d.config.config();
      return { ...reply, headers: { ...reply.headers, ...(await this.rateHeaders(config, priority)) } };
    } catch {
      return reply;
    }
  }

  /** OpenAI-style rate-limit headers describing the shared bucket. */
  private async rateHeaders(config: GatewayConfig, priority: Priority): Promise<Record<string, string>> {
    await this.refreshBucket();
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

/** Reads at most `limit` bytes of a body as text (error bodies are small; never buffer a whole stream). */
const readLimited = async (body: ReadableStream<Uint8Array> | null, limit: number): Promise<string> => {
  if (!body) return '';
  const reader = body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  try {
    while (size < limit) {
      const { value, done } = await reader.read();
      if (done) break;
      chunks.push(value);
      size += value.length;
    }
  } catch {
    // A broken error body still classifies by status.
  } finally {
    await reader.cancel().catch(() => undefined);
  }
  return Buffer.concat(chunks).toString('utf8').slice(0, limit);
};
