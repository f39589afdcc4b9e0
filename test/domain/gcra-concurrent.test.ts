// Domain tests: concurrent consumes on one plain GCRA bucket — writes planned from stale states, applied in any
// order. Grants racing on a bucket that idles between them must not refuse each other while tokens are free, and
// no interleaving may let a window hold more than the bucket allows or leave the tat below exact GCRA.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  applyConsume,
  type BucketState,
  type ConsumeAttempt,
  nearIdleMs,
  planConsume,
  planConsumeMany,
  planConsumeSpread,
} from '../../lib/domain/gcra.js';

const T = 5;
const BURST = 20;
const bucket = (tat?: number): BucketState => ({
  intervalMs: T,
  burst: BURST,
  ...(tat !== undefined ? { tat } : {}),
});
const attemptOf = (state: BucketState, now: number, burst = BURST): ConsumeAttempt => {
  const plan = planConsume(state, now, burst);
  if (!('attempt' in plan)) throw new Error(`planned a wait of ${plan.waitMs} ms`);
  return plan.attempt;
};

describe('planConsume near idle (T 5 ms, burst 20): the grant placed at the known tat, where the bucket is busy', () => {
  it.each([
    // name, known tat, planned at, burst for the priority → branch, slot, tat after when nobody else wrote
    ['no tat yet: the idle write', undefined, 1_000, 20, 'idle', 1_000, 1_005],
    ['idle for longer than a quarter of the burst: the idle write', 979, 1_000, 20, 'idle', 1_000, 1_005],
    ['idle by a quarter of the burst (20 ms): at the tat', 980, 1_000, 20, 'busy', 980, 985],
    ['idle by 1 ms: at the tat', 999, 1_000, 20, 'busy', 999, 1_004],
    ['tat exactly at the planned time: busy there', 1_000, 1_000, 20, 'busy', 1_000, 1_005],
    ['busy: at the planned time, as before', 1_010, 1_000, 20, 'busy', 1_000, 1_015],
    ['a smaller burst goes back less (burst 9: 10 ms)', 990, 1_000, 9, 'busy', 990, 995],
    ['…beyond it the idle write', 989, 1_000, 9, 'idle', 1_000, 1_005],
    ['a burst under 5 keeps the idle write', 999, 1_000, 4, 'idle', 1_000, 1_005],
  ] as const)('%s', (_name, tat, at, burst, branch, slot, after) => {
    const state = bucket(tat);
    const a = attemptOf(state, at, burst);
    expect([a.branch, a.now]).toEqual([branch, slot]);
    // Exactly GCRA at the slot: max(tat, slot) + T.
    expect(applyConsume(state, a)?.tat).toBe(after);
  });

  it('nearIdleMs: a quarter of the burst in whole intervals, at most 20 ms', () => {
    expect([1, 4, 5, 9, 20, 40].map((b) => nearIdleMs(T, b))).toEqual([0, 0, 5, 10, 20, 20]);
    // A slower bucket (1,200 per minute at burst 20: T 50 ms) never places a grant a whole interval back.
    expect(nearIdleMs(50, 20)).toBe(20);
  });

  it('planConsumeMany near idle: all at the known tat, within the burst', () => {
    const many = planConsumeMany(bucket(990), 1_000, 20, 8);
    expect(many && [many.count, many.attempt.branch, many.attempt.now]).toEqual([8, 'busy', 990]);
    expect(applyConsume(bucket(990), many!.attempt)?.tat).toBe(990 + 8 * T);
  });
});

describe('grants planned from one stale state, applied in any order', () => {
  // Eight grants planned from the same known tat (the state every request of a container last saw), for times
  // 1–8 ms apart: the bucket holds plenty for all of them.
  const nows = [1_003, 1_001, 1_008, 1_002, 1_005, 1_004, 1_007, 1_006];
  const grantAll = (known: BucketState, order: readonly number[], stored: BucketState = known) => {
    let granted = 0;
    for (const i of order) {
      const next = applyConsume(stored, attemptOf(known, nows[i]!));
      if (next) {
        stored = next;
        granted++;
      }
    }
    return { granted, tat: stored.tat! };
  };
  const orders = [
    [0, 1, 2, 3, 4, 5, 6, 7],
    [7, 6, 5, 4, 3, 2, 1, 0],
    [2, 0, 5, 7, 1, 4, 3, 6],
  ];

  it.each(orders)('near idle (known tat 990): all eight granted, exactly GCRA (%#)', (...order) => {
    const { granted, tat } = grantAll(bucket(990), order);
    expect(granted).toBe(8);
    expect(tat).toBe(990 + 8 * T);
  });

  it.each(orders)('…also when others wrote meanwhile, within the burst (%#)', (...order) => {
    // Another container took ten tokens since (tat 990 + 10T): eight more fit the burst of 20 at slot 990.
    expect(grantAll(bucket(990), order, bucket(990 + 10 * T)).granted).toBe(8);
    // With fifteen taken only five more do (slot 990 + 19T is the burst's end).
    expect(grantAll(bucket(990), order, bucket(990 + 15 * T)).granted).toBe(5);
  });

  it.each(orders)(
    'the idle write (known tat far back): only one of the eight goes through (%#)',
    (...order) => {
      expect(grantAll(bucket(500), order).granted).toBe(1);
    },
  );

  it('a grant placed at the known tat is refused when the tat went back below it (a refund): never under-counted', () => {
    const a = attemptOf(bucket(990), 1_000);
    expect(applyConsume(bucket(989), a)).toBeUndefined();
  });
});

