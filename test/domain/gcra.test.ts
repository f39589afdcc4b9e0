import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  alignUp,
  applyAttempt,
  availableTokens,
  type BucketState,
  deriveAdmission,
  deriveBucket,
  grantableRpm,
  holdTat,
  LOG_MAX_ENTRIES,
  planConsume,
  planConsumeSpread,
  priorityBurst,
  rescaleTat,
  windowAllowance,
} from '../../lib/domain/gcra.js';

describe('deriveBucket', () => {
  it.each([
    // limit, window, burst → interval, burst, allowance ≤ limit
    [40, 60_000, 2, 1579, 2],
    [40, 60_000, 40, 2000, 10],
    [5, 60_000, 2, 15_000, 1],
    [1, 60_000, 2, 60_001, 1],
    // Above whole milliseconds' reach: eighths of a millisecond (60 s / 1198 = 50.08 ms → 50.125, not 51).
    [1200, 60_000, 2, 50.125, 2],
    // 12,000 rpm: 60 s / 11,980 = 5.008 ms → 5.125 ms, 11,707 a minute (whole ms: 6 ms, 10,000 a minute).
    [12_000, 60_000, 20, 5.125, 20],
  ])('limit %i per %i ms, burst %i → interval %d, burst %i', (limit, windowMs, burst, interval, b) => {
    const p = deriveBucket(limit, windowMs, burst);
    expect(p).toEqual({ intervalMs: interval, burst: b });
    expect(windowAllowance(p, windowMs)).toBeLessThanOrEqual(limit);
  });
});

describe('alignUp: planned times and intervals are eighths of a millisecond', () => {
  it.each([
    [0, 0],
    [5, 5],
    [5.125, 5.125],
    [5.0001, 5.125],
    [5.126, 5.25],
    [1_733_100_000_015.2754, 1_733_100_000_015.375],
  ])('%d → %d', (ms, aligned) => {
    expect(alignUp(ms)).toBe(aligned);
  });

  it('keeps a tat exact through sums and through its decimal text (what DynamoDB stores and adds)', () => {
    // Prepare: a tat in 2026 and an interval, both eighths.
    let tat = alignUp(1_795_000_000_000.3);
    const T = deriveBucket(12_000, 60_000, 20).intervalMs;

    // Act: many grants in a row, each written as text and read back.
    for (let i = 0; i < 10_000; i++) tat = Number(String(tat + T));

    // Assess: still an eighth, and its text has at most three decimals.
    expect(tat * 8).toBe(Math.round(tat * 8));
    expect(String(tat)).toMatch(/^\d+(\.\d{1,3})?$/);
  });

  it('any limit above the log: an eighth-aligned interval under 1/8 ms slower than exact, windows within the limit', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: LOG_MAX_ENTRIES + 1, max: 100_000 }),
        fc.constantFrom(10_000, 60_000),
        fc.integer({ min: 1, max: 40 }),
        fc.integer({ min: 0, max: 1_000 }),
        (limit, windowMs, burst, slackMs) => {
          const p = deriveBucket(limit, windowMs, burst, slackMs);
          const exact = (windowMs + slackMs) / (limit - p.burst);
          expect(p.intervalMs * 8).toBe(Math.round(p.intervalMs * 8));
          expect(p.intervalMs).toBeGreaterThanOrEqual(exact);
          expect(p.intervalMs - exact).toBeLessThan(1 / 8);
          expect(windowAllowance(p, windowMs + slackMs)).toBeLessThanOrEqual(limit);
        },
      ),
    );
  });
});

