// Domain: when each waiting ticket can expect its grant, from its place among the waiting ones and the bucket's
// pace — the dispatcher refuses a ticket as soon as that time lies past its deadline (or LOW's token timeout).
import { type Priority, priorityRank } from './priority.js';
import type { PriorityPolicy, PriorityWeights } from './priority-policy.js';

/**
 * How far ahead of its slot the dispatcher grants (reserves) a ticket. A waiting ingress reads its ticket at most
 * this far apart near its estimated grant, so one read finds the reservation before its slot and the ingress
 * sleeps exactly until it (no grant seen late). The price is priority inversion: a more important request that
 * arrives later waits behind the slots already reserved, up to this long.
 */
export const RESERVE_AHEAD_MS = 1_000;

export interface Waiting {
  priority: Priority;
  /** Original enqueue time (the order within a priority). */
  enqueuedAt: number;
}

export interface Pace {
  now: number;
  /** Token interval of the bucket (the effective rate's spacing). */
  intervalMs: number;
  /** Until the first token is due (0 when one is free now). */
  headWaitMs: number;
  /** Tokens free now (used only when headWaitMs is 0). */
  available: number;
}

/**
 * Estimated grant time of each waiting ticket, in input order. Strict: every ticket of a higher priority, and
 * the older ones of its own, go first. Weighted: its priority gets its weight's share of the grants among the
 * non-empty priorities, so its j-th ticket waits (j + 1) / share grants. Only what is listed counts, so the
 * estimate is a lower bound when more waits unseen.
 */
export const estimateGrantTimes = (
  waiting: readonly Waiting[],
  policy: PriorityPolicy,
  weights: PriorityWeights,
  pace: Pace,
): number[] => {
  const order = waiting
    .map((w, i) => ({ w, i }))
    .sort(
      (a, b) => priorityRank(a.w.priority) - priorityRank(b.w.priority) || a.w.enqueuedAt - b.w.enqueuedAt,
    );
  const present = new Set(waiting.map((w) => w.priority));
  const totalWeight = [...present].reduce((sum, p) => sum + weights[p], 0);
  const seenOfPriority = new Map<Priority, number>();
  const out = new Array<number>(waiting.length);
  order.forEach(({ w, i }, position) => {
    const own = seenOfPriority.get(w.priority) ?? 0;
    seenOfPriority.set(w.priority, own + 1);
    // Grants (counting this one) that come before this ticket's.
    const grantsUntil = policy === 'strict' ? position + 1 : (own + 1) * (totalWeight / weights[w.priority]);
    const afterHead =
      pace.headWaitMs > 0
        ? pace.headWaitMs + (grantsUntil - 1) * pace.intervalMs
        : Math.max(0, grantsUntil - pace.available) * pace.intervalMs;
    out[i] = pace.now + afterHead;
  });
  return out;
};
