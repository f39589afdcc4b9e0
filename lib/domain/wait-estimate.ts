// Domain: how long a new request would wait in the queue — pure arithmetic over the per-priority queued counts,
// the effective token interval and what the bucket can give now (fail fast instead of waiting in vain).
import { PRIORITIES, type Priority, priorityRank } from './priority.js';
import type { PriorityPolicy, PriorityWeights } from './priority-policy.js';

export interface WaitEstimateInput {
  priority: Priority;
  /** Queued tickets per priority (the per-priority counters). */
  queued: Readonly<Record<Priority, number>>;
  /** The effective token interval (ms between grants at the current rate). */
  intervalMs: number;
  /** Tokens the bucket could give this priority now. */
  availableNow: number;
  policy: PriorityPolicy;
  weights: PriorityWeights;
}

/**
 * Estimated queue wait (ms) of a request admitted now.
 * - strict: everything queued at its priority or above goes first:
 *   (queued at ≥ priority + 1 − tokens free now) × interval.
 * - weighted: its own priority gets its share of the grants, w / Σ w over the backlogged priorities (its own
 *   included; an idle priority's share flows to the others), so only its own queue is ahead of it:
 *   (queued at its priority + 1 − tokens free now) × interval / share.
 * Never negative; 0 when a token is free for it now.
 */
export const estimateWaitMs = (i: WaitEstimateInput): number => {
  const rank = priorityRank(i.priority);
  if (i.policy === 'weighted') {
    const backlogged = PRIORITIES.filter((p) => p === i.priority || i.queued[p] > 0);
    const total = backlogged.reduce((sum, p) => sum + i.weights[p], 0);
    const share = total > 0 ? i.weights[i.priority] / total : 1;
    const slots = Math.max(0, i.queued[i.priority] + 1 - i.availableNow);
    return (slots * i.intervalMs) / share;
  }
  const ahead = PRIORITIES.filter((p) => priorityRank(p) <= rank).reduce((sum, p) => sum + i.queued[p], 0);
  return Math.max(0, ahead + 1 - i.availableNow) * i.intervalMs;
};
