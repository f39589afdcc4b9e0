// Domain: GCRA token bucket — pure math plus a store-agnostic bucket that spends tokens with conditional writes.
import type { Priority } from './priority.js';

/** Rate and burst of a bucket: one token per `intervalMs`, at most `burst` back to back. */
export interface BucketParams {
  intervalMs: number;
  burst: number;
}

/** What the store holds: the theoretical arrival time plus the parameters it was computed with. */
export interface BucketState extends BucketParams {
  /** Theoretical arrival time (ms); absent or in the past = bucket full. */
  tat?: number;
  /** When a hold (upstream Retry-After) ends; informational, the hold itself lives in `tat`. */
  holdUntil?: number;
}

/** The longest grant → call delay allowed for a long window (a short one gets a tenth of itself). */
export const GRANT_TO_CALL_MAX_MS = 2_000;

/**
 * How late after its grant a ticket's upstream call may start, for a limit window of `windowMs`: the ingress
 * requeues (and refunds) an older grant instead of calling (Admission.isStale). Calls are shifted from their
 * grants by 0…this, so a window of calls holds the grants of a window this much longer: the bucket is derived
 * for that longer window (bucketParamsFor), and the limit holds for calls, not only for grants.
 */
export const grantToCallMaxMs = (windowMs: number): number =>
  Math.min(GRANT_TO_CALL_MAX_MS, Math.floor(windowMs / 10));

/**
 * Derives a window-safe bucket from an upstream limit of `limit` calls per `windowMs`:
 * burst + (window + slack) / interval ≤ limit, so no window of that length ever sees more than `limit` grants
 * — nor calls, when each call starts within `slackMs` of its grant (the seed's burst 40 at 40 rpm let ~80 calls
 * into the first minute). The burst shrinks for small limits so most of the window's allowance stays paced.
 * @param slackMs how late after its grant a call may start @default 0
 */
export const deriveBucket = (limit: number, windowMs: number, burst: number, slackMs = 0): BucketParams => {
  const b = Math.max(1, Math.min(Math.floor(burst), Math.floor(limit / 4)));
  const paced = limit - b;
  // Rounded up: a slightly slower rate keeps the bound exact despite integer milliseconds.
  const intervalMs = paced >= 1 ? Math.ceil((windowMs + slackMs) / paced) : windowMs + slackMs + 1;
  return { intervalMs, burst: b };
};

/** Most grants any window of `windowMs` can see under these params (the conformance bound). */
export const windowAllowance = (p: BucketParams, windowMs: number): number =>
  p.burst + Math.floor(windowMs / p.intervalMs);

/** Burst a priority may spend: LOW (and NORMAL if asked) keep off the reserved last part. */
export const priorityBurst = (
  burst: number,
  priority: Priority,
  reserve: { fraction: number; forNormal: boolean },
): number => {
  const restricted = priority === 'low' || (priority === 'normal' && reserve.forNormal);
  if (!restricted) return burst;
  return Math.max(1, Math.floor(burst * (1 - reserve.fraction) + 1e-9));
};

/** A conditional consume the store can apply in one write (no read). */
export type ConsumeAttempt =
  /** Bucket full (tat missing or past): SET tat = newTat IF tat < now. */
  | { branch: 'idle'; now: number; newTat: number; params: BucketParams }
  /** Bucket partly spent: SET tat = tat + interval IF now ≤ tat ≤ maxTat. */
  | { branch: 'busy'; now: number; maxTat: number; params: BucketParams };

export type ConsumePlan = { attempt: ConsumeAttempt } | { waitMs: number };

/**
 * Plans a consume from the last known state: which conditional write to try, or how long to wait.
 * `priorityBurst` is the burst this priority may use (≤ state.burst).
 */
export const planConsume = (state: BucketState, now: number, burstForPriority: number): ConsumePlan => {
  const params = { intervalMs: state.intervalMs, burst: state.burst };
  const T = state.intervalMs;
  if (state.tat === undefined || state.tat < now) {
    return { attempt: { branch: 'idle', now, newTat: now + T, params } };
  }
  const maxTat = now + (burstForPriority - 1) * T;
  if (state.tat <= maxTat) return { attempt: { branch: 'busy', now, maxTat, params } };
  return { waitMs: state.tat - maxTat };
};

/** The tat after applying an attempt to a state, or undefined if its condition fails (for in-memory stores). */
export const applyAttempt = (state: BucketState | undefined, a: ConsumeAttempt): number | undefined => {
  if (!state || state.intervalMs !== a.params.intervalMs || state.burst !== a.params.burst) return undefined;
  if (a.branch === 'idle') return state.tat === undefined || state.tat < a.now ? a.newTat : undefined;
  return state.tat !== undefined && state.tat >= a.now && state.tat <= a.maxTat
    ? state.tat + state.intervalMs
    : undefined;
};

/** Tokens a priority could spend right now. */
export const availableTokens = (state: BucketState, now: number, burstForPriority: number): number => {
  if (state.tat === undefined || state.tat < now) return burstForPriority;
  const spare = now + (burstForPriority - 1) * state.intervalMs - state.tat;
  return spare < 0 ? 0 : Math.floor(spare / state.intervalMs) + 1;
};

/**
 * New tat when the parameters change: the backlog is rescaled so the tokens available stay the same
 * (a rate cut must not release a burst, a raise must not invent one).
 */
export const rescaleTat = (
  tat: number | undefined,
  now: number,
  from: BucketParams,
  to: BucketParams,
  holdUntil?: number,
): number | undefined => {
  if (tat === undefined || tat <= now) return tat;
  const backlogTokens = (tat - now) / from.intervalMs;
  // Keep the spent part of the burst spent: tokens in use = backlog; the same backlog at the new interval.
  const rescaled = now + Math.ceil(backlogTokens * to.intervalMs);
  // A hold the upstream asked for is a time, not a backlog: a faster rate must not shorten it.
  return holdUntil !== undefined && holdUntil > now ? Math.max(rescaled, holdTat(holdUntil, to)) : rescaled;
};

/** tat that leaves the bucket empty until `until`: at `until` the best priority gets exactly one token. */
export const holdTat = (until: number, params: BucketParams): number =>
  until + (params.burst - 1) * params.intervalMs;

/** tat after giving one token back (a grant that never reached the upstream). */
export const refundTat = (
  tat: number | undefined,
  now: number,
  params: BucketParams,
  holdUntil?: number,
): number | undefined => {
  if (tat === undefined || tat <= now) return tat;
  const refunded = Math.max(now, tat - params.intervalMs);
  // A refund during a hold must not end the hold early.
  return holdUntil !== undefined && holdUntil > now
    ? Math.max(refunded, holdTat(holdUntil, params))
    : refunded;
};
