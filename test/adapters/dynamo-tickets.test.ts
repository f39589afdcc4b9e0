// Adapter tests: DynamoTicketStore on DynamoDB Local — admission counter, grant transaction, transitions, sweeps.
import { randomUUID } from 'node:crypto';
import {
  DynamoDBClient,
  PutItemCommand,
  TransactionCanceledException,
  TransactWriteItemsCommand,
  UpdateItemCommand,
} from '@aws-sdk/client-dynamodb';
import { mockClient } from 'aws-sdk-client-mock';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { DynamoBucketStore } from '../../lib/adapters/dynamo/bucket-store.js';
import { CONFIG_ITEM_KEY, stateKey } from '../../lib/adapters/dynamo/common.js';
import { DynamoTicketStore } from '../../lib/adapters/dynamo/ticket-store.js';
import { MemoryOutcomeStore } from '../../lib/adapters/memory/stores.js';
import { MemoryLeaseStore, MemoryTicketQueue } from '../../lib/adapters/memory/tickets.js';
import { Admission } from '../../lib/domain/admission.js';
import { TokenBucket } from '../../lib/domain/bucket.js';
import { FakeClock } from '../../lib/domain/clock.js';
import { AdmissionFullError, ConflictError } from '../../lib/domain/errors.js';
import type { ConsumeAttempt } from '../../lib/domain/gcra.js';
import {
  canTransition,
  TICKET_STATUSES,
  type Ticket,
  type TicketPatch,
  type TicketStatus,
  TRANSITIONS,
} from '../../lib/domain/tickets.js';
import { type TestResources, testDynamoClient, testResources } from '../support/aws.js';

let res: TestResources;
/** Every test shares the table's admission counter, so counts are asserted as deltas. */
let tickets: DynamoTicketStore;
let bucketStore: DynamoBucketStore;
let bucket: TokenBucket;
// Real epoch: DynamoDB Local runs TTL deletion, and tickets of FakeClock's default 2023 epoch expire at once.
const clock = new FakeClock(Date.now());
const PARAMS = { intervalMs: 1000, burst: 2 };
const RESERVE = { fraction: 0.5, forNormal: false };

beforeAll(async () => {
  res = await testResources('dynamo-tickets');
  const bucketKey = `tickets-${randomUUID()}`;
  tickets = new DynamoTicketStore(res.dynamo, {
    ticketsTable: res.names.ticketsTable,
    stateTable: res.names.stateTable,
    bucketKey,
  });
  bucketStore = new DynamoBucketStore(res.dynamo, res.names.stateTable, bucketKey);
  bucket = new TokenBucket(bucketStore, clock, RESERVE);
  await bucket.configure(PARAMS);
});

afterAll(() => {
  res?.close();
});

const newTicket = (overrides: Partial<Ticket> = {}): Ticket => ({
  id: `tk-${randomUUID()}`,
  agent: 'agent-a',
  priority: 'normal',
  model: 'nvidia/llama',
  stream: false,
  status: 'queued',
  attempt: 0,
  enqueuedAt: clock.now(),
  deadline: clock.now() + 240_000,
  ...overrides,
});

/** Creates a queued ticket without a size limit that matters. */
const created = async (overrides: Partial<Ticket> = {}): Promise<Ticket> => {
  const t = newTicket(overrides);
  await tickets.create(t, { queueMaxSize: 1_000_000 });
  return t;
};

/** A consume attempt that holds right now: the clock moves one interval on, so the bucket is idle again. */
const freshAttempt = async (): Promise<ConsumeAttempt> => {
  clock.advance(PARAMS.intervalMs + 1);
  await bucket.refresh();
  const plan = bucket.plan('urgent');
  if (!('attempt' in plan)) throw new Error(`bucket unexpectedly empty: wait ${plan.waitMs}`);
  return plan.attempt;
};

const grantPatch = (): TicketPatch => ({ grantedAt: clock.now(), claimBy: clock.now() + 30_000 });

const mustMove = async (
  id: string,
  from: TicketStatus,
  to: TicketStatus,
  patch: TicketPatch = {},
  attempt?: number,
): Promise<Ticket> => {
  const out = await tickets.transition(id, from, to, patch, attempt === undefined ? {} : { attempt });
  if (!('ticket' in out))
    throw new Error(`could not move ${id} ${from} → ${to}: ${JSON.stringify(out.conflict)}`);
  return out.ticket;
};

