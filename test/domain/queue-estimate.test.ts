// Queue estimates: fail fast at admission and the dispatcher's hopeless refusal share one model — tables of
// (priority, queued, pace, policy, what more important work takes) → ms.
import { describe, expect, it } from 'vitest';
import { PRIORITIES, type Priority } from '../../lib/domain/priority.js';
import { type PriorityPolicy, parseWeights } from '../../lib/domain/priority-policy.js';
import {
  estimateGrantTimes,
  estimateWaitMs,
  expectedShare,
  fitsDeadline,
  freshLoad,
  higherArrivalLoads,
  loadWithInherited,
} from '../../lib/domain/queue-estimate.js';

const W = parseWeights('8:4:2:1')!;
const q = (urgent: number, high: number, normal: number, low: number) => ({ urgent, high, normal, low });

describe('estimateWaitMs (fail fast at admission)', () => {
  it.each<[string, Priority, ReturnType<typeof q>, number, PriorityPolicy, number]>([
    // name, priority, queued, tokens free now, policy, expected (interval 1500 ms)
    ['idle, a token free', 'normal', q(0, 0, 0, 0), 1, 'strict', 0],
    ['idle, no token free: one interval', 'normal', q(0, 0, 0, 0), 0, 'strict', 1500],
    [
      'strict: everything at or above goes first',
      'normal',
      q(2, 3, 4, 10),
      0,
      'strict',
      (2 + 3 + 4 + 1) * 1500,
    ],
    ['strict: lower priorities do not count', 'urgent', q(1, 3, 4, 10), 0, 'strict', 2 * 1500],
    ['strict: free tokens shorten it', 'high', q(1, 1, 0, 0), 2, 'strict', 1 * 1500],
    ['strict: never negative', 'high', q(0, 0, 0, 0), 5, 'strict', 0],
    // weighted: own queue only, divided by the share among the backlogged priorities
    ['weighted: alone, the whole rate', 'low', q(0, 0, 0, 3), 0, 'weighted', 4 * 1500],
    [
      'weighted: low behind urgent backlog gets 1/9',
      'low',
      q(5, 0, 0, 3),
      0,
      'weighted',
      (4 * 1500) / (1 / 9),
    ],
    ['weighted: urgent among all gets 8/15', 'urgent', q(1, 2, 3, 4), 0, 'weighted', (2 * 1500) / (8 / 15)],
    ['weighted: an idle priority is no one’s share', 'normal', q(0, 0, 1, 0), 0, 'weighted', 2 * 1500],
  ])('%s', (_name, priority, queued, availableNow, policy, expected) => {
    expect(
      estimateWaitMs({ priority, queued, intervalMs: 1500, availableNow, policy, weights: W }),
    ).toBeCloseTo(expected, 6);
  });

  it.each<[string, Priority, ReturnType<typeof q>, number, number]>([
    // priority, queued, more important load (the dispatcher's, published), expected (interval 1500 ms, none free)
    ['strict: urgent, nothing more important', 'urgent', q(2, 0, 0, 0), 0, 3 * 1500],
    // High gets (1 − 0.5 − margin) of the grants: its grant is the (3 / 0.45)-th.
    ['strict: high behind urgent asking for half', 'high', q(1, 1, 0, 0), 0.5, (3 / 0.45) * 1500],
    // Starved: more important work takes (nearly) every grant, whether or not any of it is queued now.
    ['strict: normal behind a load of 0.97, none queued now', 'normal', q(0, 0, 1, 0), 0.97, Infinity],
  ])('with the measured load: %s', (_name, priority, queued, load, expected) => {
    const higherLoads = { urgent: 0, high: load, normal: load, low: load };
    const got = estimateWaitMs({
      priority,
      queued,
      intervalMs: 1500,
      availableNow: 0,
      policy: 'strict',
      weights: W,
      higherLoads,
    });
    if (expected === Infinity) expect(got).toBe(Infinity);
    else expect(got).toBeCloseTo(expected, 6);
  });
});