describe('planConsume (redis-cell style table: now, priority burst → granted, wait)', () => {
  const T = 1000;
  const rows: [string, number | undefined, number, number, 'idle' | 'busy' | 'wait', number][] = [
    // name, tat, now, burstForPriority, expected branch, wait or new tat
    ['empty bucket item', undefined, 10_000, 2, 'idle', 11_000],
    ['tat in the past', 5_000, 10_000, 2, 'idle', 11_000],
    ['second of a burst of 2', 11_000, 10_000, 2, 'busy', 12_000],
    ['third of a burst of 2 waits one interval', 12_000, 10_000, 2, 'wait', 1_000],
    ['low (burst 1) cannot take the reserve', 11_000, 10_000, 1, 'wait', 1_000],
    ['tat exactly now is busy, not idle', 10_000, 10_000, 1, 'busy', 11_000],
    ['far future tat (hold)', 70_000, 10_000, 2, 'wait', 59_000],
  ];
  it.each(rows)('%s', (_name, tat, now, burst, branch, expected) => {
    const state: BucketState = { intervalMs: T, burst: 2, ...(tat !== undefined ? { tat } : {}) };
    const plan = planConsume(state, now, burst);
    if (branch === 'wait') {
      expect(plan).toEqual({ waitMs: expected });
      return;
    }
    expect('attempt' in plan && plan.attempt.branch).toBe(branch);
    if ('attempt' in plan) expect(applyAttempt(state, plan.attempt)).toBe(expected);
  });

  it('an attempt planned on stale params fails its condition', () => {
    const plan = planConsume({ intervalMs: T, burst: 2 }, 0, 2);
    if (!('attempt' in plan)) throw new Error('expected attempt');
    expect(applyAttempt({ intervalMs: 2 * T, burst: 2 }, plan.attempt)).toBeUndefined();
  });
});

describe('priority reserve', () => {
  it.each([
    ['urgent', 4, 0.5, false, 4],
    ['high', 4, 0.5, false, 4],
    ['normal', 4, 0.5, false, 4],
    ['normal', 4, 0.5, true, 2],
    ['low', 4, 0.5, false, 2],
    ['low', 2, 0.5, false, 1],
    ['low', 1, 0.9, false, 1],
  ] as const)(
    '%s with burst %i, reserve %d (normal too: %s) → %i',
    (p, burst, fraction, forNormal, expected) => {
      expect(priorityBurst(burst, p, { fraction, forNormal })).toBe(expected);
    },
  );
});

describe('rate changes and holds', () => {
  it('rescaling keeps the available tokens (a cut releases no burst)', () => {
    const from = { intervalMs: 1000, burst: 4 };
    const to = { intervalMs: 4000, burst: 4 };
    const now = 100_000;
    const tat = now + 2500; // 2.5 tokens in use
    const before = availableTokens({ ...from, tat }, now, 4);
    const after = availableTokens({ ...to, tat: rescaleTat(tat, now, from, to)! }, now, 4);
    expect(after).toBe(before);
  });

  it('a hold leaves the bucket empty when it ends', () => {
    const p = { intervalMs: 1000, burst: 3 };
    const tat = holdTat(50_000, p);
    expect(availableTokens({ ...p, tat }, 49_999, 3)).toBe(0);
    expect(availableTokens({ ...p, tat }, 50_000, 3)).toBe(1);
    expect(availableTokens({ ...p, tat }, 50_000, 1)).toBe(0);
  });
});

describe('window-exact log order', () => {
  it('a grant now after a reservation for a later slot: the new log is in time order, and the window reads it so', () => {
    // 4 per 10 s window; the log holds a reservation 1.4 s ahead (made by another grant's plan) and two grants.
    const state: BucketState = {
      intervalMs: 2_500,
      burst: 4,
      window: { limit: 4, windowMs: 10_000 },
      tat: 100_000,
      log: [95_000, 96_000, 101_400],
      version: 3,
    };
    const plan = planConsume(state, 100_000, 4);
    if (!('attempt' in plan) || plan.attempt.branch !== 'log') throw new Error('expected a log grant');
    expect(plan.attempt.newLog).toEqual([95_000, 96_000, 100_000, 101_400]);
    // Full now: the next grant waits for the oldest (95 s) to leave, not for the reservation.
    const next = planConsume(
      { ...state, tat: plan.attempt.newTat, log: [...plan.attempt.newLog], version: 4 },
      100_000,
      4,
    );
    expect(next).toEqual({ waitMs: 5_000 });
  });
});