/** Creates a ticket and drives it to `status` through legal moves only. */
const ticketIn = async (status: TicketStatus): Promise<Ticket> => {
  const t = await created();
  const end = { finishedAt: clock.now(), reason: 'test' };
  switch (status) {
    case 'queued':
      return t;
    case 'abandoned':
    case 'expired':
    case 'dropped':
    case 'rejected':
      return mustMove(t.id, 'queued', status, end);
    default: {
      const g = await tickets.grant(t, await freshAttempt(), grantPatch());
      if (g.kind !== 'granted') throw new Error(`grant failed: ${g.kind}`);
      if (status === 'granted') return (await tickets.get(t.id))!;
      if (status === 'failed') return mustMove(t.id, 'granted', 'failed', end);
      const claimed = await mustMove(t.id, 'granted', 'claimed', {
        claimedAt: clock.now(),
        claimBy: clock.now() + 60_000,
      });
      if (status === 'claimed') return claimed;
      if (status === 'completed') return mustMove(t.id, 'claimed', 'completed', end);
      throw new Error(`unreachable status ${status}`);
    }
  }
};

describe('create: admission counter and ticket in one transaction', () => {
  it.each([1, 3])('refuses exactly at queueMaxSize (room for %i) and writes nothing then', async (room) => {
    // Prepare
    const base = await tickets.admissionCount();
    const queueMaxSize = base + room;
    const admitted: Ticket[] = [];
    for (let i = 0; i < room; i++) {
      const t = newTicket();
      await tickets.create(t, { queueMaxSize });
      admitted.push(t);
    }
    const overflow = newTicket();

    // Act
    const err = await tickets.create(overflow, { queueMaxSize }).catch((e: unknown) => e);

    // Assess
    expect(err).toBeInstanceOf(AdmissionFullError);
    expect((err as AdmissionFullError).count).toBe(queueMaxSize);
    expect(await tickets.get(overflow.id)).toBeUndefined();
    expect(await tickets.admissionCount()).toBe(queueMaxSize);
    for (const t of admitted) expect(await tickets.get(t.id)).toEqual(t);
  });

  it('an SDK retry of the same create (same request token) succeeds and counts once', async () => {
    // Prepare
    const t = newTicket();
    const base = await tickets.admissionCount();
    await tickets.create(t, { queueMaxSize: 1_000_000 });

    // Act
    await tickets.create(t, { queueMaxSize: 1_000_000 });

    // Assess
    expect(await tickets.admissionCount()).toBe(base + 1);
    expect(await tickets.get(t.id)).toEqual(t);
  });

  it('a second, different create of the same id writes and counts nothing', async () => {
    // Prepare
    const t = await created();
    const base = await tickets.admissionCount();

    // Act
    const err = await tickets
      .create({ ...t, agent: 'someone-else' }, { queueMaxSize: 1_000_000 })
      .catch((e: unknown) => e);

    // Assess
    expect(err).toBeInstanceOf(Error);
    expect(await tickets.admissionCount()).toBe(base);
    expect((await tickets.get(t.id))?.agent).toBe('agent-a');
  });

  // Regression (lib/adapters/dynamo/ticket-store.ts, create, fixed): the token is `create#id` only, so a different create of an
  // existing id within 10 minutes fails with the SDK's raw IdempotentParameterMismatchException, not ConflictError.
  it('a second, different create of the same id is a ConflictError', async () => {
    const t = await created();
    const err = await tickets
      .create({ ...t, agent: 'someone-else' }, { queueMaxSize: 1_000_000 })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConflictError);
  });

  it('replace (drop_lowest) drops the victim and adds the newcomer with the count unchanged', async () => {
    // Prepare: the queue is full.
    const victim = await created({ priority: 'low' });
    const full = await tickets.admissionCount();
    const newcomer = newTicket({ priority: 'high' });

    // Act
    await tickets.create(newcomer, {
      queueMaxSize: full,
      replace: { id: victim.id, attempt: victim.attempt },
    });

    // Assess
    expect(await tickets.get(victim.id)).toMatchObject({ status: 'dropped', reason: 'dropped_for_newer' });
    expect(await tickets.get(newcomer.id)).toEqual(newcomer);
    expect(await tickets.admissionCount()).toBe(full);
  });

  it.each([
    ['no longer queued', 'abandoned' as const, 0],
    ['requeued under a newer attempt', 'queued' as const, 1],
  ])('replace of a victim %s is a conflict and writes nothing', async (_name, victimStatus, staleBy) => {
    // Prepare
    const victim = await created({ priority: 'low', attempt: staleBy });
    if (victimStatus !== 'queued') await mustMove(victim.id, 'queued', victimStatus, { reason: 'test' });
    const base = await tickets.admissionCount();
    const newcomer = newTicket();

    // Act
    const err = await tickets
      .create(newcomer, { queueMaxSize: base, replace: { id: victim.id, attempt: 0 } })
      .catch((e: unknown) => e);

    // Assess
    expect(err).toBeInstanceOf(ConflictError);
    expect(await tickets.get(newcomer.id)).toBeUndefined();
    expect((await tickets.get(victim.id))?.status).toBe(victimStatus);
    expect(await tickets.admissionCount()).toBe(base);
  });
});

