// Ingress: one upstream call and the relay of its answer to the agent; every result is counted and ends the
// ticket through one outcome table.
import type { Admission } from '../domain/admission.js';
import type { TokenBucket } from '../domain/bucket.js';
import type { Clock } from '../domain/clock.js';
import {
  GatewayError,
  RateLimitedError,
  UnavailableError,
  UpstreamError,
  ValidationError,
} from '../domain/errors.js';
import type { CounterName } from '../domain/outcomes.js';
import type { OutcomeStore } from '../domain/ports.js';
import { agentSafeErrorText } from '../domain/redact.js';
import type { UpstreamDef } from '../domain/routes.js';
import type { Ticket, TicketPatch } from '../domain/tickets.js';
import { tokenLimitOf, tokenNeed } from '../domain/token-window.js';
import {
  classifyUpstream,
  embeddedErrorFromBody,
  SseWatcher,
  type UpstreamOutcome,
  type Usage,
  usageFromBody,
} from '../domain/upstream.js';
import { laneOf, type UpstreamLane } from '../domain/upstream-lanes.js';
import { UpstreamCallError, type UpstreamClient, type UpstreamResponse } from '../domain/upstream-port.js';
import { upstreamHoldMs } from '../domain/upstream-rate-headers.js';
import { grantWindowMs } from '../domain/upstreams.js';
import { sseError } from '../http/reply.js';
import type { RequestContext } from './context.js';
import { readLimited } from './reply-channel.js';
import { asOpenAiErrorBody, forwardRequestHeaders, passResponseHeaders } from './upstream-http.js';

const ERROR_BODY_LIMIT = 16_384;
/** The longest Retry-After the bucket honours (5 min). */
const HOLD_MAX_MS = 300_000;

/**
 * How each upstream result is counted in the outcome slots and which terminal state it gives the ticket.
 * `count: undefined` records nothing (the agent left before any answer).
 */
const OUTCOMES = {
  answered: { count: 'ok', end: 'completed' },
  /** The agent's own mistake as the upstream judged it (4xx other than 401/429). */
  refused_request: { count: 'ok', end: 'completed' },
  /** The agent went away while the answer streamed. */
  disconnected: { count: 'ok', end: 'abandoned' },
  /** The agent went away before the upstream answered. */
  gone_before_answer: { count: undefined, end: 'abandoned' },
  /** No answer, a 5xx, a 401 on the gateway's key, a cut or an error inside a 200. */
  failed: { count: 'upstreamError', end: 'failed' },
  /** The gateway could not read this upstream's credential: no call was made (not the upstream's fault). */
  no_credential: { count: undefined, end: 'failed' },
  throttled: { count: 'throttled', end: 'failed' },
  capacity: { count: 'capacity', end: 'failed' },
} as const satisfies Record<
  string,
  { count: CounterName | undefined; end: 'completed' | 'failed' | 'abandoned' }
>;
type Outcome = keyof typeof OUTCOMES;

export interface UpstreamRelayDeps {
  upstream: UpstreamClient;
  /** This upstream's own key (Secrets Manager in AWS, env locally), undefined for none. Never logged. */
  upstreamKey: (upstream: UpstreamDef) => Promise<string | undefined>;
  admission: Admission;
  outcomes: OutcomeStore;
  bucket: TokenBucket;
  /** Several limited upstreams: a granted ticket's 429 hold and answers go to its own upstream's lane. */
  lanes?: readonly UpstreamLane[];
  clock: Clock;
  telemetry: { upstream(kind: string, ms: number): void };
  log: {
    warn(msg: string, extra?: Record<string, unknown>): void;
    error(msg: string, extra?: Record<string, unknown>): void;
  };
}

/** One call in progress: what the outcome table needs besides the result. */
interface Call {
  ctx: RequestContext;
  /** The claimed ticket; none for an unlimited passthrough (nothing recorded then). */
  ticket: Ticket | undefined;
  headers: Record<string, string>;
  started: number;
  /**
   * Granted on the fast path: its `granted` count and (zero) queue wait are not recorded yet; they go with the
   * first outcome count, so a fast-path request costs one outcome write.
   */
  grantUncounted: boolean;
}

