// Domain tests: window-exact admission — the grant log caps every window of W + slack at L grants while a GCRA
// spacing at the limit's own rate keeps them spread; tables on a fake clock, then properties.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { maxInWindow } from '../../bench/core.js';
import { MemoryBucketStore } from '../../lib/adapters/memory/stores.js';
import { TokenBucket } from '../../lib/domain/bucket.js';
import { FakeClock } from '../../lib/domain/clock.js';
import {
  applyConsume,
  availableTokens,
  type BucketState,
  deriveAdmission,
  LOG_MAX_ENTRIES,
  planConsume,
  refundLog,
  windowAllowance,
} from '../../lib/domain/gcra.js';
import { PRIORITIES, type Priority } from '../../lib/domain/priority.js';

describe('deriveAdmission', () => {
  it.each([
    // limit, window, burst, slack → interval, burst, window cap (undefined = plain GCRA)
    [40, 60_000, 2, 1_000, 1_500, 2, { limit: 40, windowMs: 61_000 }],
    [30.5, 60_000, 2, 1_000, 1_967, 2, { limit: 30, windowMs: 61_000 }],
    [5, 60_000, 2, 1_000, 12_000, 1, { limit: 5, windowMs: 61_000 }],
    [LOG_MAX_ENTRIES, 60_000, 2, 0, 250, 2, { limit: LOG_MAX_ENTRIES, windowMs: 60_000 }],
    // Above the log's size and below one call per window: plain GCRA (deriveBucket).
    [LOG_MAX_ENTRIES + 1, 60_000, 2, 0, 251.125, 2, undefined],
    [0.5, 60_000, 2, 0, 60_001, 1, undefined],
  ])(
    'limit %d per %i ms, burst %i, slack %i → interval %i, burst %i, cap %o',
    (limit, w, b, slack, interval, burst, cap) => {
      const p = deriveAdmission(limit, w, b, slack);
      expect(p).toEqual({ intervalMs: interval, burst, ...(cap ? { window: cap } : {}) });
      expect(windowAllowance(p, w)).toBeLessThanOrEqual(Math.max(1, Math.floor(limit)));
    },
  );
});

describe('planConsume with a grant log (now, log, tat, priority burst → attempt or wait)', () => {
  // L = 4 per 1000 ms (slack included), spacing 250 ms, burst 2; LOW may fill 3 slots (one kept for urgent/high).
  const params = { intervalMs: 250, burst: 2, window: { limit: 4, windowMs: 1_000 } };
  const rows: [
    string,
    number[],
    number | undefined,
    number,
    1 | 2,
    { log: number[]; tat: number } | number,
  ][] = [
    // name, log, tat, now, burst for priority, expected new log + tat, or wait
    ['empty log, full bucket', [], undefined, 10_000, 2, { log: [10_000], tat: 10_250 }],
    [
      'entries out of the window are dropped',
      [8_000, 9_000],
      9_250,
      10_000,
      2,
      { log: [10_000], tat: 10_250 },
    ],
    ['second of the burst', [10_000], 10_250, 10_000, 2, { log: [10_000, 10_000], tat: 10_500 }],
    ['third waits for the spacing', [10_000, 10_000], 10_500, 10_000, 2, 250],
    ['window full: wait until the oldest leaves', [9_200, 9_500, 9_750, 9_900], 9_000, 10_000, 2, 200],
    [
      'an entry exactly W old no longer counts',
      [9_000, 9_500, 9_750, 9_900],
      9_000,
      10_000,
      2,
      {
        log: [9_500, 9_750, 9_900, 10_000],
        tat: 10_250,
      },
    ],
    ['low keeps off the last slot', [9_200, 9_500, 9_750], 9_000, 10_000, 1, 200],
    [
      'urgent takes the last slot',
      [9_200, 9_500, 9_750],
      9_000,
      10_000,
      2,
      {
        log: [9_200, 9_500, 9_750, 10_000],
        tat: 10_250,
      },
    ],
    ['a hold (far tat) still blocks', [], 70_000, 10_000, 2, 59_750],
  ];
  it.each(rows)('%s', (_name, log, tat, now, burst, expected) => {
    const state: BucketState = { ...params, log, version: 7, ...(tat !== undefined ? { tat } : {}) };
    const plan = planConsume(state, now, burst);
    if (typeof expected === 'number') {
      expect(plan).toEqual({ waitMs: expected });
      expect(availableTokens(state, now, burst)).toBe(0);
      return;
    }
    if (!('attempt' in plan)) throw new Error(`expected an attempt, got ${JSON.stringify(plan)}`);
    expect(plan.attempt).toMatchObject({ branch: 'log', newLog: expected.log, newTat: expected.tat });
    expect(availableTokens(state, now, burst)).toBeGreaterThanOrEqual(1);
    // The write is a compare-and-set on the version the plan was made from.
    expect(applyConsume(state, plan.attempt)).toMatchObject({
      log: expected.log,
      tat: expected.tat,
      version: 8,
    });
    expect(applyConsume({ ...state, version: 8 }, plan.attempt)).toBeUndefined();
    expect(applyConsume({ ...state, window: { limit: 3, windowMs: 1_000 } }, plan.attempt)).toBeUndefined();
  });

  it.each([
    // log, grantedAt → log after the refund
    [[1_000, 2_000, 3_000], 2_000, [1_000, 3_000]],
    [[1_000, 2_000, 3_000], 2_400, [1_000, 3_000]],
    [[1_000, 2_000, 3_000], 9_000, [1_000, 2_000, 3_000]],
    [[], 2_000, []],
  ])('refund of %o granted at %i → %o', (log, at, expected) => {
    expect(refundLog(log, at)).toEqual(expected);
  });
});