describe('grant: token and queued → granted in one transaction', () => {
  it('consumes a token, flips the ticket and decrements the counter', async () => {
    // Prepare
    const t = await created({ priority: 'high' });
    const attempt = await freshAttempt();
    const tatBefore = (await bucketStore.get())?.tat ?? 0;
    const patch = grantPatch();
    const base = await tickets.admissionCount();

    // Act
    const out = await tickets.grant(t, attempt, patch);

    // Assess
    expect(out).toEqual({ kind: 'granted' });
    expect(await tickets.get(t.id)).toEqual({ ...t, status: 'granted', ...patch });
    expect((await bucketStore.get())?.tat).toBe(
      attempt.branch === 'idle' ? attempt.newTat : tatBefore + PARAMS.intervalMs,
    );
    expect(await tickets.admissionCount()).toBe(base - 1);
  });

  it.each<[string, TicketStatus | 'missing']>([
    ['abandoned', 'abandoned'],
    ['expired', 'expired'],
    ['already granted', 'granted'],
    ['claimed', 'claimed'],
    ['missing', 'missing'],
  ])('a grant of a %s ticket spends no token and returns ticket_conflict', async (_name, status) => {
    // Prepare
    const t = status === 'missing' ? newTicket() : await ticketIn(status);
    const attempt = await freshAttempt();
    const tatBefore = (await bucketStore.get())?.tat;
    const base = await tickets.admissionCount();

    // Act
    const out = await tickets.grant(t, attempt, grantPatch());

    // Assess
    expect(out.kind).toBe('ticket_conflict');
    if (out.kind === 'ticket_conflict') {
      expect(out.current?.status).toBe(status === 'missing' ? undefined : status);
    }
    expect((await bucketStore.get())?.tat).toBe(tatBefore);
    expect(await tickets.admissionCount()).toBe(base);
  });

  it('pause is read inside the transaction: while the stored config says paused, no grant and no claim', async () => {
    // Prepare: one queued and one granted ticket; then the config record (not any cache) says paused.
    const queued = await created();
    const granted = await ticketIn('granted');
    const setPaused = (paused: boolean) =>
      res.dynamo.send(
        new PutItemCommand({
          TableName: res.names.stateTable,
          Item: { ...CONFIG_ITEM_KEY, version: { N: '1' }, config: { M: { paused: { BOOL: paused } } } },
        }),
      );
    await setPaused(true);
    try {
      const attempt = await freshAttempt();
      const tatBefore = (await bucketStore.get())?.tat;
      const base = await tickets.counts();

      // Act
      const grant = await tickets.grant(queued, attempt, grantPatch());
      const claim = await tickets.transition(
        granted.id,
        'granted',
        'claimed',
        { claimedAt: clock.now(), claimBy: clock.now() + 60_000 },
        { attempt: granted.attempt, unlessPaused: true },
      );

      // Assess: nothing written.
      expect(grant).toEqual({ kind: 'paused' });
      expect(claim).toMatchObject({ paused: true });
      expect((await bucketStore.get())?.tat).toBe(tatBefore);
      expect(await tickets.counts()).toEqual(base);
      expect((await tickets.get(queued.id))?.status).toBe('queued');
      expect((await tickets.get(granted.id))?.status).toBe('granted');
    } finally {
      await setPaused(false);
    }
    // Resumed: both go through.
    expect(await tickets.grant(queued, await freshAttempt(), grantPatch())).toEqual({ kind: 'granted' });
    const claimed = await tickets.transition(
      granted.id,
      'granted',
      'claimed',
      { claimedAt: clock.now(), claimBy: clock.now() + 60_000 },
      { attempt: granted.attempt, unlessPaused: true },
    );
    expect('ticket' in claimed && claimed.ticket.status).toBe('claimed');
  });

  it('Admission.claim: one transaction and no read (the claimed ticket is built from the granted one it was given)', async () => {
    // Prepare: a granted ticket as the waiting ingress read it; a store whose client counts the calls it sends.
    const granted = await ticketIn('granted');
    const sent: string[] = [];
    const client = testDynamoClient(res.endpoints);
    client.middlewareStack.add(
      (next, context) => (args) => {
        sent.push(context.commandName ?? '?');
        return next(args);
      },
      { step: 'initialize' },
    );
    const counted = new DynamoTicketStore(client, {
      ticketsTable: res.names.ticketsTable,
      stateTable: res.names.stateTable,
    });
    const admission = new Admission({
      tickets: counted,
      queue: new MemoryTicketQueue(clock),
      lease: new MemoryLeaseStore(clock),
      outcomes: new MemoryOutcomeStore(),
      bucket,
      wakeDispatcher: async () => {},
      clock,
      newId: randomUUID,
    });

    try {
      // Act
      const claimed = await admission.claim(granted, clock.now() + 60_000);

      // Assess: the transaction alone (with the pause check); the result matches the stored ticket.
      expect(sent).toEqual(['TransactWriteItemsCommand']);
      expect(claimed).toEqual(await tickets.get(granted.id));
      expect(claimed).toMatchObject({ status: 'claimed', claimedAt: clock.now() });
    } finally {
      client.destroy();
    }
  });

  it('grantBatch: one bucket write for k tokens, k tickets granted, counters moved by k; a conflict writes nothing', async () => {
    // Prepare: two queued tickets (two agents) and one already granted; the bucket idle with burst 2.
    const a = await created({ agent: 'agent-a' });
    const b = await created({ agent: 'agent-b' });
    const done = await ticketIn('granted');
    clock.advance(PARAMS.intervalMs * PARAMS.burst + 1);
    await bucket.refresh();
    const many = bucket.planMany(['urgent', 'urgent'], 2)!;
    expect(many.count).toBe(2);
    const grants = [a, b, done].map((t) => ({
      id: t.id,
      attempt: t.attempt,
      agent: t.agent,
      priority: t.priority,
      patch: grantPatch(),
    }));
    const tatBefore = (await bucketStore.get())?.tat;
    const base = await tickets.counts();
    const queuedBefore = await tickets.queuedByPriority();

    // Act
    const refused = await tickets.grantBatch(grants, many.attempt);
    const tatAfterRefused = (await bucketStore.get())?.tat;
    const granted = await tickets.grantBatch(grants.slice(0, 2), many.attempt);

    // Assess
    expect(refused).toEqual({ kind: 'ticket_conflict', indexes: [2] });
    expect(tatAfterRefused).toBe(tatBefore);
    expect(granted).toEqual({ kind: 'granted' });
    expect((await bucketStore.get())?.tat).toBe(many.attempt.now + 2 * PARAMS.intervalMs);
    expect(await tickets.counts()).toEqual({ queued: base.queued - 2, inflight: base.inflight + 2 });
    // The priority's queued counter moves with the batch, as with single grants (the fast path reads it).
    expect((await tickets.queuedByPriority())[a.priority]).toBe(queuedBefore[a.priority] - 2);
    expect((await tickets.get(a.id))?.status).toBe('granted');
    expect((await tickets.get(b.id))?.status).toBe('granted');
    // The bucket is now spent: a second batch at the same time is a bucket conflict, nothing written.
    const c = await created();
    const d = await created();
    const again = await tickets.grantBatch(
      [c, d].map((t) => ({
        id: t.id,
        attempt: t.attempt,
        agent: t.agent,
        priority: t.priority,
        patch: grantPatch(),
      })),
      many.attempt,
    );
    expect(again.kind).toBe('bucket_conflict');
    expect((await tickets.get(c.id))?.status).toBe('queued');
  });

  it('a grant with a stale attempt number is refused; the current attempt is granted', async () => {
    // Prepare: granted, claimed, requeued after an upstream 429 → attempt 1; a duplicate message still says 0.
    const t = await ticketIn('claimed');
    await mustMove(t.id, 'claimed', 'queued', { reason: 'upstream_429' }, 0);
    const tatBefore = (await bucketStore.get())?.tat;

    // Act
    const stale = await tickets.grant({ id: t.id, attempt: 0 }, await freshAttempt(), grantPatch());
    const tatAfterStale = (await bucketStore.get())?.tat;
    const current = await tickets.grant({ id: t.id, attempt: 1 }, await freshAttempt(), grantPatch());

    // Assess
    expect(stale.kind).toBe('ticket_conflict');
    if (stale.kind === 'ticket_conflict')
      expect(stale.current).toMatchObject({ status: 'queued', attempt: 1 });
    expect(tatAfterStale).toBe(tatBefore);
    expect(current).toEqual({ kind: 'granted' });
    expect(await tickets.get(t.id)).toMatchObject({ status: 'granted', attempt: 1 });
  });

  it('a bucket conflict returns the bucket’s current state and leaves the ticket queued', async () => {
    // Prepare: our bucket believes it is idle; another writer has spent the whole burst meanwhile.
    const t = await created();
    const attempt = await freshAttempt();
    const other = new TokenBucket(bucketStore, clock, RESERVE);
    await other.refresh();
    expect(await other.tryConsume('urgent')).toEqual({ granted: true });
    expect(await other.tryConsume('urgent')).toEqual({ granted: true });
    const stored = await bucketStore.get();
    const base = await tickets.admissionCount();

    // Act
    const out = await tickets.grant(t, attempt, grantPatch());

    // Assess: the failure tells the exact wait, no read needed.
    expect(out).toEqual({ kind: 'bucket_conflict', current: stored });
    expect((await tickets.get(t.id))?.status).toBe('queued');
    expect(await tickets.admissionCount()).toBe(base);
    if (out.kind !== 'bucket_conflict') return;
    bucket.conflicted(out.current);
    expect(bucket.plan('urgent')).toEqual({ waitMs: stored!.tat! - (clock.now() + PARAMS.intervalMs) });
  });

  it('window-exact bucket: the grant logs its time in the same transaction; a stale log is a bucket conflict', async () => {
    // Prepare: a bucket item of its own in window-exact mode (2 per 10 s).
    const bucketKey = `tickets-log-${randomUUID()}`;
    const store = new DynamoBucketStore(res.dynamo, res.names.stateTable, bucketKey);
    const logTickets = new DynamoTicketStore(res.dynamo, {
      ticketsTable: res.names.ticketsTable,
      stateTable: res.names.stateTable,
      bucketKey,
    });
    const windowed = new TokenBucket(store, clock, RESERVE);
    await windowed.configure({ intervalMs: 1000, burst: 1, window: { limit: 2, windowMs: 10_000 } });
    const [a, b] = [await created(), await created()];
    const first = windowed.plan('urgent');
    if (!('attempt' in first)) throw new Error('expected an attempt');

    // Act
    const granted = await logTickets.grant(a, first.attempt, grantPatch());
    // The same attempt again (planned on the version before the grant) must not spend a second slot.
    const stale = await logTickets.grant(b, first.attempt, grantPatch());

    // Assess
    expect(granted).toEqual({ kind: 'granted' });
    const stored = await store.get();
    expect(stored).toMatchObject({ log: [first.attempt.now], version: 1 });
    expect(stale).toEqual({ kind: 'bucket_conflict', current: stored });
    expect((await tickets.get(b.id))?.status).toBe('queued');
  });
});

