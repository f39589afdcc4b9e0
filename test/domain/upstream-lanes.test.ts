// Domain tests: several limited upstreams — one priority order, a bucket per upstream, pools — on memory stores
// and a fake clock (a fake-clock simulation: the ingress is modelled as calling at the grant's slot).

import { describe, expect, it, vi } from 'vitest';
import {
  MemoryBucketStore,
  MemoryConfigStore,
  MemoryOutcomeStore,
} from '../../lib/adapters/memory/stores.js';
import { MemoryTicketStore } from '../../lib/adapters/memory/tickets.js';
import { TokenBucket } from '../../lib/domain/bucket.js';
import { FakeClock } from '../../lib/domain/clock.js';
import { configFromEnv, type GatewayConfig } from '../../lib/domain/config.js';
import { ConfigService } from '../../lib/domain/config-service.js';
import { type ConsumeAttempt, grantToCallMaxMs } from '../../lib/domain/gcra.js';
import { CLAIM_SHARE, type Ticket, type TicketPatch } from '../../lib/domain/tickets.js';
import { chooseLane, type UpstreamLane, upstreamConfig } from '../../lib/domain/upstream-lanes.js';
import type { UpstreamRequest } from '../../lib/domain/upstream-port.js';
import { grantWindowMs } from '../../lib/domain/upstreams.js';
import { UpstreamRelay } from '../../lib/ingress/upstream-relay.js';
import { poolsOf } from '../../lib/status/upstream-rows.js';
import { memoryGateway, memoryLanes, quietLog } from '../support/memory-gateway.js';
import { requestContext } from '../support/request-context.js';

/** Every grant is called at once (claimed and completed at its slot), as a prompt ingress would. */
class CallingTicketStore extends MemoryTicketStore {
  readonly calls: { upstream: string; at: number; ticket: string }[] = [];
  /** Answers the call instead of completing it (e.g. a 429: requeue); true when it handled the call. */
  answer: ((ticket: Ticket, upstream: string) => Promise<boolean>) | undefined;
  constructor(
    private readonly primary: string,
    ...args: ConstructorParameters<typeof MemoryTicketStore>
  ) {
    super(...args);
  }
  override async grant(
    ticket: Pick<Ticket, 'id' | 'attempt'>,
    attempt: ConsumeAttempt,
    patch: TicketPatch,
    opts?: { maxInflight?: number },
  ) {
    const res = await super.grant(ticket, attempt, patch, opts);
    if (res.kind === 'granted') {
      const upstream = patch.upstream ?? this.primary;
      this.calls.push({ upstream, at: patch.grantedAt!, ticket: ticket.id });
      const claimed = await this.transition(ticket.id, 'granted', 'claimed', { claimedAt: patch.grantedAt! });
      if ('ticket' in claimed && (await this.answer?.(claimed.ticket, upstream))) return res;
      await this.transition(ticket.id, 'claimed', 'completed', { finishedAt: patch.grantedAt! });
    }
    return res;
  }
}

/** A gateway with the upstreams of `SLUICE_UPSTREAMS`, the first one under the single-upstream items. */
const setup = async (upstreams: object[], env: Record<string, string> = {}) => {
  const clock = new FakeClock();
  const config: GatewayConfig = configFromEnv({
    SLUICE_UPSTREAMS: JSON.stringify(upstreams),
    SLUICE_QUEUE_MAX: '2000',
    ...env,
  });
  const names = upstreams.map((u) => (u as { name: string }).name);
  const bucketStores = new Map(names.map((n) => [n, new MemoryBucketStore()]));
  const configStore = new MemoryConfigStore({
    config,
    version: 1,
    updatedAt: clock.now(),
    updatedBy: 'test',
  });
  const tickets = new CallingTicketStore(
    names[0]!,
    bucketStores.get(names[0]!)!,
    () => false,
    undefined,
    (name) => bucketStores.get(name)!,
  );
  /** Upstreams whose retreat the dispatcher evaluated (the per-upstream metrics' hook). */
  const retreats: string[] = [];
  // Buffers never full: a full buffer's poller naps on the fake clock, which would run time ahead of the grants.
  const { admission, dispatcher, lanes } = memoryGateway({
    clock,
    tickets,
    bucket: new TokenBucket(bucketStores.get(names[0]!)!, clock, { fraction: 0.5, forNormal: false }),
    lanes: (outcomes) => memoryLanes(names, (name) => bucketStores.get(name)!, clock, outcomes),
    config: new ConfigService(configStore, clock, config),
    hooks: { onUpstreamRetreat: (upstream) => retreats.push(upstream) },
    timings: { bufferSize: 1_000 },
  });
  const admit = async (count: number, pool: string[], waitMs: number) => {
    for (let i = 0; i < count; i++) {
      await admission.admit(
        {
          agent: `a${i % 7}`,
          priority: 'normal',
          model: 'm',
          stream: false,
          deadline: clock.now() + waitMs,
          pool,
        },
        config,
      );
    }
  };
  return { clock, config, tickets, dispatcher, admit, lanes: lanes!, admission, retreats };
};

