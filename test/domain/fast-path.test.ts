// Admission's fast path and fail-fast refusal on in-memory stores and a fake clock.
import { describe, expect, it } from 'vitest';
import { MemoryBucketStore } from '../../lib/adapters/memory/stores.js';
import { MemoryTicketStore } from '../../lib/adapters/memory/tickets.js';
import { Admission, type AdmitRequest, FAST_PATH_BACKOFF_MS } from '../../lib/domain/admission.js';
import { TokenBucket } from '../../lib/domain/bucket.js';
import { FakeClock } from '../../lib/domain/clock.js';
import { DEFAULT_CONFIG, type GatewayConfig } from '../../lib/domain/config.js';
import { StoreUnavailableError } from '../../lib/domain/errors.js';
import type { AgentUsageEvent } from '../../lib/domain/ports.js';
import type { Priority } from '../../lib/domain/priority.js';
import { memoryAdmission } from '../support/memory-gateway.js';

const PARAMS = { intervalMs: 1500, burst: 2 };
const CONFIG: GatewayConfig = { ...DEFAULT_CONFIG, queueMaxSize: 1000, maxQueuedPerAgent: 1000 };

/** A store whose fast-path transaction fails as DynamoDB does under contention (after the SDK's retries). */
class ContendedStore extends MemoryTicketStore {
  override async fastGrant(): Promise<never> {
    throw new StoreUnavailableError('DynamoDB TransactWriteItems unavailable: TransactionCanceledException');
  }
}

/** A store whose fast-path transaction went through but whose answer was lost (the SDK gave up). */
class LostAnswerStore extends MemoryTicketStore {
  override async fastGrant(...args: Parameters<MemoryTicketStore['fastGrant']>): Promise<never> {
    await super.fastGrant(...args);
    throw new StoreUnavailableError('DynamoDB TransactWriteItems unavailable: socket hang up');
  }
}

/** A store whose fast-path transaction takes 2 s to answer (a loaded emulator), on the test's clock. */
class SlowStore extends MemoryTicketStore {
  clock: FakeClock | undefined;
  override async fastGrant(...args: Parameters<MemoryTicketStore['fastGrant']>) {
    const res = await super.fastGrant(...args);
    this.clock?.advance(2_000);
    return res;
  }
}

const setup = async (
  opts: {
    storePaused?: boolean;
    contended?: boolean;
    lostAnswer?: boolean;
    slow?: boolean;
    params?: { intervalMs: number; burst: number };
  } = {},
) => {
  const clock = new FakeClock();
  const bucketStore = new MemoryBucketStore();
  const paused = () => opts.storePaused ?? false;
  const tickets = opts.contended
    ? new ContendedStore(bucketStore, paused)
    : opts.lostAnswer
      ? new LostAnswerStore(bucketStore, paused)
      : opts.slow
        ? new SlowStore(bucketStore, paused)
        : new MemoryTicketStore(bucketStore, paused);
  if (tickets instanceof SlowStore) tickets.clock = clock;
  const bucket = new TokenBucket(bucketStore, clock, { fraction: 0, forNormal: false });
  await bucket.configure(opts.params ?? PARAMS);
  const { queue, lease, outcomes, admission } = memoryAdmission({ clock, tickets, bucket });
  const request = (priority: Priority, over: Partial<AdmitRequest> = {}): AdmitRequest => ({
    agent: 'a',
    priority,
    model: 'm',
    stream: false,
    deadline: clock.now() + 170_000,
    callBudgetMs: 65_000,
    ...over,
  });
  const depth = async (p: Priority) => (await queue.depth(p)).visible;
  return { clock, bucketStore, tickets, queue, lease, outcomes, bucket, admission, request, depth };
};