describe('transition', () => {
  const legal: [TicketStatus, TicketStatus, number][] = TICKET_STATUSES.flatMap((from) =>
    TRANSITIONS[from]
      // queued → granted happens only in grant(), with a token.
      .filter((to) => !(from === 'queued' && to === 'granted'))
      .map((to): [TicketStatus, TicketStatus, number] => [
        from,
        to,
        from === 'queued' ? -1 : to === 'queued' ? 1 : 0,
      ]),
  );
  const illegal: [TicketStatus, TicketStatus][] = TICKET_STATUSES.flatMap((from) =>
    TICKET_STATUSES.filter((to) => !canTransition(from, to)).map((to): [TicketStatus, TicketStatus] => [
      from,
      to,
    ]),
  );

  it.each(TICKET_STATUSES)('a ticket can be driven to %s through legal moves', async (status) => {
    const t = await ticketIn(status);
    expect(await tickets.get(t.id)).toMatchObject({ id: t.id, status });
  });

  it('covers every pair of statuses', () => {
    expect(legal.length + 1 + illegal.length).toBe(TICKET_STATUSES.length ** 2);
  });

  it.each(legal)('%s → %s is applied (admission counter %i)', async (from, to, delta) => {
    // Prepare
    const t = await ticketIn(from);
    const base = await tickets.admissionCount();

    // Act
    const out = await tickets.transition(
      t.id,
      from,
      to,
      { finishedAt: clock.now(), reason: 'test' },
      { attempt: t.attempt },
    );

    // Assess
    expect('ticket' in out && out.ticket.status).toBe(to);
    expect((await tickets.get(t.id))?.status).toBe(to);
    expect(await tickets.admissionCount()).toBe(base + delta);
  });

  it.each(legal)('%s → %s from the wrong status is refused with the current ticket', async (from, to) => {
    // Prepare: a ticket in some other status than `from`.
    const elsewhere = from === 'queued' ? 'abandoned' : 'queued';
    const t = await ticketIn(elsewhere);
    const base = await tickets.admissionCount();

    // Act
    const out = await tickets.transition(t.id, from, to, { reason: 'test' });

    // Assess
    expect(out).toEqual({ conflict: expect.objectContaining({ id: t.id, status: elsewhere }) });
    expect(await tickets.admissionCount()).toBe(base);
  });

  // Regression (lib/adapters/dynamo/ticket-store.ts, transition, fixed): the adapter only checks `status = from`, so a move that
  // TRANSITIONS forbids goes through.
  it.each(illegal)('illegal %s → %s is refused and the ticket stays put', async (from, to) => {
    // Prepare
    const t = await ticketIn(from);
    const base = await tickets.admissionCount();

    // Act
    const out = await tickets.transition(
      t.id,
      from,
      to,
      { finishedAt: clock.now(), reason: 'test' },
      { attempt: t.attempt },
    );

    // Assess
    expect(out).toEqual({ conflict: expect.objectContaining({ id: t.id, status: from }) });
    expect((await tickets.get(t.id))?.status).toBe(from);
    expect(await tickets.admissionCount()).toBe(base);
  });

  // Regression (same place, fixed): `queued → granted` is legal only inside grant(); the plain transition hands out a grant
  // without spending a token.
  it('queued → granted outside grant() is refused (no token was spent)', async () => {
    // Prepare
    const t = await created();
    const tatBefore = (await bucketStore.get())?.tat;

    // Act
    const out = await tickets.transition(t.id, 'queued', 'granted', grantPatch(), { attempt: 0 });

    // Assess
    expect('conflict' in out).toBe(true);
    expect((await tickets.get(t.id))?.status).toBe('queued');
    expect((await bucketStore.get())?.tat).toBe(tatBefore);
  });

  it('requeue (claimed → queued) bumps the attempt and the counter and returns to its place in the queue', async () => {
    // Prepare: enqueued long before anything else in the table, so it is the oldest low ticket.
    const t = await created({ priority: 'low', enqueuedAt: 42 });
    await tickets.grant(t, await freshAttempt(), grantPatch());
    await mustMove(t.id, 'granted', 'claimed', { claimedAt: clock.now(), claimBy: clock.now() + 60_000 }, 0);
    const base = await tickets.admissionCount();

    // Act
    const out = await tickets.transition(
      t.id,
      'claimed',
      'queued',
      { reason: 'upstream_429' },
      { attempt: 0 },
    );

    // Assess
    expect(out).toEqual({
      ticket: expect.objectContaining({ status: 'queued', attempt: 1, enqueuedAt: 42 }),
    });
    expect(await tickets.admissionCount()).toBe(base + 1);
    expect((await tickets.oldestQueued('low'))?.id).toBe(t.id);
    expect((await tickets.listPhase('queued#low', 43, 10)).map((x) => x.id)).toContain(t.id);
  });

  it('unclaim (the claimer hands back a call that never left): queued at its place, claim time restored, only by its claimer', async () => {
    // Prepare: an earlier attempt did call (claimedAt 1_000 kept through its 429 requeue), this attempt claimed.
    const t = await created({ priority: 'low', enqueuedAt: 43 });
    await tickets.grant(t, await freshAttempt(), grantPatch());
    await mustMove(t.id, 'granted', 'claimed', { claimedAt: 1_000, claimBy: clock.now() + 60_000 }, 0);
    await mustMove(t.id, 'claimed', 'queued', { reason: 'upstream_429' }, 0);
    await tickets.grant({ id: t.id, attempt: 1 }, await freshAttempt(), grantPatch());
    const mine = clock.now();
    const claimed = await mustMove(
      t.id,
      'granted',
      'claimed',
      { claimedAt: mine, claimBy: mine + 60_000 },
      1,
    );
    const base = await tickets.counts();

    // Act: someone else's claim time does not match; the claimer's does.
    const other = await tickets.unclaim({ ...claimed, claimedAt: mine - 1 }, 1_000, 'grant_stale_at_send');
    const out = await tickets.unclaim(claimed, 1_000, 'grant_stale_at_send');
    const again = await tickets.unclaim(claimed, 1_000, 'grant_stale_at_send');

    // Assess
    expect(other).toEqual({ conflict: expect.objectContaining({ status: 'claimed', attempt: 1 }) });
    expect(out).toEqual({
      ticket: expect.objectContaining({ status: 'queued', attempt: 2, claimedAt: 1_000 }),
    });
    expect(again).toEqual({ conflict: expect.objectContaining({ status: 'queued', attempt: 2 }) });
    const stored = await tickets.get(t.id);
    expect(stored).toMatchObject({
      status: 'queued',
      attempt: 2,
      claimedAt: 1_000,
      reason: 'grant_stale_at_send',
    });
    expect(stored?.claimBy).toBeUndefined();
    expect(await tickets.counts()).toEqual({ queued: base.queued + 1, inflight: base.inflight - 1 });
    expect((await tickets.listPhase('queued#low', 44, 10)).map((x) => x.id)).toContain(t.id);

    // A first attempt that never called: its claim time is removed (an Idempotency-Key retry may replace it later).
    const u = await created();
    await tickets.grant(u, await freshAttempt(), grantPatch());
    const first = await mustMove(
      u.id,
      'granted',
      'claimed',
      { claimedAt: clock.now(), claimBy: clock.now() + 60_000 },
      0,
    );
    expect('ticket' in (await tickets.unclaim(first, undefined, 'grant_stale_at_send'))).toBe(true);
    expect((await tickets.get(u.id))?.claimedAt).toBeUndefined();
  });

  it('a requeue under a stale attempt is refused and counts nothing', async () => {
    // Prepare
    const t = await ticketIn('claimed');
    await mustMove(t.id, 'claimed', 'queued', { reason: 'upstream_429' }, 0);
    await tickets.grant({ id: t.id, attempt: 1 }, await freshAttempt(), grantPatch());
    await mustMove(t.id, 'granted', 'claimed', { claimedAt: clock.now(), claimBy: clock.now() + 60_000 }, 1);
    const base = await tickets.admissionCount();

    // Act
    const out = await tickets.transition(
      t.id,
      'claimed',
      'queued',
      { reason: 'late duplicate' },
      { attempt: 0 },
    );

    // Assess
    expect(out).toEqual({ conflict: expect.objectContaining({ status: 'claimed', attempt: 1 }) });
    expect(await tickets.admissionCount()).toBe(base);
  });
});

