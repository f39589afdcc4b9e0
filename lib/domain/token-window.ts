// Domain: tokens per minute — a rolling window of token reservations per upstream, kept beside its request bucket.
// Pure: the grant reserves its estimate in the same conditional write as its request token (described here as
// data, `TokenReserve`), the answer's usage corrects the reservation afterwards (`reconcileEntries`).
import type { GatewayConfig } from './config.js';
import { grantToCallMaxMs } from './gcra.js';
import { upstreamLimits } from './upstreams.js';

/** Tokens reserved (then corrected to what the answer used) by the grants of one slot of time. */
export interface TokenEntry {
  /** The slot's end (ms): the grants of (at − slot, at]. The entry counts until `at + windowMs`. */
  at: number;
  tokens: number;
}

/** What an upstream's bucket item holds about tokens: the window's entries and their own version. */
export interface TokenLog {
  /** Ascending by `at`; only entries still inside the window are kept by writes. */
  entries: readonly TokenEntry[];
  /** Bumped by every write of the entries (a compare-and-set apart from the request bucket's). */
  version: number;
}

/** An upstream's token limit as the planner applies it. */
export interface TokenLimit {
  /** Tokens allowed in any window. */
  tpm: number;
  /** The upstream's token window plus the grant → call slack (calls start up to that long after their grants). */
  windowMs: number;
}

/** One grant's need: its estimated tokens under an upstream's limit. */
export interface TokenNeed extends TokenLimit {
  tokens: number;
}

/** The token half of a grant's conditional write: the entries after it, if the version is still the one read. */
export interface TokenReserve {
  expectedVersion: number;
  newEntries: readonly TokenEntry[];
}

/**
 * Slots per window: grants are recorded at the end of their slot (a sixtieth of the window, 1 s for a minute), so
 * the log holds at most ~61 entries (8 bytes each in the item) whatever the rate. Recording at the slot's end
 * keeps a grant counted at least as long as its own time would: never fewer tokens in a window, at most one slot
 * (1/60 of the window) of allowance given up.
 */
export const TOKEN_SLOTS_PER_WINDOW = 60;

/** The slot end a grant at `at` is recorded at. */
export const tokenSlot = (at: number, windowMs: number): number => {
  const q = Math.max(1, Math.floor(windowMs / TOKEN_SLOTS_PER_WINDOW));
  return Math.ceil(at / q) * q;
};

/** Entries still counting at `now`: recorded less than `windowMs` before it (or ahead of it: reservations). */
export const liveEntries = (entries: readonly TokenEntry[], now: number, windowMs: number): TokenEntry[] =>
  entries.filter((e) => e.at > now - windowMs);

/** Tokens counting at `now`. */
export const tokensInWindow = (entries: readonly TokenEntry[], now: number, windowMs: number): number =>
  liveEntries(entries, now, windowMs).reduce((sum, e) => sum + e.tokens, 0);

/**
 * Plans one grant's reservation at `at`: the entries after it, or how long until enough of the window's tokens
 * have left it. A need above the whole window is reserved as the whole window (a larger stated size was refused
 * at admission; the rest is the default completion's guess), so it waits for an empty window but is never stuck.
 */
export const planTokens = (
  log: TokenLog | undefined,
  at: number,
  need: TokenNeed,
): { reserve: TokenReserve } | { waitMs: number } => {
  const tokens = tokensReserved(need);
  const live = liveEntries(log?.entries ?? [], at, need.windowMs);
  let used = live.reduce((sum, e) => sum + e.tokens, 0);
  if (used + tokens > need.tpm) {
    // The entry whose leaving makes room: the oldest ones leave first.
    for (const e of live) {
      used -= e.tokens;
      if (used + tokens <= need.tpm) return { waitMs: Math.max(1, e.at + need.windowMs - at) };
    }
    return { waitMs: need.windowMs };
  }
  const slot = tokenSlot(at, need.windowMs);
  const same = live.findIndex((e) => e.at === slot);
  const newEntries =
    same >= 0
      ? live.map((e, i) => (i === same ? { at: e.at, tokens: e.tokens + tokens } : e))
      : [...live, { at: slot, tokens }].sort((a, b) => a.at - b.at);
  return { reserve: { expectedVersion: log?.version ?? 0, newEntries } };
};

/**
 * The entries after correcting the grant made at `grantedAt` from its estimate to what the answer used: the
 * difference goes to that grant's slot (an estimate too small adds, one too large gives back; never below 0).
 * Undefined when nothing changes (same count, or the slot has left the window: it no longer counts anyway).
 */
export const reconcileEntries = (
  entries: readonly TokenEntry[],
  now: number,
  grantedAt: number,
  estimate: number,
  actual: number,
  windowMs: number,
): TokenEntry[] | undefined => {
  const delta = Math.ceil(actual) - Math.ceil(estimate);
  if (delta === 0 || !Number.isFinite(delta)) return undefined;
  const slot = tokenSlot(grantedAt, windowMs);
  const live = liveEntries(entries, now, windowMs);
  const i = live.findIndex((e) => e.at === slot);
  if (i < 0) return undefined;
  const tokens = Math.max(0, (live[i]?.tokens ?? 0) + delta);
  return tokens === 0
    ? live.filter((_, j) => j !== i)
    : live.map((e, j) => (j === i ? { at: e.at, tokens } : e));
};

/**
 * The entries after giving back the reservation of the grant made at `grantedAt` that never reached the upstream
 * (handed back before its call: requeued as stale, refused as paused, abandoned, swept): what it reserved (its
 * estimate, at most the whole window: planTokens) leaves its slot. Undefined when nothing changes.
 */
export const refundEntries = (
  entries: readonly TokenEntry[],
  now: number,
  grantedAt: number,
  need: TokenNeed,
): TokenEntry[] | undefined =>
  reconcileEntries(entries, now, grantedAt, tokensReserved(need), 0, need.windowMs);

/** What a grant with `need` reserved: its estimate, at most the whole window (as planTokens reserves it). */
export const tokensReserved = (need: Pick<TokenNeed, 'tokens' | 'tpm'>): number =>
  Math.min(Math.max(0, Math.ceil(need.tokens)), need.tpm);

/**
 * The token limit of a limited upstream (`upstream` as tickets name it: undefined for the first one), or
 * undefined when it is not metered in tokens. Its window is `tpm_window_s` plus the grant → call slack of the
 * upstream's own request window, as the request log's is.
 */
export const tokenLimitOf = (
  config: Pick<
    GatewayConfig,
    | 'upstreamLimit'
    | 'upstreamWindowMs'
    | 'upstreamTpm'
    | 'maxInflight'
    | 'retreatPreset'
    | 'upstreams'
    | 'tpmWindowMs'
    | 'grantSlackMs'
  >,
  upstream: string | undefined,
): TokenLimit | undefined => {
  const limits =
    upstream === undefined
      ? {
          tpm: config.upstreamTpm,
          windowMs: config.upstreamWindowMs,
        }
      : upstreamLimits(config, upstream);
  if (!limits.tpm) return undefined;
  return {
    tpm: limits.tpm,
    windowMs: config.tpmWindowMs + grantToCallMaxMs(limits.windowMs, config.grantSlackMs),
  };
};

/** A ticket's need on an upstream: undefined when the upstream is not metered in tokens or the ticket has none. */
export const tokenNeed = (
  config: Parameters<typeof tokenLimitOf>[0],
  upstream: string | undefined,
  tokens: number | undefined,
): TokenNeed | undefined => {
  if (tokens === undefined) return undefined;
  const limit = tokenLimitOf(config, upstream);
  return limit ? { ...limit, tokens } : undefined;
};