export class UpstreamRelay {
  constructor(private readonly d: UpstreamRelayDeps) {}

  /**
   * One upstream call and the relay of its answer. With a ticket, records its outcome and ends it;
   * returns 'requeue' when a 429 / capacity error came before any byte and requeues remain, or the requeued
   * ticket when its grant had grown too old by the moment of sending (handed back, never called on).
   * @param headers the reply headers for this attempt (rate-limit and queue headers included)
   * @param opts.fastGrant the ticket was granted on the fast path (its grant is counted with the outcome)
   * @param opts.sendCheck judge the grant's age right before the send (Admission.beforeSend); `calledAt` is the
   *   ticket's claim time before this claim
   */
  async callAndRelay(
    ctx: RequestContext,
    ticket: Ticket | undefined,
    headers: Record<string, string>,
    opts: { fastGrant?: boolean; sendCheck?: { calledAt?: number } } = {},
  ): Promise<'done' | 'requeue' | { requeued: Ticket }> {
    const { req, channel, config } = ctx;
    const call: Call = {
      ctx,
      ticket,
      headers,
      started: this.d.clock.now(),
      grantUncounted: ticket !== undefined && opts.fastGrant === true,
    };
    const abort = new AbortController();
    const onCancel = () => abort.abort();
    req.signal.addEventListener('abort', onCancel, { once: true });
    channel.cancelled.signal.addEventListener('abort', onCancel, { once: true });
    try {
      let apiKey: string | undefined;
      try {
        apiKey = await this.d.upstreamKey(ctx.upstream);
      } catch (err) {
        if (err instanceof GatewayError) {
          // The credential could not be read (its own fixed 503), not an upstream failure.
          await ctx.channel.fail(err, headers);
          await this.afterReply(call);
          await this.settle(call, 'no_credential', { reason: err.code });
          return 'done';
        }
        await this.noAnswer(call, err);
        return 'done';
      }
      if (ticket && opts.sendCheck) {
        // The last moment before the request leaves: a grant too old now is handed back, not called on. A store
        // failure here propagates (503; a ticket left claimed is ended by the claim sweep, never called on).
        // Judged by the window (and so the slack) of the upstream whose token it holds, not the first one's.
        const gate = await this.d.admission.beforeSend(ticket, {
          windowMs: grantWindowMs(config, ticket.upstream),
          grantSlackMs: config.grantSlackMs,
          ...(opts.sendCheck.calledAt !== undefined ? { calledAt: opts.sendCheck.calledAt } : {}),
          grantUncounted: call.grantUncounted,
          tokens: tokenNeed(config, ticket.upstream, ticket.tokens),
        });
        if (gate === 'lost') {
          await channel.fail(
            new UnavailableError('The grant expired before it could be used; retry.', 1_000, 'grant_lost'),
            headers,
          );
          return 'done';
        }
        if (gate !== 'send') return { requeued: gate };
      }
      let res: UpstreamResponse;
      try {
        res = await this.d.upstream.call({
          baseUrl: ctx.upstream.baseUrl,
          path: req.path,
          method: req.method,
          headers: forwardRequestHeaders(req.headers),
          ...(ctx.upstreamBody !== undefined ? { body: ctx.upstreamBody } : {}),
          ...(apiKey ? { apiKey } : {}),
          firstByteTimeoutMs: config.firstByteTimeoutMs,
          timeoutMs: config.requestTimeoutMs,
          signal: abort.signal,
        });
      } catch (err) {
        await this.noAnswer(call, err);
        return 'done';
      }
      const errorText = res.status >= 400 ? await readLimited(res.body, ERROR_BODY_LIMIT) : '';
      const kind = classifyUpstream(res.status, errorText);
      this.d.telemetry.upstream(kind, this.d.clock.now() - call.started);
      if (res.status < 400) return await this.relay(call, res);
      return await this.errorAnswer(call, res, kind, errorText);
    } finally {
      req.signal.removeEventListener('abort', onCancel);
      channel.cancelled.signal.removeEventListener('abort', onCancel);
    }
  }