/** Most calls an upstream got in any window of `windowMs` (each call opens a window). */
const maxInWindow = (times: number[], windowMs: number): number => {
  const sorted = [...times].sort((a, b) => a - b);
  let most = 0;
  let j = 0;
  for (let i = 0; i < sorted.length; i++) {
    while (sorted[i]! - sorted[j]! >= windowMs) j++;
    most = Math.max(most, i - j + 1);
  }
  return most;
};

const callsOf = (s: { tickets: CallingTicketStore }, upstream: string) =>
  s.tickets.calls.filter((c) => c.upstream === upstream).map((c) => c.at);

describe('several upstreams: one priority order, a bucket each', () => {
  it('two upstreams with different limits: neither is ever exceeded, both are used to their limit', async () => {
    // Prepare: 40 and 10 per 60 s, far more waiting for each than either can serve in 3 minutes.
    const s = await setup([
      { name: 'big', limit: 40, window_s: 60 },
      { name: 'small', limit: 10, window_s: 60, models: ['s/'] },
    ]);
    await s.admit(200, ['big'], 600_000);
    await s.admit(60, ['small'], 600_000);

    // Act
    await s.dispatcher.run(s.clock.now() + 180_000);

    // Assess
    const big = callsOf(s, 'big');
    const small = callsOf(s, 'small');
    expect(maxInWindow(big, 60_000)).toBeLessThanOrEqual(40);
    expect(maxInWindow(small, 60_000)).toBeLessThanOrEqual(10);
    // Three windows' worth each (the window-exact log keeps its slack: a little under 3 × the limit).
    expect(big.length).toBeGreaterThanOrEqual(110);
    expect(small.length).toBeGreaterThanOrEqual(27);
    // The tickets of `small` only ever went to `small`.
    const smallIds = new Set(
      (await Promise.all([...s.tickets.tickets.values()]))
        .filter((t) => t.pool?.[0] === 'small')
        .map((t) => t.id),
    );
    for (const c of s.tickets.calls) expect(smallIds.has(c.ticket)).toBe(c.upstream === 'small');
  });

  it('a pool of two 40/60 s keys serves at least 97 % of 80 per minute, never over either key (0 429s)', async () => {
    // Prepare: ten minutes of demand at 80 per minute, all for the pool.
    const s = await setup([
      { name: 'nv-a', limit: 40, window_s: 60 },
      { name: 'nv-b', limit: 40, window_s: 60 },
    ]);
    await s.admit(800, ['nv-a', 'nv-b'], 700_000);

    // Act
    await s.dispatcher.run(s.clock.now() + 600_000);

    // Assess: an upstream that allows 40 in any 60 s would have refused none of these.
    const a = callsOf(s, 'nv-a');
    const b = callsOf(s, 'nv-b');
    expect(maxInWindow(a, 60_000)).toBeLessThanOrEqual(40);
    expect(maxInWindow(b, 60_000)).toBeLessThanOrEqual(40);
    const served = s.tickets.calls.filter((c) => c.at < s.clock.now()).length;
    expect(served / 800).toBeGreaterThanOrEqual(0.97);
    // Both members share the load.
    expect(Math.abs(a.length - b.length)).toBeLessThanOrEqual(5);
  });

  it('a saturated upstream does not hold up an idle one: its ticket is granted within one dispatcher cycle', async () => {
    // Prepare: 60 tickets for `busy` (an hour of its 1-per-minute budget... far more than it can serve), then one
    // for `idle`, less important by enqueue time than all of them.
    const s = await setup([
      { name: 'busy', limit: 10, window_s: 60 },
      { name: 'idle', limit: 40, window_s: 60, models: ['i/'] },
    ]);
    await s.admit(60, ['busy'], 600_000);
    s.clock.advance(1);
    const enqueuedAt = s.clock.now();
    await s.admit(1, ['idle'], 600_000);

    // Act
    await s.dispatcher.run(s.clock.now() + 30_000);

    // Assess: the dispatcher naps at most 1 s between looks; the idle upstream's ticket went at the first one.
    const idle = s.tickets.calls.filter((c) => c.upstream === 'idle');
    expect(idle).toHaveLength(1);
    expect(idle[0]!.at - enqueuedAt).toBeLessThanOrEqual(1_000);
    expect(callsOf(s, 'busy').length).toBeLessThanOrEqual(10);
    // Each upstream's retreat was evaluated under its own name (its metrics carry it as a dimension).
    expect(new Set(s.retreats)).toEqual(new Set(['busy', 'idle']));
  });
});