describe('fast path', () => {
  it('when idle: claimed at admission in one store call, no queue message, no doorbell', async () => {
    // Prepare
    const s = await setup();

    // Act
    const got = await s.admission.admit(s.request('normal'), CONFIG);

    // Assess
    expect(got.claimed).toBe(true);
    expect(got.ticket.status).toBe('claimed');
    expect(s.tickets.tickets.get(got.ticket.id)).toMatchObject({
      status: 'claimed',
      claimBy: expect.any(Number),
    });
    expect(await s.tickets.counts()).toEqual({ queued: 0, inflight: 1 });
    expect(await s.depth('normal')).toBe(0);
    expect(s.lease.state.rings).toBe(0);
    expect(s.admission.stats).toMatchObject({ fastPath: 1, fastFallback: 0 });
    // Its end is recorded like any claimed ticket's.
    await s.admission.finish(got.ticket, 'completed', { upstreamStatus: 200 });
    expect(s.tickets.tickets.get(got.ticket.id)?.status).toBe('completed');
    expect(await s.tickets.counts()).toEqual({ queued: 0, inflight: 0 });
  });

  it('not when something more important waits: the request queues behind it (urgent before low)', async () => {
    // Prepare: an urgent ticket waits (queued without the fast path)
    const s = await setup();
    const { callBudgetMs: _none, ...queuedOnly } = s.request('urgent');
    const urgent = await s.admission.admit(queuedOnly, CONFIG);
    expect(urgent.claimed).toBeUndefined();

    // Act
    const low = await s.admission.admit(s.request('low'), CONFIG);

    // Assess
    expect(low.claimed).toBeUndefined();
    expect(low.ticket.status).toBe('queued');
    expect(await s.depth('low')).toBe(1);
    expect(await s.tickets.queuedByPriority()).toEqual({ urgent: 1, high: 0, normal: 0, low: 1 });
    expect(s.admission.stats.fastPath).toBe(0);
  });

  it.each([
    ['the stored config is paused (the cached one is stale)', { storePaused: true }, CONFIG, 1],
    ['the cached config says paused', {}, { ...CONFIG, paused: true }, 0],
  ])('not when %s: queued, nothing spent', async (_name, opts, config, tried) => {
    // Prepare
    const s = await setup(opts);
    const tat = s.bucketStore.state?.tat;

    // Act
    const got = await s.admission.admit(s.request('urgent'), config);

    // Assess
    expect(got.claimed).toBeUndefined();
    expect(got.ticket.status).toBe('queued');
    expect(s.bucketStore.state?.tat).toBe(tat);
    expect(s.admission.stats).toMatchObject({ fastPath: 0, fastFallback: tried });
  });

  it('falls back to the queue on a bucket conflict, and learns the bucket state from it', async () => {
    // Prepare: another writer (the dispatcher) spends the burst this container does not know about.
    const s = await setup();
    const other = new TokenBucket(s.bucketStore, s.clock, { fraction: 0, forNormal: false });
    await other.refresh();
    expect(await other.tryConsume('urgent')).toEqual({ granted: true });
    expect(await other.tryConsume('urgent')).toEqual({ granted: true });

    // Act
    const got = await s.admission.admit(s.request('urgent'), CONFIG);

    // Assess
    expect(got.claimed).toBeUndefined();
    expect(got.ticket.status).toBe('queued');
    expect(await s.depth('urgent')).toBe(1);
    expect(s.admission.stats).toMatchObject({ fastPath: 0, fastFallback: 1 });
    expect(s.bucket.state?.tat).toBe(s.bucketStore.state?.tat);
    expect(await s.tickets.counts()).toEqual({ queued: 1, inflight: 0 });
  });
});

describe('fast path under concurrency', () => {
  it('a bucket condition refused while a token is still free: planned again from the stored bucket, granted', async () => {
    // Prepare: another writer spends one of the two burst tokens; this container still thinks the bucket idle.
    const s = await setup();
    await s.bucket.refresh();
    const other = new TokenBucket(s.bucketStore, s.clock, { fraction: 0, forNormal: false });
    await other.refresh();
    expect(await other.tryConsume('normal')).toEqual({ granted: true });

    // Act
    const got = await s.admission.admit(s.request('normal'), CONFIG);

    // Assess: claimed at admission (the second try found the bucket busy with one token left), nothing queued
    expect(got.claimed).toBe(true);
    expect(await s.depth('normal')).toBe(0);
    expect(await s.tickets.counts()).toEqual({ queued: 0, inflight: 1 });
    expect(s.admission.stats).toMatchObject({ fastPath: 1, fastFallback: 0 });
    expect(s.bucket.state?.tat).toBe(s.bucketStore.state?.tat);
  });
});

