// Domain tests: the dispatcher's choice of priority — strict order, and weighted start-time fair queuing with
// work-conserving shares (tables, a simulated closed loop of agents, then properties over random backlogs).
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { PRIORITIES, type Priority } from '../../lib/domain/priority.js';
import {
  chargePriority,
  type FairShareState,
  grantsInARow,
  initialFairShare,
  type PriorityPolicy,
  type PriorityWeights,
  parseWeights,
  pickPriority,
} from '../../lib/domain/priority-policy.js';

const W = parseWeights('8:4:2:1')!;

/** The dispatcher's use of the policy: pick among the non-empty priorities, then charge the one granted. */
const scheduler = (policy: PriorityPolicy, weights: PriorityWeights) => {
  let state: FairShareState = initialFairShare();
  return {
    grant(nonEmpty: ReadonlySet<Priority>): Priority | undefined {
      const pick = pickPriority(policy, state, nonEmpty);
      if (!pick) return undefined;
      state = chargePriority(pick.state, pick.priority, weights);
      return pick.priority;
    },
  };
};

/** Grants `n` times with the given queues backlogged (non-empty throughout); returns the grant sequence. */
const serve = (policy: PriorityPolicy, backlogged: Priority[], n: number, weights = W): Priority[] => {
  const s = scheduler(policy, weights);
  const out: Priority[] = [];
  for (let i = 0; i < n; i++) {
    const p = s.grant(new Set(backlogged));
    if (!p) break;
    out.push(p);
  }
  return out;
};

const shares = (seq: Priority[]) =>
  Object.fromEntries(PRIORITIES.map((p) => [p, seq.filter((x) => x === p).length]));

describe('parseWeights', () => {
  it.each([
    ['8:4:2:1', { urgent: 8, high: 4, normal: 2, low: 1 }],
    [' 1:1:1:1 ', { urgent: 1, high: 1, normal: 1, low: 1 }],
    ['8:4:2', undefined],
    ['8:4:2:0', undefined],
    ['8:4:2:1.5', undefined],
    ['a:b:c:d', undefined],
    ['8:4:2:1001', undefined],
  ])('%s → %o', (text, expected) => {
    expect(parseWeights(text)).toEqual(expected);
  });
});

describe('pickPriority', () => {
  const [u, h, n, l] = PRIORITIES;
  it.each([
    // policy, backlogged queues, grants → sequence
    ['strict', ['urgent', 'low'], 3, [u, u, u]],
    ['strict', ['normal', 'low'], 2, [n, n]],
    // Interleaved by start tag (ties: the more important first): 8 / 4 / 2 / 1 in every 15.
    ['weighted', ['urgent', 'high', 'normal', 'low'], 15, [u, h, n, l, u, u, h, u, u, h, n, u, u, h, u]],
    // Work conserving: an idle priority's share flows to the others.
    ['weighted', ['urgent', 'low'], 18, [u, l, u, u, u, u, u, u, u, u, l, u, u, u, u, u, u, u]],
    ['weighted', ['low'], 3, [l, l, l]],
  ] as const)('%s over %o, %i grants', (policy, backlogged, count, expected) => {
    expect(serve(policy, [...backlogged], count)).toEqual(expected);
  });

  it('is stable until charged (the dispatcher may wait for a token first)', () => {
    const all = new Set(PRIORITIES);
    const first = pickPriority('weighted', initialFairShare(), all)!;
    const again = pickPriority('weighted', first.state, all)!;
    expect(again).toEqual(first);
  });

  it('nothing waiting → nothing to serve', () => {
    expect(pickPriority('weighted', initialFairShare(), new Set())).toBeUndefined();
    expect(pickPriority('strict', initialFairShare(), new Set())).toBeUndefined();
  });

  it('an idle priority banks no credit: back after 100 grants to the others, it gets its share, not a burst', () => {
    const s = scheduler('weighted', W);
    const others = new Set<Priority>(['high', 'normal', 'low']);
    for (let i = 0; i < 100; i++) s.grant(others);
    const next = Array.from({ length: 15 }, () => s.grant(new Set(PRIORITIES))!);
    const got = shares(next);
    for (const p of PRIORITIES) expect(Math.abs((got[p] ?? 0) - W[p]), p).toBeLessThanOrEqual(1);
  });
});

describe('grantsInARow (a batch of grants in one write stays within the shares)', () => {
  const after = (grants: Priority[]): FairShareState =>
    grants.reduce(
      (s, p) => chargePriority(pickPriority('weighted', s, new Set([p]))!.state, p, W),
      initialFairShare(),
    );
  it.each([
    // granted before, non-empty now, priority, max → grants in a row
    [[], ['urgent'], 'urgent', 20, 20],
    [[], ['urgent', 'low'], 'urgent', 20, 1],
    // Urgent's 8 start tags before low's next (at 1), and the tie at 1 (the more important first).
    [['urgent', 'low'], ['urgent', 'low'], 'urgent', 20, 8],
    [['low'], ['urgent', 'low'], 'urgent', 20, 9],
    [['low'], ['urgent', 'low'], 'urgent', 5, 5],
    [[], ['urgent', 'high'], 'high', 20, 0],
  ] as const)('after %o, over %o: %s × %i at most → %i', (before, nonEmpty, priority, max, expected) => {
    expect(grantsInARow(after([...before]), priority, new Set(nonEmpty), W, max)).toBe(expected);
  });
});

