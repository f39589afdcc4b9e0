// Domain: which priority the dispatcher serves next — strict order (the seed) or weighted shares by deficit
// round-robin over the non-empty priorities (work conserving: an idle priority's share flows to the others).
import { PRIORITIES, type Priority } from './priority.js';

export const PRIORITY_POLICIES = ['strict', 'weighted'] as const;
export type PriorityPolicy = (typeof PRIORITY_POLICIES)[number];

/** Quantum per priority (grants per round under sustained backlog). */
export type PriorityWeights = Readonly<Record<Priority, number>>;

export const DEFAULT_PRIORITY_WEIGHTS = '8:4:2:1';

/**
 * Parses `urgent:high:normal:low` weights (e.g. "8:4:2:1"); undefined when malformed.
 * Each weight is an integer from 1 to 1000.
 */
export const parseWeights = (text: string): PriorityWeights | undefined => {
  const parts = text.trim().split(':');
  if (parts.length !== PRIORITIES.length) return undefined;
  const nums = parts.map((p) => (/^\d+$/.test(p.trim()) ? Number(p.trim()) : Number.NaN));
  if (nums.some((n) => !Number.isInteger(n) || n < 1 || n > 1000)) return undefined;
  return Object.fromEntries(PRIORITIES.map((p, i) => [p, nums[i]])) as Record<Priority, number>;
};

/** Deficit round-robin state: whose turn it is and the credit each priority has left in its turn. */
export interface DrrState {
  /** Index into PRIORITIES of the priority being served. */
  turn: number;
  deficit: Readonly<Record<Priority, number>>;
}

export const initialDrr = (): DrrState => ({
  turn: PRIORITIES.length - 1,
  deficit: { urgent: 0, high: 0, normal: 0, low: 0 },
});

/**
 * The priority to serve next among the non-empty ones, and the state to keep. Stable: asking again before
 * `charge` returns the same priority (the dispatcher may have to wait for a token before granting it).
 * Strict: the most important non-empty priority. Weighted: the current turn while it has credit and work;
 * else the next non-empty priority in order gets its turn and its weight as credit. An empty priority's credit
 * is dropped (it cannot bank shares while idle).
 */
export const pickPriority = (
  policy: PriorityPolicy,
  weights: PriorityWeights,
  state: DrrState,
  nonEmpty: ReadonlySet<Priority>,
): { priority: Priority; state: DrrState } | undefined => {
  if (nonEmpty.size === 0) return undefined;
  if (policy === 'strict') {
    const priority = PRIORITIES.find((p) => nonEmpty.has(p));
    return priority ? { priority, state } : undefined;
  }
  const deficit = { ...state.deficit };
  for (const p of PRIORITIES) if (!nonEmpty.has(p)) deficit[p] = 0;
  const current = PRIORITIES[state.turn];
  if (current && nonEmpty.has(current) && deficit[current] >= 1) {
    return { priority: current, state: { turn: state.turn, deficit } };
  }
  for (let step = 1; step <= PRIORITIES.length; step++) {
    const turn = (state.turn + step) % PRIORITIES.length;
    const p = PRIORITIES[turn] as Priority;
    if (!nonEmpty.has(p)) continue;
    deficit[p] = weights[p];
    return { priority: p, state: { turn, deficit } };
  }
  return undefined;
};

/** The state after one grant to `priority` (its credit drops by one). */
export const chargePriority = (state: DrrState, priority: Priority): DrrState => ({
  turn: state.turn,
  deficit: { ...state.deficit, [priority]: Math.max(0, state.deficit[priority] - 1) },
});