describe('fast path: concurrent requests of one container on a bucket that idles between grants', () => {
  it('planned from one known state a little behind the clock: all granted on the first try, none refused', async () => {
    // Prepare: T 5 ms, burst 20; one grant lands, then 10 ms pass (the known tat 5 ms behind the clock)
    const s = await setup({ params: { intervalMs: 5, burst: 20 } });
    expect((await s.admission.admit(s.request('normal'), CONFIG)).claimed).toBe(true);
    s.clock.advance(10);
    const conflictsBefore = s.bucket.stats.conflicts;

    // Act: six requests at once (each plans before any answer comes back)
    const got = await Promise.all(
      Array.from({ length: 6 }, () => s.admission.admit(s.request('normal'), CONFIG)),
    );

    // Assess: each placed at the known tat with an add, so none refused another (idle writes: five refused)
    expect(got.every((g) => g.claimed)).toBe(true);
    expect(s.bucket.stats.conflicts - conflictsBefore).toBe(0);
    expect(s.admission.stats).toMatchObject({ fastPath: 7, fastFallback: 0 });
    // Exactly GCRA: seven tokens in all, the six at the known tat (now − 5 ms)
    expect(new Set(got.map((g) => g.ticket.grantedAt))).toEqual(new Set([s.clock.now() - 5]));
    expect(s.bucketStore.state?.tat).toBe(s.clock.now() - 5 + 6 * 5);
  });
});

describe('fast path: tries only while they pay', () => {
  it('once most recent tries were refused on the bucket, a refused try queues the request instead of trying again', async () => {
    // Prepare: a store whose bucket condition refuses every fast grant (grants landing out of their planning order)
    class RefusingStore extends MemoryTicketStore {
      calls = 0;
      override async fastGrant() {
        this.calls++;
        return { kind: 'bucket_conflict' as const, current: this.bucketStore.state };
      }
      constructor(readonly bucketStore: MemoryBucketStore) {
        super(bucketStore, () => false);
      }
    }
    const clock = new FakeClock();
    const bucketStore = new MemoryBucketStore();
    const tickets = new RefusingStore(bucketStore);
    const bucket = new TokenBucket(bucketStore, clock, { fraction: 0, forNormal: false });
    await bucket.configure({ intervalMs: 5, burst: 20 });
    const { admission } = memoryAdmission({ clock, tickets, bucket });
    const request = (): AdmitRequest => ({
      agent: 'a',
      priority: 'normal',
      model: 'm',
      stream: false,
      deadline: clock.now() + 170_000,
      callBudgetMs: 65_000,
    });

    // Act: twelve requests one after the other
    const triesPerRequest: number[] = [];
    for (let i = 0; i < 12; i++) {
      const before = tickets.calls;
      const got = await admission.admit(request(), CONFIG);
      expect(got.claimed).toBeFalsy();
      triesPerRequest.push(tickets.calls - before);
    }

    // Assess: three tries while the recent share of granted tries is ≥ 1/3 (it falls by 10 % a try); below it one
    // try, and only every fourth request (the others queue at once)
    expect(triesPerRequest).toEqual([3, 3, 3, 2, 0, 0, 0, 1, 0, 0, 0, 1]);
  });
});

describe('roomy fast grants', () => {
  it.each<[string, Priority, number, boolean]>([
    [
      'bucket full, an urgent ticket waits: a low request is granted (half the burst stays free)',
      'low',
      0,
      true,
    ],
    ['bucket 9 of 20 spent: still roomy', 'normal', 9, true],
    ['bucket 10 of 20 spent: queued behind the waiting ticket', 'normal', 10, false],
  ])('%s', async (_name, priority, spent, fast) => {
    // Prepare: 12,000 rpm, burst 20; a ticket waits at the top priority (its dispatcher is behind)
    const s = await setup({ params: { intervalMs: 5, burst: 20 } });
    const { callBudgetMs: _none, ...queuedOnly } = s.request('urgent');
    await s.admission.admit(queuedOnly, CONFIG);
    const other = new TokenBucket(s.bucketStore, s.clock, { fraction: 0, forNormal: false });
    await other.refresh();
    for (let i = 0; i < spent; i++) expect((await other.tryConsume('urgent')).granted).toBe(true);
    await s.bucket.refresh();

    // Act
    const got = await s.admission.admit(s.request(priority), CONFIG);

    // Assess
    expect(got.claimed === true).toBe(fast);
    expect(await s.tickets.queuedByPriority()).toMatchObject({ urgent: 1, [priority]: fast ? 0 : 1 });
  });

  it('a small burst is never roomy (a waiting ticket keeps its place)', async () => {
    const s = await setup();
    const { callBudgetMs: _none, ...queuedOnly } = s.request('urgent');
    await s.admission.admit(queuedOnly, CONFIG);
    const got = await s.admission.admit(s.request('low'), CONFIG);
    expect(got.claimed).toBeUndefined();
  });
});