/**
 * A closed loop like the fleet bench's: each agent of a sparse priority holds one ticket, which is back in the
 * queue `away` grants after its own grant (the call, the agent's think time, the new request's way to the
 * dispatcher); the other priorities are deep. Returns the grants per priority.
 */
const closedLoop = (o: {
  sparse: Partial<Record<Priority, { agents: number; away: number }>>;
  grants: number;
}): Record<Priority, number> => {
  const s = scheduler('weighted', W);
  const backAt = new Map(
    PRIORITIES.map((p) => [p, o.sparse[p] ? Array<number>(o.sparse[p].agents).fill(0) : undefined]),
  );
  const got = { urgent: 0, high: 0, normal: 0, low: 0 };
  for (let t = 0; t < o.grants; t++) {
    const nonEmpty = new Set(PRIORITIES.filter((p) => backAt.get(p)?.some((b) => b <= t) ?? true));
    const p = s.grant(nonEmpty)!;
    got[p]++;
    const agents = backAt.get(p);
    if (agents) agents[agents.findIndex((b) => b <= t)] = t + 1 + o.sparse[p]!.away;
  }
  return got;
};

describe('weighted shares in a closed loop (a sparse priority that is never empty for long)', () => {
  // Each row's sparse agents can take their share (agents / (away + 1) ≥ weight / 15), so every priority is
  // backlogged. Deficit round-robin failed the rows with away ≥ agents: urgent's 4 tickets were all it could use
  // of its quantum 8, its turn ended with its buffer empty, and it got 4 of every 11 grants (−32 %, the 1× bench).
  it.each([
    [{ urgent: { agents: 4, away: 2 } }],
    [{ urgent: { agents: 4, away: 4 } }],
    [{ urgent: { agents: 4, away: 5 } }],
    [{ urgent: { agents: 4, away: 6 } }],
    [{ urgent: { agents: 3, away: 4 } }],
    [{ urgent: { agents: 6, away: 6 } }],
    [{ urgent: { agents: 4, away: 4 }, high: { agents: 3, away: 6 } }],
  ] as const)('%o: each priority within ±15 % of its weight share', (sparse) => {
    const grants = 3_000;
    const got = closedLoop({ sparse, grants });
    for (const p of PRIORITIES) {
      const expected = (grants * W[p]) / 15;
      expect(Math.abs(got[p] - expected), `${p}: ${got[p]} of ${expected}`).toBeLessThanOrEqual(
        0.15 * expected,
      );
    }
  });
});

describe('property: weighted shares under sustained backlog', () => {
  const weightsArb = fc.tuple(
    fc.integer({ min: 1, max: 16 }),
    fc.integer({ min: 1, max: 16 }),
    fc.integer({ min: 1, max: 16 }),
    fc.integer({ min: 1, max: 16 }),
  );
  const subsetArb = fc.subarray([...PRIORITIES], { minLength: 1 });

  it('each backlogged priority gets its weight share within ±15 % (idle shares flow to the others)', () => {
    fc.assert(
      fc.property(weightsArb, subsetArb, fc.integer({ min: 200, max: 2000 }), (w, backlogged, n) => {
        const weights = parseWeights(w.join(':'))!;
        const seq = serve('weighted', backlogged, n, weights);
        expect(seq.length).toBe(n);
        const total = backlogged.reduce((s, p) => s + weights[p], 0);
        const got = shares(seq);
        for (const p of backlogged) {
          const expected = (n * weights[p]) / total;
          // ±15 %, plus one grant for the partial last round.
          expect(Math.abs((got[p] ?? 0) - expected)).toBeLessThanOrEqual(0.15 * expected + 1);
        }
        for (const p of PRIORITIES) if (!backlogged.includes(p)) expect(got[p]).toBe(0);
      }),
      { numRuns: 300 },
    );
  });

  it('changing backlogs: every grant goes to a non-empty priority and no backlogged one waits a full round', () => {
    fc.assert(
      fc.property(weightsArb, fc.array(subsetArb, { minLength: 1, maxLength: 200 }), (w, steps) => {
        const weights = parseWeights(w.join(':'))!;
        const round = w.reduce((a, b) => a + b, 0);
        let state = initialFairShare();
        const waited = new Map<Priority, number>();
        for (const backlogged of steps) {
          const pick = pickPriority('weighted', state, new Set(backlogged))!;
          expect(backlogged).toContain(pick.priority);
          state = chargePriority(pick.state, pick.priority, weights);
          for (const p of PRIORITIES) {
            waited.set(p, backlogged.includes(p) && p !== pick.priority ? (waited.get(p) ?? 0) + 1 : 0);
            expect(waited.get(p)).toBeLessThanOrEqual(round);
          }
        }
      }),
      { numRuns: 300 },
    );
  });
});