describe('phase index and reconcile', () => {
  it('listPhase("granted", before) finds granted tickets past claimBy, and only those', async () => {
    // Prepare
    const now = clock.now();
    const late = await created();
    const onTime = await created();
    const claimed = await created();
    for (const [t, claimBy] of [
      [late, now + 1_000],
      [onTime, now + 50_000],
      [claimed, now + 1_000],
    ] as const) {
      const out = await tickets.grant(t, await freshAttempt(), { grantedAt: clock.now(), claimBy });
      expect(out.kind).toBe('granted');
    }
    await mustMove(claimed.id, 'granted', 'claimed', { claimedAt: now, claimBy: now + 900_000 }, 0);

    // Act
    const found = (await tickets.listPhase('granted', now + 10_000, 1000)).map((t) => t.id);

    // Assess
    expect(found).toContain(late.id);
    expect(found).not.toContain(onTime.id);
    expect(found).not.toContain(claimed.id);
  });

  it.each([
    ['drifted up', 999],
    ['drifted down', -5],
  ])('reconcileAdmission repairs a counter that %s', async (_name, drift) => {
    // Prepare
    const truth = await tickets.reconcileAdmission();
    await created({ priority: 'urgent' });
    await created({ priority: 'low' });
    await res.dynamo.send(
      new UpdateItemCommand({
        TableName: res.names.stateTable,
        Key: stateKey('admission', 'global'),
        UpdateExpression: 'SET queued = :q',
        ExpressionAttributeValues: { ':q': { N: String(truth + drift) } },
      }),
    );

    // Act
    const repaired = await tickets.reconcileAdmission();

    // Assess
    expect(repaired).toBe(truth + 2);
    expect(await tickets.admissionCount()).toBe(truth + 2);
  });
});

