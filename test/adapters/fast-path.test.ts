// DynamoDB ticket store on DynamoDB Local: the per-priority queued counters follow every move in and out of
// `queued`, the fast-path grant is one transaction refused by any of its conditions, and a fast-path request costs
// the store two calls (the grant; the end with the agent's usage).
import { randomUUID } from 'node:crypto';
import { PutItemCommand } from '@aws-sdk/client-dynamodb';
import { marshall } from '@aws-sdk/util-dynamodb';
import { afterEach, describe, expect, it } from 'vitest';
import { DynamoBucketStore } from '../../lib/adapters/dynamo/bucket-store.js';
import { stateKey } from '../../lib/adapters/dynamo/common.js';
import { DynamoTicketStore } from '../../lib/adapters/dynamo/ticket-store.js';
import { DynamoUsageStore } from '../../lib/adapters/dynamo/usage-store.js';
import { MemoryOutcomeStore } from '../../lib/adapters/memory/stores.js';
import { MemoryLeaseStore, MemoryTicketQueue } from '../../lib/adapters/memory/tickets.js';
import { Admission } from '../../lib/domain/admission.js';
import { TokenBucket } from '../../lib/domain/bucket.js';
import { FakeClock } from '../../lib/domain/clock.js';
import { DEFAULT_CONFIG } from '../../lib/domain/config.js';
import type { ConsumeAttempt } from '../../lib/domain/gcra.js';
import { type Priority, priorityRank } from '../../lib/domain/priority.js';
import type { Ticket } from '../../lib/domain/tickets.js';
import { type TestResources, testResources } from '../support/aws.js';

const PARAMS = { intervalMs: 1000, burst: 2 };
const opened: TestResources[] = [];

afterEach(() => {
  for (const r of opened.splice(0)) r.close();
});

/** A store on tables of its own: the counters start at zero. */
const fresh = async () => {
  const res = await testResources('fast-path');
  opened.push(res);
  // Real epoch: DynamoDB Local runs TTL deletion.
  const clock = new FakeClock(Date.now());
  const tickets = new DynamoTicketStore(res.dynamo, {
    ticketsTable: res.names.ticketsTable,
    stateTable: res.names.stateTable,
  });
  const bucket = new TokenBucket(new DynamoBucketStore(res.dynamo, res.names.stateTable), clock, {
    fraction: 0,
    forNormal: false,
  });
  await bucket.configure(PARAMS);
  /** A consume attempt that holds now (the clock moves past the bucket's tat first). */
  const attempt = async (): Promise<ConsumeAttempt> => {
    clock.advance(PARAMS.intervalMs * PARAMS.burst + 1);
    await bucket.refresh();
    const plan = bucket.plan('urgent');
    if (!('attempt' in plan)) throw new Error('bucket unexpectedly empty');
    return plan.attempt;
  };
  const ticket = (priority: Priority, over: Partial<Ticket> = {}): Ticket => ({
    id: `tk-${randomUUID()}`,
    agent: 'agent-a',
    priority,
    model: 'm',
    stream: false,
    status: 'queued',
    attempt: 0,
    enqueuedAt: clock.now(),
    deadline: clock.now() + 240_000,
    ...over,
  });
  const claimed = (priority: Priority): Ticket =>
    ticket(priority, {
      status: 'claimed',
      grantedAt: clock.now(),
      claimedAt: clock.now(),
      claimBy: clock.now() + 60_000,
    });
  const queue = async (priority: Priority) => {
    const t = ticket(priority);
    await tickets.create(t, { queueMaxSize: 1000 });
    return t;
  };
  const setPaused = (paused: boolean) =>
    res.dynamo.send(
      new PutItemCommand({
        TableName: res.names.stateTable,
        Item: {
          ...marshall({ config: { ...DEFAULT_CONFIG, paused }, version: 2, updatedAt: 0, updatedBy: 'test' }),
          ...stateKey('config', 'current'),
        },
      }),
    );
  return { res, clock, tickets, bucket, attempt, ticket, claimed, queue, setPaused };
};

