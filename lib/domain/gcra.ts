// Domain: GCRA token bucket — pure math plus a store-agnostic bucket that spends tokens with conditional writes.
import type { Priority } from './priority.js';
import type { TokenLog, TokenReserve } from './token-window.js';

/** The window cap of a window-exact bucket: fewer than `limit` grants in the last `windowMs` admit one more. */
export interface WindowCap {
  limit: number;
  /** The upstream window plus the grant → call slack. */
  windowMs: number;
}

/**
 * Rate and burst of a bucket: one token per `intervalMs`, at most `burst` back to back. With `window`, the
 * bucket also keeps a log of its recent grant times and caps every window exactly (window-exact admission).
 */
export interface BucketParams {
  intervalMs: number;
  burst: number;
  window?: WindowCap;
}

/** What the store holds: the theoretical arrival time plus the parameters it was computed with. */
export interface BucketState extends BucketParams {
  /** Theoretical arrival time (ms); absent or in the past = bucket full. */
  tat?: number;
  /** When a hold (upstream Retry-After) ends; informational, the hold itself lives in `tat`. */
  holdUntil?: number;
  /** Window-exact buckets: grant times (ms, ascending) younger than `window.windowMs`. */
  log?: readonly number[];
  /** Bumped by every write that is a compare-and-set (log consumes, configure, hold, refund). */
  version?: number;
  /**
   * An upstream with `tpm`: its token reservations (token-window.ts), versioned apart from the rest, so refunds,
   * holds and reconfigurations never touch them and usage corrections never touch the request bucket.
   */
  tokens?: TokenLog;
}

/**
 * Largest window limit that keeps a grant log: 4 bytes per entry plus the item's other attributes stay within
 * one DynamoDB write unit (1 KB) up to here. Above it the log would cost a second write unit per grant to win
 * burst/limit (< 1 %) of the allowance, so plain GCRA takes over.
 */
export const LOG_MAX_ENTRIES = 240;

/** The longest grant → call delay allowed for a long window (a short one gets a tenth of itself). */
export const GRANT_TO_CALL_MAX_MS = 1_000;

/**
 * How late after its grant a ticket's upstream call may start, for a limit window of `windowMs`: the ingress
 * requeues (and refunds) an older grant instead of calling (Admission.isStale). Calls are shifted from their
 * grants by 0…this, so a window of calls holds the grants of a window this much longer: the bucket is derived
 * for that longer window (bucketParamsFor), and the limit holds for calls, not only for grants.
 */
export const grantToCallMaxMs = (windowMs: number, slackMs = GRANT_TO_CALL_MAX_MS): number =>
  Math.min(slackMs, Math.floor(windowMs / 10));

/**
 * Bucket intervals are whole eighths of a millisecond. Fine enough that rounding one up costs at most 1/8 ms per
 * token (12,000 rpm: 195 grants/s where whole milliseconds gave 167); coarse enough that a tat made of whole
 * milliseconds (clock readings, the leads added to them are rounded up to whole ones) and intervals stays exact both
 * as a double and as DynamoDB's decimal (three decimal places at most), so a tat read back compares equal to the
 * one written and the store's own `tat + :T` adds exactly.
 */
export const TIME_STEPS_PER_MS = 8;

/** `ms` rounded up to the next eighth of a millisecond (unchanged when it is one already). */
export const alignUp = (ms: number): number => Math.ceil(ms * TIME_STEPS_PER_MS) / TIME_STEPS_PER_MS;

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
  // Rounded up (to an eighth of a millisecond): a slightly slower rate keeps the bound exact.
  const intervalMs = paced >= 1 ? alignUp((windowMs + slackMs) / paced) : windowMs + slackMs + 1;
  return { intervalMs, burst: b };
};

/**
 * Window-exact bucket for a limit of `limit` calls per `windowMs`: a log of grants caps every window of
 * window + slack at ⌊limit⌋ grants, so the steady rate reaches limit per (window + slack); a GCRA spacing at the
 * limit's own rate with a small burst keeps the grants spread (an upstream's worker cap is below its window
 * limit). Falls back to deriveBucket above LOG_MAX_ENTRIES (and below one call per window).
 * @param slackMs how late after its grant a call may start @default 0
 */
export const deriveAdmission = (
  limit: number,
  windowMs: number,
  burst: number,
  slackMs = 0,
): BucketParams => {
  const cap = Math.floor(limit + 1e-9);
  if (cap < 1 || cap > LOG_MAX_ENTRIES) return deriveBucket(limit, windowMs, burst, slackMs);
  const b = Math.max(1, Math.min(Math.floor(burst), Math.floor(cap / 4)));
  return {
    // Rounded down: the log caps the window, so the spacing must never be what holds the rate below the cap.
    intervalMs: Math.max(1, Math.floor(windowMs / limit)),
    burst: b,
    window: { limit: cap, windowMs: windowMs + slackMs },
  };
};

