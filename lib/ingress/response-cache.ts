// Ingress: the response cache in front of admission — a hit answers with no ticket, token or upstream call; the
// first miss of a key fetches and stores, identical misses meanwhile wait for its answer (coalesced).
import type { Clock } from '../domain/clock.js';
import { StoreUnavailableError } from '../domain/errors.js';
import type { CounterName } from '../domain/outcomes.js';
import type { CacheEntry, OutcomeStore, ResponseCacheStore } from '../domain/ports.js';
import { priorityRank } from '../domain/priority.js';
import {
  ageSeconds,
  answerAsSse,
  answerTokens,
  assembleStreamedAnswer,
  type CachedAnswer,
  cacheKey,
  cachePolicy,
  parseCacheHeader,
  wantsStreamUsage,
} from '../domain/response-cache.js';
import type { HttpReply } from '../http/reply.js';
import type { AnswerSink, RequestContext } from './context.js';

/** Cache events the function layer turns into EMF metrics. */
export type CacheEvent = 'hit' | 'miss' | 'coalesced' | 'stored' | 'too_large' | 'unavailable';

export interface ResponseCacheDeps {
  store: ResponseCacheStore;
  clock: Clock;
  /** The outcome slots `/status` reads (hits, misses, bytes and tokens saved). */
  outcomes: Pick<OutcomeStore, 'record'>;
  telemetry?: { cache(event: CacheEvent, bytes?: number): void };
  log: { warn(msg: string, extra?: Record<string, unknown>): void };
}

/** What the request may be served from: whose answer is looked up, and how long the request may wait for it. */
export interface CacheLookup {
  agent: string;
  /** The agent key's own default TTL (s), if any. */
  keyTtlS: number | undefined;
  body: Record<string, unknown> | undefined;
  /** The model after routing. */
  model: string;
  /** Latest time an identical miss in progress is waited for; after it this request goes its own way. */
  waitUntil: number;
  /** How long this request's pending mark holds if it becomes the fetching one (its wait and call). */
  holdUntil: number;
}

export type CacheFront =
  /** Served from the cache: nothing else to do. */
  | { kind: 'hit'; reply: HttpReply }
  /** This request fetches the answer: pass `sink` to the relay, call `done()` when the request ended. */
  | { kind: 'miss'; sink: AnswerSink; done: () => Promise<void> }
  /** Not cached (not opted in, or the cache could not be used): the usual path, marked when it opted in. */
  | { kind: 'bypass' };

/** Pauses between reads of an entry another request is fetching. */
const WAIT_MIN_MS = 50;
const WAIT_MAX_MS = 1_000;
/** Longest SSE text captured from a streamed miss (the stored answer is assembled from it). */
const MAX_CAPTURE_BYTES = 4 * 1024 * 1024;

export class ResponseCache {
  constructor(private readonly d: ResponseCacheDeps) {}

