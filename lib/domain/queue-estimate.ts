// Domain: how long a ticket waits for its grant — one model for fail fast at admission (a request arriving now)
// and the dispatcher's hopeless refusal (the tickets it holds), so both refuse on the same arithmetic.
import { PRIORITIES, type Priority, priorityRank } from './priority.js';
import type { PriorityPolicy, PriorityWeights } from './priority-policy.js';

/**
 * How far ahead of its slot the dispatcher grants (reserves) a ticket. A waiting ingress reads its ticket at most
 * this far apart near its estimated grant, so one read finds the reservation before its slot and the ingress
 * sleeps exactly until it (no grant seen late). The price is priority inversion: a more important request that
 * arrives later waits behind the slots already reserved, up to this long.
 */
export const RESERVE_AHEAD_MS = 1_000;

/**
 * Below this expected share of the grants a priority is starved: whatever its place, its wait is unbounded (under
 * strict order, more important work takes all grants), so it is refused now rather than at its deadline.
 */
export const STARVED_SHARE = 0.05;
/**
 * At its first look (admission, or the dispatcher first holding its ticket) a request is kept only if its estimated
 * wait fits in this share of the time it can wait; later looks allow all of it. An estimate close to the deadline
 * drifts past it now and then, and the ticket would be refused after a long wait instead of at once.
 */
export const FIRST_LOOK_SHARE = 0.75;
/**
 * Under strict order, at its first look the measured load of more important work counts this much more (a share
 * of the grants): near starvation the load swings by about this much from one window to the next (agents sitting
 * out a retry-after, a lumpy closed loop), and a request let in on a low reading is refused later, after a long
 * wait. Later looks use the load as measured, so a kept ticket is refused only when its wait really grew.
 */
export const FIRST_LOOK_LOAD_MARGIN = 0.05;

/**
 * Whether a ticket whose grant is estimated at `at` can still be served by its deadline (less `marginMs`, the
 * time a grant needs before it), judged more strictly at its first look (FIRST_LOOK_SHARE).
 */
export const fitsDeadline = (o: {
  at: number;
  now: number;
  deadline: number;
  firstLook: boolean;
  marginMs?: number;
}): boolean => {
  const until = o.deadline - (o.marginMs ?? 0);
  const limit = o.firstLook ? o.now + Math.max(0, until - o.now) * FIRST_LOOK_SHARE : until;
  return o.at <= limit;
};

/**
 * How many token intervals of arrivals the dispatcher looks back on to measure more important load: long enough
 * that agents sitting out a retry-after (up to 60 s) do not make it swing (at 40 rpm, 60 intervals ≈ 91 s).
 */
export const ARRIVAL_WINDOW_INTERVALS = 60;

/** How fast grants come now. */
export interface GrantPace {
  /** Token interval of the bucket (the effective rate's spacing). */
  intervalMs: number;
  /** Until the first token is due (0 when one is free now). */
  headWaitMs: number;
  /** Tokens free now (used only when headWaitMs is 0). */
  available: number;
}

/**
 * The share of the grants a priority can expect while it waits.
 * - weighted: its weight among the backlogged priorities (its own included; an idle one's share flows on).
 * - strict: what the more important priorities leave: 1 − their load (their arrivals per token interval,
 *   `higherLoad`, plus `loadMargin` at a first look), whether or not one of them waits at this moment (a load
 *   measured over the last minute goes on; a momentarily empty queue says little). Unknown load: all of it.
 */
export const expectedShare = (o: {
  priority: Priority;
  policy: PriorityPolicy;
  weights: PriorityWeights;
  backlogged: ReadonlySet<Priority>;
  higherLoad?: number;
  /** Added to a known, non-zero load (FIRST_LOOK_LOAD_MARGIN at a first look). @default 0 */
  loadMargin?: number;
}): number => {
  if (o.policy === 'weighted') {
    const total = PRIORITIES.filter((p) => p === o.priority || o.backlogged.has(p)).reduce(
      (sum, p) => sum + o.weights[p],
      0,
    );
    return total > 0 ? o.weights[o.priority] / total : 1;
  }
  if (!o.higherLoad || o.higherLoad <= 0) return 1;
  return Math.max(0, 1 - o.higherLoad - (o.loadMargin ?? 0));
};

