// Domain: which priority the dispatcher serves next — strict order (the seed) or weighted shares by start-time fair
// queuing over the non-empty priorities (work conserving: an idle priority's share flows to the others).
import { PRIORITIES, type Priority } from './priority.js';

export const PRIORITY_POLICIES = ['strict', 'weighted'] as const;
export type PriorityPolicy = (typeof PRIORITY_POLICIES)[number];

/** Weight per priority: under sustained backlog a priority gets weight / (sum of the backlogged weights) of the grants. */
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

/**
 * Start-time fair queuing (SFQ; the virtual-time fair queuing Kubernetes API Priority and Fairness uses): each grant
 * costs its priority 1 / weight of virtual time, and the non-empty priority whose next grant starts earliest in
 * virtual time goes next. Chosen over deficit round-robin (DRR, quantum = weight) because DRR shortchanges a
 * sparse-but-persistent priority: a priority whose few closed-loop agents hold fewer tickets than its quantum empties
 * its buffer within its turn, drops the rest of its credit, and its returning tickets wait for every other turn
 * (measured at 1×: urgent's 4 agents got 14.6 calls per minute of their 20.8). Here a priority that was empty only
 * for a moment resumes at its own finish tag, so it keeps its place; one idle for longer resumes at the virtual time
 * (never before it), so it cannot bank credit while idle.
 */
export interface FairShareState {
  /** Virtual time: the start tag of the last pick (never decreases). */
  virtual: number;
  /** Per priority, where its next grant starts in virtual time (its last grant's start + 1 / weight). */
  finish: Readonly<Record<Priority, number>>;
}

export const initialFairShare = (): FairShareState => ({
  virtual: 0,
  finish: { urgent: 0, high: 0, normal: 0, low: 0 },
});

/** Tags closer than this are equal (they are sums of 1 / weight in floating point): the more important goes first. */
const TAG_EPSILON = 1e-9;

/** Where a priority's next grant starts in virtual time: its finish tag, or now if it fell behind (was idle). */
const startTag = (state: FairShareState, p: Priority): number => Math.max(state.virtual, state.finish[p]);

/**
 * The priority to serve next among the non-empty ones, and the state to keep. Stable: asking again before
 * `charge` returns the same priority (the dispatcher may have to wait for a token before granting it); a priority
 * becoming non-empty meanwhile may take the pick if its start tag is earlier.
 * Strict: the most important non-empty priority. Weighted: the smallest start tag, the more important on a tie.
 */
export const pickPriority = (
  policy: PriorityPolicy,
  state: FairShareState,
  nonEmpty: ReadonlySet<Priority>,
): { priority: Priority; state: FairShareState } | undefined => {
  let best: { priority: Priority; start: number } | undefined;
  for (const p of PRIORITIES) {
    if (!nonEmpty.has(p)) continue;
    if (policy === 'strict') return { priority: p, state };
    const start = startTag(state, p);
    if (!best || start < best.start - TAG_EPSILON) best = { priority: p, start };
  }
  return best && { priority: best.priority, state: { ...state, virtual: best.start } };
};

/** The state after one grant to `priority`: its next grant starts 1 / weight later in virtual time. */
export const chargePriority = (
  state: FairShareState,
  priority: Priority,
  weights: PriorityWeights,
): FairShareState => ({
  virtual: state.virtual,
  finish: { ...state.finish, [priority]: startTag(state, priority) + 1 / weights[priority] },
});

/**
 * How many grants in a row the weighted policy gives `priority` (the current pick) before another of `nonEmpty`
 * would go, at most `max` (the dispatcher's batch of grants in one write stays within the shares).
 */
export const grantsInARow = (
  state: FairShareState,
  priority: Priority,
  nonEmpty: ReadonlySet<Priority>,
  weights: PriorityWeights,
  max: number,
): number => {
  let s = state;
  let n = 0;
  while (n < max) {
    const pick = pickPriority('weighted', s, nonEmpty);
    if (pick?.priority !== priority) break;
    s = chargePriority(pick.state, priority, weights);
    n++;
  }
  return n;
};