describe('LOW with several upstreams (strict order)', () => {
  it('a LOW ticket starved by more important work is refused after low_priority_timeout, not at its deadline', async () => {
    // Prepare: a pool of two keys at 10 per minute, an hour of high-priority work, then one LOW request.
    const s = await setup([
      { name: 'nv-a', limit: 10, window_s: 60 },
      { name: 'nv-b', limit: 10, window_s: 60 },
    ]);
    for (let i = 0; i < 40; i++) {
      await s.admission.admit(
        {
          agent: `u${i % 5}`,
          priority: 'urgent',
          model: 'm',
          stream: false,
          deadline: s.clock.now() + 170_000,
          pool: ['nv-a', 'nv-b'],
        },
        s.config,
      );
    }
    const low = await s.admission.admit(
      {
        agent: 'l',
        priority: 'low',
        model: 'm',
        stream: false,
        deadline: s.clock.now() + 170_000,
        pool: ['nv-a', 'nv-b'],
      },
      s.config,
    );

    // Act
    await s.dispatcher.run(s.clock.now() + 30_000);

    // Assess: refused once its wait passed the timeout (plus a dispatcher cycle), never called.
    const ended = s.tickets.tickets.get(low.ticket.id)!;
    expect(ended).toMatchObject({ status: 'rejected', reason: 'low_priority_timeout' });
    expect(ended.finishedAt! - ended.enqueuedAt).toBeLessThanOrEqual(s.config.lowPriorityTimeoutMs + 2_000);
    expect(s.tickets.calls.some((c) => c.ticket === low.ticket.id)).toBe(false);
  });
});