describe('grantableRpm', () => {
  it.each([
    // name, limit per window, window ms, slack ms, expected rpm
    ['a minute window: the log, less its slack', 40, 60_000, 1_000, (40 * 60_000) / 61_000],
    ['a 3 s window of 4.75 calls: a log of 4', 4.75, 3_000, 50, (4 * 60_000) / 3_050],
    // T = 10 s / (2000 − 1) rounded up to an eighth of a ms = 5.125 ms: 11,707 a minute (whole ms: 6 ms, 10,000).
    ['above the log: the spacing', 2_000, 10_000, 0, 60_000 / 5.125],
  ])('%s', (_name, limit, windowMs, slackMs, expected) => {
    expect(grantableRpm(deriveAdmission(limit, windowMs, 1, slackMs))).toBeCloseTo(expected, 6);
  });
});

describe('planConsumeSpread: a batch at the slots single grants in a row would get, in one write', () => {
  const T = 100;
  const base = { intervalMs: T, burst: 2 } as const;
  const from1000 = (n: number, first: number[]) => [
    ...first,
    ...Array.from({ length: n }, (_, i) => 1_100 + i * T),
  ];
  it.each([
    // name, tat, from, burst for the priority, max, until → slots (undefined: no batch write)
    [
      'busy: the next slot, then one interval apart up to the horizon',
      1_500,
      1_000,
      2,
      20,
      2_000,
      [1_400, 1_500, 1_600, 1_700, 1_800, 1_900, 2_000],
    ],
    ['at most max slots', 1_500, 1_000, 2, 3, 2_000, [1_400, 1_500, 1_600]],
    [
      'busy with a token free at from: it at from, the rest reserved',
      1_050,
      1_000,
      2,
      20,
      1_250,
      [1_000, 1_050, 1_150, 1_250],
    ],
    [
      'the reserve (burst 1 for a less important priority) starts later',
      1_500,
      1_000,
      1,
      20,
      2_000,
      [1_500, 1_600, 1_700, 1_800, 1_900, 2_000],
    ],
    ['one slot before the horizon: no batch (a single grant)', 1_500, 1_000, 2, 20, 1_450, undefined],
    [
      'idle at from: the burst at from, then one per interval',
      900,
      1_000,
      2,
      20,
      2_000,
      from1000(10, [1_000, 1_000]),
    ],
    ['no tat yet: as idle', undefined, 1_000, 2, 20, 2_000, from1000(10, [1_000, 1_000])],
    ['idle, the horizon at from: the burst alone', undefined, 1_000, 2, 20, 1_000, [1_000, 1_000]],
  ] as const)('%s', (_name, tat, from, burst, max, until, slots) => {
    const state: BucketState = { ...base, ...(tat !== undefined ? { tat } : {}) };
    const spread = planConsumeSpread(state, from, burst, max, until);
    expect(spread?.slots).toEqual(slots);
    if (!spread) return;
    // The same slots as single grants one after the other would take, and the same tat after.
    let single: BucketState = state;
    for (const slot of spread.slots) {
      const plan = planConsume(single, slot, burst);
      if (!('attempt' in plan)) throw new Error(`a single grant at ${slot} would wait ${plan.waitMs} ms`);
      single = { ...single, tat: applyAttempt(single, plan.attempt) };
    }
    expect(applyAttempt(state, spread.attempt)).toBe(single.tat);
    // The write's condition holds on the state it was planned from and fails once another grant moved the tat on.
    expect(
      applyAttempt({ ...state, tat: Math.max(tat ?? 0, from) + burst * T }, spread.attempt),
    ).toBeUndefined();
  });

  it('none for a window-exact bucket (its log takes one slot per write)', () => {
    const state: BucketState = { ...base, tat: 1_500, window: { windowMs: 60_000, limit: 40 } };
    expect(planConsumeSpread(state, 1_000, 2, 20, 2_000)).toBeUndefined();
  });
});
