import OpenAI from 'openai';
import { afterEach, describe, expect, it } from 'vitest';
import {
  type FakeUpstream,
  type FakeUpstreamOptions,
  fakeReplyText,
  RATE_LIMIT_BODY,
  startFakeUpstream,
} from '../../local/fake-upstream.js';

const started: FakeUpstream[] = [];
afterEach(async () => {
  await Promise.all(started.splice(0).map((u) => u.stop()));
});

/** Fast defaults so the suite stays well under a second of simulated latency. */
async function start(opts: FakeUpstreamOptions = {}): Promise<FakeUpstream> {
  const u = await startFakeUpstream({ firstByteDelayMs: 0, tokenDelayMs: 1, tokensPerResponse: 4, ...opts });
  started.push(u);
  return u;
}

const client = (u: FakeUpstream, apiKey = 'test-key'): OpenAI =>
  new OpenAI({ baseURL: `${u.url}/v1`, apiKey, maxRetries: 0 });

const chatBody = (extra: Record<string, unknown> = {}): string =>
  JSON.stringify({
    model: 'meta/llama-3.1-8b-instruct',
    messages: [{ role: 'user', content: 'hi' }],
    ...extra,
  });

const post = (u: FakeUpstream, body: string = chatBody(), init: RequestInit = {}): Promise<Response> =>
  fetch(`${u.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body,
    ...init,
  });

async function until(cond: () => boolean, timeoutMs = 2000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 5));
  }
}

const dataEvents = (text: string): string[] =>
  text
    .split('\n\n')
    .filter((e) => e.startsWith('data: '))
    .map((e) => e.slice('data: '.length));

describe('fake upstream: OpenAI-compatible endpoints', () => {
  it('answers non-streaming chat with deterministic content and usage', async () => {
    const u = await start();
    const res = await client(u).chat.completions.create({
      model: 'meta/llama-3.1-8b-instruct',
      messages: [{ role: 'user', content: 'hello' }],
    });
    expect(res.object).toBe('chat.completion');
    expect(res.choices[0]?.message.content).toBe('tok0 tok1 tok2 tok3');
    expect(res.choices[0]?.finish_reason).toBe('stop');
    expect(res.usage?.completion_tokens).toBe(4);
    expect(res.usage?.total_tokens).toBe((res.usage?.prompt_tokens ?? 0) + 4);
    expect(u.calls).toHaveLength(1);
    expect(u.calls[0]).toMatchObject({
      path: '/v1/chat/completions',
      model: 'meta/llama-3.1-8b-instruct',
      stream: false,
    });
    expect(u.calls[0]).toMatchObject({ status: 200, kind: 'ok' });
  });

  it('honours max_tokens with finish_reason length', async () => {
    const u = await start();
    const res = await client(u).chat.completions.create({
      model: 'deepseek-ai/deepseek-v3',
      messages: [{ role: 'user', content: 'hello' }],
      max_tokens: 2,
    });
    expect(res.choices[0]?.message.content).toBe('tok0 tok1');
    expect(res.choices[0]?.finish_reason).toBe('length');
  });

  it('streams chat chunks incrementally, then finish, usage and [DONE]', async () => {
    const tokenDelayMs = 30;
    const u = await start({ tokenDelayMs, tokensPerResponse: 5 });
    const stream = await client(u).chat.completions.create({
      model: 'meta/llama-3.1-8b-instruct',
      messages: [{ role: 'user', content: 'hello' }],
      stream: true,
      stream_options: { include_usage: true },
    });
    const arrivals: number[] = [];
    let text = '';
    let finish: string | null = null;
    let usageTokens: number | undefined;
    for await (const chunk of stream) {
      expect(chunk.object).toBe('chat.completion.chunk');
      const choice = chunk.choices[0];
      if (choice?.delta.content) {
        arrivals.push(performance.now());
        text += choice.delta.content;
      }
      if (choice?.finish_reason) finish = choice.finish_reason;
      if (chunk.usage) {
        expect(chunk.choices).toEqual([]);
        usageTokens = chunk.usage.completion_tokens;
      }
    }
    expect(text).toBe(fakeReplyText(5));
    expect(finish).toBe('stop');
    expect(usageTokens).toBe(5);
    expect(arrivals).toHaveLength(5);
    expect(arrivals.at(-1)! - arrivals[0]!).toBeGreaterThanOrEqual(tokenDelayMs / 2);
    expect(u.calls[0]).toMatchObject({ stream: true, status: 200, kind: 'ok' });
  });

  it('ends the raw SSE stream with [DONE] and omits usage unless asked', async () => {
    const u = await start();
    const res = await post(u, chatBody({ stream: true }));
    expect(res.headers.get('content-type')).toBe('text/event-stream');
    const events = dataEvents(await res.text());
    expect(events.at(-1)).toBe('[DONE]');
    const parsed = events.slice(0, -1).map((e) => JSON.parse(e) as { choices: unknown[]; usage?: unknown });
    expect(parsed).toHaveLength(5);
    expect(parsed.every((p) => p.choices.length === 1 && p.usage === undefined)).toBe(true);
  });

  it('serves legacy completions, streaming and not', async () => {
    const u = await start();
    const oa = client(u);
    const res = await oa.completions.create({ model: 'meta/llama-3.1-8b-instruct', prompt: 'say' });
    expect(res.object).toBe('text_completion');
    expect(res.choices[0]?.text).toBe('tok0 tok1 tok2 tok3');
    const stream = await oa.completions.create({
      model: 'meta/llama-3.1-8b-instruct',
      prompt: 'say',
      stream: true,
    });
    let text = '';
    for await (const chunk of stream) text += chunk.choices[0]?.text ?? '';
    expect(text).toBe('tok0 tok1 tok2 tok3');
  });

  it('returns 8-float embeddings for string and array input (float and base64)', async () => {
    const u = await start();
    const oa = client(u);
    const one = await oa.embeddings.create({
      model: 'nvidia/nv-embedqa-e5-v5',
      input: 'hello',
      encoding_format: 'float',
    });
    expect(one.object).toBe('list');
    expect(one.data).toHaveLength(1);
    expect(one.data[0]?.embedding).toHaveLength(8);
    expect(one.model).toBe('nvidia/nv-embedqa-e5-v5');
    const many = await oa.embeddings.create({ model: 'nvidia/nv-embedqa-e5-v5', input: ['hello', 'world'] });
    expect(many.data.map((d) => d.index)).toEqual([0, 1]);
    expect(many.data[1]?.embedding).toHaveLength(8);
    // Deterministic: same input, same vector (base64 default decodes to the same float32 values).
    expect(many.data[0]?.embedding).toEqual(one.data[0]?.embedding);
    expect(many.usage.prompt_tokens).toBeGreaterThan(0);
  });

  it('lists and retrieves models (ids with slashes); unknown model is 404', async () => {
    const u = await start({ limit: { requests: 1, windowMs: 60_000 } });
    const oa = client(u);
    const ids: string[] = [];
    for await (const m of oa.models.list()) ids.push(m.id);
    expect(ids).toEqual(
      expect.arrayContaining([
        'meta/llama-3.1-8b-instruct',
        'deepseek-ai/deepseek-v3',
        'nvidia/llama-3.1-nemotron-70b-instruct',
        'mistralai/mixtral-8x7b-instruct-v0.1',
      ]),
    );
    const m = await oa.models.retrieve('nvidia/llama-3.1-nemotron-70b-instruct');
    expect(m.id).toBe('nvidia/llama-3.1-nemotron-70b-instruct');
    await expect(oa.models.retrieve('nope/nope')).rejects.toBeInstanceOf(OpenAI.NotFoundError);
    const raw = await fetch(`${u.url}/v1/models/meta/llama-3.1-8b-instruct`);
    expect(((await raw.json()) as { id: string }).id).toBe('meta/llama-3.1-8b-instruct');
    // GET /v1/models does not count toward the window: one chat call still fits.
    expect((await post(u)).status).toBe(200);
  });

  it('answers 404 JSON for unknown paths and 400 JSON for malformed bodies', async () => {
    const u = await start();
    const nf = await fetch(`${u.url}/v2/whatever`);
    expect(nf.status).toBe(404);
    expect(nf.headers.get('content-type')).toBe('application/json');
    expect(((await nf.json()) as { status: number }).status).toBe(404);
    const bad = await post(u, '{not json');
    expect(bad.status).toBe(400);
    expect(bad.headers.get('content-type')).toBe('application/json');
    expect(((await bad.json()) as { title: string }).title).toBe('Bad Request');
    expect(u.calls.map((c) => c.kind)).toEqual(['bad_request', 'bad_request']);
  });
});

describe('fake upstream: limits', () => {
  it('enforces the hidden sliding window with the exact NVIDIA 429 body', async () => {
    let t = 10_000;
    const u = await start({ limit: { requests: 3, windowMs: 1000 }, now: () => t });
    for (let i = 0; i < 3; i++) {
      expect((await post(u)).status).toBe(200);
      t += 100;
    }
    const limited = await post(u);
    expect(limited.status).toBe(429);
    expect(limited.headers.get('content-type')).toBe('application/json');
    expect(limited.headers.get('retry-after')).toBeNull();
    expect(await limited.text()).toBe(RATE_LIMIT_BODY);
    expect(RATE_LIMIT_BODY).toBe('{"status":429,"title":"Too Many Requests"}');
    // 429s do not count: once the first call slides out, exactly one more fits.
    t = 11_000;
    expect((await post(u)).status).toBe(200);
    expect((await post(u)).status).toBe(429);
    t = 12_500;
    expect((await post(u)).status).toBe(200);
    expect(u.stats()).toMatchObject({ total: 7, ok: 5, rateLimited: 2 });
    expect(u.calls.filter((c) => c.kind === 'rate_limited').map((c) => c.status)).toEqual([429, 429]);
  });

  it('sends Retry-After on 429 only when configured, and setLimit(null) lifts the limit', async () => {
    const u = await start({ limit: { requests: 1, windowMs: 60_000 }, retryAfterSeconds: 7 });
    expect((await post(u)).status).toBe(200);
    const limited = await post(u);
    expect(limited.status).toBe(429);
    expect(limited.headers.get('retry-after')).toBe('7');
    u.setLimit(null);
    expect((await post(u)).status).toBe(200);
  });

  it('rejects calls beyond the concurrency cap with the worker-capacity 429', async () => {
    const u = await start({ maxConcurrency: 2 });
    u.setFault({ kind: 'hang' }, 2);
    const aborter = new AbortController();
    const hung = [
      post(u, chatBody(), { signal: aborter.signal }),
      post(u, chatBody(), { signal: aborter.signal }),
    ];
    await until(() => u.inFlight() === 2);
    const res = await post(u);
    expect(res.status).toBe(429);
    expect(await res.json()).toEqual({
      status: 429,
      title: 'Too Many Requests',
      detail: 'ResourceExhausted: Worker local total request limit reached (3/2)',
    });
    expect(u.calls.at(-1)?.kind).toBe('capacity');
    aborter.abort();
    await Promise.allSettled(hung);
    await until(() => u.inFlight() === 0);
    expect((await post(u)).status).toBe(200);
    u.setMaxConcurrency(null);
    expect(u.stats()).toMatchObject({ capacity: 1, faults: 2, ok: 1, maxInFlight: 2 });
  });

  it('maxInWindow reports the densest window of accepted calls', async () => {
    let t = 0;
    const u = await start({ limit: { requests: 3, windowMs: 1000 }, now: () => t });
    for (const at of [0, 100, 200, 300, 1500, 1600, 2050]) {
      t = at;
      await (await post(u)).text();
    }
    // 300 was rejected (4th in window); accepted: 0,100,200,1500,1600,2050.
    expect(u.stats().rateLimited).toBe(1);
    expect(u.maxInWindow()).toBe(3);
    expect(u.maxInWindow(100)).toBe(1);
    expect(u.maxInWindow(600)).toBe(3);
    expect(u.maxInWindow(10_000)).toBe(6);
    u.reset();
    expect(u.maxInWindow()).toBe(0);
    expect(u.calls).toHaveLength(0);
  });
});

describe('fake upstream: tokens per minute (tpm option)', () => {
  it('counts each call at its usage total, refuses one that would pass tpm with OpenAI x-ratelimit headers', async () => {
    // Prepare: the prompt [{"role":"user","content":"hi"}] is 32 characters → 8 tokens, + 4 completion = 12.
    let t = 10_000;
    const u = await start({
      tpm: { tokens: 30, windowMs: 1_000 },
      limit: { requests: 100, windowMs: 60_000 },
      now: () => t,
    });

    // Act + Assess: two calls of 12 fit 30; the answers say what is left and when the window resets.
    const first = await post(u);
    const usage = ((await first.json()) as { usage: { total_tokens: number } }).usage.total_tokens;
    expect(usage).toBe(12);
    expect(first.headers.get('x-ratelimit-limit-tokens')).toBe('30');
    expect(first.headers.get('x-ratelimit-remaining-tokens')).toBe('18');
    expect(first.headers.get('x-ratelimit-reset-tokens')).toBe('1s');
    expect(first.headers.get('x-ratelimit-remaining-requests')).toBe('99');
    t += 400;
    expect((await post(u)).headers.get('x-ratelimit-remaining-tokens')).toBe('6');
    // A third would make 36: refused until the first leaves the window (500 ms from now).
    t += 100;
    const limited = await post(u);
    expect(limited.status).toBe(429);
    expect(limited.headers.get('x-ratelimit-remaining-tokens')).toBe('0');
    expect(limited.headers.get('x-ratelimit-reset-tokens')).toBe('500ms');
    expect(u.stats().rateLimited).toBe(1);
    t = 11_000;
    expect((await post(u)).status).toBe(200);
    expect(u.maxTokensInWindow()).toBe(24);
    expect(u.maxTokensInWindow(10_000)).toBe(36);
  });

  it('without the option no x-ratelimit header is sent (NVIDIA sends none)', async () => {
    const u = await start();
    const res = await post(u);
    expect([...res.headers.keys()].filter((k) => k.startsWith('x-ratelimit'))).toEqual([]);
  });
});

describe('fake upstream: faults', () => {
  it('slow_first_byte delays the response', async () => {
    const u = await start();
    u.setFault({ kind: 'slow_first_byte', delayMs: 150 }, 1);
    const t0 = performance.now();
    const res = await post(u);
    expect(res.status).toBe(200);
    expect(performance.now() - t0).toBeGreaterThanOrEqual(120);
    await res.text();
    expect(u.calls[0]?.kind).toBe('fault');
  });

  it('cut_mid_stream destroys the socket after N chunks', async () => {
    const u = await start({ tokensPerResponse: 6 });
    u.setFault({ kind: 'cut_mid_stream', afterChunks: 2 });
    const res = await post(u, chatBody({ stream: true }));
    expect(res.status).toBe(200);
    const reader = res.body!.getReader();
    const decoder = new TextDecoder();
    let text = '';
    let failed = false;
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        text += decoder.decode(value, { stream: true });
      }
    } catch {
      failed = true;
    }
    expect(failed).toBe(true);
    expect(dataEvents(text)).toHaveLength(2);
    expect(text).not.toContain('[DONE]');
    // Non-streaming: headers and half the JSON body, then the connection drops.
    const whole = await post(u);
    await expect(whole.text()).rejects.toThrow();
    expect(u.calls.map((c) => c.kind)).toEqual(['fault', 'fault']);
  });

  it('reset destroys the socket before any byte', async () => {
    const u = await start();
    u.setFault({ kind: 'reset' }, 1);
    await expect(post(u)).rejects.toThrow();
    expect(u.calls[0]).toMatchObject({ kind: 'fault', status: 0 });
    expect((await post(u)).status).toBe(200);
  });

  it('status answers with the given status and body for `times` calls', async () => {
    const u = await start();
    u.setFault({ kind: 'status', status: 503, body: '{"status":503,"title":"Service Unavailable"}' }, 2);
    for (let i = 0; i < 2; i++) {
      const res = await post(u);
      expect(res.status).toBe(503);
      expect(await res.text()).toBe('{"status":503,"title":"Service Unavailable"}');
    }
    u.setFault({ kind: 'status', status: 502 });
    expect((await post(u)).status).toBe(502);
    expect((await post(u)).status).toBe(502);
    u.setFault({ kind: 'none' });
    expect((await post(u)).status).toBe(200);
    expect(u.stats()).toMatchObject({ total: 5, faults: 4, ok: 1 });
  });

  it('hang never answers, and stop() tears hung requests down promptly', async () => {
    const u = await startFakeUpstream({ firstByteDelayMs: 0, tokenDelayMs: 1 });
    u.setFault({ kind: 'hang' });
    await expect(post(u, chatBody(), { signal: AbortSignal.timeout(150) })).rejects.toThrow();
    const pending = post(u);
    await until(() => u.inFlight() >= 1 && u.calls.length === 2);
    const t0 = performance.now();
    await u.stop();
    expect(performance.now() - t0).toBeLessThan(1000);
    await expect(pending).rejects.toThrow();
    expect(u.calls.every((c) => c.kind === 'fault' && c.status === 0)).toBe(true);
  });

  it('embedded_error sends a 200 SSE stream whose 2nd event is an error object', async () => {
    const u = await start();
    u.setFault({ kind: 'embedded_error' }, 1);
    const res = await post(u, chatBody({ stream: true }));
    expect(res.status).toBe(200);
    const events = dataEvents(await res.text());
    expect(events).toHaveLength(2);
    expect((JSON.parse(events[0]!) as { object: string }).object).toBe('chat.completion.chunk');
    expect(JSON.parse(events[1]!)).toMatchObject({ error: { message: expect.any(String) } });
    // The official client surfaces it as an error mid-stream.
    u.setFault({ kind: 'embedded_error' }, 1);
    const stream = await client(u).chat.completions.create({
      model: 'meta/llama-3.1-8b-instruct',
      messages: [{ role: 'user', content: 'x' }],
      stream: true,
    });
    await expect(
      (async () => {
        for await (const _ of stream) {
          // drain
        }
      })(),
    ).rejects.toThrow();
  });
});

describe('fake upstream: auth and recording', () => {
  it('requires the bearer key when configured and records lower-cased headers', async () => {
    const u = await start({ apiKey: 'upstream-secret' });
    const noAuth = await post(u);
    expect(noAuth.status).toBe(401);
    expect(noAuth.headers.get('content-type')).toBe('application/json');
    expect(((await noAuth.json()) as { status: number }).status).toBe(401);
    await expect(client(u, 'wrong').models.list()).rejects.toBeInstanceOf(OpenAI.AuthenticationError);
    const res = await post(u, chatBody(), {
      headers: {
        'content-type': 'application/json',
        Authorization: 'Bearer upstream-secret',
        'X-Agent-Id': 'a1',
      },
    });
    expect(res.status).toBe(200);
    const last = u.calls.at(-1)!;
    expect(last.headers.authorization).toBe('Bearer upstream-secret');
    expect(last.headers['x-agent-id']).toBe('a1');
    expect(u.calls.map((c) => c.kind)).toEqual(['unauthorized', 'unauthorized', 'ok']);
    expect(u.maxInWindow()).toBe(1);
  });
});
