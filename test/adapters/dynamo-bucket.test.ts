// Adapter tests: DynamoBucketStore + TokenBucket on DynamoDB Local give the GCRA table's answers, rescale, hold, refund.
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  DynamoBucketStore,
  decodeLog,
  decodeTokens,
  encodeLog,
  encodeTokens,
} from '../../lib/adapters/dynamo/bucket-store.js';
import { TokenBucket } from '../../lib/domain/bucket.js';
import { FakeClock } from '../../lib/domain/clock.js';
import { type BucketParams, type BucketState, deriveAdmission, planConsume } from '../../lib/domain/gcra.js';
import type { Priority } from '../../lib/domain/priority.js';
import { type TokenNeed, tokenSlot, tokensInWindow } from '../../lib/domain/token-window.js';
import { type TestResources, testResources } from '../support/aws.js';

let res: TestResources;

beforeAll(async () => {
  res = await testResources('dynamo-bucket');
});

afterAll(() => {
  res?.close();
});

/** Burst 2 with half reserved: urgent may spend 2 tokens back to back, low only 1. */
const RESERVE = { fraction: 0.5, forNormal: false };

/** A bucket item of its own (fresh key) holding `params` and, when given, `tat`. */
const freshStore = async (params: BucketParams, tat?: number): Promise<DynamoBucketStore> => {
  const store = new DynamoBucketStore(res.dynamo, res.names.stateTable, `bucket-test-${randomUUID()}`);
  const created = await store.ensure(params);
  if (tat !== undefined && !(await store.compareAndSet(created, { ...params, tat }))) {
    throw new Error('could not seed the bucket item');
  }
  return store;
};

/** The stored tat, read back consistently. */
const storedTat = async (store: DynamoBucketStore): Promise<number | undefined> => (await store.get())?.tat;

/** Grants `priority` takes back to back at the clock's current time (stops at the first refusal). */
const drain = async (bucket: TokenBucket, priority: Priority, max = 50): Promise<number> => {
  let granted = 0;
  while (granted < max && (await bucket.tryConsume(priority)).granted) granted++;
  return granted;
};

describe('the GCRA table on DynamoDB Local (same rows as test/domain/gcra.test.ts)', () => {
  const T = 1000;
  const params = { intervalMs: T, burst: 2 };
  // name, tat, now, burstForPriority, expected branch, wait or new tat
  const rows: [string, number | undefined, number, 1 | 2, 'idle' | 'busy' | 'wait', number][] = [
    ['empty bucket item', undefined, 10_000, 2, 'idle', 11_000],
    ['tat in the past', 5_000, 10_000, 2, 'idle', 11_000],
    ['second of a burst of 2', 11_000, 10_000, 2, 'busy', 12_000],
    ['third of a burst of 2 waits one interval', 12_000, 10_000, 2, 'wait', 1_000],
    ['low (burst 1) cannot take the reserve', 11_000, 10_000, 1, 'wait', 1_000],
    ['tat exactly now is busy, not idle', 10_000, 10_000, 1, 'busy', 11_000],
    ['far future tat (hold)', 70_000, 10_000, 2, 'wait', 59_000],
  ];
  const priorityOf = (burst: 1 | 2): Priority => (burst === 2 ? 'urgent' : 'low');

  it.each(rows)('%s (bucket knows the stored state)', async (_name, tat, now, burst, branch, expected) => {
    // Prepare
    const store = await freshStore(params, tat);
    const bucket = new TokenBucket(store, new FakeClock(now), RESERVE);
    await bucket.refresh();
    expect(bucket.plan(priorityOf(burst))).toSatisfy((p: ReturnType<TokenBucket['plan']>) =>
      branch === 'wait' ? 'waitMs' in p : 'attempt' in p && p.attempt.branch === branch,
    );

    // Act
    const result = await bucket.tryConsume(priorityOf(burst));

    // Assess
    if (branch === 'wait') {
      expect(result).toEqual({ granted: false, waitMs: expected });
      expect(bucket.stats).toEqual({ writes: 0, conflicts: 0 });
      expect(await storedTat(store)).toBe(tat);
    } else {
      expect(result).toEqual({ granted: true });
      expect(bucket.stats).toEqual({ writes: 1, conflicts: 0 });
      expect(await storedTat(store)).toBe(expected);
      expect(bucket.state?.tat).toBe(expected);
    }
  });

  it.each(rows)(
    '%s (stale bucket: the failed condition’s ALL_OLD state gives the answer)',
    async (_name, tat, now, burst, branch, expected) => {
      // Prepare: this bucket last saw the item without a tat (full), then another writer moved it.
      const store = await freshStore(params);
      const bucket = new TokenBucket(store, new FakeClock(now), RESERVE);
      await bucket.configure(params);
      if (tat !== undefined) {
        const other = await store.get();
        expect(await store.compareAndSet(other!, { ...params, tat })).toBe(true);
      }
      // An idle write planned on "full" fails exactly when the stored tat is not in the past.
      const expectedConflicts = tat !== undefined && tat >= now ? 1 : 0;

      // Act
      const result = await bucket.tryConsume(priorityOf(burst));

      // Assess
      expect(bucket.stats.conflicts).toBe(expectedConflicts);
      if (branch === 'wait') {
        expect(result).toEqual({ granted: false, waitMs: expected });
        expect(bucket.state).toEqual({ ...params, tat });
        expect(await storedTat(store)).toBe(tat);
      } else {
        expect(result).toEqual({ granted: true });
        expect(await storedTat(store)).toBe(expected);
      }
      expect(bucket.stats.writes).toBe(expectedConflicts + (branch === 'wait' ? 0 : 1));
    },
  );

  it('a failed consume returns the stored item (ALL_OLD) and changes nothing', async () => {
    // Prepare
    const store = await freshStore(params, 12_000);
    const plan = planConsume({ ...params }, 10_000, 2);
    if (!('attempt' in plan)) throw new Error('expected an attempt');

    // Act
    const out = await store.consume(plan.attempt);

    // Assess
    expect(out).toEqual({ ok: false, current: { ...params, tat: 12_000 } });
    expect(await storedTat(store)).toBe(12_000);
  });
});

