// Operator controls end to end: upstream concurrency cap, per-agent quotas and usage, pause/drain, idempotent retries.
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LocalSystem } from '../../local/runtime.js';
import { statusRoutes } from '../../local/status-routes.js';
import { auditTickets, eventually, startTestSystem } from '../support/system.js';

const MODEL = 'meta/llama-3.1-8b-instruct';
const body = (content = 'x') => JSON.stringify({ model: MODEL, messages: [{ role: 'user', content }] });
const chat = (system: LocalSystem, key: string, headers: Record<string, string> = {}) =>
  fetch(`${system.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json', ...headers },
    body: body(),
  });

describe('max_inflight caps concurrent upstream calls', () => {
  let system: LocalSystem;
  beforeAll(async () => {
    system = await startTestSystem('ctl-inflight', {
      fakeUpstream: { tokenDelayMs: 40, firstByteDelayMs: 20, limit: null, maxConcurrency: 3 },
      env: { SLUICE_UPSTREAM_LIMIT: '6000', SLUICE_BUCKET_BURST: '20', SLUICE_MAX_INFLIGHT: '3' },
    });
  });
  afterAll(async () => {
    const audit = await auditTickets(system);
    expect(audit.open).toEqual([]);
    await system?.stop();
  });

  it('never exceeds the cap, so the upstream never answers with a capacity error', async () => {
    const key = await system.createKey('burst', 'urgent');
    const client = new OpenAI({ baseURL: `${system.url}/v1`, apiKey: key, maxRetries: 0 });
    const results = await Promise.all(
      Array.from({ length: 12 }, () =>
        client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'x' }] }),
      ),
    );
    expect(results).toHaveLength(12);
    const stats = system.upstream!.stats();
    expect(stats.capacity).toBe(0);
    expect(stats.maxInFlight).toBeLessThanOrEqual(3);
    // Each ticket ends right after its reply, before its invocation returns.
    await system.settled();
    expect((await system.stores.tickets.counts()).inflight).toBe(0);
  });
});

describe('per-agent quotas, usage, pause and drain, idempotency', () => {
  let system: LocalSystem;
  let sent = 0;
  beforeAll(async () => {
    system = await startTestSystem('ctl-quota', {
      fakeUpstream: { tokenDelayMs: 5, firstByteDelayMs: 5, limit: null },
      env: { SLUICE_UPSTREAM_LIMIT: '600', SLUICE_BUCKET_BURST: '5' },
    });
  });
  afterAll(async () => {
    await eventually(
      async () => ((await auditTickets(system)).open.length === 0 ? true : undefined),
      30_000,
      200,
    );
    const audit = await auditTickets(system);
    expect(audit.stuck).toEqual([]);
    expect(audit.total).toBe(sent);
    await system?.stop();
  });

  it('keeps a greedy agent within its quota while a polite one is unaffected', async () => {
    const greedy = await system.createKey('greedy', 'urgent', { rpm: 8 });
    const polite = await system.createKey('polite', 'normal');
    sent += 16;
    const [g, p] = await Promise.all([
      Promise.all(Array.from({ length: 10 }, () => chat(system, greedy))),
      Promise.all(Array.from({ length: 6 }, () => chat(system, polite))),
    ]);
    const refused = g.filter((r) => r.status === 429);
    // 8 per minute, window-safe: at most the burst goes through at once.
    expect(g.filter((r) => r.status === 200).length).toBeLessThanOrEqual(2);
    expect(refused.length).toBeGreaterThanOrEqual(8);
    const err = (await refused[0]!.json()) as { error: { code: string } };
    expect(err.error.code).toBe('agent_quota_exceeded');
    expect(Number(refused[0]!.headers.get('retry-after-ms'))).toBeGreaterThan(0);
    expect(p.every((r) => r.status === 200)).toBe(true);
    await Promise.all([...g, ...p].map((r) => r.text().catch(() => '')));

    const usage = await eventually(async () => {
      const rows = await system.stores.usage.read(Date.now(), 'hour');
      const gr = rows.find((r) => r.agent === 'greedy');
      const pr = rows.find((r) => r.agent === 'polite');
      return gr && pr && gr.requests === 10 && pr.requests === 6 ? { gr, pr } : undefined;
    });
    expect(usage.gr.throttled).toBeGreaterThanOrEqual(8);
    expect(usage.pr.tokens).toBeGreaterThan(0);
    expect(usage.pr.throttled).toBe(0);
  });

  it('pause stops granting (tickets wait), resume lets them through; drain refuses new requests', async () => {
    const key = await system.createKey('ops', 'urgent');
    await system.stores.config.update({ paused: true }, 'test');
    sent += 1;
    const pending = chat(system, key);
    const ticket = await eventually(async () =>
      (await auditTickets(system)).tickets.find((t) => t.agent === 'ops' && t.status === 'queued'),
    );
    // Well past the config cache time, still queued.
    await new Promise((r) => setTimeout(r, 3_500));
    expect((await system.stores.tickets.get(ticket.id))?.status).toBe('queued');
    await system.stores.config.update({ paused: false }, 'test');
    expect((await pending).status).toBe(200);

    await system.stores.config.update({ draining: true }, 'test');
    await new Promise((r) => setTimeout(r, 2_100));
    const refused = await chat(system, key);
    expect(refused.status).toBe(503);
    expect(((await refused.json()) as { error: { code: string } }).error.code).toBe('draining');
    expect(refused.headers.get('retry-after')).toBeTruthy();
    await system.stores.config.update({ draining: false }, 'test');
    await new Promise((r) => setTimeout(r, 2_100));
    const history = await system.stores.configStore.history(10);
    expect(history.map((h) => h.field)).toEqual(expect.arrayContaining(['paused', 'draining']));
  }, 60_000);

  it('Idempotency-Key: a completed request is not run twice; a concurrent duplicate attaches, one upstream call', async () => {
    const key = await system.createKey('idem', 'urgent');
    sent += 1;
    const first = await chat(system, key, { 'idempotency-key': 'job-1' });
    expect(first.status).toBe(200);
    await first.text();
    const again = await chat(system, key, { 'idempotency-key': 'job-1' });
    expect(again.status).toBe(409);
    // The openai SDK retries a 409 unless told not to.
    expect(again.headers.get('x-should-retry')).toBe('false');
    expect(((await again.json()) as { error: { code: string } }).error.code).toBe(
      'idempotent_request_completed',
    );

    // Concurrent duplicates while the gateway is paused: both wait on one ticket; one answer, one 409.
    await system.stores.config.update({ paused: true }, 'test');
    sent += 1;
    const callsBefore = system.upstream!.calls.length;
    const a = chat(system, key, { 'idempotency-key': 'job-2' });
    await eventually(async () =>
      (await auditTickets(system)).tickets.find((t) => t.idempotencyKey === 'job-2'),
    );
    const b = chat(system, key, { 'idempotency-key': 'job-2' });
    await new Promise((r) => setTimeout(r, 500));
    await system.stores.config.update({ paused: false }, 'test');
    // Whichever waiter loses (it may find the ticket still running or already completed) gets the 409.
    const replies = await Promise.all([a, b]);
    const statuses = replies.map((r) => r.status).sort();
    expect(statuses).toEqual([200, 409]);
    const loser = replies.find((r) => r.status === 409) as Response;
    expect(((await loser.json()) as { error: { code: string } }).error.code).toMatch(
      /^idempotency_key_in_use$|^idempotent_request_completed$/,
    );
    expect(system.upstream!.calls.length - callsBefore).toBe(1);
    const bad = await chat(system, key, { 'idempotency-key': 'x'.repeat(300) });
    expect(bad.status).toBe(400);
  }, 60_000);
});

describe('pause is exact (issue 12)', () => {
  let system: LocalSystem;
  beforeAll(async () => {
    system = await startTestSystem('ctl-pause-exact', {
      fakeUpstream: { tokenDelayMs: 1, firstByteDelayMs: 1, limit: null },
      // 10 grants/s: a steady stream of grants (and reservations one interval ahead) while the pause lands.
      env: { SLUICE_UPSTREAM_LIMIT: '600', SLUICE_BUCKET_BURST: '2' },
      extraRoutes: statusRoutes,
    });
  });
  afterAll(async () => {
    await system?.stop();
  });

  it('after POST /admin/pause returns, no request reaches the upstream (the grant and the claim check the stored flag)', async () => {
    const key = await system.createKey('pause-exact', 'urgent');
    const pending = Array.from({ length: 40 }, () => chat(system, key));
    await eventually(async () => (system.upstream!.calls.length >= 5 ? true : undefined), 30_000, 20);
    const res = await fetch(`${system.url}/admin/pause`, {
      method: 'POST',
      headers: { authorization: `Bearer ${system.adminToken}` },
    });
    expect(res.status).toBe(200);
    const pausedAt = Date.now();
    // Well past the config cache (2 s) and many grant intervals.
    await new Promise((r) => setTimeout(r, 3_000));
    const tickets = (await auditTickets(system)).tickets.filter((t) => t.agent === 'pause-exact');
    // Every call the upstream saw belongs to a ticket claimed before the pause returned; none claimed since.
    const claimedBefore = tickets.filter((t) => t.claimedAt !== undefined && t.claimedAt < pausedAt).length;
    expect(tickets.filter((t) => t.claimedAt !== undefined && t.claimedAt >= pausedAt)).toEqual([]);
    expect(system.upstream!.calls.length).toBe(claimedBefore);
    expect(tickets.filter((t) => t.status === 'queued').length).toBeGreaterThan(0);

    await fetch(`${system.url}/admin/resume`, {
      method: 'POST',
      headers: { authorization: `Bearer ${system.adminToken}` },
    });
    const replies = await Promise.all(pending);
    expect(replies.every((r) => r.status === 200)).toBe(true);
    await Promise.all(replies.map((r) => r.text()));
    expect(system.upstream!.calls.length).toBe(40);
  }, 90_000);
});