describe('the waiting ingress with several upstreams', () => {
  it('sees a grant from an idle upstream within its grant slack, however long the estimate for the busy one', async () => {
    // Prepare: 60 tickets wait for `busy` (10 per minute), one for `idle`; the dispatcher grants the idle one now.
    const s = await setup([
      { name: 'busy', limit: 10, window_s: 60 },
      { name: 'idle', limit: 40, window_s: 60, models: ['i/'] },
    ]);
    await s.admit(60, ['busy'], 600_000);
    // A moment of dispatching writes both buckets' parameters (and grants the busy upstream's burst).
    await s.dispatcher.run(s.clock.now() + 1);
    const { ticket } = await s.admission.admit(
      {
        agent: 'x',
        priority: 'normal',
        model: 'm',
        stream: false,
        deadline: s.clock.now() + 600_000,
        pool: ['idle'],
      },
      s.config,
    );
    const grantedAt = s.clock.now();
    const idle = s.lanes[1]!.bucket;
    await idle.refresh();
    const plan = idle.plan('normal');
    if ('waitMs' in plan) throw new Error('the idle upstream has a token');
    // The plain store's grant: the calling one would claim the ticket at once, as no waiting ingress does.
    const granted = await MemoryTicketStore.prototype.grant.call(s.tickets, ticket, plan.attempt, {
      grantedAt,
      upstream: 'idle',
    });
    expect(granted.kind).toBe('granted');

    // Act: the wait, paced by the first upstream's interval (one bucket's estimate: 60 ahead of it).
    const res = await s.admission.wait(ticket, { intervalMs: 6_000, windowMs: 60_000 });

    // Assess: seen young enough to be claimed (CLAIM_SHARE of the slack), not handed back as stale.
    expect(res.kind).toBe('granted');
    expect(s.clock.now() - grantedAt).toBeLessThanOrEqual(grantToCallMaxMs(60_000) * CLAIM_SHARE);
  });
});

describe('a requeued ticket waiting (one upstream)', () => {
  it('sees its next grant within its grant slack although many arrived after it', async () => {
    // Prepare: one ticket claimed and requeued (a 429 before any byte), 30 others queued behind it; it keeps its
    // enqueue time, so the dispatcher grants it at the next token.
    const s = await setup([{ name: 'only', limit: 40, window_s: 60 }]);
    await s.dispatcher.run(s.clock.now() + 1);
    const { ticket } = await s.admission.admit(
      { agent: 'x', priority: 'normal', model: 'm', stream: false, deadline: s.clock.now() + 600_000 },
      s.config,
    );
    await s.admit(30, ['only'], 600_000);
    const bucket = s.lanes[0]!.bucket;
    const grantNow = async (t: Ticket) => {
      await bucket.refresh();
      const plan = bucket.plan('normal');
      if ('waitMs' in plan) throw new Error('a token is free');
      const at = s.clock.now();
      const res = await MemoryTicketStore.prototype.grant.call(s.tickets, t, plan.attempt, { grantedAt: at });
      expect(res.kind).toBe('granted');
      bucket.spent(plan.attempt);
      return at;
    };
    await grantNow(ticket);
    const claimed = await s.tickets.transition(ticket.id, 'granted', 'claimed', { claimedAt: s.clock.now() });
    if (!('ticket' in claimed)) throw new Error('claimed');
    const requeued = await s.admission.requeue(claimed.ticket, 'upstream_throttled');
    if (!requeued) throw new Error('requeued');
    const grantedAt = await grantNow(requeued);

    // Act
    const res = await s.admission.wait(requeued, { intervalMs: 1_500, windowMs: 60_000 });

    // Assess
    expect(res.kind).toBe('granted');
    expect(s.clock.now() - grantedAt).toBeLessThanOrEqual(grantToCallMaxMs(60_000) * CLAIM_SHARE);
  });
});

describe('a grant handed back at send with several upstreams', () => {
  it('refunds the token to its own upstream, not the first one', async () => {
    // Prepare: both buckets written (a moment of dispatching, nothing queued), then one ticket granted by `second`
    // and claimed; the send finds it older than its share of the slack.
    const s = await setup([
      { name: 'first', limit: 40, window_s: 60 },
      { name: 'second', limit: 40, window_s: 60, models: ['s/'] },
    ]);
    await s.dispatcher.run(s.clock.now() + 1);
    const { ticket } = await s.admission.admit(
      {
        agent: 'x',
        priority: 'normal',
        model: 'm',
        stream: false,
        deadline: s.clock.now() + 600_000,
        pool: ['second'],
      },
      s.config,
    );
    const [first, second] = s.lanes.map((l) => l.bucket) as [TokenBucket, TokenBucket];
    await second.refresh();
    const plan = second.plan('normal');
    if ('waitMs' in plan) throw new Error('the second upstream has a token');
    const grantedAt = s.clock.now();
    await MemoryTicketStore.prototype.grant.call(s.tickets, ticket, plan.attempt, {
      grantedAt,
      upstream: 'second',
    });
    second.spent(plan.attempt);
    const claimed = await s.tickets.transition(ticket.id, 'granted', 'claimed', { claimedAt: grantedAt });
    if (!('ticket' in claimed)) throw new Error('claimed');
    s.clock.advance(900);
    const before = { first: await first.refresh(), second: await second.refresh() };

    // Act
    const res = await s.admission.beforeSend(claimed.ticket, { windowMs: 60_000 });

    // Assess: handed back; the token went back to `second`, `first` is as it was.
    expect(res).toMatchObject({ status: 'queued' });
    expect(await first.refresh()).toEqual(before.first);
    expect(await second.refresh()).not.toEqual(before.second);
  });
});