describe('stale parameters', () => {
  const old = { intervalMs: 1000, burst: 2 };
  const current = { intervalMs: 2000, burst: 2 };

  it.each([
    ['idle (no tat)', undefined, 10_000],
    ['idle (tat in the past)', 5_000, 10_000],
    ['busy', 10_500, 10_000],
  ])('%s: an attempt planned on the old params fails its condition', async (_name, tat, now) => {
    // Prepare
    const store = await freshStore(current, tat);
    const plan = planConsume({ ...old, ...(tat !== undefined ? { tat } : {}) }, now, 2);
    if (!('attempt' in plan)) throw new Error('expected an attempt');

    // Act
    const out = await store.consume(plan.attempt);

    // Assess
    expect(out).toEqual({ ok: false, current: { ...current, ...(tat !== undefined ? { tat } : {}) } });
    expect(await storedTat(store)).toBe(tat);
  });

  it('a bucket holding old params learns the new ones from the failure and spends at the new interval', async () => {
    // Prepare
    const store = await freshStore(old);
    const clock = new FakeClock(10_000);
    const stale = new TokenBucket(store, clock, RESERVE);
    await stale.configure(old);
    await new TokenBucket(store, clock, RESERVE).configure(current);

    // Act
    const result = await stale.tryConsume('urgent');

    // Assess
    expect(result).toEqual({ granted: true });
    expect(stale.stats).toEqual({ writes: 2, conflicts: 1 });
    expect(await store.get()).toEqual({ ...current, tat: 10_000 + current.intervalMs });
  });
});