describe('freshLoad', () => {
  const load = { at: 100_000, higher: { urgent: 0, high: 0.5, normal: 0.9, low: 1 } };
  it.each([
    ['just published', 100_000, true],
    ['three evaluations old: still trusted', 115_000, true],
    ['older: the dispatcher stopped, not judged by', 115_001, false],
    ['from a clock far ahead: not judged by', 90_000, false],
  ])('%s', (_name, now, fresh) => {
    expect(freshLoad(load, now, 5_000)).toEqual(fresh ? load.higher : undefined);
  });
  it('none published', () => expect(freshLoad(undefined, 0, 5_000)).toBeUndefined());
});

describe('expectedShare', () => {
  const backlog = (...ps: Priority[]) => new Set<Priority>(ps);
  it.each<[string, Priority, PriorityPolicy, Set<Priority>, number | undefined, number]>([
    // The load is measured over the last minute: a queue empty at this moment says little about the next grants.
    [
      'strict, nothing more important waiting at this moment: still what their load leaves',
      'normal',
      'strict',
      backlog('low'),
      0.9,
      0.1,
    ],
    ['strict, no more important load: all of it', 'normal', 'strict', backlog('urgent'), 0, 1],
    [
      'strict, more important waiting, shares unknown: all of it',
      'normal',
      'strict',
      backlog('urgent'),
      undefined,
      1,
    ],
    [
      'strict, more important waiting and asking for 90 %: the rest',
      'normal',
      'strict',
      backlog('high'),
      0.9,
      0.1,
    ],
    ['strict, more important asking for everything: starved', 'low', 'strict', backlog('urgent'), 1, 0],
    ['weighted: its weight among the backlogged', 'normal', 'weighted', backlog('urgent', 'low'), 1, 2 / 11],
  ])('%s', (_name, priority, policy, backlogged, higherLoad, expected) => {
    expect(
      expectedShare({
        priority,
        policy,
        weights: W,
        backlogged,
        ...(higherLoad !== undefined ? { higherLoad } : {}),
      }),
    ).toBeCloseTo(expected, 9);
  });
});

describe('higherArrivalLoads', () => {
  const arrivals = [
    { at: 0, priority: 'urgent' as const },
    ...Array.from({ length: 6 }, (_, i) => ({ at: 50_000 + i, priority: 'urgent' as const })),
    ...Array.from({ length: 3 }, (_, i) => ({ at: 55_000 + i, priority: 'high' as const })),
    { at: 59_000, priority: 'normal' as const },
  ];
  it.each([
    // 60 intervals of 500 ms: the last 30 s hold 6 urgent, 3 high, 1 normal (60 intervals of span).
    ['a whole window observed', 0, { urgent: 0, high: 0.1, normal: 0.15, low: 1 / 6 }],
    // Since 45 s: the same arrivals over 15 s (30 intervals).
    ['observed since 45 s', 45_000, { urgent: 0, high: 0.2, normal: 0.3, low: 1 / 3 }],
    // Since 52 s: 8 s = 16 intervals, and the urgent ones admitted before it do not count (a backlog, not a load).
    [
      'a backlog admitted before the dispatcher looked does not count',
      52_000,
      { urgent: 0, high: 0, normal: 3 / 16, low: 4 / 16 },
    ],
    ['fewer than 5 intervals observed: unknown', 58_000, undefined],
  ])('%s', (_name, since, want) => {
    const got = higherArrivalLoads({ arrivals, now: 60_000, since, intervalMs: 500 });
    if (want === undefined) expect(got).toBeUndefined();
    else for (const p of PRIORITIES) expect(got?.[p]).toBeCloseTo(want[p], 9);
  });
});

describe('loadWithInherited', () => {
  // 60 intervals of 1.5 s: a 90 s window.
  const measured = q(0, 1.6, 1.6, 1.6);
  const inherited = q(0, 0.8, 0.9, 1);
  it.each([
    // A successor 7.5 s in: a burst of urgent arrivals reads as 1.6 × the rate, the predecessor's 0.8 fills the rest.
    [
      '7.5 s of 90 observed',
      7_500,
      inherited,
      q(0, 0.8 * (1 - 1 / 12) + 1.6 / 12, 0.9 * (11 / 12) + 1.6 / 12, 1 - 1 / 12 + 1.6 / 12),
    ],
    ['half the window observed', 45_000, inherited, q(0, 1.2, 1.25, 1.3)],
    ['the whole window observed: the measure alone', 90_000, inherited, measured],
    ['longer than the window: the measure alone', 300_000, inherited, measured],
    ['nothing inherited (a fresh deployment): the measure alone', 7_500, undefined, measured],
  ])('%s', (_name, runMs, inheritedLoad, want) => {
    const got = loadWithInherited({
      measured,
      inherited: inheritedLoad,
      now: 1_000_000 + runMs,
      since: 1_000_000,
      intervalMs: 1_500,
    });
    for (const p of PRIORITIES) expect(got[p]).toBeCloseTo(want[p], 9);
  });
});