/**
 * Two upstreams with different windows: `first` 40 per 60 s (slack 1 s: claimed up to 750 ms, sent up to 800 ms
 * after its grant), `second` 10 per 5 s (slack capped at a tenth of its window, 500 ms: 375 ms and 400 ms).
 */
const TWO_WINDOWS = [
  { name: 'first', limit: 40, window_s: 60 },
  { name: 'second', limit: 10, window_s: 5, models: ['s/'] },
];

/** One ticket granted by `upstream`'s bucket (the plain store's grant: nobody claims it), then `ageMs` later. */
const grantedBy = async (s: Awaited<ReturnType<typeof setup>>, upstream: string, ageMs: number) => {
  // A moment of dispatching writes both buckets' parameters (nothing queued yet).
  await s.dispatcher.run(s.clock.now() + 1);
  const { ticket } = await s.admission.admit(
    {
      agent: 'x',
      priority: 'normal',
      model: 'm',
      stream: false,
      // Short: a ticket handed back is not granted again (no dispatcher runs) and gives up at its deadline.
      deadline: s.clock.now() + 2_000,
      pool: [upstream],
    },
    s.config,
  );
  const lane = s.lanes.find((l) => l.name === upstream)!;
  await lane.bucket.refresh();
  const plan = lane.bucket.plan('normal');
  if ('waitMs' in plan) throw new Error(`${upstream} has a token`);
  const res = await MemoryTicketStore.prototype.grant.call(s.tickets, ticket, plan.attempt, {
    grantedAt: s.clock.now(),
    ...(lane.primary ? {} : { upstream }),
  });
  lane.bucket.spent(plan.attempt);
  expect(res.kind).toBe('granted');
  s.clock.advance(ageMs);
  const [first, second] = s.lanes.map((l) => l.bucket) as [TokenBucket, TokenBucket];
  return {
    granted: (await s.tickets.get(ticket.id))!,
    buckets: { first: await first.refresh(), second: await second.refresh() },
    bucketsNow: async () => ({ first: await first.refresh(), second: await second.refresh() }),
  };
};