describe("the dispatcher's published load", () => {
  it('is read back with the per-priority counters in the same Query, and moves none of them', async () => {
    // Prepare
    const before = await tickets.queuedWithLoad();
    const load = { at: clock.now(), higher: { urgent: 0, high: 0.8, normal: 0.97, low: 1 } };

    // Act
    await tickets.publishLoad(load);
    await created({ priority: 'high' });
    const after = await tickets.queuedWithLoad();

    // Assess
    expect(after.load).toEqual(load);
    expect(after.queued).toEqual({ ...before.queued, high: before.queued.high + 1 });
    expect(await tickets.queuedByPriority()).toEqual(after.queued);
  });
});

describe('SDK errors an emulator cannot produce (aws-sdk-client-mock)', () => {
  // A client of its own, so the emulator-backed tests above keep their real client.
  const client = new DynamoDBClient({
    region: 'us-east-1',
    credentials: { accessKeyId: 'x', secretAccessKey: 'x' },
  });
  const ddb = mockClient(client);
  const store = new DynamoTicketStore(client, { ticketsTable: 'tickets', stateTable: 'state' });

  beforeEach(() => {
    ddb.reset();
  });

  afterAll(() => {
    ddb.restore();
    client.destroy();
  });

  const cancelled = (codes: string[]) =>
    new TransactionCanceledException({
      message: 'Transaction cancelled',
      $metadata: { httpStatusCode: 400 },
      CancellationReasons: codes.map((Code) => ({ Code })),
    });

  const attempt: ConsumeAttempt = { branch: 'idle', now: 1000, newTat: 2000, params: PARAMS };
  const calls: [string, (s: DynamoTicketStore) => Promise<unknown>][] = [
    // The agent and priority are given, so the store needs no read of the ticket (the mock answers only the
    // transaction).
    [
      'grant',
      (s) =>
        s.grant({ id: 'a', attempt: 0, agent: 'agent-a', priority: 'normal' }, attempt, { grantedAt: 1000 }),
    ],
    ['create', (s) => s.create(newTicket({ id: 'a' }), { queueMaxSize: 10 })],
    [
      'transition queued → abandoned',
      (s) =>
        s.transition('a', 'queued', 'abandoned', { finishedAt: 1000 }, { known: newTicket({ id: 'a' }) }),
    ],
  ];
  const reasons: [string, string[]][] = [
    ['a throttled item', ['None', 'ThrottlingError', 'None']],
    ['a transaction conflict', ['TransactionConflict', 'None', 'None']],
    ['no reasons at all', []],
  ];
  const rows = calls.flatMap(([call, fn]) => reasons.map(([why, codes]) => [call, why, fn, codes] as const));

  it.each(rows)(
    '%s rethrows a cancellation for %s instead of reading it as a conflict',
    async (_c, _w, fn, codes) => {
      // Prepare
      const err = cancelled([...codes]);
      ddb.on(TransactWriteItemsCommand).rejects(err);

      // Act
      const thrown = await fn(store).then(
        () => undefined,
        (error: unknown) => error,
      );

      // Assess
      expect(thrown).toBe(err);
      expect(ddb.commandCalls(TransactWriteItemsCommand)).toHaveLength(1);
    },
  );
});