describe('fast path on a fresh deployment', () => {
  it('no bucket written yet (the dispatcher never ran): the ingress writes it at the configured rate and grants', async () => {
    // Prepare: a store without the bucket item
    const s = await setup();
    s.bucketStore.state = undefined;
    const fresh = new Admission({
      tickets: s.tickets,
      queue: s.queue,
      lease: s.lease,
      outcomes: s.outcomes,
      bucket: new TokenBucket(s.bucketStore, s.clock, { fraction: 0, forNormal: false }),
      wakeDispatcher: async () => {},
      clock: s.clock,
      newId: () => 'fresh-1',
    });

    // Act
    const got = await fresh.admit(s.request('normal'), CONFIG);

    // Assess: claimed at once, the bucket at 40 per 60 s (1.5 s apart), nothing queued, no doorbell
    expect(got.claimed).toBe(true);
    expect(s.bucketStore.state).toMatchObject({ intervalMs: 1_500 });
    expect(await s.depth('normal')).toBe(0);
    expect(s.lease.state.rings).toBe(0);
  });
});

describe('fast path on a slow store', () => {
  it('plans its slot ahead by the store’s recent latency: grants stay young enough to call on, never called early', async () => {
    // Prepare: the slack is 2 s (0.8 of it at the send); each fast grant answers 2 s after it was sent
    const s = await setup({ slow: true, params: { intervalMs: 5, burst: 20 } });
    const ages: number[] = [];

    // Act
    for (let i = 0; i < 8; i++) {
      const got = await s.admission.admit(s.request('normal'), CONFIG);
      expect(got.claimed).toBe(true);
      // admit returns at or after the slot (it sleeps until a slot planned ahead)
      ages.push(s.clock.now() - got.ticket.grantedAt!);
      await s.admission.finish(got.ticket, 'completed', { upstreamStatus: 200 });
    }

    // Assess: the first grant came back 2 s old (past the send's 1.6 s); once the latency is known, ≤ 1.6 s, ≥ 0
    expect(ages[0]).toBe(2_000);
    for (const age of ages.slice(4)) {
      expect(age).toBeGreaterThanOrEqual(0);
      expect(age).toBeLessThanOrEqual(1_600);
    }
  });
});