describe('configure() rescales the backlog', () => {
  // from, to, tokens spent at t0, ms elapsed before the change → tokens available before = after
  const rows: [string, BucketParams, BucketParams, number, number, number][] = [
    ['rate cut ×4, 3 of 4 spent', { intervalMs: 1000, burst: 4 }, { intervalMs: 4000, burst: 4 }, 3, 0, 1],
    ['rate cut ×4, all spent', { intervalMs: 1000, burst: 4 }, { intervalMs: 4000, burst: 4 }, 4, 0, 0],
    [
      'rate cut, 2.5 tokens in use',
      { intervalMs: 1000, burst: 4 },
      { intervalMs: 3000, burst: 4 },
      3,
      500,
      1,
    ],
    ['rate raise ×4, 2 of 4 spent', { intervalMs: 4000, burst: 4 }, { intervalMs: 1000, burst: 4 }, 2, 0, 2],
    ['rate raise, all spent', { intervalMs: 2000, burst: 3 }, { intervalMs: 500, burst: 3 }, 3, 0, 0],
    ['idle bucket stays full', { intervalMs: 1000, burst: 3 }, { intervalMs: 5000, burst: 3 }, 0, 0, 3],
  ];

  it.each(rows)('%s', async (_name, from, to, spent, elapsed, available) => {
    // Prepare
    const store = await freshStore(from);
    const clock = new FakeClock(1_000_000);
    const user = new TokenBucket(store, clock, RESERVE);
    await user.configure(from);
    for (let i = 0; i < spent; i++) expect(await user.tryConsume('urgent')).toEqual({ granted: true });
    clock.advance(elapsed);
    expect(user.available('urgent')).toBe(available);

    // Act: another function (no local state) changes the rate.
    const operator = new TokenBucket(store, clock, RESERVE);
    const after = await operator.configure(to);

    // Assess: same tokens, and no more than that can be taken right away — by anyone.
    expect(after).toMatchObject(to);
    expect(await store.get()).toEqual(after);
    expect(operator.available('urgent')).toBe(available);
    await user.refresh();
    expect(await drain(user, 'urgent')).toBe(available);
  });

  it('configure() with the stored params writes nothing', async () => {
    // Prepare
    const p = { intervalMs: 1000, burst: 2 };
    const store = await freshStore(p, 5_000);
    const bucket = new TokenBucket(store, new FakeClock(4_000), RESERVE);

    // Act
    const state = await bucket.configure(p);

    // Assess
    expect(state).toEqual({ ...p, tat: 5_000 });
    expect(await store.get()).toEqual({ ...p, tat: 5_000 });
  });
});

describe('hold(until)', () => {
  const p = { intervalMs: 1000, burst: 3 };
  const t0 = 2_000_000;
  const until = t0 + 30_000;

  it.each([
    ['a full bucket', 0],
    ['a half-spent bucket', 2],
  ])('blocks %s until `until`, then leaves exactly one token for the best priority', async (_name, spent) => {
    // Prepare
    const store = await freshStore(p);
    const clock = new FakeClock(t0);
    const bucket = new TokenBucket(store, clock, RESERVE);
    await bucket.configure(p);
    for (let i = 0; i < spent; i++) await bucket.tryConsume('urgent');

    // Act
    await bucket.hold(until);

    // Assess: nothing before `until` (a fresh reader too), one token at `until`, low waits one interval more.
    expect(await store.get()).toMatchObject({ holdUntil: until, tat: until + (p.burst - 1) * p.intervalMs });
    clock.set(until - 1);
    const reader = new TokenBucket(store, clock, RESERVE);
    expect(await reader.tryConsume('urgent')).toEqual({ granted: false, waitMs: 1 });
    clock.set(until);
    expect(await reader.tryConsume('low')).toEqual({ granted: false, waitMs: p.intervalMs * (p.burst - 1) });
    expect(await drain(reader, 'urgent')).toBe(1);
    expect(await reader.tryConsume('urgent')).toEqual({ granted: false, waitMs: p.intervalMs });
  });

  // Regression (lib/domain/bucket.ts, hold, fixed): the "already held long enough" decision trusts the cached tat; when others
  // lowered the stored tat since (refunds from ingress functions, a rate raise), the hold is skipped entirely.
  it('a hold from a bucket whose cached tat is ahead of the store still holds', async () => {
    // Prepare: `dispatcher` saw the burst spent; since then three grants were refunded elsewhere.
    const store = await freshStore(p);
    const clock = new FakeClock(t0);
    const dispatcher = new TokenBucket(store, clock, RESERVE);
    await dispatcher.configure(p);
    await drain(dispatcher, 'urgent');
    const ingress = new TokenBucket(store, clock, RESERVE);
    for (let i = 0; i < p.burst; i++) await ingress.refund(clock.now(), 60_000);
    const hold = t0 + 500;

    // Act
    await dispatcher.hold(hold);

    // Assess: nothing may be granted before the hold ends.
    clock.set(hold - 1);
    expect(await new TokenBucket(store, clock, RESERVE).tryConsume('urgent')).toEqual({
      granted: false,
      waitMs: 1,
    });
  });

  // Regression (lib/domain/gcra.ts refundTat, used by bucket.ts refund, fixed): a refund during a hold lowers tat below
  // holdTat(holdUntil), so each refund (an agent gone before its call) ends the upstream's Retry-After one interval early.
  it('a refund during a hold does not end the hold early', async () => {
    // Prepare
    const store = await freshStore(p);
    const clock = new FakeClock(t0);
    const bucket = new TokenBucket(store, clock, RESERVE);
    await bucket.configure(p);
    await bucket.tryConsume('urgent');
    await bucket.hold(until);

    // Act: the grant taken before the hold is given back.
    await bucket.refund(clock.now(), 60_000);

    // Assess
    clock.set(until - 1);
    expect(await new TokenBucket(store, clock, RESERVE).tryConsume('urgent')).toEqual({
      granted: false,
      waitMs: 1,
    });
  });

  // Regression (lib/domain/gcra.ts rescaleTat, used by bucket.ts configure, fixed): a rate change rescales the whole tat − now,
  // hold included, so a rate raise during a hold (a recover step, a config change) shortens the hold in proportion.
  it('a rate raise during a hold does not end the hold early', async () => {
    // Prepare
    const store = await freshStore(p);
    const clock = new FakeClock(t0);
    await new TokenBucket(store, clock, RESERVE).hold(until);
    const faster = { intervalMs: p.intervalMs / 2, burst: p.burst };

    // Act
    await new TokenBucket(store, clock, RESERVE).configure(faster);

    // Assess
    clock.set(until - 1);
    expect(await new TokenBucket(store, clock, RESERVE).tryConsume('urgent')).toEqual({
      granted: false,
      waitMs: 1,
    });
  });

  it('a shorter hold never shortens a longer one', async () => {
    // Prepare
    const store = await freshStore(p);
    const bucket = new TokenBucket(store, new FakeClock(t0), RESERVE);
    await bucket.configure(p);
    await bucket.hold(until);
    const before = await store.get();

    // Act
    await new TokenBucket(store, new FakeClock(t0), RESERVE).hold(until - 10_000);

    // Assess
    expect(await store.get()).toEqual(before);
  });
});