describe('estimateGrantTimes', () => {
  const pace = { now: 1_000, intervalMs: 1_500, headWaitMs: 0, available: 0 };
  const w = (priority: Priority, enqueuedAt: number) => ({ priority, enqueuedAt });
  it('strict: place in the global order; a priority starved by more important work never gets a grant', () => {
    const waiting = [w('normal', 1), w('urgent', 2), w('low', 0)];
    expect(estimateGrantTimes(waiting, 'strict', W, pace)).toEqual([
      1_000 + 3_000,
      1_000 + 1_500,
      1_000 + 4_500,
    ]);
    // Urgent asks for every grant: normal and low wait behind it for ever.
    const loads = { urgent: 0, high: 1, normal: 1, low: 1 };
    expect(estimateGrantTimes(waiting, 'strict', W, pace, loads)).toEqual([
      Number.POSITIVE_INFINITY,
      1_000 + 1_500,
      Number.POSITIVE_INFINITY,
    ]);
    // Urgent asks for half the grants: normal, second in line, gets its turn after 2 / 0.5 grants.
    const half = { urgent: 0, high: 0.5, normal: 0.5, low: 0.5 };
    expect(estimateGrantTimes([w('urgent', 0), w('normal', 1)], 'strict', W, pace, half)).toEqual([
      1_000 + 1_500,
      1_000 + 4 * 1_500,
    ]);
  });

  it('strict: the token free now goes to the first in line, even of a priority starved by more important work', () => {
    const starved = { urgent: 0, high: 1, normal: 1, low: 1 };
    const oneFree = { ...pace, available: 1 };
    expect(estimateGrantTimes([w('normal', 0), w('normal', 1)], 'strict', W, oneFree, starved)).toEqual([
      1_000,
      Number.POSITIVE_INFINITY,
    ]);
  });

  it('strict: at its first look the load of more important work counts FIRST_LOOK_LOAD_MARGIN more', () => {
    // Urgent asks for 92 % of the grants: a normal ticket second in line gets 8 % of them (2 / 0.08 intervals)
    // once kept, but is starved (3 % < 5 %) at its first look: let in on this reading, a swing would refuse it later.
    const loads = { urgent: 0, high: 0.92, normal: 0.92, low: 0.92 };
    const [, kept] = estimateGrantTimes([w('urgent', 0), w('normal', 1)], 'strict', W, pace, loads);
    expect(kept).toBeCloseTo(1_000 + (2 / 0.08) * 1_500, 6);
    const [, first] = estimateGrantTimes(
      [w('urgent', 0), { ...w('normal', 1), firstLook: true }],
      'strict',
      W,
      pace,
      loads,
    );
    expect(first).toBe(Number.POSITIVE_INFINITY);
  });

  it('weighted: its own queue at its share among the waiting priorities', () => {
    const waiting = [w('low', 0), w('urgent', 1), w('low', 2)];
    expect(estimateGrantTimes(waiting, 'weighted', W, pace)).toEqual([
      1_000 + 9 * 1_500,
      1_000 + (9 / 8) * 1_500,
      1_000 + 18 * 1_500,
    ]);
  });
});

describe('fitsDeadline', () => {
  it.each([
    ['first look: fits in three quarters of the time left', 1_000 + 74_000, true, true],
    ['first look: past three quarters is refused now', 1_000 + 76_000, true, false],
    ['later looks: the whole time left', 1_000 + 99_000, false, true],
    ['later looks: past the deadline less the margin', 1_000 + 99_600, false, false],
    ['starved: never fits', Number.POSITIVE_INFINITY, false, false],
  ])('%s', (_name, at, firstLook, fits) => {
    expect(fitsDeadline({ at, now: 1_000, deadline: 101_000, firstLook, marginMs: 500 })).toBe(fits);
  });
});