describe('fast path with an Idempotency-Key', () => {
  it('granted at admission with its key mapped to the ticket: a second request with the key gets 409 while it runs', async () => {
    // Prepare
    const s = await setup();

    // Act
    const first = await s.admission.admit(s.request('normal', { idempotencyKey: 'k1' }), CONFIG);
    const again = await s.admission.admit(s.request('normal', { idempotencyKey: 'k1' }), CONFIG).then(
      () => undefined,
      (err: unknown) => err,
    );

    // Assess: one ticket, claimed, no queue message; the retry spends nothing
    expect(first.claimed).toBe(true);
    expect(first.ticket).toMatchObject({ status: 'claimed', idempotencyKey: 'k1' });
    expect(again).toMatchObject({ status: 409, code: 'idempotency_key_in_use' });
    expect(s.tickets.tickets.size).toBe(1);
    expect(await s.depth('normal')).toBe(0);
    expect(await s.tickets.counts()).toEqual({ queued: 0, inflight: 1 });

    // Once it completed, the key answers with what happened (never a second call).
    await s.admission.finish(first.ticket, 'completed', { upstreamStatus: 200 });
    const after = await s.admission.admit(s.request('normal', { idempotencyKey: 'k1' }), CONFIG).then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(after).toMatchObject({ status: 409, code: 'idempotent_request_completed' });
    expect(s.tickets.tickets.size).toBe(1);
  });

  it('a key held by a queued ticket: the request attaches to it (the fast grant wrote nothing)', async () => {
    // Prepare: the first request queued (no fast path for it)
    const s = await setup();
    const { callBudgetMs: _none, ...queuedOnly } = s.request('normal', { idempotencyKey: 'k2' });
    const first = await s.admission.admit(queuedOnly, CONFIG);
    const tat = s.bucketStore.state?.tat;

    // Act
    const again = await s.admission.admit(s.request('normal', { idempotencyKey: 'k2' }), CONFIG);

    // Assess
    expect(again).toMatchObject({ attached: true, ticket: { id: first.ticket.id, status: 'queued' } });
    expect(s.bucketStore.state?.tat).toBe(tat);
    expect(s.tickets.tickets.size).toBe(1);
  });

  it('its answer lost: the ticket written as claimed under the key is looked up and called, not queued again', async () => {
    // Prepare
    const s = await setup({ lostAnswer: true });

    // Act
    const got = await s.admission.admit(s.request('normal', { idempotencyKey: 'k3' }), CONFIG);

    // Assess: the request holds the claimed ticket ("claimed means called"), nothing queued under another id
    expect(got.claimed).toBe(true);
    expect(got.ticket).toMatchObject({ id: 't1', status: 'claimed', idempotencyKey: 'k3' });
    expect(s.tickets.tickets.size).toBe(1);
    expect(await s.depth('normal')).toBe(0);
  });
});

describe('fast path backoff', () => {
  it('after a refusal for a busy queue, the container queues that priority and below without trying for a while', async () => {
    // Prepare: an urgent ticket waits; a normal request is refused the fast path.
    const s = await setup();
    // LOW's token timeout long enough that no LOW request here is refused at admission.
    const CONFIG_LOW = { ...CONFIG, lowPriorityTimeoutMs: 60_000 };
    const { callBudgetMs: _none, ...queuedOnly } = s.request('urgent');
    await s.admission.admit(queuedOnly, CONFIG);
    await s.admission.admit(s.request('normal'), CONFIG);
    expect(s.admission.stats.fastFallback).toBe(1);

    // Act + Assess: low and normal skip the attempt (no transaction), high still tries
    await s.admission.admit(s.request('low'), CONFIG_LOW);
    await s.admission.admit(s.request('normal'), CONFIG);
    expect(s.admission.stats.fastFallback).toBe(1);
    await s.admission.admit(s.request('high'), CONFIG);
    expect(s.admission.stats.fastFallback).toBe(2);
    // Once the backoff is over, it tries again.
    s.clock.advance(FAST_PATH_BACKOFF_MS);
    await s.admission.admit(s.request('low'), CONFIG_LOW);
    expect(s.admission.stats.fastFallback).toBe(3);
  });

  it('at a high rate it backs off only as long as the tickets ahead take to be granted', async () => {
    // Prepare: 12,000 rpm (a token every 5 ms), 15 of the 20 burst tokens spent (no roomy grant); two urgent
    // tickets wait; a normal request is refused the fast path.
    const s = await setup({ params: { intervalMs: 5, burst: 20 } });
    const other = new TokenBucket(s.bucketStore, s.clock, { fraction: 0, forNormal: false });
    await other.refresh();
    for (let i = 0; i < 15; i++) expect((await other.tryConsume('urgent')).granted).toBe(true);
    await s.bucket.refresh();
    const { callBudgetMs: _none, ...queuedOnly } = s.request('urgent');
    await s.admission.admit(queuedOnly, CONFIG);
    await s.admission.admit(queuedOnly, CONFIG);
    await s.admission.admit(s.request('normal'), CONFIG);
    expect(s.admission.stats.fastFallback).toBe(1);

    // Act + Assess: skipped within 2 × 5 ms, tried again after (not a whole second later)
    s.clock.advance(9);
    await s.admission.admit(s.request('normal'), CONFIG);
    expect(s.admission.stats.fastFallback).toBe(1);
    s.clock.advance(1);
    await s.admission.admit(s.request('normal'), CONFIG);
    expect(s.admission.stats.fastFallback).toBe(2);
  });
});

