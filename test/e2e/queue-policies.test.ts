// Queue-full policies (reject, drop_lowest, passthrough), SSE heartbeats while queued, and an upstream Retry-After
// holding the whole bucket — through the local runtime.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LocalSystem } from '../../local/runtime.js';
import { auditTickets, eventually, startTestSystem } from '../support/system.js';

const MODEL = 'meta/llama-3.1-8b-instruct';
const chat = (system: LocalSystem, key: string, priority = 'normal', stream = false, signal?: AbortSignal) =>
  fetch(`${system.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json', 'x-priority': priority },
    body: JSON.stringify({ model: MODEL, stream, messages: [{ role: 'user', content: 'x' }] }),
    ...(signal ? { signal } : {}),
  });

const errorCode = async (res: Response) => ((await res.json()) as { error: { code: string } }).error.code;

describe('queue-full policies', () => {
  let system: LocalSystem;
  let key: string;
  beforeAll(async () => {
    system = await startTestSystem('policies', {
      fakeUpstream: { tokenDelayMs: 5, firstByteDelayMs: 5, limit: null },
      // One agent fills the whole queue here: its own cap (max_queued_per_agent) set to the queue's size.
      env: {
        SLUICE_UPSTREAM_LIMIT: '600',
        SLUICE_QUEUE_MAX: '2',
        SLUICE_MAX_QUEUED_PER_AGENT: '2',
        SLUICE_PAUSED: 'true',
      },
    });
    key = await system.createKey('policy-agent', 'urgent');
  });
  afterAll(async () => {
    await system.stores.config.update({ paused: false }, 'test');
    await eventually(
      async () => ((await auditTickets(system)).open.length === 0 ? true : undefined),
      30_000,
      200,
    );
    expect((await auditTickets(system)).stuck).toEqual([]);
    await system?.stop();
  });

  const queuedCount = async () => (await system.stores.tickets.counts()).queued;

  it('reject: the request beyond queue_max_size gets 503 queue_full with Retry-After; nothing changes', async () => {
    // Paused: tickets stay queued, so the queue fills.
    const waiting = [chat(system, key, 'low'), chat(system, key, 'normal')];
    await eventually(async () => ((await queuedCount()) === 2 ? true : undefined));
    const before = await auditTickets(system);
    const refused = await chat(system, key, 'urgent');
    expect(refused.status).toBe(503);
    expect(refused.headers.get('retry-after')).toBeTruthy();
    expect(await errorCode(refused)).toBe('queue_full');
    expect((await auditTickets(system)).total).toBe(before.total);

    // drop_lowest: an urgent newcomer takes the place of the oldest low ticket; that agent gets 503.
    await system.stores.config.update({ queue_full_policy: 'drop_lowest' }, 'test');
    await new Promise((r) => setTimeout(r, 2_100));
    const urgent = chat(system, key, 'urgent');
    const dropped = await waiting[0]!;
    expect(dropped.status).toBe(503);
    expect(await errorCode(dropped)).toBe('queue_full');
    expect(await queuedCount()).toBe(2);
    const tickets = (await auditTickets(system)).tickets;
    expect(tickets.filter((t) => t.status === 'dropped').map((t) => t.priority)).toEqual(['low']);

    // A low newcomer may not drop a more important ticket: refused instead.
    const lowNewcomer = await chat(system, key, 'low');
    expect(lowNewcomer.status).toBe(503);

    // passthrough: the overflow request takes a token directly (not queued, but metered).
    await system.stores.config.update({ queue_full_policy: 'passthrough' }, 'test');
    await new Promise((r) => setTimeout(r, 2_100));
    const callsBefore = system.upstream!.calls.length;
    const through = await chat(system, key, 'normal');
    expect(through.status).toBe(200);
    await through.text();
    expect(system.upstream!.calls.length).toBe(callsBefore + 1);
    // Not queued (the two waiting tickets are still the only queued ones), but a ticket all the same.
    expect(await queuedCount()).toBe(2);
    expect((await auditTickets(system)).counts.completed).toBe(1);

    await system.stores.config.update({ paused: false }, 'test');
    const [normal, urgentRes] = await Promise.all([waiting[1]!, urgent]);
    expect([normal.status, urgentRes.status]).toEqual([200, 200]);
  }, 60_000);
});

describe('SSE heartbeats and upstream Retry-After', () => {
  let system: LocalSystem;
  let key: string;
  beforeAll(async () => {
    system = await startTestSystem('heartbeats', {
      fakeUpstream: { tokenDelayMs: 5, firstByteDelayMs: 5, limit: null, retryAfterSeconds: 4 },
      env: { SLUICE_UPSTREAM_LIMIT: '600', SLUICE_HEARTBEAT_S: '0.5', SLUICE_MAX_REQUEUES: '2' },
    });
    key = await system.createKey('beat-agent', 'urgent');
  });
  afterAll(async () => {
    await eventually(
      async () => ((await auditTickets(system)).open.length === 0 ? true : undefined),
      30_000,
      200,
    );
    await system?.stop();
  });

  it('a streaming request waiting in the queue gets heartbeats, then its answer', async () => {
    await system.stores.config.update({ paused: true }, 'test');
    await new Promise((r) => setTimeout(r, 2_100));
    const res = await chat(system, key, 'normal', true);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toContain('text/event-stream');
    const reader = res.body!.getReader();
    const dec = new TextDecoder();
    let text = '';
    while (!text.includes(': queued position=')) text += dec.decode((await reader.read()).value);
    await system.stores.config.update({ paused: false }, 'test');
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      text += dec.decode(value);
    }
    expect(text).toMatch(/: queued position=\d+ eta_ms=\d+/);
    expect(text).toContain('data: [DONE]');
  }, 30_000);

  it('an upstream 429 with Retry-After holds the bucket and the request is requeued, not failed', async () => {
    system.upstream!.setLimit({ requests: 1, windowMs: 3_000 });
    const first = await chat(system, key);
    expect(first.status).toBe(200);
    await first.text();
    const started = Date.now();
    const second = await chat(system, key);
    // Requeued after the 429, held until the upstream's Retry-After, then answered.
    expect(second.status).toBe(200);
    await second.text();
    expect(Date.now() - started).toBeGreaterThanOrEqual(3_000);
    const state = await system.stores.bucket.refresh();
    expect(state?.holdUntil).toBeGreaterThan(started);
    const t = (await auditTickets(system)).tickets.find((x) => x.attempt > 0);
    expect(t).toMatchObject({ status: 'completed' });
    system.upstream!.setLimit(null);
  }, 60_000);
});
