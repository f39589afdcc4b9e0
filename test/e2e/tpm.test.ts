// E2E: an upstream limited in tokens per minute (the fake upstream's sliding token window, scaled to 4 s) is
// never sent more than its tpm in any window and refuses nothing: each grant reserves the request's estimate,
// the answer's usage (JSON and streamed) corrects it, a stream without usage keeps the estimate.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type FakeUpstream, startFakeUpstream } from '../../local/fake-upstream.js';
import type { LocalSystem } from '../../local/runtime.js';
import { allTickets, startTestSystem } from '../support/system.js';

/** The scaled minute: 800 tokens per 4 s on both sides (sluice adds its 1 s of grant slack to its own window). */
const TPM = 800;
const WINDOW_MS = 4_000;

describe('an upstream with tokens per minute (tpm)', () => {
  let upstream: FakeUpstream;
  let system: LocalSystem;
  let key: string;

  beforeAll(async () => {
    upstream = await startFakeUpstream({
      apiKey: 'key-oai',
      // Requests are not what limits here: 600 per minute on both sides.
      limit: { requests: 600, windowMs: 60_000 },
      tpm: { tokens: TPM, windowMs: WINDOW_MS },
      tokenDelayMs: 1,
      firstByteDelayMs: 5,
    });
    system = await startTestSystem('tpm', {
      upstreamUrl: `${upstream.url}/v1`,
      upstreamApiKey: 'unused-single-upstream-key',
      env: {
        SLUICE_UPSTREAMS: JSON.stringify([
          {
            name: 'oai',
            url: `${upstream.url}/v1`,
            key_env: 'KEY_OAI',
            limit: 600,
            window_s: 60,
            tpm: TPM,
            models: ['gpt-*'],
          },
        ]),
        SLUICE_TPM_WINDOW_S: String(WINDOW_MS / 1000),
        KEY_OAI: 'key-oai',
      },
    });
    key = await system.createKey('tpm', 'urgent');
  });

  afterAll(async () => {
    await system?.stop();
    await upstream?.stop();
  });

  it('never more than tpm in any window, 0 429s, every request answered; usage corrects the reservations', async () => {
    // Prepare: ~70 tokens each as the upstream counts them (a 200-character prompt + 12 completion tokens),
    // ~85 as sluice estimates them: 24 requests are about three windows' worth.
    const prompt = 'tell me about rate limits '.repeat(8).slice(0, 200);
    const send = (i: number) => {
      const stream = i % 3 !== 0;
      // Every third stream asks for no usage: its reservation keeps the estimate.
      const usage = stream && i % 3 === 1;
      return fetch(`${system.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
        body: JSON.stringify({
          model: 'gpt-test',
          max_tokens: 12,
          messages: [{ role: 'user', content: prompt }],
          ...(stream ? { stream: true } : {}),
          ...(usage ? { stream_options: { include_usage: true } } : {}),
        }),
      }).then(async (res) => ({ status: res.status, text: await res.text() }));
    };

    // Act
    const replies = await Promise.all(Array.from({ length: 24 }, (_, i) => send(i)));

    // Assess: all answered, the upstream refused none and never counted more than its tpm in a window.
    expect(
      replies.map((r) => r.status),
      replies[0]?.text,
    ).toEqual(Array(24).fill(200));
    expect(replies.every((r) => r.text.includes('tok0'))).toBe(true);
    expect(upstream.stats().rateLimited).toBe(0);
    expect(upstream.calls).toHaveLength(24);
    expect(upstream.maxTokensInWindow(WINDOW_MS)).toBeLessThanOrEqual(TPM);
    // The tickets carry the estimate; those whose answer reported usage recorded it (below the estimate).
    const tickets = await allTickets(system);
    expect(tickets).toHaveLength(24);
    for (const t of tickets) expect(t.tokens).toBeGreaterThan(70);
    const withUsage = tickets.filter((t) => t.totalTokens !== undefined);
    expect(withUsage).toHaveLength(16);
    for (const t of withUsage) expect(t.totalTokens).toBeLessThan(t.tokens!);
  }, 90_000);
});