/**
 * The most grants per minute these params allow when demand never stops: the spacing's rate, capped by the log's
 * integer limit per (window + slack). On a short window the log can hold the rate well below the rpm it was derived
 * from (4.75 calls per 3 s is a log of 4).
 */
export const grantableRpm = (p: BucketParams): number => {
  const spaced = 60_000 / p.intervalMs;
  return p.window ? Math.min(spaced, (p.window.limit * 60_000) / p.window.windowMs) : spaced;
};

/** Most grants any window of `windowMs` can see under these params (the conformance bound). */
export const windowAllowance = (p: BucketParams, windowMs: number): number => {
  const spaced = p.burst + Math.floor(windowMs / p.intervalMs);
  if (!p.window) return spaced;
  return Math.min(spaced, p.window.limit * Math.ceil(windowMs / p.window.windowMs));
};

/** True when two parameter sets describe the same bucket (a write conditioned on one fails on the other). */
export const sameParams = (a: BucketParams, b: BucketParams): boolean =>
  a.intervalMs === b.intervalMs &&
  a.burst === b.burst &&
  a.window?.limit === b.window?.limit &&
  a.window?.windowMs === b.window?.windowMs;

/** Just the parameters of a state (what a consume attempt is conditioned on). */
export const paramsOf = (s: BucketParams): BucketParams => ({
  intervalMs: s.intervalMs,
  burst: s.burst,
  ...(s.window ? { window: { limit: s.window.limit, windowMs: s.window.windowMs } } : {}),
});

/** Grants of the log that still count at `now` (younger than the capped window). */
export const liveLog = (state: BucketState, now: number): number[] => {
  if (!state.window) return [];
  const from = now - state.window.windowMs;
  return (state.log ?? []).filter((t) => t > from);
};

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

/**
 * A conditional consume the store can apply in one write. With `tokens` (an upstream with `tpm`), the same write
 * also sets the token entries, conditioned on their version.
 */
export type ConsumeAttempt = RequestConsume & { tokens?: TokenReserve };

type RequestConsume =
  /** Bucket full (tat missing or past): SET tat = newTat IF tat < now. No read needed. */
  | { branch: 'idle'; now: number; newTat: number; params: BucketParams }
  /**
   * Bucket partly spent: SET tat = tat + count × interval IF now ≤ tat ≤ maxTat. No read needed. `count` > 1
   * takes several tokens at once (a batch of grants): maxTat then leaves room for all of them in the burst.
   */
  | { branch: 'busy'; now: number; maxTat: number; params: BucketParams; count?: number }
  /**
   * Window-exact bucket: SET tat = newTat, log = newLog, version = expectedVersion + 1 IF version =
   * expectedVersion (compare-and-set on the state the plan was made from; a failed condition returns the item).
   */
  | {
      branch: 'log';
      now: number;
      newTat: number;
      newLog: readonly number[];
      expectedVersion: number;
      params: BucketParams;
    };

export type ConsumePlan = { attempt: ConsumeAttempt } | { waitMs: number };

/** The spacing's answer: ok, or how long until this priority's burst allows a grant. */
const spacingWait = (state: BucketState, now: number, burstForPriority: number): number => {
  if (state.tat === undefined || state.tat < now) return 0;
  const maxTat = now + (burstForPriority - 1) * state.intervalMs;
  return state.tat <= maxTat ? 0 : state.tat - maxTat;
};

/**
 * Slots of the window a priority may fill: a restricted priority keeps off as many slots as it keeps off the
 * burst (burst − its burst), so the reserve for urgent/high holds in the window as in the spacing.
 */
export const windowLimitFor = (state: BucketParams, burstForPriority: number): number =>
  state.window ? Math.max(1, state.window.limit - (state.burst - burstForPriority)) : Infinity;

/** How long until the window log admits one more grant of this priority (0 = now). */
const windowWait = (
  state: BucketState,
  live: readonly number[],
  now: number,
  burstForPriority: number,
): number => {
  if (!state.window) return 0;
  const limit = windowLimitFor(state, burstForPriority);
  if (live.length < limit) return 0;
  // The grant that must leave the window before one more fits (entries count while younger than the window).
  const leaving = live[live.length - limit] ?? now;
  return Math.max(0, leaving + state.window.windowMs - now);
};

/**
 * Plans a consume from the last known state: which conditional write to try, or how long to wait.
 * `burstForPriority` is the burst this priority may use (≤ state.burst).
 */