/**
 * Wait (ms) until a ticket's grant: `ahead` tickets go first by the policy's order as things stand (strict: every
 * more important one and the older of its own; weighted: the older of its own), and its priority gets `share` of
 * the grants meanwhile, so its grant is the ((ahead + 1) / share)-th. Infinite when the share says it is starved.
 * Under strict order (`inOrder`: `ahead` counts everyone served before it) the tokens free now go to those already
 * in line whatever the share; only the grants after them are shared. (When none is free, more important work
 * arriving meanwhile goes first: the share applies from the next grant on.)
 */
export const waitForGrantMs = (o: {
  ahead: number;
  share: number;
  pace: GrantPace;
  inOrder?: boolean;
}): number => {
  const { intervalMs, available } = o.pace;
  // No token free and none due known: the next one is at most an interval away.
  const headWaitMs = o.pace.headWaitMs > 0 || available >= 1 ? o.pace.headWaitMs : intervalMs;
  if (o.inOrder && headWaitMs <= 0) {
    const inLine = Math.floor(available);
    if (o.ahead < inLine) return 0;
    if (o.share < STARVED_SHARE) return Number.POSITIVE_INFINITY;
    return ((o.ahead + 1 - inLine) / o.share) * intervalMs;
  }
  if (o.share < STARVED_SHARE) return Number.POSITIVE_INFINITY;
  const grantsUntil = (o.ahead + 1) / o.share;
  return headWaitMs > 0
    ? headWaitMs + (grantsUntil - 1) * intervalMs
    : Math.max(0, grantsUntil - available) * intervalMs;
};

/**
 * Fewer token intervals of observed arrivals than this say nothing about load. Short, because until the load is
 * known a less important request is judged as if nothing more important would come, and refused later (after a
 * long wait) once it is: a dispatcher's first seconds. The window then grows to ARRIVAL_WINDOW_INTERVALS.
 */
export const MIN_OBSERVED_INTERVALS = 5;

/**
 * The dispatcher's measured load of more important work (higherArrivalLoads), published for admission: written
 * now and then onto the item admission reads anyway (the per-priority queued counters), so fail fast judges a
 * request as the dispatcher will judge its ticket, at no extra read.
 */
export interface PublishedLoad {
  /** When it was measured (epoch ms). */
  at: number;
  /** Per priority: arrivals of more important priorities per token interval. */
  higher: Record<Priority, number>;
}

/**
 * The published load, if recent enough to judge by: the dispatcher publishes at every retreat evaluation
 * (`publishEveryMs`); one stopped or gone leaves a stale load, trusted up to three times that.
 */
export const freshLoad = (
  load: PublishedLoad | undefined,
  now: number,
  publishEveryMs: number,
): Record<Priority, number> | undefined =>
  load && now - load.at <= 3 * publishEveryMs && now >= load.at - publishEveryMs ? load.higher : undefined;

/**
 * The load of more important priorities on each priority: their arrivals (admission times) since `since` and
 * within the last ARRIVAL_WINDOW_INTERVALS token intervals, per token interval (1 = they alone ask for every
 * grant). Undefined until MIN_OBSERVED_INTERVALS have been observed. Only arrivals after `since` (when the
 * dispatcher started looking) count: a backlog that was already there is drained, not a load that goes on.
 */
export const higherArrivalLoads = (o: {
  arrivals: readonly { at: number; priority: Priority }[];
  now: number;
  since: number;
  intervalMs: number;
}): Record<Priority, number> | undefined => {
  const from = Math.max(o.since, o.now - ARRIVAL_WINDOW_INTERVALS * o.intervalMs);
  const spanMs = o.now - from;
  if (o.intervalMs <= 0 || spanMs < MIN_OBSERVED_INTERVALS * o.intervalMs) return undefined;
  const recent = o.arrivals.filter((a) => a.at > from && a.at <= o.now);
  return Object.fromEntries(
    PRIORITIES.map((p) => [
      p,
      (recent.filter((a) => priorityRank(a.priority) < priorityRank(p)).length * o.intervalMs) / spanMs,
    ]),
  ) as Record<Priority, number>;
};

/**
 * A run's measured load while it has observed less than the whole arrival window, read as the window's observed
 * part, with the previous run's published load standing for the part not yet observed. A successor's first
 * seconds measure a few arrivals over a few intervals: alone, a handful of more important requests arriving
 * together read as more than the whole rate, and it refused less important tickets that had been served for
 * minutes (the 1× fleet bench: 7 HIGH tickets refused after 10–67 s at a dispatcher hand-over).
 */