describe("several upstreams: a grant's age is judged by its own upstream's window and slack", () => {
  it.each([
    { upstream: 'second', ageMs: 600, handedBack: true },
    { upstream: 'second', ageMs: 200, handedBack: false },
    { upstream: 'first', ageMs: 600, handedBack: false },
  ])(
    'before the claim: a $upstream grant aged $ageMs ms is handed back: $handedBack (refunded to its own bucket)',
    async (c) => {
      // Prepare
      const s = await setup(TWO_WINDOWS);
      const { granted, buckets, bucketsNow } = await grantedBy(s, c.upstream, c.ageMs);
      const requeueStale = vi.spyOn(s.admission, 'requeueStale');

      // Act: as the ingress waits for its claim (the config's top-level window is the first upstream's). Its first
      // read comes a quarter of a near pause later (94 ms at the first upstream's slack): the grant is that much older.
      const res = await s.admission.untilClaimed(granted, {
        signal: new AbortController().signal,
        passthrough: false,
        windowMs: s.config.upstreamWindowMs,
        windowOf: (t) => grantWindowMs(s.config, t.upstream),
        callBudgetMs: 65_000,
        intervalMs: async () => 1_500,
      });

      // Assess
      const now = await bucketsNow();
      if (c.handedBack) {
        expect(requeueStale).toHaveBeenCalledTimes(1);
        // No later grant (no dispatcher): it gave up at its deadline, never claimed.
        expect(res.kind).toBe('refused');
        expect(now.first).toEqual(buckets.first);
        expect(now.second).not.toEqual(buckets.second);
      } else {
        expect(requeueStale).not.toHaveBeenCalled();
        expect(res).toMatchObject({ kind: 'claimed', ticket: { status: 'claimed' } });
        expect(now).toEqual(buckets);
      }
    },
  );

  it.each([
    { upstream: 'second', ageMs: 800, handedBack: true },
    { upstream: 'second', ageMs: 390, handedBack: false },
    { upstream: 'first', ageMs: 700, handedBack: false },
  ])(
    'right before the send: a claimed $upstream grant aged $ageMs ms is handed back: $handedBack (refunded to its own bucket)',
    async (c) => {
      // Prepare: the grant claimed as it was made; the relay's context carries the request's config.
      const s = await setup(TWO_WINDOWS);
      const { granted, buckets, bucketsNow } = await grantedBy(s, c.upstream, c.ageMs);
      const claimed = await s.tickets.transition(granted.id, 'granted', 'claimed', {
        claimedAt: granted.grantedAt!,
      });
      if (!('ticket' in claimed)) throw new Error('claimed');
      const calls: UpstreamRequest[] = [];
      const relay = new UpstreamRelay({
        upstream: {
          call: async (req) => {
            calls.push(req);
            return {
              status: 200,
              headers: new Headers({ 'content-type': 'application/json' }),
              body: new Response('{"choices":[]}').body,
            };
          },
        },
        upstreamKey: async () => 'key',
        admission: s.admission,
        outcomes: new MemoryOutcomeStore(),
        bucket: s.lanes[0]!.bucket,
        lanes: s.lanes,
        clock: s.clock,
        telemetry: { upstream: () => {} },
        log: quietLog,
      });
      const ctx = requestContext({
        req: { body: null, remainingMs: 300_000 },
        config: s.config,
        upstream: { name: c.upstream, baseUrl: 'http://upstream.test/v1', limited: true },
        upstreamBody: '{"model":"m"}',
      });

      // Act
      const res = await relay.callAndRelay(ctx, claimed.ticket, {}, { sendCheck: {} });

      // Assess
      const now = await bucketsNow();
      if (c.handedBack) {
        expect(res).toMatchObject({ requeued: { status: 'queued', reason: 'grant_stale_at_send' } });
        expect(calls).toHaveLength(0);
        expect(now.first).toEqual(buckets.first);
        expect(now.second).not.toEqual(buckets.second);
      } else {
        expect(res).toBe('done');
        expect(calls).toHaveLength(1);
        expect(now).toEqual(buckets);
      }
    },
  );
});

describe("several upstreams: the dispatcher's sweep of a grant never claimed", () => {
  it("refunds it within its own upstream's window only (the second's 5 s has passed, the first's 60 s has not)", async () => {
    // Prepare: one grant of each upstream that no ingress claims (its claim deadline 3 s on), found 6 s later.
    const s = await setup(TWO_WINDOWS);
    const lost: Record<string, { id: string; grantedAt: number }> = {};
    for (const upstream of ['first', 'second']) {
      const { granted } = await grantedBy(s, upstream, 0);
      await s.tickets.transition(granted.id, 'granted', 'granted', { claimBy: s.clock.now() + 3_000 });
      lost[upstream] = { id: granted.id, grantedAt: granted.grantedAt! };
    }
    s.clock.advance(6_000);
    const [first, second] = s.lanes.map((l) => l.bucket) as [TokenBucket, TokenBucket];
    const before = { first: await first.refresh(), second: await second.refresh() };
    const refunds = { first: vi.spyOn(first, 'refund'), second: vi.spyOn(second, 'refund') };

    // Act: a moment of dispatching (its first loop sweeps).
    await s.dispatcher.run(s.clock.now() + 1);

    // Assess: both ended; the first upstream's token came back (its grant leaves the window log), the second's
    // did not (its window, which counted the grant, has passed: a token now would be one too many).
    for (const t of Object.values(lost))
      expect(await s.tickets.get(t.id)).toMatchObject({
        status: 'failed',
        reason: 'ingress_lost_before_claim',
      });
    expect(refunds.first).toHaveBeenCalledWith(lost.first!.grantedAt, 60_000, undefined);
    expect(refunds.second).toHaveBeenCalledWith(lost.second!.grantedAt, 5_000, undefined);
    expect(await first.refresh()).not.toEqual(before.first);
    expect(await second.refresh()).toEqual(before.second);
  });
});