const T0 = 1_700_000_000_000;
const RESERVE = { fraction: 0.5, forNormal: false };

/** Greedy consumers on a fake clock: each asks, and on a refusal sleeps exactly the wait it was told. */
const runGreedy = async (
  params: ReturnType<typeof deriveAdmission>,
  arrivals: { at: number; priority: Priority }[],
  durationMs: number,
): Promise<number[]> => {
  const clock = new FakeClock(T0);
  const bucket = new TokenBucket(new MemoryBucketStore(), clock, RESERVE);
  await bucket.configure(params);
  const grants: number[] = [];
  // Pending asks by time; ties in arrival order (one dispatcher serves them one at a time).
  const pending = arrivals.map((a) => ({ ...a, at: T0 + a.at }));
  while (pending.length > 0) {
    pending.sort((a, b) => a.at - b.at);
    const next = pending.shift()!;
    if (next.at >= T0 + durationMs) break;
    clock.set(Math.max(clock.now(), next.at));
    const r = await bucket.tryConsume(next.priority);
    if (r.granted) grants.push(clock.now());
    else pending.push({ ...next, at: clock.now() + r.waitMs });
  }
  return grants;
};

describe('property: window-exact admission', () => {
  const scenario = fc.record({
    limit: fc.integer({ min: 1, max: 60 }),
    windowMs: fc.constantFrom(1_000, 6_000, 60_000),
    burst: fc.integer({ min: 1, max: 4 }),
    slackFraction: fc.constantFrom(0, 0.01, 0.05, 0.1),
  });
  const arrivals = (windowMs: number) =>
    fc.array(
      fc.record({
        at: fc.integer({ min: 0, max: 4 * windowMs }),
        priority: fc.constantFrom(...PRIORITIES),
      }),
      { minLength: 1, maxLength: 150 },
    );

  it('no window of W + slack ever holds more than L grants (random arrivals)', async () => {
    await fc.assert(
      fc.asyncProperty(
        scenario.chain((s) => fc.tuple(fc.constant(s), arrivals(s.windowMs))),
        async ([s, asks]) => {
          const slack = Math.floor(s.windowMs * s.slackFraction);
          const params = deriveAdmission(s.limit, s.windowMs, s.burst, slack);
          const grants = await runGreedy(params, asks, 6 * s.windowMs);
          expect(maxInWindow(grants, s.windowMs + slack)).toBeLessThanOrEqual(s.limit);
        },
      ),
      { numRuns: 300 },
    );
  });

  it('under steady demand the rate reaches L per (W + slack)', async () => {
    await fc.assert(
      fc.asyncProperty(scenario, async (s) => {
        const slack = Math.floor(s.windowMs * s.slackFraction);
        const params = deriveAdmission(s.limit, s.windowMs, s.burst, slack);
        const span = s.windowMs + slack;
        const windows = 5;
        // A backlog that never empties, served as the dispatcher does: ask, and on a refusal sleep the wait told.
        const clock = new FakeClock(T0);
        const bucket = new TokenBucket(new MemoryBucketStore(), clock, RESERVE);
        await bucket.configure(params);
        const grants: number[] = [];
        while (clock.now() < T0 + windows * span) {
          const r = await bucket.tryConsume('urgent');
          if (r.granted) grants.push(clock.now());
          else clock.advance(r.waitMs);
        }
        // Exactly L in every window of W + slack: never more, and the spacing never holds the rate below it.
        expect(maxInWindow(grants, span)).toBeLessThanOrEqual(s.limit);
        expect(grants.length).toBeGreaterThanOrEqual(windows * s.limit - 1);
      }),
      { numRuns: 100 },
    );
  });
});