  /**
   * Looks the request up: a live answer is a hit; a key another request is fetching is waited for (coalesced);
   * otherwise this request marks the key pending and fetches it. A store failure never fails the request: it is
   * served uncached.
   * @throws ValidationError (400 `invalid_cache_ttl`) for a bad X-Sluice-Cache header, before anything is read
   */
  async front(ctx: RequestContext, lookup: CacheLookup): Promise<CacheFront> {
    const headerTtlS = parseCacheHeader(ctx.req.headers['x-sluice-cache']);
    const decision = cachePolicy({
      headerTtlS,
      keyTtlS: lookup.keyTtlS,
      configTtlS: ctx.config.cacheTtlMs / 1000,
      body: lookup.body,
    });
    if (!decision.cache || !lookup.body) return { kind: 'bypass' };
    const key = cacheKey({
      scope: ctx.config.cacheScope,
      agent: lookup.agent,
      upstream: ctx.upstream.name,
      path: ctx.req.path,
      model: lookup.model,
      body: lookup.body,
    });
    const owner = ctx.req.requestId;
    const rank = priorityRank(ctx.priority);
    const { store, clock } = this.d;
    const signal = AbortSignal.any([ctx.req.signal, ctx.channel.cancelled.signal]);
    /** Whether this request holds the key's mark (else it fetches unmarked: it stores, nobody waits on it). */
    let marked = true;
    try {
      let entry: CacheEntry | undefined = await store.get(key);
      let pause = WAIT_MIN_MS;
      let waited = false;
      for (;;) {
        const now = clock.now();
        if (entry?.kind === 'answer' && entry.expiresAt > now) {
          const reply = await this.hit(ctx, lookup.body, entry, now);
          // An answer that cannot be replayed as asked (a stream of an embedding) is fetched the usual way.
          return reply ? { kind: 'hit', reply } : this.bypass(ctx);
        }
        if (entry?.kind === 'pending' && entry.until > now && entry.owner !== owner) {
          // A less important request's fetch waits its turn in the queue: never wait behind it (a priority
          // inversion); fetch at this priority and store the answer for everyone.
          if (entry.rank > rank) {
            marked = false;
            break;
          }
          if (now >= lookup.waitUntil || signal.aborted) return this.bypass(ctx);
          if (!waited) this.d.telemetry?.cache('coalesced');
          waited = true;
          await clock.sleep(Math.min(pause, lookup.waitUntil - now), signal);
          pause = Math.min(WAIT_MAX_MS, pause * 1.5);
          entry = await store.get(key);
          continue;
        }
        const claim = await store.claim(key, owner, lookup.holdUntil, now, rank);
        if (claim === true) break;
        // Another request marked it first (or stored an answer) meanwhile: judge what it holds.
        entry = claim;
      }
    } catch (err) {
      if (!(err instanceof StoreUnavailableError)) throw err;
      this.d.log.warn('response cache unavailable; serving uncached', { error: err.message });
      this.d.telemetry?.cache('unavailable');
      return this.bypass(ctx);
    }
    ctx.headers['x-sluice-cache'] = 'miss';
    await this.count({ cacheMiss: 1 });
    this.d.telemetry?.cache('miss');
    let stored = false;
    const sink: AnswerSink = {
      maxBytes: MAX_CAPTURE_BYTES,
      answer: async ({ status, sse, text }) => {
        if (status !== 200) return;
        const body = sse ? assembleStreamedAnswer(text) : text;
        if (body === undefined) return;
        const now = clock.now();
        const answer: CachedAnswer = {
          body,
          storedAt: now,
          expiresAt: now + decision.ttlS * 1000,
          tokens: answerTokens(body),
        };
        try {
          const res = await store.put(key, answer);
          stored = res === 'stored';
          this.d.telemetry?.cache(res, Buffer.byteLength(body));
        } catch (err) {
          // The agent's answer is good whatever happens to its copy: never fail the request for the cache.
          this.d.log.warn('storing a cached answer failed', { error: (err as Error).message });
        }
      },
    };
    const done = async () => {
      // No answer stored (an error, a cut stream, a refusal): waiters stop waiting and fetch it themselves.
      if (!stored && marked) await store.release(key, owner, clock.now()).catch(() => undefined);
    };
    return { kind: 'miss', sink, done };
  }

  private bypass(ctx: RequestContext): CacheFront {
    ctx.headers['x-sluice-cache'] = 'bypass';
    return { kind: 'bypass' };
  }

  /** The stored answer as the agent asked for it (JSON, or SSE chunks ending with [DONE]), counted as saved. */
  private async hit(
    ctx: RequestContext,
    body: Record<string, unknown>,
    entry: Extract<CacheEntry, { kind: 'answer' }>,
    now: number,
  ): Promise<HttpReply | undefined> {
    const text = ctx.stream ? answerAsSse(entry.body, wantsStreamUsage(body)) : entry.body;
    if (text === undefined) return undefined;
    const bytes = Buffer.byteLength(text);
    await this.count({ cacheHit: 1, cacheBytesSaved: bytes, cacheTokensSaved: entry.tokens });
    this.d.telemetry?.cache('hit', bytes);
    return {
      status: 200,
      headers: {
        ...ctx.headers,
        'content-type': ctx.stream ? 'text/event-stream' : 'application/json',
        ...(ctx.stream ? { 'cache-control': 'no-cache' } : {}),
        'x-sluice-cache': 'hit',
        age: String(ageSeconds(entry, now)),
      },
      body: text,
    };
  }

  /** Best effort: a lost count never fails a request. */
  private async count(counts: Partial<Record<CounterName, number>>): Promise<void> {
    await this.d.outcomes.record(this.d.clock.now(), { counts }).catch(() => undefined);
  }
}