export const loadWithInherited = (o: {
  measured: Readonly<Record<Priority, number>>;
  inherited: Readonly<Record<Priority, number>> | undefined;
  now: number;
  since: number;
  intervalMs: number;
}): Record<Priority, number> => {
  const windowMs = ARRIVAL_WINDOW_INTERVALS * o.intervalMs;
  const observed = Math.min(1, Math.max(0, (o.now - o.since) / windowMs));
  const inherited = o.inherited;
  if (!inherited || observed >= 1) return { ...o.measured };
  return Object.fromEntries(
    PRIORITIES.map((p) => [p, o.measured[p] * observed + inherited[p] * (1 - observed)]),
  ) as Record<Priority, number>;
};

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
  /** The load of more important priorities on each priority (higherArrivalLoads), when known. */
  higherLoads?: Readonly<Record<Priority, number>>;
}

/**
 * Estimated queue wait (ms) of a request admitted now, behind everything queued (fail fast at admission). A
 * request's first look: the load of more important work counts FIRST_LOOK_LOAD_MARGIN more.
 */
export const estimateWaitMs = (i: WaitEstimateInput): number => {
  const rank = priorityRank(i.priority);
  const backlogged = new Set(PRIORITIES.filter((p) => i.queued[p] > 0));
  const share = expectedShare({
    priority: i.priority,
    policy: i.policy,
    weights: i.weights,
    backlogged,
    ...(i.higherLoads ? { higherLoad: i.higherLoads[i.priority] } : {}),
    loadMargin: FIRST_LOOK_LOAD_MARGIN,
  });
  const ahead =
    i.policy === 'strict'
      ? PRIORITIES.filter((p) => priorityRank(p) <= rank).reduce((sum, p) => sum + i.queued[p], 0)
      : i.queued[i.priority];
  return waitForGrantMs({
    ahead,
    share,
    pace: { intervalMs: i.intervalMs, headWaitMs: 0, available: i.availableNow },
    inOrder: i.policy === 'strict',
  });
};

export interface Waiting {
  priority: Priority;
  /** Original enqueue time (the order within a priority). */
  enqueuedAt: number;
  /** Judged for the first time: the load of more important work counts FIRST_LOOK_LOAD_MARGIN more. */
  firstLook?: boolean;
}

/**
 * Estimated grant time of each waiting ticket, in input order (the dispatcher's hopeless refusal). Only what is
 * listed counts, so the estimate is a lower bound when more waits unseen — except that under strict order the
 * recent load of more important priorities (`higherLoads`, higherArrivalLoads) stands for their arrivals still
 * to come while they are backlogged.
 */
export const estimateGrantTimes = (
  waiting: readonly Waiting[],
  policy: PriorityPolicy,
  weights: PriorityWeights,
  pace: GrantPace & { now: number },
  higherLoads?: Readonly<Record<Priority, number>>,
): number[] => {
  const order = waiting
    .map((w, i) => ({ w, i }))
    .sort(
      (a, b) => priorityRank(a.w.priority) - priorityRank(b.w.priority) || a.w.enqueuedAt - b.w.enqueuedAt,
    );
  const backlogged = new Set(waiting.map((w) => w.priority));
  const shareOf = (p: Priority, firstLook: boolean) =>
    expectedShare({
      priority: p,
      policy,
      weights,
      backlogged,
      ...(higherLoads ? { higherLoad: higherLoads[p] } : {}),
      loadMargin: firstLook ? FIRST_LOOK_LOAD_MARGIN : 0,
    });
  const shares = new Map(PRIORITIES.map((p) => [p, [shareOf(p, false), shareOf(p, true)] as const]));
  const seenOfPriority = new Map<Priority, number>();
  const out = new Array<number>(waiting.length);
  order.forEach(({ w, i }, position) => {
    const own = seenOfPriority.get(w.priority) ?? 0;
    seenOfPriority.set(w.priority, own + 1);
    out[i] =
      pace.now +
      waitForGrantMs({
        ahead: policy === 'strict' ? position : own,
        share: shares.get(w.priority)?.[w.firstLook ? 1 : 0] ?? 1,
        pace,
        inOrder: policy === 'strict',
      });
  });
  return out;
};