describe('a pool member that refuses', () => {
  it('a 429 (with Retry-After) requeues the ticket and the other member takes it', async () => {
    // Prepare: nv-a answers its first call with a 429 and Retry-After 30 s (the ingress holds its bucket, requeues).
    const s = await setup([
      { name: 'nv-a', limit: 40, window_s: 60 },
      { name: 'nv-b', limit: 40, window_s: 60 },
    ]);
    let refused = 0;
    s.tickets.answer = async (ticket, upstream) => {
      if (upstream !== 'nv-a' || refused++ > 0) return false;
      await s.lanes[0]!.bucket.hold(s.clock.now() + 30_000);
      await s.admission.requeue(ticket, 'upstream_throttled');
      return true;
    };
    await s.admit(1, ['nv-a', 'nv-b'], 600_000);

    // Act: the requeue rings the doorbell, a run serves it (on the fake clock a run may go idle before its
    // poller's real-time tick sees the new message: run again as the doorbell would start it).
    for (let run = 0; run < 3 && (await s.tickets.counts()).queued > 0; run++)
      await s.dispatcher.run(s.clock.now() + 10_000);

    // Assess: first to nv-a (both full, listed first), then to nv-b; it ends completed there.
    expect(s.tickets.calls.map((c) => c.upstream)).toEqual(['nv-a', 'nv-b']);
    const [ticket] = [...s.tickets.tickets.values()];
    expect(ticket).toMatchObject({ status: 'completed', upstream: 'nv-b', attempt: 1 });
  });
});

describe('chooseLane: within a pool', () => {
  it('takes the member with a token (most left, then fewest recent grants); else says when the first comes', async () => {
    const s = await setup([
      { name: 'nv-a', limit: 40, window_s: 60 },
      { name: 'nv-b', limit: 40, window_s: 60 },
    ]);
    for (const lane of s.lanes) await lane.retreat.evaluate(upstreamConfig(s.config, lane.name));
    const [a, b] = s.lanes as [UpstreamLane, UpstreamLane];
    // Both full: the one with fewer recent grants.
    expect(chooseLane([a, b], 'normal', new Map([['nv-a', 3]]))).toMatchObject({ lane: b });
    // a spent its burst: b has more left.
    await a.bucket.tryConsume('urgent');
    await a.bucket.tryConsume('urgent');
    expect(chooseLane([a, b], 'normal', new Map())).toMatchObject({ lane: b });
    // Passed over at max_inflight; none with a token: how long until one.
    expect(chooseLane([a, b], 'normal', new Map(), new Set(['nv-b']))).toMatchObject({
      waitMs: expect.any(Number),
    });
  });
});

describe('poolsOf: upstreams sharing models are grouped', () => {
  it('groups by shared route matches, transitively; an upstream alone is its own pool', () => {
    const routes = [
      { match: 'meta/', upstream: 'nv-a' },
      { match: 'meta/', upstream: 'nv-b' },
      { match: 'qwen/', upstream: 'nv-b' },
      { match: 'qwen/', upstream: 'nim' },
      { match: 'acme/', upstream: 'acme' },
    ];
    expect(Object.fromEntries(poolsOf(routes, ['nv-a', 'nv-b', 'nim', 'acme']))).toEqual({
      'nv-a': ['nim', 'nv-a', 'nv-b'],
      'nv-b': ['nim', 'nv-a', 'nv-b'],
      nim: ['nim', 'nv-a', 'nv-b'],
      acme: ['acme'],
    });
  });
});
