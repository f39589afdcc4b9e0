// Ingress response cache on the memory store and a fake clock: hits, misses, coalesced waits and their endings.
import { describe, expect, it } from 'vitest';
import { MemoryResponseCache } from '../../lib/adapters/memory/response-cache.js';
import { MemoryOutcomeStore } from '../../lib/adapters/memory/stores.js';
import { FakeClock } from '../../lib/domain/clock.js';
import { StoreUnavailableError } from '../../lib/domain/errors.js';
import type { Priority } from '../../lib/domain/priority.js';
import { type CacheFront, ResponseCache } from '../../lib/ingress/response-cache.js';
import { requestContext } from '../support/request-context.js';

const BODY = { model: 'meta/llama', messages: [{ role: 'user', content: 'hi' }] };
const ANSWER = JSON.stringify({
  id: 'c1',
  object: 'chat.completion',
  created: 1,
  model: 'meta/llama',
  choices: [{ index: 0, message: { role: 'assistant', content: 'hello' }, finish_reason: 'stop' }],
  usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 },
});

const setup = () => {
  const clock = new FakeClock();
  const store = new MemoryResponseCache();
  const outcomes = new MemoryOutcomeStore();
  const cache = new ResponseCache({ store, clock, outcomes, log: { warn: () => {} } });
  const ctx = (requestId: string, stream = false, priority: Priority = 'normal') =>
    requestContext({
      req: {
        requestId,
        headers: { 'x-sluice-cache': '60' },
        body: JSON.stringify(BODY),
        remainingMs: 900_000,
      },
      priority,
      upstream: { name: 'limited', baseUrl: 'http://upstream', limited: true },
      upstreamBody: JSON.stringify(BODY),
      stream,
    });
  const lookup = () => ({
    agent: 'a',
    keyTtlS: undefined,
    body: BODY,
    model: 'meta/llama',
    waitUntil: clock.now() + 10_000,
    holdUntil: clock.now() + 60_000,
  });
  return { clock, store, outcomes, cache, ctx, lookup };
};

const miss = (f: CacheFront) => {
  if (f.kind !== 'miss') throw new Error(`expected a miss, got ${f.kind}`);
  return f;
};