/** Every window of `windowMs` holds at most burst + ⌊window / T⌋ grants (GCRA's bound on grant times). */
const maxInWindow = (times: readonly number[], windowMs: number): number => {
  const sorted = [...times].sort((a, b) => a - b);
  let most = 0;
  for (let i = 0, j = 0; i < sorted.length; i++) {
    while (sorted[i]! - sorted[j]! > windowMs) j++;
    most = Math.max(most, i - j + 1);
  }
  return most;
};

describe('property: any interleaving of the forms keeps every window within the bound', () => {
  type Op =
    | { kind: 'one' | 'many' | 'spread'; seen: number; now: number; burst: number; max: number; span: number }
    | { kind: 'time'; ms: number };
  // Mostly grants, a few ms of clock between them: enough to run the bucket at its burst and beyond.
  const op: fc.Arbitrary<Op> = fc.oneof(
    {
      weight: 4,
      arbitrary: fc.record({
        kind: fc.constantFrom('one', 'one', 'many', 'spread') as fc.Arbitrary<'one' | 'many' | 'spread'>,
        // Which earlier state the writer last saw (0: the newest), and its time relative to the clock.
        seen: fc.nat({ max: 12 }),
        now: fc.integer({ min: -30, max: 30 }),
        burst: fc.constantFrom(20, 15, 9, 5, 1),
        max: fc.integer({ min: 2, max: 20 }),
        span: fc.nat({ max: 60 }),
      }),
    },
    {
      weight: 1,
      arbitrary: fc.record({ kind: fc.constant('time' as const), ms: fc.integer({ min: 0, max: 12 }) }),
    },
  );

  it('≤ burst + ⌊W / T⌋ grants in any window W, and the tat never below exact GCRA over the grants made', () => {
    fc.assert(
      fc.property(
        fc.option(fc.nat({ max: 200 }), { nil: undefined }),
        fc.array(op, { maxLength: 200 }),
        (tat0, ops) => {
          let clock = 1_000;
          let stored = bucket(tat0 === undefined ? undefined : 1_000 - tat0);
          const seen: BucketState[] = [stored];
          const grants: number[] = [];
          // Exact GCRA replayed over the grants in the order they landed.
          let exact = stored.tat ?? Number.NEGATIVE_INFINITY;
          for (const o of ops) {
            if (o.kind === 'time') {
              clock += o.ms;
              continue;
            }
            const known = seen[Math.max(0, seen.length - 1 - o.seen)]!;
            const now = Math.max(0, clock + o.now);
            let planned: { attempt: ConsumeAttempt; slots: number[] } | undefined;
            if (o.kind === 'one') {
              const p = planConsume(known, now, o.burst);
              // The grant's time is its attempt's (a near-idle grant is placed at the known tat).
              planned = 'attempt' in p ? { attempt: p.attempt, slots: [p.attempt.now] } : undefined;
            } else if (o.kind === 'many') {
              const p = planConsumeMany(known, now, o.burst, o.max);
              planned = p && {
                attempt: p.attempt,
                slots: Array.from({ length: p.count }, () => p.attempt.now),
              };
            } else planned = planConsumeSpread(known, now, o.burst, o.max, now + o.span);
            if (!planned) continue;
            const next = applyConsume(stored, planned.attempt);
            if (!next) continue;
            stored = next;
            seen.push(next);
            for (const slot of planned.slots) {
              grants.push(slot);
              exact = Math.max(exact, slot) + T;
            }
            expect(stored.tat!).toBeGreaterThanOrEqual(exact);
          }
          for (const w of [0, T - 1, 3 * T, 10 * T, 37, 200, 1_000])
            expect(maxInWindow(grants, w)).toBeLessThanOrEqual(BURST + Math.floor(w / T));
        },
      ),
      { numRuns: 400 },
    );
  });
});
