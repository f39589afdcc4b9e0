// Domain tests: the dispatcher's choice of priority — strict order, and weighted deficit round-robin with
// work-conserving shares (tables, then properties over random backlogs).
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { PRIORITIES, type Priority } from '../../lib/domain/priority.js';
import {
  chargePriority,
  type DrrState,
  initialDrr,
  type PriorityPolicy,
  parseWeights,
  pickPriority,
} from '../../lib/domain/priority-policy.js';

const W = parseWeights('8:4:2:1')!;

/** Grants `n` times with the given queues backlogged (non-empty throughout); returns the grant sequence. */
const serve = (policy: PriorityPolicy, backlogged: Priority[], n: number, weights = W): Priority[] => {
  let state: DrrState = initialDrr();
  const out: Priority[] = [];
  for (let i = 0; i < n; i++) {
    const pick = pickPriority(policy, weights, state, new Set(backlogged));
    if (!pick) break;
    out.push(pick.priority);
    state = chargePriority(pick.state, pick.priority);
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
  it.each([
    // policy, backlogged queues, grants → sequence
    ['strict', ['urgent', 'low'], 3, ['urgent', 'urgent', 'urgent']],
    ['strict', ['normal', 'low'], 2, ['normal', 'normal']],
    [
      'weighted',
      ['urgent', 'high', 'normal', 'low'],
      15,
      [...Array(8).fill('urgent'), ...Array(4).fill('high'), 'normal', 'normal', 'low'],
    ],
    // Work conserving: an idle priority's share flows to the others.
    ['weighted', ['urgent', 'low'], 9, [...Array(8).fill('urgent'), 'low']],
    ['weighted', ['low'], 3, ['low', 'low', 'low']],
  ] as const)('%s over %o, %i grants', (policy, backlogged, n, expected) => {
    expect(serve(policy, [...backlogged], n)).toEqual(expected);
  });

  it('is stable until charged (the dispatcher may wait for a token first)', () => {
    const all = new Set(PRIORITIES);
    const first = pickPriority('weighted', W, initialDrr(), all)!;
    const again = pickPriority('weighted', W, first.state, all)!;
    expect(again).toEqual(first);
  });

  it('nothing waiting → nothing to serve', () => {
    expect(pickPriority('weighted', W, initialDrr(), new Set())).toBeUndefined();
    expect(pickPriority('strict', W, initialDrr(), new Set())).toBeUndefined();
  });

  it('an emptied priority loses its credit (no banked burst when it returns)', () => {
    let state = initialDrr();
    const pick = pickPriority('weighted', W, state, new Set<Priority>(['urgent', 'low']))!;
    state = chargePriority(pick.state, pick.priority);
    // Urgent empties after one grant: low gets its turn; when urgent returns it starts a fresh turn.
    const next = pickPriority('weighted', W, state, new Set<Priority>(['low']))!;
    expect(next.priority).toBe('low');
    expect(next.state.deficit.urgent).toBe(0);
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
          // ±15 %, plus one round of slack for the partial last round.
          expect(Math.abs((got[p] ?? 0) - expected)).toBeLessThanOrEqual(0.15 * expected + weights[p]);
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
        let state = initialDrr();
        const waited = new Map<Priority, number>();
        for (const backlogged of steps) {
          const pick = pickPriority('weighted', weights, state, new Set(backlogged))!;
          expect(backlogged).toContain(pick.priority);
          state = chargePriority(pick.state, pick.priority);
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
