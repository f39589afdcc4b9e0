// E2E: two limited upstreams from SLUICE_UPSTREAMS — each request goes to its own upstream with that upstream's
// key, neither upstream's limit is exceeded, /status shows a row each. (That one's backlog does not delay the
// other is timed in test/domain/upstream-lanes.test.ts, on a fake clock.)
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { StatusSnapshot } from '../../lib/status/snapshot.js';
import { type FakeUpstream, startFakeUpstream } from '../../local/fake-upstream.js';
import type { LocalSystem } from '../../local/runtime.js';
import { statusRoutes } from '../../local/status-routes.js';
import { allTickets, startTestSystem } from '../support/system.js';

describe('several upstreams (SLUICE_UPSTREAMS)', () => {
  let a: FakeUpstream;
  let b: FakeUpstream;
  let system: LocalSystem;
  let key: string;

  beforeAll(async () => {
    // 20-second windows keep the test short: a allows 12, b 6 per window; 2 s of grant slack (a tenth of the
    // window) so a loaded machine does not send grants back as stale.
    const fast = { tokenDelayMs: 1, firstByteDelayMs: 1 };
    a = await startFakeUpstream({ apiKey: 'key-a', limit: { requests: 12, windowMs: 20_000 }, ...fast });
    b = await startFakeUpstream({ apiKey: 'key-b', limit: { requests: 6, windowMs: 20_000 }, ...fast });
    system = await startTestSystem('upstreams', {
      upstreamUrl: `${a.url}/v1`,
      upstreamApiKey: 'unused-single-upstream-key',
      extraRoutes: statusRoutes,
      env: {
        SLUICE_UPSTREAMS: JSON.stringify([
          { name: 'a', url: `${a.url}/v1`, key_env: 'KEY_A', limit: 12, window_s: 20 },
          {
            name: 'b',
            url: `${b.url}/v1`,
            key_env: 'KEY_B',
            limit: 6,
            window_s: 20,
            tpm: 1000,
            models: ['b/'],
          },
        ]),
        SLUICE_GRANT_SLACK_S: '2',
        // b's 1000 tokens per minute: its requests state no max_tokens, and the default completion (1024) would
        // reserve the whole minute for each until its answer's usage comes back.
        SLUICE_TPM_DEFAULT_MAX_TOKENS: '100',
        KEY_A: 'key-a',
        KEY_B: 'key-b',
      },
    });
    key = await system.createKey('upstreams', 'urgent');
  });

  afterAll(async () => {
    await system?.stop();
    await Promise.all([a?.stop(), b?.stop()]);
  });

  it('each request reaches its own upstream with its key, tickets name it, neither limit is exceeded, /status has a row each', async () => {
    // Act: 12 requests for a (a window's worth) and 3 for b, all at once.
    const send = (model: string) =>
      fetch(`${system.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
        body: JSON.stringify({ model, messages: [{ role: 'user', content: 'x' }] }),
      }).then(async (res) => ({ status: res.status, text: await res.text() }));
    const [forA, forB] = await Promise.all([
      Promise.all(Array.from({ length: 12 }, () => send('meta/llama-3.1-8b-instruct'))),
      Promise.all(Array.from({ length: 3 }, () => send('b/model'))),
    ]);

    // Assess
    expect([...forA, ...forB].map((r) => r.status)).toEqual(Array(15).fill(200));
    for (const [upstream, own, model] of [
      [a, 'key-a', 'meta/llama-3.1-8b-instruct'],
      [b, 'key-b', 'b/model'],
    ] as const) {
      expect(upstream.calls.every((c) => c.headers.authorization === `Bearer ${own}`)).toBe(true);
      expect(upstream.calls.every((c) => c.model === model)).toBe(true);
      expect(upstream.calls.filter((c) => c.kind === 'rate_limited')).toHaveLength(0);
    }
    expect(a.calls).toHaveLength(12);
    expect(b.calls).toHaveLength(3);
    expect(a.maxInWindow(20_000)).toBeLessThanOrEqual(12);
    expect(b.maxInWindow(20_000)).toBeLessThanOrEqual(6);
    // The tickets name the upstream their token came from (none for the first upstream).
    const tickets = await allTickets(system);
    expect(tickets.filter((t) => t.upstream === 'b')).toHaveLength(3);
    expect(tickets.filter((t) => t.upstream === undefined)).toHaveLength(12);

    // /status: a row per upstream, its own limits, answers and 429s; b's tokens in its window (a has no tpm).
    // b's 3 grants reserved their estimates (prompt + the default 100) and the answers' usage corrected them.
    const status = (await (
      await fetch(`${system.url}/status`, { headers: { authorization: `Bearer ${system.adminToken}` } })
    ).json()) as StatusSnapshot;
    expect(
      status.upstreams?.map((u) => [u.name, u.pool, u.limit, u.windowMs, u.answers, u.throttled]),
    ).toEqual([
      ['a', ['a'], 12, 20_000, 12, 0],
      ['b', ['b'], 6, 20_000, 3, 0],
    ]);
    expect(status.upstreams?.[0]?.tokensInWindow).toBeNull();
    const bTokens = status.upstreams?.[1]?.tokensInWindow ?? 0;
    expect(bTokens).toBeGreaterThan(0);
    expect(bTokens).toBeLessThanOrEqual(1000);

    // b allows 1000 tokens per minute: a request that may spend more is refused before admission.
    const tooLarge = await fetch(`${system.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      body: JSON.stringify({
        model: 'b/model',
        max_tokens: 5000,
        messages: [{ role: 'user', content: 'x' }],
      }),
    });
    expect(tooLarge.status).toBe(400);
    expect(((await tooLarge.json()) as { error: unknown }).error).toMatchObject({
      type: 'invalid_request_error',
      code: 'request_too_large',
      message: expect.stringMatching(/allows 1000 tokens per minute/),
    });
    expect(b.calls).toHaveLength(3);
  }, 90_000);
});
