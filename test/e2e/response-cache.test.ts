// End to end (local runtime, emulators, fake upstream): the response cache — hits spend no token and make no
// upstream call (JSON and SSE), identical misses coalesce, scopes isolate, DELETE /admin/cache empties it.
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LocalSystem } from '../../local/runtime.js';
import { ADMIN_TOKEN, call, startStatusSystem } from '../status/support.js';
import { allTickets, auditTickets } from '../support/system.js';

const MODEL = 'meta/llama-3.1-8b-instruct';
let system: LocalSystem;
let keyA: string;
let keyB: string;

beforeAll(async () => {
  system = await startStatusSystem('e2e-cache', {
    // A call lasts about a second: identical requests sent together arrive while the first is still running.
    fakeUpstream: { tokenDelayMs: 80, firstByteDelayMs: 20, limit: null },
    env: { SLUICE_UPSTREAM_LIMIT: '600', SLUICE_BUCKET_BURST: '5' },
  });
  keyA = await system.createKey('cache-agent-a', 'urgent');
  keyB = await system.createKey('cache-agent-b', 'urgent');
});

afterAll(async () => {
  const audit = await auditTickets(system);
  expect(audit.stuck).toEqual([]);
  expect(audit.open).toEqual([]);
  await system?.stop();
});

const chat = (content: string, extra: Record<string, unknown> = {}) =>
  JSON.stringify({ model: MODEL, messages: [{ role: 'user', content }], ...extra });