describe('per-priority queued counters', () => {
  it('move with create, grant, requeue, drop, end and reconcile, and agree with the tickets', async () => {
    // Prepare
    const s = await fresh();
    const zero = { urgent: 0, high: 0, normal: 0, low: 0 };
    expect(await s.tickets.queuedByPriority()).toEqual(zero);

    // Act + Assess: every move in and out of `queued`
    const u = await s.queue('urgent');
    const n1 = await s.queue('normal');
    const n2 = await s.queue('normal');
    const low = await s.queue('low');
    expect(await s.tickets.queuedByPriority()).toEqual({ urgent: 1, high: 0, normal: 2, low: 1 });

    // The dispatcher's grant gives neither agent nor priority: the store finds them.
    expect((await s.tickets.grant({ id: u.id, attempt: 0 }, await s.attempt(), { grantedAt: 1 })).kind).toBe(
      'granted',
    );
    await s.tickets.transition(u.id, 'granted', 'claimed', { claimedAt: 2, claimBy: s.clock.now() + 60_000 });
    expect((await s.tickets.queuedByPriority()).urgent).toBe(0);
    // Requeue after an upstream 429 counts it again.
    await s.tickets.transition(u.id, 'claimed', 'queued', { reason: 'upstream_throttled' });
    expect((await s.tickets.queuedByPriority()).urgent).toBe(1);
    await s.tickets.transition(n1.id, 'queued', 'abandoned', { finishedAt: 3, reason: 'x' });
    // drop_lowest: the low victim leaves, the new high ticket enters, in one transaction.
    const high = s.ticket('high');
    await s.tickets.create(high, { queueMaxSize: 1000, replace: low });
    expect(await s.tickets.queuedByPriority()).toEqual({ urgent: 1, high: 1, normal: 1, low: 0 });
    // A victim of the same priority leaves its count unchanged.
    await s.tickets.create(s.ticket('normal'), { queueMaxSize: 1000, replace: n2 });
    expect(await s.tickets.queuedByPriority()).toEqual({ urgent: 1, high: 1, normal: 1, low: 0 });

    // Reconcile repairs drift to the true numbers.
    await s.res.dynamo.send(
      new PutItemCommand({
        TableName: s.res.names.stateTable,
        Item: { ...stateKey('queuedp', 'low'), queued: { N: '7' } },
      }),
    );
    await s.tickets.reconcileAdmission();
    expect(await s.tickets.queuedByPriority()).toEqual({ urgent: 1, high: 1, normal: 1, low: 0 });
    expect(await s.tickets.admissionCount()).toBe(3);
  });
});