describe('refund()', () => {
  const p = { intervalMs: 1000, burst: 3 };
  const t0 = 3_000_000;

  it.each([
    // spent, ms later, tat change, available before → after
    ['after 2 of 3 spent', 2, 0, -1000, 1, 2],
    ['after the whole burst', 3, 0, -1000, 0, 1],
    ['on a partly refilled bucket (tat − T < now clamps to now)', 1, 500, -500, 2, 3],
    ['on an idle bucket (nothing to give back)', 1, 5_000, 0, 3, 3],
  ])('%s', async (_name, spent, later, delta, before, after) => {
    // Prepare
    const store = await freshStore(p);
    const clock = new FakeClock(t0);
    const bucket = new TokenBucket(store, clock, RESERVE);
    await bucket.configure(p);
    for (let i = 0; i < spent; i++) await bucket.tryConsume('urgent');
    clock.advance(later);
    const tat = await storedTat(store);
    expect(bucket.available('urgent')).toBe(before);

    // Act
    await bucket.refund(clock.now(), 60_000);

    // Assess
    expect(await storedTat(store)).toBe((tat ?? 0) + delta);
    const reader = new TokenBucket(store, clock, RESERVE);
    await reader.refresh();
    expect(reader.available('urgent')).toBe(after);
    expect(await drain(reader, 'urgent')).toBe(after);
  });

  // Regression (lib/domain/bucket.ts, refund, fixed): the "nothing to give back" decision trusts the cached state; a bucket that
  // last saw the item idle (tat ≤ now) returns without a write although other users spent the burst since.
  it('a refund from a stale bucket re-reads and gives back exactly one token', async () => {
    // Prepare: two users; `stale` has not seen the other's spends.
    const store = await freshStore(p);
    const clock = new FakeClock(t0);
    const stale = new TokenBucket(store, clock, RESERVE);
    await stale.configure(p);
    const other = new TokenBucket(store, clock, RESERVE);
    await other.refresh();
    await drain(other, 'urgent');
    const state: BucketState | undefined = await store.get();

    // Act
    await stale.refund(clock.now(), 60_000);

    // Assess: the dispatcher re-reads the bucket every evaluation interval and then finds the returned token.
    expect(await storedTat(store)).toBe(state!.tat! - p.intervalMs);
    await other.refresh();
    expect(await drain(other, 'urgent')).toBe(1);
  });
});