  /** The call produced no response: the agent left, or the upstream was unreachable or too slow. */
  private async noAnswer(call: Call, err: unknown): Promise<void> {
    const e =
      err instanceof UpstreamCallError ? err : new UpstreamCallError('connection', (err as Error).message);
    this.d.telemetry.upstream(e.kind, this.d.clock.now() - call.started);
    if (e.kind === 'aborted') {
      await this.settle(call, 'gone_before_answer', { reason: 'client_disconnected' });
      return;
    }
    await call.ctx.channel.fail(
      e.kind === 'connection'
        ? new UpstreamError(502, `Upstream unreachable: ${e.message}`, 'upstream_connection')
        : new UpstreamError(504, `Upstream timed out: ${e.message}`, `upstream_${e.kind}`),
      call.headers,
    );
    await this.afterReply(call);
    await this.settle(call, 'failed', { reason: `upstream_${e.kind}` });
  }

  /** A 4xx / 5xx answer: requeue a 429 / capacity refusal while allowed, else end the ticket and tell the agent. */
  private async errorAnswer(
    call: Call,
    res: UpstreamResponse,
    kind: UpstreamOutcome,
    errorText: string,
  ): Promise<'done' | 'requeue'> {
    const { clock } = this.d;
    const { ctx, ticket, headers } = call;
    const { channel } = ctx;
    if (ticket && (kind === 'throttled' || kind === 'capacity')) {
      await this.count(call, kind);
      // Retry-After (or retry-after-ms, or an x-ratelimit-remaining-* at 0 until its reset): a hold on this upstream.
      const retryAfter = upstreamHoldMs((name) => res.headers.get(name), clock.now());
      if (retryAfter !== undefined && retryAfter > 0) await this.hold(ticket, retryAfter);
      // Nothing of the answer reached the agent yet (heartbeats are not answer bytes): try again later.
      if (ticket.attempt < ctx.config.maxRequeues) return 'requeue';
      await channel.fail(
        new RateLimitedError(
          kind === 'capacity'
            ? 'Upstream is at capacity (worker concurrency limit); retried and still refused.'
            : 'Upstream rate limited the request; retried and still refused.',
          retryAfter ?? 10_000,
          kind === 'capacity' ? 'upstream_capacity' : 'upstream_rate_limited',
        ),
        headers,
      );
      await this.afterReply(call);
      await this.end(call, kind, { reason: `upstream_${kind}`, upstreamStatus: res.status });
      return 'done';
    }
    // A 401 refuses the gateway's upstream key, not the agent's: the gateway's failure, not theirs.
    const keyRefused = res.status === 401;
    const failed = kind === 'upstream_error' || keyRefused;
    if (keyRefused) {
      this.d.log.error('upstream refused the gateway key', { status: res.status });
      await channel.fail(
        new UpstreamError(502, 'The upstream refused the gateway’s credentials.', 'upstream_auth_failed'),
        headers,
      );
    } else if (kind === 'upstream_error') {
      await channel.fail(
        new UpstreamError(
          502,
          `Upstream error ${res.status}: ${agentSafeErrorText(errorText)}`,
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
            `Upstream refused the request (${res.status}): ${agentSafeErrorText(errorText)}`,
            null,
            'upstream_client_error',
          ),
        ),
      );
      await channel.end();
    }
    await this.afterReply(call);
    await this.settle(call, failed ? 'failed' : 'refused_request', {
      reason: keyRefused ? 'upstream_auth' : failed ? 'upstream_5xx' : 'upstream_client_error',
      upstreamStatus: res.status,
    });
    return 'done';
  }

  /**
   * The bookkeeping (ticket end, counters) starts once the agent has the whole reply (IngressRequest.replied),
   * never alongside it. Only a reply this relay completed is waited for: one still open (the agent left) is not.
   */
  private async afterReply(call: Call): Promise<void> {
    if (call.ctx.channel.closed) await call.ctx.req.replied;
  }

  /** Holds the grants of the ticket's upstream for `ms` (at most HOLD_MAX_MS). */
  private async hold(ticket: Ticket, ms: number): Promise<void> {
    const { clock } = this.d;
    await (laneOf(ticket, this.d.lanes)?.bucket ?? this.d.bucket).hold(
      clock.now() + Math.min(ms, HOLD_MAX_MS),
    );
  }

  /**
   * An answer's own rate headers saying nothing is left (x-ratelimit-remaining-* at 0, a Retry-After): its upstream
   * is held until their reset. Nothing is read or written when they say nothing (NVIDIA sends none).
   */
  private async holdFromHeaders(ticket: Ticket | undefined, headers: Headers): Promise<void> {
    if (!ticket) return;
    const ms = upstreamHoldMs((name) => headers.get(name), this.d.clock.now());
    if (ms === undefined || ms <= 0) return;
    await this.hold(ticket, ms).catch((err: unknown) =>
      this.d.log.warn('upstream hold failed', { error: (err as Error).message }),
    );
  }

  /**
   * Tokens per minute: the grant's reservation (the ticket's estimate) corrected to the tokens its answer used, on
   * the upstream whose token it holds. Without usage the estimate stays. Best effort: a lost correction leaves
   * the (usually larger) estimate counted.
   */
  private async reconcileTokens(call: Call, usage: Usage | undefined): Promise<void> {
    const { ticket, ctx } = call;
    const actual = usage?.total_tokens;
    if (!ticket || ticket.tokens === undefined || ticket.grantedAt === undefined || actual === undefined)
      return;
    const limit = tokenLimitOf(ctx.config, ticket.upstream);
    if (!limit) return;
    await (laneOf(ticket, this.d.lanes)?.bucket ?? this.d.bucket)
      .reconcileTokens(ticket.grantedAt, ticket.tokens, actual, limit)
      .catch((err: unknown) =>
        this.d.log.warn('token reconciliation failed', { error: (err as Error).message }),
      );
  }

  /** Streams a 2xx answer through as it arrives, watching SSE for usage and embedded errors. */
  private async relay(call: Call, res: UpstreamResponse): Promise<'done'> {
    const { channel } = call.ctx;
    // Runs beside the answer (a read and a write only when the headers say the upstream has nothing left).
    const held = this.holdFromHeaders(call.ticket, res.headers);
    const out = { ...call.headers, ...passResponseHeaders(res.headers) };
    const isSse = (res.headers.get('content-type') ?? '').includes('text/event-stream');
    let failure: 'client_disconnected' | 'upstream_cut' | 'embedded_error' | undefined;
    const recordEnd = (usage: Usage | undefined) =>
      Promise.all([
        this.settle(
          call,
          failure === 'client_disconnected' ? 'disconnected' : failure ? 'failed' : 'answered',
          {
            ...(failure ? { reason: failure } : {}),
            upstreamStatus: res.status,
            ...(usage?.total_tokens !== undefined ? { totalTokens: usage.total_tokens } : {}),
          },
        ),
        this.reconcileTokens(call, usage),
        held,
      ]);
    if (!isSse) {
      // A JSON answer is small; reading it whole lets us extract usage and send a proper content-length.
      let text = '';
      try {
        text = await new Response(res.body).text();
      } catch (err) {
        failure = channel.cancelled.signal.aborted ? 'client_disconnected' : 'upstream_cut';
        this.d.log.warn('upstream body failed', { error: (err as Error).message });
      }
      const embedded = failure ? undefined : embeddedErrorFromBody(text);
      if (embedded !== undefined) failure = 'embedded_error';
      // The answer goes out first; the outcome is written once the agent has it, before the invocation ends (the
      // handler awaits this work, see IngressRequest.waitUntil and .replied): the agent never waits for it.
      const recorded = () => recordEnd(usageFromBody(text));
      if (embedded !== undefined) {
        // A 200 that carries an error is not an answer: the agent gets an OpenAI-shaped 502, the ticket fails.
        await channel.fail(
          new UpstreamError(
            502,
            `Upstream answered with an error: ${agentSafeErrorText(embedded)}`,
            'upstream_error',
          ),
          call.headers,
        );
      } else if (failure) {
        await channel.fail(
          new UpstreamError(502, 'Upstream connection broke during the answer.', 'upstream_cut'),
          call.headers,
        );
      } else {
        // Stored (a response cache miss) before the agent has it: the function may be frozen after that.
        await call.ctx.answerSink?.answer({ status: res.status, sse: false, text });
        if (!channel.committed) channel.finish({ status: res.status, headers: out, body: text });
        else {
          await channel.write(text);
          await channel.end();
        }
      }
      await this.afterReply(call);
      await recorded();
      return 'done';
    }
    channel.commit(res.status, out);
    const watcher = new SseWatcher();
    const reader = res.body?.getReader();
    // The response cache's miss keeps the stream's text (bounded) to store the answer it stands for.
    const sink = call.ctx.answerSink;
    let captured: Uint8Array[] | undefined = sink ? [] : undefined;
    let capturedBytes = 0;
    try {
      for (;;) {
        if (!reader) break;
        const { value, done } = await reader.read();
        if (done) break;
        watcher.push(value);
        if (sink && captured) {
          capturedBytes += value.byteLength;
          if (capturedBytes > sink.maxBytes) captured = undefined;
          else captured.push(value);
        }
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
    if (!failure && watcher.embeddedError) failure = 'embedded_error';
    if (failure === 'upstream_cut') {
      await channel.write(
        sseError(new UpstreamError(502, 'Upstream connection broke mid-stream.', 'upstream_cut')),
      );
    }
    // The stream ends first; the outcome is written once the agent has it, before the invocation ends (see
    // IngressRequest.waitUntil and .replied).
    await channel.end();
    await this.afterReply(call);
    await recordEnd(watcher.usage);
    // A whole stream is stored for the cache (and the misses waiting on it) after the agent has it.
    if (!failure && watcher.done && captured && sink)
      await sink.answer({ status: res.status, sse: true, text: Buffer.concat(captured).toString('utf8') });
    return 'done';
  }

  /** Counts the outcome and ends the ticket as the table says (independent writes, done together). */
  private async settle(call: Call, outcome: Outcome, patch: TicketPatch): Promise<void> {
    await Promise.all([this.count(call, outcome), this.end(call, outcome, patch)]);
  }

  /**
   * The outcome slot's counter, the upstream latency and the queue wait, with a fast-path grant not yet counted
   * (best effort: a lost count never fails the request).
   */
  private async count(call: Call, outcome: Outcome): Promise<void> {
    const { count } = OUTCOMES[outcome];
    const { ticket } = call;
    if (!ticket || (count === undefined && !call.grantUncounted)) return;
    const grant = call.grantUncounted;
    call.grantUncounted = false;
    const now = this.d.clock.now();
    // The wait before the grant that was called: once per call, however often the ticket was granted before.
    const queueWaitMs = grant ? 0 : Math.max(0, (ticket.grantedAt ?? ticket.enqueuedAt) - ticket.enqueuedAt);
    await (laneOf(ticket, this.d.lanes)?.outcomes ?? this.d.outcomes)
      .record(now, {
        counts: { ...(count !== undefined ? { [count]: 1 } : {}), ...(grant ? { granted: 1 } : {}) },
        latencies: [
          ...(count !== undefined
            ? [{ name: 'upstream' as const, priority: ticket.priority, ms: now - call.started }]
            : []),
          { name: 'queueWait' as const, priority: ticket.priority, ms: queueWaitMs },
        ],
      })
      .catch(() => undefined);
  }

  /** The ticket's terminal state (and the agent's usage). */
  private async end(call: Call, outcome: Outcome, patch: TicketPatch): Promise<void> {
    if (!call.ticket) return;
    await this.d.admission.finish(call.ticket, OUTCOMES[outcome].end, patch);
  }
}