describe('fastGrant: one transaction, refused by any of its conditions', () => {
  it('grants when idle: the ticket is written claimed, counted in flight, and the token spent', async () => {
    // Prepare
    const s = await fresh();
    const t = s.claimed('normal');
    const attempt = await s.attempt();

    // Act
    const out = await s.tickets.fastGrant(t, attempt, { maxInflight: 0 });

    // Assess
    expect(out).toEqual({ kind: 'granted' });
    expect(await s.tickets.get(t.id)).toMatchObject({ status: 'claimed', claimBy: t.claimBy });
    expect(await s.tickets.counts()).toEqual({ queued: 0, inflight: 1 });
    expect((await s.bucket.refresh())?.tat).toBeGreaterThan(attempt.now);
    // It ends like any claimed ticket, and the in-flight count with it.
    await s.tickets.transition(t.id, 'claimed', 'completed', { finishedAt: s.clock.now() }, { known: t });
    expect(await s.tickets.counts()).toEqual({ queued: 0, inflight: 0 });
  });

  it.each<[string, Priority, Priority, 'queue_busy' | 'granted']>([
    ['more important queued', 'low', 'urgent', 'queue_busy'],
    ['same priority queued', 'normal', 'normal', 'queue_busy'],
    ['only less important queued', 'high', 'low', 'granted'],
  ])('%s: a %s request against a queued %s ticket is %s', async (_name, mine, queued, expected) => {
    // Prepare
    const s = await fresh();
    await s.queue(queued);
    const t = s.claimed(mine);

    // Act
    const out = await s.tickets.fastGrant(t, await s.attempt(), { maxInflight: 0 });

    // Assess: a busy queue says how many wait ahead (the ingress backs off about as long as they take), and the
    // count of each priority it checked (fail fast's estimate, without a read)
    const seen = { urgent: 0, high: 0, normal: 0, low: 0, [queued]: 1 };
    const checked = Object.fromEntries(
      Object.entries(seen).filter(([p]) => priorityRank(p as Priority) <= priorityRank(mine)),
    );
    expect(out).toEqual(
      expected === 'granted' ? { kind: 'granted' } : { kind: 'queue_busy', queued: 1, queuedSeen: checked },
    );
    expect(!!(await s.tickets.get(t.id))).toBe(expected === 'granted');
  });

  it('with an Idempotency-Key: maps the key to the ticket in the same transaction; a held key writes nothing', async () => {
    // Prepare
    const s = await fresh();
    const idempotency = { key: 'agent-a#k1', untilMs: s.clock.now() + 600_000 };
    const first = s.claimed('normal');

    // Act
    const granted = await s.tickets.fastGrant(first, await s.attempt(), { maxInflight: 0, idempotency });
    const second = s.claimed('normal');
    const held = await s.tickets.fastGrant(second, await s.attempt(), { maxInflight: 0, idempotency });
    const queued = s.ticket('normal');
    const create = await s.tickets.create(queued, { queueMaxSize: 1000, idempotency }).then(
      () => undefined,
      (err: unknown) => err,
    );

    // Assess: the key points at the first ticket (the queue's create finds it), nothing else was written
    expect(granted).toEqual({ kind: 'granted' });
    expect(held).toEqual({ kind: 'idempotency_held', queuedSeen: { urgent: 0, high: 0, normal: 0 } });
    expect(await s.tickets.get(second.id)).toBeUndefined();
    expect(create).toMatchObject({ name: 'IdempotencyConflictError', ticketId: first.id });
    expect(await s.tickets.counts()).toEqual({ queued: 0, inflight: 1 });
  });

  it('is refused while the stored config is paused, and writes nothing', async () => {
    // Prepare
    const s = await fresh();
    await s.setPaused(true);
    const t = s.claimed('urgent');
    const before = await s.bucket.refresh();

    // Act
    const out = await s.tickets.fastGrant(t, await s.attempt(), { maxInflight: 0 });

    // Assess
    expect(out).toEqual({ kind: 'paused', queuedSeen: { urgent: 0 } });
    expect(await s.tickets.get(t.id)).toBeUndefined();
    expect((await s.bucket.refresh())?.tat).toBe(before?.tat);
    await s.setPaused(false);
    expect((await s.tickets.fastGrant(s.claimed('urgent'), await s.attempt(), { maxInflight: 0 })).kind).toBe(
      'granted',
    );
  });

  it('is refused at max_inflight', async () => {
    const s = await fresh();
    expect((await s.tickets.fastGrant(s.claimed('urgent'), await s.attempt(), { maxInflight: 1 })).kind).toBe(
      'granted',
    );
    const out = await s.tickets.fastGrant(s.claimed('urgent'), await s.attempt(), { maxInflight: 1 });
    expect(out.kind).toBe('inflight_full');
    expect(await s.tickets.counts()).toEqual({ queued: 0, inflight: 1 });
  });

  it('a stale bucket attempt is a bucket conflict that returns the current state', async () => {
    // Prepare
    const s = await fresh();
    const stale = await s.attempt();
    // Another writer spends first.
    expect((await s.tickets.fastGrant(s.claimed('urgent'), stale, { maxInflight: 0 })).kind).toBe('granted');
    const t = s.claimed('urgent');

    // Act
    const out = await s.tickets.fastGrant(t, stale, { maxInflight: 0 });

    // Assess
    expect(out.kind).toBe('bucket_conflict');
    expect(out.kind === 'bucket_conflict' && out.current?.tat).toBeGreaterThan(stale.now);
    expect(await s.tickets.get(t.id)).toBeUndefined();
    expect(await s.tickets.counts()).toEqual({ queued: 0, inflight: 1 });
  });
});