const post = (body: string, headers: Record<string, string> = {}, key = keyA) =>
  fetch(`${system.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json', ...headers },
    body,
  });

const upstreamCalls = () => system.upstream!.calls.filter((c) => c.kind === 'ok').length;
const ticketCount = async () => (await allTickets(system)).length;
const contentOf = (text: string) =>
  (JSON.parse(text) as { choices: { message: { content: string } }[] }).choices[0]!.message.content;

/** Config through the admin API; the ingress sees it after its config cache (2 s). */
const patchConfig = async (patch: Record<string, unknown>) => {
  const res = await call(system, 'PATCH', '/admin/config', { token: ADMIN_TOKEN, body: patch });
  expect(res.status).toBe(200);
  await new Promise((r) => setTimeout(r, 2_500));
};

describe('response cache', () => {
  it('a hit is answered with no ticket, no token and no upstream call (JSON)', async () => {
    const miss = await post(chat('cache json'), { 'x-sluice-cache': '60' });
    expect(miss.status).toBe(200);
    expect(miss.headers.get('x-sluice-cache')).toBe('miss');
    const first = await miss.text();
    const [calls, tickets, tat] = [
      upstreamCalls(),
      await ticketCount(),
      (await system.stores.bucket.refresh())?.tat,
    ];

    const hit = await post(chat('cache json'), { 'x-sluice-cache': '60' });
    expect(hit.status).toBe(200);
    expect(hit.headers.get('x-sluice-cache')).toBe('hit');
    expect(hit.headers.get('age')).toMatch(/^\d+$/);
    expect(hit.headers.get('content-type')).toContain('application/json');
    expect(await hit.text()).toBe(first);
    expect(upstreamCalls()).toBe(calls);
    expect(await ticketCount()).toBe(tickets);
    expect((await system.stores.bucket.refresh())?.tat).toBe(tat);
  });

  it('a streamed miss is stored and replayed as JSON and as SSE, with no upstream call', async () => {
    const client = new OpenAI({
      baseURL: `${system.url}/v1`,
      apiKey: keyA,
      maxRetries: 0,
      defaultHeaders: { 'x-sluice-cache': '60' },
    });
    const messages = [{ role: 'user' as const, content: 'cache stream' }];
    const streamed = await client.chat.completions
      .create({ model: MODEL, messages, stream: true, stream_options: { include_usage: true } })
      .withResponse();
    expect(streamed.response.headers.get('x-sluice-cache')).toBe('miss');
    let text = '';
    let usage: unknown;
    for await (const chunk of streamed.data) {
      text += chunk.choices[0]?.delta.content ?? '';
      if (chunk.usage) usage = chunk.usage;
    }
    expect(text).toMatch(/^tok0 tok1/);
    const [calls, tickets] = [upstreamCalls(), await ticketCount()];

    // The same request without streaming: the answer assembled from the chunks.
    const json = await client.chat.completions.create({ model: MODEL, messages }).withResponse();
    expect(json.response.headers.get('x-sluice-cache')).toBe('hit');
    expect(json.data.object).toBe('chat.completion');
    expect(json.data.choices[0]?.message.content).toBe(text);
    expect(json.data.usage).toEqual(usage);

    // Streaming again: SSE chunks from the stored answer, usage as asked, ending with [DONE].
    const again = await client.chat.completions
      .create({ model: MODEL, messages, stream: true, stream_options: { include_usage: true } })
      .withResponse();
    expect(again.response.headers.get('x-sluice-cache')).toBe('hit');
    expect(again.response.headers.get('content-type')).toContain('text/event-stream');
    let replayed = '';
    let replayedUsage: unknown;
    for await (const chunk of again.data) {
      expect(chunk.object).toBe('chat.completion.chunk');
      replayed += chunk.choices[0]?.delta.content ?? '';
      if (chunk.usage) replayedUsage = chunk.usage;
    }
    expect(replayed).toBe(text);
    expect(replayedUsage).toEqual(usage);
    const raw = await (await post(chat('cache stream', { stream: true }), { 'x-sluice-cache': '60' })).text();
    expect(raw.endsWith('data: [DONE]\n\n')).toBe(true);
    expect(raw).not.toContain('"usage"');

    expect(upstreamCalls()).toBe(calls);
    expect(await ticketCount()).toBe(tickets);
  });

  it('identical misses at once make one upstream call; the others wait for its answer', async () => {
    const calls = upstreamCalls();
    const replies = await Promise.all(
      Array.from({ length: 5 }, () => post(chat('cache coalesce'), { 'x-sluice-cache': '60' })),
    );
    const bodies = await Promise.all(replies.map((r) => r.text()));
    expect(replies.map((r) => r.status)).toEqual([200, 200, 200, 200, 200]);
    expect(replies.map((r) => r.headers.get('x-sluice-cache')).sort()).toEqual([
      'hit',
      'hit',
      'hit',
      'hit',
      'miss',
    ]);
    expect(new Set(bodies.map(contentOf)).size).toBe(1);
    expect(upstreamCalls()).toBe(calls + 1);
  });

  it('refuses a bad X-Sluice-Cache with a 400 and changes nothing', async () => {
    const [calls, tickets] = [upstreamCalls(), await ticketCount()];
    for (const header of ['-5', '1.5', 'soon', '86401']) {
      const res = await post(chat('cache bad header'), { 'x-sluice-cache': header });
      expect(res.status).toBe(400);
      expect(((await res.json()) as { error: { code: string } }).error.code).toBe('invalid_cache_ttl');
    }
    expect(upstreamCalls()).toBe(calls);
    expect(await ticketCount()).toBe(tickets);
  });

  it('a config default caches plain requests but not sampled ones; the header opts those in', async () => {
    await patchConfig({ cache_ttl_s: 60 });
    try {
      const calls = upstreamCalls();
      expect((await post(chat('cache default'))).headers.get('x-sluice-cache')).toBe('miss');
      expect((await post(chat('cache default'))).headers.get('x-sluice-cache')).toBe('hit');
      const sampled = chat('cache default', { temperature: 0.7 });
      const s1 = await post(sampled);
      await s1.text();
      expect(s1.headers.get('x-sluice-cache')).toBeNull();
      await (await post(sampled)).text();
      expect(upstreamCalls()).toBe(calls + 3);
      expect((await post(sampled, { 'x-sluice-cache': '60' })).headers.get('x-sluice-cache')).toBe('miss');
      expect((await post(sampled, { 'x-sluice-cache': '60' })).headers.get('x-sluice-cache')).toBe('hit');
      expect(upstreamCalls()).toBe(calls + 4);
    } finally {
      await patchConfig({ cache_ttl_s: 0 });
    }
  });

  it("an agent key's own cache_ttl_s opts its requests in without the header", async () => {
    const keyC = await system.createKey('cache-agent-c', 'urgent', {}, { ttlS: 60 });
    const calls = upstreamCalls();
    const first = await post(chat('cache key default'), {}, keyC);
    await first.text();
    expect(first.headers.get('x-sluice-cache')).toBe('miss');
    expect((await post(chat('cache key default'), {}, keyC)).headers.get('x-sluice-cache')).toBe('hit');
    // Agent A has no default of its own and the config's is off: not cached for it.
    expect((await post(chat('cache key default 2'), {}, keyA)).headers.get('x-sluice-cache')).toBeNull();
    expect(upstreamCalls()).toBe(calls + 2);
  });

  it('agents share entries by default; cache_scope agent isolates them', async () => {
    const shared = await post(chat('cache shared'), { 'x-sluice-cache': '60' }, keyA);
    await shared.text();
    expect(
      (await post(chat('cache shared'), { 'x-sluice-cache': '60' }, keyB)).headers.get('x-sluice-cache'),
    ).toBe('hit');
    await patchConfig({ cache_scope: 'agent' });
    try {
      const calls = upstreamCalls();
      const a = await post(chat('cache scoped'), { 'x-sluice-cache': '60' }, keyA);
      await a.text();
      expect(a.headers.get('x-sluice-cache')).toBe('miss');
      expect(
        (await post(chat('cache scoped'), { 'x-sluice-cache': '60' }, keyA)).headers.get('x-sluice-cache'),
      ).toBe('hit');
      const b = await post(chat('cache scoped'), { 'x-sluice-cache': '60' }, keyB);
      await b.text();
      expect(b.headers.get('x-sluice-cache')).toBe('miss');
      // The deployment-wide entry is not readable from an agent's scope either.
      const old = await post(chat('cache shared'), { 'x-sluice-cache': '60' }, keyB);
      await old.text();
      expect(old.headers.get('x-sluice-cache')).toBe('miss');
      expect(upstreamCalls()).toBe(calls + 3);
    } finally {
      await patchConfig({ cache_scope: 'deployment' });
    }
  });

  it('shows hits, misses, bytes and tokens saved on /status', async () => {
    const res = await call<{ cache: Record<string, number> }>(system, 'GET', '/status', {
      token: ADMIN_TOKEN,
    });
    expect(res.status).toBe(200);
    expect(res.json.cache.hits).toBeGreaterThanOrEqual(8);
    expect(res.json.cache.misses).toBeGreaterThanOrEqual(6);
    expect(res.json.cache.bytesSaved).toBeGreaterThan(0);
    expect(res.json.cache.tokensSaved).toBeGreaterThan(0);
  });

  it('DELETE /admin/cache (admin only) empties it', async () => {
    expect((await call(system, 'DELETE', '/admin/cache', { token: keyA })).status).toBe(403);
    const purged = await call<{ deleted: number }>(system, 'DELETE', '/admin/cache', { token: ADMIN_TOKEN });
    expect(purged.status).toBe(200);
    expect(purged.json.deleted).toBeGreaterThanOrEqual(5);
    const calls = upstreamCalls();
    const again = await post(chat('cache json'), { 'x-sluice-cache': '60' });
    await again.text();
    expect(again.headers.get('x-sluice-cache')).toBe('miss');
    expect(upstreamCalls()).toBe(calls + 1);
  });
});