describe('fast path under store contention', () => {
  it('queues the request under a new ticket id instead of failing it', async () => {
    // Prepare
    const s = await setup({ contended: true });

    // Act
    const got = await s.admission.admit(s.request('urgent'), CONFIG);

    // Assess: t1 was the fast attempt's id (its outcome unknown), t2 the queued ticket's
    expect(got.claimed).toBeUndefined();
    expect(got.ticket).toMatchObject({ id: 't2', status: 'queued' });
    expect(await s.depth('urgent')).toBe(1);
    expect(s.admission.stats).toMatchObject({ fastPath: 0, fastFallback: 1 });
  });
});

describe('fail fast at admission', () => {
  it('refuses at once, writing nothing, when the estimated wait exceeds the request’s; a more important one is admitted', async () => {
    // Prepare: 20 normal tickets wait (1.5 s apart, 2 tokens free: (20 + 1 − 2) × 1.5 s = 28.5 s ahead)
    const s = await setup();
    for (let i = 0; i < 20; i++) {
      const { callBudgetMs: _none, ...queuedOnly } = s.request('normal');
      await s.admission.admit(queuedOnly, CONFIG);
    }
    const before = s.tickets.tickets.size;

    // Act
    const refused = await s.admission
      .admit(s.request('normal', { deadline: s.clock.now() + 10_000 }), CONFIG)
      .then(
        () => undefined,
        (err: unknown) => err,
      );
    const urgent = await s.admission.admit(s.request('urgent', { deadline: s.clock.now() + 10_000 }), CONFIG);

    // Assess
    expect(refused).toMatchObject({ status: 429, code: 'queue_wait_exceeded', retryAfterMs: 28_500 });
    expect((refused as Error).message).toMatch(
      /Estimated queue wait 29 s exceeds this request's maximum wait \(10 s, of which a first estimate may take 7 s\)/,
    );
    expect(urgent.ticket.status).not.toBe('rejected');
    expect(s.tickets.tickets.size).toBe(before + 1);
    expect(await s.depth('normal')).toBe(20);
    const refusedCount = [...s.outcomes.slots.values()].reduce((sum, slot) => sum + slot.counts.refused, 0);
    expect(refusedCount).toBe(1);
  });

  it('admits when the estimate fits the wait', async () => {
    const s = await setup();
    for (let i = 0; i < 3; i++) {
      const { callBudgetMs: _none, ...queuedOnly } = s.request('normal');
      await s.admission.admit(queuedOnly, CONFIG);
    }
    const got = await s.admission.admit(s.request('normal', { deadline: s.clock.now() + 10_000 }), CONFIG);
    expect(got.ticket.status).toBe('queued');
  });
});