export const planConsume = (state: BucketState, now: number, burstForPriority: number): ConsumePlan => {
  const params = paramsOf(state);
  const T = state.intervalMs;
  if (state.window) {
    const live = liveLog(state, now);
    const waitMs = Math.max(
      spacingWait(state, now, burstForPriority),
      windowWait(state, live, now, burstForPriority),
    );
    if (waitMs > 0) return { waitMs };
    const newTat = state.tat === undefined || state.tat < now ? now + T : state.tat + T;
    return {
      attempt: {
        branch: 'log',
        now,
        newTat,
        // In time order: a grant at `now` can follow a reservation made for a later slot (the log's order is what
        // windowWait reads, and what the stored encoding's base assumes).
        newLog: [...live, now].sort((a, b) => a - b),
        expectedVersion: state.version ?? 0,
        params,
      },
    };
  }
  const slot = nearIdleSlot(state, now, burstForPriority);
  if (slot === undefined) return { attempt: { branch: 'idle', now, newTat: now + T, params } };
  const maxTat = slot + (burstForPriority - 1) * T;
  if (state.tat! <= maxTat) return { attempt: { branch: 'busy', now: slot, maxTat, params } };
  return { waitMs: state.tat! - maxTat };
};

/**
 * The most a grant is placed before its planned time (see nearIdleSlot): small against the grant → call slack
 * (≥ 100 ms; 1 s by default), which counts from the recorded slot, so a grant placed back is still called in time.
 */
export const NEAR_IDLE_MAX_MS = 20;

/**
 * How far before its planned time a grant may be placed to find the bucket busy: a quarter of the priority's burst
 * in whole intervals (none under a burst of 5), at most NEAR_IDLE_MAX_MS.
 */
export const nearIdleMs = (intervalMs: number, burstForPriority: number): number =>
  Math.min(NEAR_IDLE_MAX_MS, Math.floor((burstForPriority - 1) / 4) * intervalMs);

/**
 * The slot a grant planned at `now` takes: `now`, or — when the known tat is behind `now` by at most nearIdleMs —
 * the tat itself, where the bucket is busy; undefined when the bucket is idle (the idle write at `now`).
 *
 * Why: the idle write (SET tat = now + T IF tat < now) is exact, but two of them always refuse each other (each
 * sets the tat to its own value), and on a bucket that idles between grants (any rate well below 1/T) every grant
 * planned from the same known state is one: concurrent requests refused each other most of the time and retried.
 * The busy write (SET tat = tat + T IF slot ≤ tat ≤ maxTat) is exact too and commutes with itself: grants placed at
 * the known tat all go through while the burst lasts, in any order. The grant is recorded (and called no earlier
 * than) at that slot, a little before the time it was planned for; its call is still bounded by the grant → call
 * slack from the recorded slot (Admission.isStale), so every window stays exact.
 */
export const nearIdleSlot = (
  state: BucketState,
  now: number,
  burstForPriority: number,
): number | undefined => {
  if (state.tat === undefined) return undefined;
  if (state.tat >= now) return now;
  return state.tat >= now - nearIdleMs(state.intervalMs, burstForPriority) ? state.tat : undefined;
};

/** The tat after applying an attempt to a state, or undefined if its condition fails (for in-memory stores). */
export const applyAttempt = (state: BucketState | undefined, a: ConsumeAttempt): number | undefined =>
  applyConsume(state, a)?.tat;

/** The state after applying an attempt, or undefined if its condition fails (for in-memory stores). */
export const applyConsume = (state: BucketState | undefined, a: ConsumeAttempt): BucketState | undefined => {
  if (!a.tokens) return applyRequestConsume(state, a);
  if ((state?.tokens?.version ?? 0) !== a.tokens.expectedVersion) return undefined;
  const next = applyRequestConsume(state, a);
  return next && { ...next, tokens: reservedTokens(a.tokens) };
};

/** The token log a successful write of `reserve` leaves. */
export const reservedTokens = (reserve: TokenReserve): TokenLog => ({
  entries: reserve.newEntries,
  version: reserve.expectedVersion + 1,
});

const applyRequestConsume = (state: BucketState | undefined, a: ConsumeAttempt): BucketState | undefined => {
  if (!state || !sameParams(state, a.params)) return undefined;
  if (a.branch === 'log') {
    if ((state.version ?? 0) !== a.expectedVersion) return undefined;
    return { ...state, tat: a.newTat, log: a.newLog, version: a.expectedVersion + 1 };
  }
  if (a.branch === 'idle') {
    return state.tat === undefined || state.tat < a.now ? { ...state, tat: a.newTat } : undefined;
  }
  return state.tat !== undefined && state.tat >= a.now && state.tat <= a.maxTat
    ? { ...state, tat: state.tat + state.intervalMs * (a.count ?? 1) }
    : undefined;
};