describe('fastGrant refused: the queued counts its checks told', () => {
  it('a busy queue and a spent token at once: the count of its priority and each more important one (a held check: 0)', async () => {
    // Prepare: 2 urgent, 1 normal and 1 low ticket wait; the attempt is stale (another writer spent first)
    const s = await fresh();
    for (const p of ['urgent', 'urgent', 'normal', 'low'] as const) await s.queue(p);
    const stale = await s.attempt();
    expect(
      (await s.tickets.fastGrant(s.claimed('urgent'), stale, { maxInflight: 0, ignoreQueued: true })).kind,
    ).toBe('granted');

    // Act
    const out = await s.tickets.fastGrant(s.claimed('normal'), stale, { maxInflight: 0 });

    // Assess: every condition was evaluated and reported (two failed checks and the bucket), so the held one is 0
    expect(out).toMatchObject({
      kind: 'queue_busy',
      queued: 3,
      queuedSeen: { urgent: 2, high: 0, normal: 1 },
    });
    expect(out.kind !== 'granted' && out.queuedSeen).toEqual({ urgent: 2, high: 0, normal: 1 });
    // …and the bucket as stored (the other writer's token taken), which admission's estimate then starts from
    expect(out.kind !== 'granted' && out.bucketSeen?.tat).toBeGreaterThan(stale.now);
  });

  it('a roomy grant checks no counter: its refusal tells none', async () => {
    const s = await fresh();
    await s.queue('urgent');
    const out = await s.tickets.fastGrant(s.claimed('normal'), await s.attempt(), {
      maxInflight: 0,
      ignoreQueued: true,
    });
    expect(out.kind).toBe('granted');
    const full = await s.tickets.fastGrant(s.claimed('normal'), await s.attempt(), {
      maxInflight: 1,
      ignoreQueued: true,
    });
    expect(full).toEqual({ kind: 'inflight_full' });
  });
});

describe('a fast-path request on the store side: the grant and the end, two calls', () => {
  it('admits on the fast path and finishes with the agent usage in the end transaction, no call of its own', async () => {
    // Prepare: Admission on the DynamoDB stores, every DynamoDB call counted
    const s = await fresh();
    const calls: string[] = [];
    s.res.dynamo.middlewareStack.add(
      (next, context) => async (args) => {
        calls.push(String(context.commandName).replace(/Command$/, ''));
        return next(args);
      },
      { step: 'initialize', name: 'countCalls' },
    );
    const usage = new DynamoUsageStore(s.res.dynamo, s.res.names.stateTable);
    const admission = new Admission({
      tickets: s.tickets,
      queue: new MemoryTicketQueue(s.clock),
      lease: new MemoryLeaseStore(s.clock),
      outcomes: new MemoryOutcomeStore(),
      bucket: s.bucket,
      wakeDispatcher: async () => {},
      clock: s.clock,
      newId: () => `tk-${randomUUID()}`,
      usage,
    });
    await s.attempt();
    // Refused plain writes land on the slot's own item, beside the transaction's twin: the view sums both.
    await usage.record('agent-u', s.clock.now(), { requests: 1, refused: 1 });
    calls.length = 0;

    // Act
    const admitted = await admission.admit(
      {
        agent: 'agent-u',
        priority: 'urgent',
        model: 'm',
        stream: false,
        deadline: s.clock.now() + 60_000,
        callBudgetMs: 60_000,
      },
      DEFAULT_CONFIG,
    );
    await admission.finish(admitted.ticket, 'completed', { upstreamStatus: 200, totalTokens: 42 });

    // Assess
    expect(admitted.claimed).toBe(true);
    expect(calls).toEqual(['TransactWriteItems', 'TransactWriteItems']);
    expect(await s.tickets.get(admitted.ticket.id)).toMatchObject({ status: 'completed' });
    expect(await s.tickets.counts()).toEqual({ queued: 0, inflight: 0 });
    expect(await usage.read(s.clock.now(), 'hour')).toEqual([
      { agent: 'agent-u', requests: 2, tokens: 42, throttled: 0, refused: 1, avgQueueMs: 0 },
    ]);
  });
});