describe('fail fast: judged as the dispatcher will judge the ticket', () => {
  const LOAD_097 = { urgent: 0, high: 0.97, normal: 0.97, low: 0.97 };
  it.each<[string, { atAgoMs: number } | undefined, 'queued' | 'refused']>([
    [
      'no load published yet: the queued counts alone (the next token after the two free ones)',
      undefined,
      'queued',
    ],
    [
      'the published load says more important work takes 97 % of the grants: refused at once, though none of it is queued now',
      { atAgoMs: 2_000 },
      'refused',
    ],
    ['a stale load (the dispatcher stopped publishing) is not judged by', { atAgoMs: 20_000 }, 'queued'],
  ])('%s', async (_name, published, want) => {
    // Prepare: two normal requests wait (queued without the fast path) for the two tokens free now.
    const s = await setup();
    const { callBudgetMs: _none, ...queuedOnly } = s.request('normal');
    await s.admission.admit(queuedOnly, CONFIG);
    await s.admission.admit(queuedOnly, CONFIG);
    if (published) await s.tickets.publishLoad({ at: s.clock.now() - published.atAgoMs, higher: LOAD_097 });

    // Act
    const got = await s.admission.admit(s.request('normal'), CONFIG).catch((err: unknown) => err);

    // Assess
    if (want === 'queued') {
      expect(got).toMatchObject({ ticket: { status: 'queued' } });
      expect(await s.tickets.queuedByPriority()).toMatchObject({ normal: 3 });
      // Judged without the load: its wait reads it again when the dispatcher will know the load (6 intervals).
      expect(got).toMatchObject({ recheckAt: s.clock.now() + 6 * 1500 });
    } else {
      // Starved: no grant time to give, so the agent is told to come back after a window (headers cap it at 60 s).
      expect(got).toMatchObject({ status: 429, code: 'queue_wait_exceeded', retryAfterMs: 60_000 });
      expect(await s.tickets.queuedByPriority()).toMatchObject({ normal: 2 });
    }
  });

  it.each([
    // 1.5 s per token, 2 free now (taken by the first two in line): the LOW request's grant is the
    // (ahead − 1)-th token after them. At admission it must fit three quarters of the 6 s LOW timeout.
    ['three ahead: 3 s, fits', 3, 'queued'],
    ['five ahead: 6 s, past 4.5 s: refused at once with low_priority_timeout', 5, 'refused'],
  ])("LOW's token timeout at admission (strict): %s", async (_name, ahead, want) => {
    const s = await setup();
    for (let i = 0; i < ahead; i++) {
      const { callBudgetMs: _none, ...queuedOnly } = s.request('high');
      await s.admission.admit(queuedOnly, CONFIG);
    }

    const got = await s.admission.admit(s.request('low'), CONFIG).catch((err: unknown) => err);

    if (want === 'queued') expect(got).toMatchObject({ ticket: { status: 'queued' } });
    else {
      expect(got).toMatchObject({ status: 429, code: 'low_priority_timeout', retryAfterMs: 5_000 });
      expect(await s.tickets.queuedByPriority()).toMatchObject({ low: 0 });
    }
  });
});

describe('fail fast after a refused fast grant: judged by the counts the refusal told, no read', () => {
  const LOAD = (normal: number) => ({ urgent: 0, high: normal, normal, low: normal });
  it.each<[string, Partial<GatewayConfig>, number, number, number]>([
    ['strict, the load read 1 s ago (the next one due in 4 s): no read', {}, 0.5, 1_000, 0],
    ['strict, a load that starves NORMAL: refused the same, no read', {}, 0.97, 1_000, 0],
    ['strict, the next load due: read', {}, 0.5, 5_000, 1],
    [
      'weighted: its estimate needs every priority’s count: read',
      { priorityPolicy: 'weighted' },
      0.5,
      1_000,
      1,
    ],
  ])('%s', async (_name, over, load, laterMs, reads) => {
    const config = { ...CONFIG, ...over };
    // The same moment twice: a request that tried the fast grant (refused: the queue is busy) and one that did not.
    const judge = async (fast: boolean) => {
      const s = await setup();
      let read = 0;
      const queuedWithLoad = s.tickets.queuedWithLoad.bind(s.tickets);
      s.tickets.queuedWithLoad = () => {
        read++;
        return queuedWithLoad();
      };
      // The dispatcher published its load; two urgent and two normal tickets wait (each judged with a read).
      await s.tickets.publishLoad({ at: s.clock.now(), higher: LOAD(load) });
      for (const p of ['urgent', 'urgent', 'normal', 'normal'] as const) {
        const { callBudgetMs: _none, ...queuedOnly } = s.request(p);
        // (A starving load refuses the normal ones already.)
        await s.admission.admit(queuedOnly, config).catch(() => undefined);
      }
      s.clock.advance(laterMs);
      read = 0;
      const req = s.request('normal', { deadline: s.clock.now() + 60_000 });
      if (!fast) delete req.callBudgetMs;
      const got = await s.admission.admit(req, config).then(
        (a) => ({ waitMs: a.estimatedWaitMs, recheckAt: a.recheckAt, status: a.ticket.status }),
        (err: unknown) => err,
      );
      return { got, read, fastFallback: s.admission.stats.fastFallback };
    };

    // Act
    const tried = await judge(true);
    const notTried = await judge(false);

    // Assess: the same judgement either way; the request that tried the fast grant read only when it had to
    expect(tried.fastFallback).toBe(1);
    expect(tried.got).toEqual(notTried.got);
    expect(tried.got).toMatchObject(load > 0.9 ? { code: 'queue_wait_exceeded' } : { status: 'queued' });
    expect(notTried.read).toBe(1);
    expect(tried.read).toBe(reads);
  });
});