/** The state a store holds after a successful attempt (when it did not return the item). */
export const afterAttempt = (
  known: BucketState | undefined,
  a: ConsumeAttempt,
  tat?: number,
): BucketState => {
  const base: BucketState = {
    ...(known ?? {}),
    ...a.params,
    ...(a.tokens ? { tokens: reservedTokens(a.tokens) } : {}),
  };
  if (a.branch === 'log') return { ...base, tat: a.newTat, log: a.newLog, version: a.expectedVersion + 1 };
  const next =
    tat ?? (a.branch === 'idle' ? a.newTat : (known?.tat ?? a.now) + a.params.intervalMs * (a.count ?? 1));
  return { ...base, tat: next };
};

/**
 * One write that takes up to `max` tokens at `now` on a plain GCRA bucket — exactly what that many consumes in
 * a row at `now` would do, so spacing and burst hold as for single grants. Undefined for a window-exact bucket
 * (its log grants one slot per entry: single grants there) or when fewer than two tokens are free.
 */
export const planConsumeMany = (
  state: BucketState,
  now: number,
  burstForPriority: number,
  max: number,
): { attempt: ConsumeAttempt; count: number } | undefined => {
  if (state.window) return undefined;
  const count = Math.min(max, availableTokens(state, now, burstForPriority));
  if (count < 2) return undefined;
  const T = state.intervalMs;
  const params = paramsOf(state);
  const slot = nearIdleSlot(state, now, burstForPriority);
  if (slot === undefined) return { attempt: { branch: 'idle', now, newTat: now + count * T, params }, count };
  return {
    attempt: { branch: 'busy', now: slot, maxTat: slot + (burstForPriority - count) * T, params, count },
    count,
  };
};

/**
 * One write that grants up to `max` tickets on a plain GCRA bucket, each at the earliest slot at or after `from`
 * that single grants in a row would get (planConsume at each slot): the tokens free at `from` all at `from`, then
 * one slot per interval, none after `until`. The write's condition is the planned state (idle at `from`, or the
 * tat no later than known), under which every slot holds spacing and burst as single grants would; it moves the
 * tat by one interval per grant. Undefined for a window-exact bucket (its log takes one slot per write) or when
 * fewer than two fit.
 * @returns the write and each grant's slot, in order
 */
export const planConsumeSpread = (
  state: BucketState,
  from: number,
  burstForPriority: number,
  max: number,
  until: number,
): { attempt: ConsumeAttempt; slots: number[] } | undefined => {
  if (state.window) return undefined;
  const T = state.intervalMs;
  const idle = state.tat === undefined || state.tat < from;
  // The tat before the i-th grant: from + iT when idle, tat + iT when busy; a grant may go once that tat is
  // within the burst of its slot.
  const start = idle ? from : state.tat!;
  const slots: number[] = [];
  for (let i = 0; i < max; i++) {
    const slot = Math.max(from, start + i * T - (burstForPriority - 1) * T);
    if (slot > until) break;
    slots.push(slot);
  }
  if (slots.length < 2) return undefined;
  const params = paramsOf(state);
  const count = slots.length;
  return {
    attempt: idle
      ? { branch: 'idle', now: from, newTat: from + count * T, params }
      : { branch: 'busy', now: from, maxTat: state.tat!, params, count },
    slots,
  };
};

/** Tokens a priority could spend right now. */
export const availableTokens = (state: BucketState, now: number, burstForPriority: number): number => {
  let spaced: number;
  if (state.tat === undefined || state.tat < now) spaced = burstForPriority;
  else {
    const spare = now + (burstForPriority - 1) * state.intervalMs - state.tat;
    spaced = spare < 0 ? 0 : Math.floor(spare / state.intervalMs) + 1;
  }
  if (!state.window) return spaced;
  return Math.min(spaced, Math.max(0, windowLimitFor(state, burstForPriority) - liveLog(state, now).length));
};

/**
 * The log after giving back the grant made at `grantedAt`: its own entry (or, for grants recorded slightly
 * apart, the nearest within `toleranceMs`) leaves the log. Unchanged when no entry is near enough.
 */
export const refundLog = (
  log: readonly number[] | undefined,
  grantedAt: number,
  toleranceMs = 1_000,
): readonly number[] | undefined => {
  if (!log || log.length === 0) return log;
  let best = -1;
  for (let i = 0; i < log.length; i++) {
    const d = Math.abs((log[i] ?? 0) - grantedAt);
    if (d <= toleranceMs && (best < 0 || d < Math.abs((log[best] ?? 0) - grantedAt))) best = i;
  }
  return best < 0 ? log : [...log.slice(0, best), ...log.slice(best + 1)];
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