describe('ResponseCache.front', () => {
  it('a miss stores its 200 answer; the next request is a hit with its age, as JSON and as SSE', async () => {
    const { clock, cache, ctx, lookup, outcomes } = setup();
    const first = ctx('r1');
    const m = miss(await cache.front(first, lookup()));
    expect(first.headers['x-sluice-cache']).toBe('miss');
    await m.sink.answer({ status: 200, sse: false, text: ANSWER });
    await m.done();
    clock.advance(5_000);
    const hit = await cache.front(ctx('r2'), lookup());
    expect(hit.kind === 'hit' && hit.reply).toMatchObject({
      status: 200,
      headers: { 'x-sluice-cache': 'hit', age: '5', 'content-type': 'application/json' },
      body: ANSWER,
    });
    const sse = await cache.front(ctx('r3', true), lookup());
    expect(sse.kind === 'hit' && String(sse.reply.body).endsWith('data: [DONE]\n\n')).toBe(true);
    const [slot] = await outcomes.read(0, clock.now());
    expect(slot?.counts).toMatchObject({ cacheHit: 2, cacheMiss: 1, cacheTokensSaved: 4 });
  });

  it.each([
    ['an error status', { status: 500, sse: false, text: '{}' }],
    ['a stream cut short', { status: 200, sse: true, text: 'data: {"id":"x","choices":[]}\n\n' }],
  ])('stores nothing for %s and releases the key', async (_name, answer) => {
    const { cache, ctx, lookup, store } = setup();
    const m = miss(await cache.front(ctx('r1'), lookup()));
    await m.sink.answer(answer);
    await m.done();
    expect([...store.entries.values()].map((e) => e.kind)).toEqual(['pending']);
    // Released: another request takes the key over at once.
    expect((await cache.front(ctx('r2'), lookup())).kind).toBe('miss');
  });

  it.each<[string, (s: ReturnType<typeof setup>, key: string, polls: number) => Promise<void>, string]>([
    [
      'the answer is stored: a hit',
      async (s, key, polls) => {
        if (polls === 3)
          await s.store.put(key, {
            body: ANSWER,
            storedAt: 0,
            expiresAt: Number.MAX_SAFE_INTEGER,
            tokens: 2,
          });
      },
      'hit',
    ],
    [
      'the holder released its mark: this request fetches',
      async (s, key, polls) => {
        if (polls === 3) await s.store.release(key, 'r1', s.clock.now());
      },
      'miss',
    ],
    ['the holder never ends: it goes its own way after its wait', async () => {}, 'bypass'],
  ])('an identical request waits while another fetches; %s', async (_name, during, expected) => {
    const s = setup();
    miss(await s.cache.front(s.ctx('r1'), s.lookup()));
    const [key] = [...s.store.entries.keys()];
    let polls = 0;
    const get = s.store.get.bind(s.store);
    s.store.get = async (k) => {
      await during(s, key!, ++polls);
      return get(k);
    };
    const waiter = s.ctx('r2');
    const started = s.clock.now();
    const front = await s.cache.front(waiter, s.lookup());
    expect(front.kind === 'bypass' ? waiter.headers['x-sluice-cache'] : front.kind).toBe(expected);
    // Waited on a fake clock: backing off, never past its own limit.
    expect(s.clock.now() - started).toBeLessThanOrEqual(10_000);
    if (expected === 'bypass') expect(polls).toBeLessThan(30);
  });

  it('a more important request never waits behind a less important fetch: it fetches and stores for all', async () => {
    const s = setup();
    const low = miss(await s.cache.front(s.ctx('low', false, 'low'), s.lookup()));
    const started = s.clock.now();
    const urgent = miss(await s.cache.front(s.ctx('urgent', false, 'urgent'), s.lookup()));
    expect(s.clock.now()).toBe(started);
    await urgent.sink.answer({ status: 200, sse: false, text: ANSWER });
    await urgent.done();
    // A request as important as the holder (or less) still coalesces: here onto the stored answer.
    expect((await s.cache.front(s.ctx('low2', false, 'low'), s.lookup())).kind).toBe('hit');
    // The holder ending without an answer releases nothing that is not its own.
    await low.done();
    expect((await s.cache.front(s.ctx('low3', false, 'low'), s.lookup())).kind).toBe('hit');
  });

  it('an answer the store refuses (any error) still reaches the agent: the sink never throws', async () => {
    const { cache, ctx, lookup, store } = setup();
    const m = miss(await cache.front(ctx('r1'), lookup()));
    store.put = async () => {
      throw new Error('ValidationException: Item size has exceeded the maximum allowed size');
    };
    await expect(m.sink.answer({ status: 200, sse: false, text: ANSWER })).resolves.toBeUndefined();
    await m.done();
    expect((await cache.front(ctx('r2'), lookup())).kind).toBe('miss');
  });

  it('a store failure serves the request uncached', async () => {
    const { cache, ctx, lookup, store } = setup();
    store.get = async () => {
      throw new StoreUnavailableError('down');
    };
    const c = ctx('r1');
    expect((await cache.front(c, lookup())).kind).toBe('bypass');
    expect(c.headers['x-sluice-cache']).toBe('bypass');
  });

  it('a request that did not opt in is not looked up', async () => {
    const { cache, ctx, lookup, store } = setup();
    const c = ctx('r1');
    c.req.headers = {};
    expect((await cache.front(c, lookup())).kind).toBe('bypass');
    expect(c.headers['x-sluice-cache']).toBeUndefined();
    expect(store.entries.size).toBe(0);
  });
});