describe('window-exact bucket on DynamoDB Local (grant log in the item, one compare-and-set per grant)', () => {
  // Same parameters as the table in test/domain/window-admission.test.ts: 4 per 1000 ms, spacing 250 ms, burst 2.
  const params: BucketParams = { intervalMs: 250, burst: 2, window: { limit: 4, windowMs: 1_000 } };

  /** A fresh item holding `params`, the log and the tat (seeded by compare-and-set, as configure() does). */
  const windowStore = async (log: number[], tat?: number): Promise<DynamoBucketStore> => {
    const store = new DynamoBucketStore(res.dynamo, res.names.stateTable, `bucket-log-${randomUUID()}`);
    const created = await store.ensure(params);
    const next = { ...params, log, version: 1, ...(tat !== undefined ? { tat } : {}) };
    if (!(await store.compareAndSet(created, next))) throw new Error('could not seed the bucket item');
    return store;
  };

  it.each([
    // name, log, tat, now, priority → granted, stored log afterwards (or wait)
    ['empty log', [], undefined, 10_000, 'urgent', [10_000], undefined],
    ['old entries leave the log', [8_000, 9_000], 9_250, 10_000, 'urgent', [10_000], undefined],
    ['window full', [9_200, 9_500, 9_750, 9_900], 9_000, 10_000, 'urgent', undefined, 200],
    ['low keeps off the last slot', [9_200, 9_500, 9_750], 9_000, 10_000, 'low', undefined, 200],
    [
      'urgent takes it',
      [9_200, 9_500, 9_750],
      9_000,
      10_000,
      'urgent',
      [9_200, 9_500, 9_750, 10_000],
      undefined,
    ],
  ] as const)('%s', async (_name, log, tat, now, priority, expectedLog, waitMs) => {
    // Prepare
    const store = await windowStore([...log], tat);
    const bucket = new TokenBucket(store, new FakeClock(now), RESERVE);
    await bucket.refresh();

    // Act
    const result = await bucket.tryConsume(priority);

    // Assess
    const stored = await store.get();
    if (expectedLog === undefined) {
      expect(result).toEqual({ granted: false, waitMs });
      expect(stored?.log).toEqual(log);
      expect(stored?.version).toBe(1);
    } else {
      expect(result).toEqual({ granted: true });
      expect(bucket.stats).toEqual({ writes: 1, conflicts: 0 });
      expect(stored?.log).toEqual(expectedLog);
      expect(stored?.version).toBe(2);
      expect(bucket.state).toEqual(stored);
    }
  });

  it('a consume planned on a stale log fails, learns the stored log (ALL_OLD) and waits', async () => {
    // Prepare: this bucket saw an empty log; another writer filled the window meanwhile.
    const store = await windowStore([]);
    const clock = new FakeClock(10_000);
    const stale = new TokenBucket(store, clock, RESERVE);
    await stale.refresh();
    const other = new TokenBucket(store, clock, RESERVE);
    await other.refresh();
    for (const at of [10_000, 10_250, 10_500, 10_750]) {
      clock.set(at);
      expect(await other.tryConsume('urgent')).toEqual({ granted: true });
    }

    // Act
    const result = await stale.tryConsume('urgent');

    // Assess: one lost condition, then the true log says the window is full until the first grant leaves it.
    expect(result).toEqual({ granted: false, waitMs: 250 });
    expect(stale.stats).toEqual({ writes: 1, conflicts: 1 });
    expect((await store.get())?.log).toEqual([10_000, 10_250, 10_500, 10_750]);
  });

  it('a refund takes the grant out of the log; a rate change keeps the log; a hold still blocks', async () => {
    // Prepare
    const store = await windowStore([]);
    const clock = new FakeClock(10_000);
    const bucket = new TokenBucket(store, clock, RESERVE);
    await bucket.refresh();
    for (const at of [10_000, 10_250, 10_500, 10_750]) {
      clock.set(at);
      await bucket.tryConsume('urgent');
    }

    // Act + Assess: refund the grant of 10 250 → one slot free again once the spacing allows.
    await bucket.refund(10_250, 60_000);
    expect((await store.get())?.log).toEqual([10_000, 10_500, 10_750]);
    clock.set(11_000);
    expect(await bucket.tryConsume('urgent')).toEqual({ granted: true });

    // A cut to 2 per window: the log stays (10 000 left it with the last grant), so the window is full.
    const cut = { ...params, intervalMs: 500, window: { limit: 2, windowMs: 1_000 } };
    const after = await bucket.configure(cut);
    expect(after.log).toEqual([10_500, 10_750, 11_000]);
    clock.set(11_200);
    expect(await bucket.tryConsume('urgent')).toMatchObject({ granted: false });

    // A hold until 20 000 blocks even when the log is empty by then.
    await bucket.hold(20_000);
    clock.set(19_999);
    expect(await bucket.tryConsume('urgent')).toMatchObject({ granted: false });
    clock.set(20_000);
    expect(await bucket.tryConsume('urgent')).toEqual({ granted: true });
  });

  it('the log blob is 4 bytes per grant after an 8-byte base', () => {
    const log = [T0_LOG, T0_LOG + 1, T0_LOG + 59_999];
    const bytes = encodeLog(log);
    expect(bytes.byteLength).toBe(8 + 4 * 3);
    expect(decodeLog(bytes)).toEqual(log);
  });

  it.each([
    ['in time order', [T0_LOG, T0_LOG + 1_500, T0_LOG + 3_000]],
    // A grant now written after a reservation for a later slot: encoded from the first entry, the earlier one wrapped
    // to ~49.7 days ahead (2^32 ms) and the bucket planned every grant that far out.
    ['a reservation ahead, then a grant now', [T0_LOG + 1_400, T0_LOG]],
    ['out of order within', [T0_LOG, T0_LOG + 3_000, T0_LOG + 1_500]],
  ])('the log blob round-trips a log %s, in time order', (_name, log) => {
    expect(decodeLog(encodeLog(log))).toEqual([...log].sort((a, b) => a - b));
  });
});

