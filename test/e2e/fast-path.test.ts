// The fast path and fail-fast end to end, with DynamoDB and SQS calls counted by proxies in front of the
// emulators: a request on an idle gateway is granted by its own ingress (no queue, no dispatcher); one behind a
// more important request, or after a pause, queues; one that cannot be served within its wait is refused at once.
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { type CountingProxy, startCountingProxy } from '../../bench/support/counting-proxy.js';
import type { LocalSystem } from '../../local/runtime.js';
import { auditTickets, eventually, startTestSystem } from '../support/system.js';

const MODEL = 'meta/llama-3.1-8b-instruct';
const chat = (system: LocalSystem, key: string, headers: Record<string, string> = {}) =>
  fetch(`${system.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json', ...headers },
    body: JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'x' }] }),
  });

describe('fast path on an idle gateway', () => {
  let system: LocalSystem;
  let dynamo: CountingProxy;
  let sqs: CountingProxy;
  beforeAll(async () => {
    const emulators = inject('emulators');
    dynamo = await startCountingProxy(emulators.dynamoEndpoint);
    sqs = await startCountingProxy(emulators.sqsEndpoint);
    system = await startTestSystem('fast-idle', {
      emulators: { dynamoEndpoint: dynamo.endpoint, sqsEndpoint: sqs.endpoint },
      fakeUpstream: { tokenDelayMs: 2, firstByteDelayMs: 5, limit: null },
      env: { SLUICE_UPSTREAM_LIMIT: '6000', SLUICE_BUCKET_BURST: '20' },
    });
  });
  afterAll(async () => {
    const audit = await auditTickets(system);
    expect(audit.open).toEqual([]);
    await system?.stop();
    await dynamo?.stop();
    await sqs?.stop();
  });

  it('serves sequential requests with no SQS call and 3 DynamoDB writes each (plus config re-reads), every ticket completed', async () => {
    // Prepare: the first request reads the key, the config and the bucket once for this container.
    const key = await system.createKey('fast', 'normal');
    const client = new OpenAI({ baseURL: `${system.url}/v1`, apiKey: key, maxRetries: 0 });
    await client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'warm' }] });
    // The warm request took the fast path (the ingress writes a missing bucket itself): the dispatcher's first run
    // and its one-off writes (the config's first version) come before the counting too.
    system.lambda.invokeAsync('sluice-dispatcher');
    await system.lambda.idle();
    dynamo.reset();
    sqs.reset();

    // Act
    const n = 8;
    for (let i = 0; i < n; i++)
      await client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'x' }] });

    // Assess: each outcome is written right after its reply, before its invocation returns
    await system.settled();
    expect(sqs.total()).toBe(0);
    expect(dynamo.counts.get('TransactWriteItems')).toBe(2 * n);
    // Fast grant, outcome, ticket end with the agent's usage in it; a config re-read every 2 s at most on top.
    expect(dynamo.counts.get('UpdateItem')).toBe(n);
    expect(dynamo.total() / n).toBeLessThanOrEqual(4);
    const audit = await auditTickets(system);
    expect(audit.counts).toEqual({ completed: n + 1 });
    expect(await system.stores.tickets.counts()).toEqual({ queued: 0, inflight: 0 });
    expect(await system.stores.tickets.queuedByPriority()).toEqual({ urgent: 0, high: 0, normal: 0, low: 0 });
  });
});

describe('fast path refused: queued behind more important requests', () => {
  let system: LocalSystem;
  beforeAll(async () => {
    // 20 per 10 s, burst 1: a token every 500 ms, so urgent requests sent together wait for each other. A window of
    // 10 s keeps the default 1 s grant slack (a shorter one gets a tenth of itself, which a loaded machine's claim
    // and send can outlast: the grant is then handed back and granted again after the low one).
    system = await startTestSystem('fast-order', {
      fakeUpstream: { tokenDelayMs: 2, firstByteDelayMs: 5, limit: null },
      env: { SLUICE_UPSTREAM_LIMIT: '20', SLUICE_UPSTREAM_WINDOW_S: '10', SLUICE_BUCKET_BURST: '1' },
    });
  });
  afterAll(async () => {
    await eventually(async () => ((await auditTickets(system)).open.length === 0 ? true : undefined));
    await system?.stop();
  });

  it('a low request arriving while urgent ones wait is served after all of them', async () => {
    const key = await system.createKey('order', 'urgent');
    const urgent = Array.from({ length: 4 }, () => chat(system, key, { 'x-priority': 'urgent' }));
    await eventually(async () =>
      (await system.stores.tickets.queuedByPriority()).urgent > 0 ? true : undefined,
    );
    const low = chat(system, key, { 'x-priority': 'low' });
    const replies = await Promise.all([...urgent, low]);
    expect(replies.map((r) => r.status)).toEqual([200, 200, 200, 200, 200]);
    await Promise.all(replies.map((r) => r.text()));

    const tickets = (await auditTickets(system)).tickets.filter((t) => t.agent === 'order');
    const lowTicket = tickets.find((t) => t.priority === 'low')!;
    const urgentTickets = tickets.filter((t) => t.priority === 'urgent');
    expect(urgentTickets).toHaveLength(4);
    for (const u of urgentTickets) expect(lowTicket.grantedAt!).toBeGreaterThan(u.grantedAt!);
    // The low one queued (its grant came after its admission), it was not granted by its ingress.
    expect(lowTicket.grantedAt! - lowTicket.enqueuedAt).toBeGreaterThan(0);
  }, 60_000);
});

describe('fast path refused while paused', () => {
  let system: LocalSystem;
  beforeAll(async () => {
    // Tokens always free: only the pause can keep the request from its fast grant.
    system = await startTestSystem('fast-pause', {
      fakeUpstream: { tokenDelayMs: 2, firstByteDelayMs: 5, limit: null },
      env: { SLUICE_UPSTREAM_LIMIT: '6000', SLUICE_BUCKET_BURST: '20' },
    });
  });
  afterAll(async () => {
    await eventually(async () => ((await auditTickets(system)).open.length === 0 ? true : undefined));
    await system?.stop();
  });

  it('a request sent after the pause write returns never reaches the upstream until resume', async () => {
    const key = await system.createKey('paused', 'urgent');
    // The ingress has just read the config (not paused) and caches it for 2 s.
    const warm = await chat(system, key);
    expect(warm.status).toBe(200);
    await warm.text();
    const before = system.upstream!.calls.length;
    // What POST /admin/pause does: the stored config says paused when it returns.
    await system.stores.config.update({ paused: true }, 'test');

    const pending = chat(system, key);
    const ticket = await eventually(async () =>
      (await auditTickets(system)).tickets.find((t) => t.agent === 'paused' && t.status === 'queued'),
    );
    await new Promise((r) => setTimeout(r, 3_000));
    expect(system.upstream!.calls.length).toBe(before);
    expect((await system.stores.tickets.get(ticket.id))?.status).toBe('queued');

    await system.stores.config.update({ paused: false }, 'test');
    expect((await pending).status).toBe(200);
  }, 60_000);
});

describe('fail fast at admission', () => {
  let system: LocalSystem;
  beforeAll(async () => {
    // 2 per 120 s, spaced: after one grant the next is about a minute away, beyond the 10 s max wait.
    system = await startTestSystem('fast-fail', {
      fakeUpstream: { tokenDelayMs: 2, firstByteDelayMs: 5, limit: null },
      env: {
        SLUICE_UPSTREAM_LIMIT: '2',
        SLUICE_UPSTREAM_WINDOW_S: '120',
        SLUICE_RETREAT_FLOOR_RPM: '1',
        SLUICE_BUCKET_BURST: '1',
        SLUICE_MAX_WAIT_S: '10',
      },
    });
  });
  afterAll(async () => {
    const audit = await auditTickets(system);
    expect(audit.open).toEqual([]);
    await system?.stop();
  });

  it('answers 429 queue_wait_exceeded at once, headers from the estimate (≤ 60 s), the body giving it', async () => {
    const key = await system.createKey('hopeless', 'normal');
    const first = await chat(system, key);
    expect(first.status).toBe(200);
    await first.text();

    const t0 = Date.now();
    const refused = await chat(system, key);
    const took = Date.now() - t0;

    expect(refused.status).toBe(429);
    const body = (await refused.json()) as { error: { code: string; message: string } };
    expect(body.error.code).toBe('queue_wait_exceeded');
    expect(body.error.message).toMatch(/Estimated queue wait (\d+) s exceeds this request's maximum wait/);
    const estimateS = Number(/Estimated queue wait (\d+) s/.exec(body.error.message)![1]);
    expect(estimateS).toBeGreaterThan(10);
    const retryMs = Number(refused.headers.get('retry-after-ms'));
    expect(retryMs).toBeGreaterThan(10_000);
    expect(retryMs).toBeLessThanOrEqual(Math.min(60_000, estimateS * 1000));
    expect(Number(refused.headers.get('retry-after'))).toBe(Math.min(60, Math.ceil(retryMs / 1000)));
    // At once: no wait in the queue (generous bound for a loaded machine; the wait would be ≥ 10 s).
    expect(took).toBeLessThan(5_000);
    const tickets = (await auditTickets(system)).tickets.filter((t) => t.agent === 'hopeless');
    expect(tickets).toHaveLength(1);
  });
});
