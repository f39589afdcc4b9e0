// Fail fast: the queue-wait estimate as a table of (priority, queued, interval, tokens free, policy) → ms.
import { describe, expect, it } from 'vitest';
import type { Priority } from '../../lib/domain/priority.js';
import { type PriorityPolicy, parseWeights } from '../../lib/domain/priority-policy.js';
import { estimateWaitMs } from '../../lib/domain/wait-estimate.js';

const W = parseWeights('8:4:2:1')!;
const q = (urgent: number, high: number, normal: number, low: number) => ({ urgent, high, normal, low });

describe('estimateWaitMs', () => {
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
});
