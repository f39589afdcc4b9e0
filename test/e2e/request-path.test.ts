// End to end through the local runtime with the official openai client: the request path as an agent meets it.
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hashKey } from '../../lib/domain/auth.js';
import type { LocalSystem } from '../../local/runtime.js';
import { auditTickets, startTestSystem } from '../support/system.js';

let system: LocalSystem;
let key: string;
let client: OpenAI;
let queuedRequests = 0;

beforeAll(async () => {
  system = await startTestSystem('e2e-path', {
    fakeUpstream: { tokenDelayMs: 40, firstByteDelayMs: 20, limit: null },
    env: { SLUICE_UPSTREAM_LIMIT: '600', SLUICE_PASSTHROUGH: 'false', SLUICE_BUCKET_BURST: '5' },
  });
  key = await system.createKey('e2e-agent', 'urgent');
  client = new OpenAI({ baseURL: `${system.url}/v1`, apiKey: key, maxRetries: 0 });
});

afterAll(async () => {
  // Every queued request ended in exactly one terminal state; none is left waiting.
  const audit = await auditTickets(system);
  expect(audit.stuck).toEqual([]);
  expect(audit.open).toEqual([]);
  expect(audit.total).toBe(queuedRequests);
  await system?.stop();
});

const post = (path: string, body: string, headers: Record<string, string> = {}) =>
  fetch(`${system.url}${path}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json', ...headers },
    body,
  });

describe('the request path with the openai client', () => {
  it('answers a non-streaming chat completion through the queue', async () => {
    queuedRequests++;
    const res = await client.chat.completions
      .create({ model: 'meta/llama-3.1-8b-instruct', messages: [{ role: 'user', content: 'hi' }] })
      .withResponse();
    expect(res.data.choices[0]?.message.content).toMatch(/^tok0 tok1/);
    expect(res.data.usage?.total_tokens).toBeGreaterThan(0);
    expect(res.response.headers.get('x-request-id')).toBeTruthy();
    expect(res.response.headers.get('x-ratelimit-limit-requests')).toBe('600');
    expect(res.response.headers.get('x-sluice-queue-ms')).toMatch(/^\d+$/);
    // The agent's key never reaches the upstream; the configured upstream key does.
    const call = system.upstream!.calls.at(-1)!;
    expect(call.headers.authorization).toBe('Bearer nvapi-local-simulated');
  });

  it('honours a reserve_fraction change in the rate headers (live config, not frozen at cold start)', async () => {
    queuedRequests += 1;
    // Burst 5: LOW may spend 5 × (1 − reserve_fraction) of it; the default 0.5 leaves it at most 2.
    await system.stores.config.update({ reserve_fraction: 0 }, 'test');
    try {
      // Past the ingress's config cache (2 s), and the bucket refilled.
      await new Promise((r) => setTimeout(r, 2_500));
      const res = await post(
        '/v1/chat/completions',
        JSON.stringify({ model: 'meta/llama-3.1-8b-instruct', messages: [{ role: 'user', content: 'hi' }] }),
        { 'x-priority': 'low' },
      );
      expect(res.status).toBe(200);
      await res.text();
      expect(Number(res.headers.get('x-ratelimit-remaining-requests'))).toBeGreaterThanOrEqual(3);
    } finally {
      await system.stores.config.update({ reserve_fraction: 0.5 }, 'test');
    }
  });

  it('streams tokens incrementally, not in one chunk', async () => {
    queuedRequests++;
    const stream = await client.chat.completions.create({
      model: 'nvidia/meta/llama-3.1-8b-instruct',
      messages: [{ role: 'user', content: 'stream please' }],
      stream: true,
    });
    const arrivals: number[] = [];
    let text = '';
    for await (const chunk of stream) {
      arrivals.push(Date.now());
      text += chunk.choices[0]?.delta?.content ?? '';
    }
    expect(text).toMatch(/^tok0 tok1 .* tok11$/);
    expect(arrivals.length).toBeGreaterThanOrEqual(12);
    // 40 ms between upstream tokens: the chunks must not all arrive at once.
    expect(arrivals.at(-1)! - arrivals[0]!).toBeGreaterThan(200);
    // The gateway prefix was stripped before the upstream call.
    expect(system.upstream!.calls.at(-1)!.model).toBe('meta/llama-3.1-8b-instruct');
  });

  it('serves embeddings and models', async () => {
    queuedRequests += 2;
    const emb = await client.embeddings.create({ model: 'nvidia/nv-embedqa-e5-v5', input: ['a', 'b'] });
    expect(emb.data).toHaveLength(2);
    const models = await client.models.list();
    expect(models.data.map((m) => m.id)).toContain('meta/llama-3.1-8b-instruct');
    // A second list within the cache time is served without another ticket.
    const again = await fetch(`${system.url}/v1/models`, { headers: { authorization: `Bearer ${key}` } });
    expect(again.headers.get('x-sluice-cache')).toBe('hit');
  });

  it.each([
    ['no key', undefined, 401, 'invalid_api_key'],
    ['malformed key', 'Bearer nope', 401, 'invalid_api_key'],
    ['unknown key', `Bearer sk-sluice-${'A'.repeat(43)}`, 401, 'invalid_api_key'],
  ])('refuses %s with an OpenAI-shaped 401', async (_name, auth, status, code) => {
    const res = await fetch(`${system.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...(auth ? { authorization: auth } : {}) },
      body: JSON.stringify({ model: 'meta/llama-3.1-8b-instruct', messages: [] }),
    });
    expect(res.status).toBe(status);
    const body = (await res.json()) as {
      error: { code: string; type: string; message: string; param: unknown };
    };
    expect(body.error).toMatchObject({ code, type: 'authentication_error', param: null });
  });

  it('refuses a disabled key with 403, through the openai client', async () => {
    const disabled = await system.createKey('disabled-agent', 'normal');
    await system.stores.keys.setEnabled(hashKey(disabled), false);
    const c = new OpenAI({ baseURL: `${system.url}/v1`, apiKey: disabled, maxRetries: 0 });
    await expect(
      c.chat.completions.create({ model: 'meta/llama-3.1-8b-instruct', messages: [] }),
    ).rejects.toMatchObject({
      status: 403,
      code: 'key_disabled',
    });
  });

  it.each([
    [
      'bad priority',
      JSON.stringify({ model: 'meta/x', messages: [] }),
      { 'x-priority': 'asap' },
      'invalid_priority',
    ],
    ['malformed JSON', '{"model": "meta/x",', {}, 'invalid_json'],
    ['empty body', '', {}, 'empty_body'],
    ['missing model', JSON.stringify({ messages: [] }), {}, 'invalid_model'],
    ['stream not a boolean', JSON.stringify({ model: 'meta/x', stream: 'yes' }), {}, 'invalid_type'],
    [
      'unknown model, passthrough off',
      JSON.stringify({ model: 'acme/unknown', messages: [] }),
      {},
      'model_not_found',
    ],
    [
      'wrong content type',
      JSON.stringify({ model: 'meta/x' }),
      { 'content-type': 'text/plain' },
      'invalid_content_type',
    ],
  ])('refuses %s with a 400 and queues nothing', async (_name, body, headers, code) => {
    const before = system.upstream!.calls.length;
    const res = await post('/v1/chat/completions', body, headers);
    expect(res.status).toBe(400);
    const json = (await res.json()) as { error: { code: string; type: string } };
    expect(json.error).toMatchObject({ code, type: 'invalid_request_error' });
    expect(system.upstream!.calls.length).toBe(before);
  });

  it('caps the priority at the key maximum and says so', async () => {
    queuedRequests++;
    const low = await system.createKey('low-agent', 'low');
    const res = await fetch(`${system.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${low}`, 'content-type': 'application/json', 'x-priority': 'URGENT' },
      body: JSON.stringify({
        model: 'meta/llama-3.1-8b-instruct',
        messages: [{ role: 'user', content: 'x' }],
      }),
    });
    expect(res.status).toBe(200);
    expect(res.headers.get('x-sluice-priority')).toBe('low');
    expect(res.headers.get('x-sluice-priority-capped')).toBe('urgent->low');
    await res.text();
  });

  it('answers unknown paths outside /v1 with an OpenAI-shaped 404', async () => {
    const res = await fetch(`${system.url}/nope`, { headers: { authorization: `Bearer ${key}` } });
    expect(res.status).toBe(404);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe('not_found');
  });
});