describe('fail fast after a refused fast grant: the slots the bucket has reserved ahead', () => {
  it('a container that last saw the bucket full learns from the refusal that its tokens are spoken for', async () => {
    // Prepare: this container last saw both tokens free; since, the dispatcher spent them (the next is due in
    // 1.5 s), and one normal ticket waits.
    const s = await setup();
    const dispatcherView = new TokenBucket(s.bucketStore, s.clock, { fraction: 0, forNormal: false });
    await dispatcherView.refresh();
    for (let i = 0; i < 2; i++) expect((await dispatcherView.tryConsume('normal')).granted).toBe(true);
    const { callBudgetMs: _none, ...queuedOnly } = s.request('normal');
    expect((await s.admission.admit(queuedOnly, CONFIG)).ticket.status).toBe('queued');

    // Act: a normal request tries the fast grant (refused: the queue is busy and the token is gone) and queues
    const got = await s.admission.admit(s.request('normal'), CONFIG);

    // Assess: its grant is the second after the next token: 1.5 s + 1.5 s (with the old view: 0, a token free)
    expect(got.ticket.status).toBe('queued');
    expect(got.estimatedWaitMs).toBe(3_000);
  });
});

/**
 * A store that counts the agent's usage in the ticket's end, as the DynamoDB store does in its transaction;
 * `busyUsage`: that write is refused while the usage rides along (a throttled usage item).
 */
class UsageCountingStore extends MemoryTicketStore {
  readonly counted: AgentUsageEvent[] = [];
  busyUsage = false;
  override async transition(...args: Parameters<MemoryTicketStore['transition']>) {
    const [id, from, to, patch, opts = {}] = args;
    const { usage, ...rest } = opts;
    if (usage && this.busyUsage)
      throw new StoreUnavailableError('DynamoDB TransactWriteItems unavailable: ThrottlingError');
    const res = await super.transition(id, from, to, patch, rest);
    if (!usage || !('ticket' in res)) return res;
    this.counted.push(usage.event);
    return { ...res, usageCounted: true as const };
  }
}

describe('the end of a fast-path ticket and its agent usage', () => {
  it.each([
    ['a store that counts usage: one write for both', 'counting', 1, 0],
    ['its usage item busy: the ticket ends without it, the usage written apart', 'busy', 0, 1],
    ['a store that does not count usage: the usage written apart', 'plain', 0, 1],
  ] as const)('%s', async (_name, kind, inTheEnd, apart) => {
    // Prepare
    const clock = new FakeClock();
    const bucketStore = new MemoryBucketStore();
    const tickets =
      kind === 'plain' ? new MemoryTicketStore(bucketStore) : new UsageCountingStore(bucketStore);
    if (tickets instanceof UsageCountingStore) tickets.busyUsage = kind === 'busy';
    const recorded: AgentUsageEvent[] = [];
    const bucket = new TokenBucket(bucketStore, clock, { fraction: 0, forNormal: false });
    await bucket.configure(PARAMS);
    const { admission } = memoryAdmission({
      clock,
      tickets,
      bucket,
      newId: () => 't1',
      usage: { record: async (_agent, _now, e) => void recorded.push(e), read: async () => [] },
    });
    const got = await admission.admit(
      { agent: 'a', priority: 'normal', model: 'm', stream: false, deadline: 170_000, callBudgetMs: 65_000 },
      CONFIG,
    );
    expect(got.claimed).toBe(true);

    // Act
    await admission.finish(got.ticket, 'completed', { upstreamStatus: 200, totalTokens: 7 });

    // Assess: the ticket ended, its usage counted exactly once
    expect(tickets.tickets.get('t1')?.status).toBe('completed');
    expect(await tickets.counts()).toEqual({ queued: 0, inflight: 0 });
    const counted = tickets instanceof UsageCountingStore ? tickets.counted : [];
    expect(counted.length).toBe(inTheEnd);
    expect(recorded.length).toBe(apart);
    expect([...counted, ...recorded]).toEqual([{ requests: 1, tokens: 7, throttled: 0, queueMs: 0 }]);
  });
});