const T0_LOG = 1_700_000_000_123;

describe('tokens per minute on DynamoDB Local (token entries on the bucket item, versioned apart)', () => {
  const params = deriveAdmission(40, 60_000, 2, 1_000);
  const need = (tokens: number): TokenNeed => ({ tokens, tpm: 1_000, windowMs: 61_000 });

  it('the grant reserves in its own write; a stale plan fails and learns; a correction writes the entries alone', async () => {
    // Prepare
    const clock = new FakeClock(2_000_000_000_000);
    const store = await freshStore(params);
    const dispatcher = new TokenBucket(store, clock, RESERVE);
    const ingress = new TokenBucket(store, clock, RESERVE);
    await dispatcher.refresh();

    // Act + Assess: a 600-token grant is one write of the request log and the token entries.
    const first = dispatcher.plan('urgent', need(600));
    if ('waitMs' in first) throw new Error('expected a grant');
    expect((await store.consume(first.attempt)).ok).toBe(true);
    dispatcher.spent(first.attempt);
    const after = await store.get();
    expect(after?.log).toHaveLength(1);
    expect(after?.tokens).toEqual({
      entries: [{ at: tokenSlot(clock.now(), 61_000), tokens: 600 }],
      version: 1,
    });
    // 600 more does not fit the window.
    expect(dispatcher.plan('urgent', need(600))).toEqual({ waitMs: expect.any(Number) });

    // The answer used 250: the ingress corrects the entry (the request log is untouched).
    await ingress.reconcileTokens(first.attempt.now, 600, 250, need(600));
    expect(await store.get()).toMatchObject({
      log: after?.log,
      version: after?.version,
      tokens: { version: 2 },
    });

    // The dispatcher's copy is stale (version 1): its next grant fails on the token version and learns.
    clock.advance(2_000);
    const stale = dispatcher.planAt('urgent', clock.now(), need(10));
    if ('waitMs' in stale) throw new Error('expected a plan');
    const refused = await store.consume(stale.attempt);
    expect(refused.ok).toBe(false);
    if (!refused.ok) dispatcher.conflicted(refused.current);
    const second = dispatcher.plan('urgent', need(600));
    if ('waitMs' in second) throw new Error('the correction left room for 600');
    expect((await store.consume(second.attempt)).ok).toBe(true);
    expect(tokensInWindow((await store.get())?.tokens?.entries ?? [], clock.now(), 61_000)).toBe(850);

    // Holds and refunds (compare-and-sets of the request bucket) leave the entries as they are.
    const tokens = (await store.get())?.tokens;
    await dispatcher.hold(clock.now() + 5_000);
    await dispatcher.refund(first.attempt.now, 60_000);
    expect((await store.get())?.tokens).toEqual(tokens);
  });

  it("a refund with the grant's need gives the request and its reservation back in one write; a stale token version re-reads", async () => {
    // Prepare: two grants of 300 in one slot (one entry of 600), the item read by another copy first.
    const clock = new FakeClock(2_000_000_000_000);
    const store = await freshStore(params);
    const dispatcher = new TokenBucket(store, clock, RESERVE);
    const ingress = new TokenBucket(store, clock, RESERVE);
    await dispatcher.refresh();
    const grants: number[] = [];
    for (let i = 0; i < 2; i++) {
      const plan = dispatcher.plan('urgent', need(300));
      if ('waitMs' in plan) throw new Error('expected a grant');
      expect((await store.consume(plan.attempt)).ok).toBe(true);
      dispatcher.spent(plan.attempt);
      grants.push(plan.attempt.now);
    }
    const before = await store.get();
    expect(before?.log).toHaveLength(2);
    expect(tokensInWindow(before?.tokens?.entries ?? [], clock.now(), 61_000)).toBe(600);
    let writes = 0;
    const counting = Object.assign(Object.create(Object.getPrototypeOf(store)), store) as DynamoBucketStore;
    counting.compareAndSet = (...args) => {
      writes++;
      return store.compareAndSet(...args);
    };
    counting.writeTokens = (...args) => {
      writes++;
      return store.writeTokens(...args);
    };
    const refunding = new TokenBucket(counting, clock, RESERVE);

    // Act: the second grant is handed back before its call.
    await refunding.refund(grants[1]!, 60_000, need(300));

    // Assess: one write; one grant and 300 tokens left.
    expect(writes).toBe(1);
    const after = await store.get();
    expect(after?.log).toHaveLength(1);
    expect(after?.tokens).toMatchObject({ version: (before?.tokens?.version ?? 0) + 1 });
    expect(tokensInWindow(after?.tokens?.entries ?? [], clock.now(), 61_000)).toBe(300);

    // Another grant lands between the refund's read and its write: the write fails on the versions, re-reads and
    // gives back exactly the one reservation (the other grant's kept).
    await ingress.reconcileTokens(grants[0]!, 300, 100, need(300));
    await dispatcher.refresh();
    const third = dispatcher.plan('urgent', need(300));
    if ('waitMs' in third) throw new Error('expected a grant');
    expect((await store.consume(third.attempt)).ok).toBe(true);
    dispatcher.spent(third.attempt);
    const read = store.get.bind(store);
    let raced = false;
    counting.get = async () => {
      const state = await read();
      if (!raced) {
        raced = true;
        const fourth = dispatcher.planAt('urgent', clock.now() + 3_000, need(300));
        if ('waitMs' in fourth) throw new Error('expected a grant');
        expect((await store.consume(fourth.attempt)).ok).toBe(true);
      }
      return state;
    };
    writes = 0;
    await refunding.refund(third.attempt.now, 60_000, need(300));
    expect(writes).toBe(2);
    // The first grant's corrected 100 and the fourth's 300.
    expect(tokensInWindow((await store.get())?.tokens?.entries ?? [], clock.now(), 61_000)).toBe(400);
  });

  it('the token blob is 8 bytes per entry after an 8-byte base', () => {
    const entries = [
      { at: 2_000_000_000_000, tokens: 12 },
      { at: 2_000_000_001_000, tokens: 4_000_000 },
    ];
    expect(encodeTokens(entries).byteLength).toBe(24);
    expect(decodeTokens(encodeTokens(entries))).toEqual(entries);
  });
});
