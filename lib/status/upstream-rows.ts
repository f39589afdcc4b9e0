// Status use case: one row per limited upstream — its rate, retreat state, calls in flight and 429s — pools grouped.
import type { Clock } from '../domain/clock.js';
import type { GatewayConfig } from '../domain/config.js';
import type { BucketState } from '../domain/gcra.js';
import { SLOT_MS, windowStats } from '../domain/outcomes.js';
import type { BucketStore, OutcomeStore, RetreatStore } from '../domain/ports.js';
import { baseRpmOf, initialRetreat, rebaseRetreat } from '../domain/retreat.js';
import type { Route } from '../domain/routes.js';
import { tokenLimitOf, tokensInWindow } from '../domain/token-window.js';
import { ticketUpstream, upstreamConfig } from '../domain/upstream-lanes.js';

/** One limited upstream as /status shows it. */
export interface UpstreamRow {
  name: string;
  /** The upstreams serving the same models as this one, itself included, sorted (a pool when more than one). */
  pool: string[];
  limit: number;
  windowMs: number;
  /** Tokens per minute it allows (0: not metered in tokens). */
  tpm: number;
  /**
   * With `tpm`: the tokens its grants hold in the current token window (reservations by estimate, corrected to
   * the answers' usage), read from its bucket item; null without `tpm` (nothing read).
   */
  tokensInWindow: number | null;
  /** Rate its bucket grants at now (its retreat's effective rate). */
  rpm: number;
  retreatState: string;
  /** Calls granted or running on it. */
  inFlight: number;
  maxInflight: number;
  /** Its 429s (throttled and capacity) and all its answers over the retreat window. */
  throttled: number;
  answers: number;
}

/** What one row reads: that upstream's own items. */
export interface UpstreamRowSource {
  name: string;
  retreat: Pick<RetreatStore, 'get'>;
  outcomes: Pick<OutcomeStore, 'read'>;
  inFlight: () => Promise<number>;
  /** Its bucket item: read only when it has `tpm` (its token entries). */
  bucket?: Pick<BucketStore, 'get'>;
}

/** The pool of each upstream: those sharing a route `match` with it, transitively. */
export const poolsOf = (routes: readonly Route[], names: readonly string[]): Map<string, string[]> => {
  const group = new Map(names.map((n) => [n, new Set([n])]));
  const byMatch = new Map<string, string[]>();
  for (const r of routes) {
    if (!group.has(r.upstream)) continue;
    const key = r.match.toLowerCase();
    byMatch.set(key, [...(byMatch.get(key) ?? []), r.upstream]);
  }
  for (const members of byMatch.values()) {
    const merged = new Set(members.flatMap((m) => [...group.get(m)!]));
    for (const m of merged) group.set(m, merged);
  }
  return new Map(names.map((n) => [n, [...group.get(n)!].sort()]));
};

/**
 * The rows, in the order of `sources` (the first upstream first).
 * @param firstBucket the first upstream's bucket item when the caller read it already (no second read for it)
 */
export const upstreamRows = async (
  sources: readonly UpstreamRowSource[],
  pools: ReadonlyMap<string, string[]>,
  config: GatewayConfig,
  clock: Clock,
  firstBucket?: BucketState,
): Promise<UpstreamRow[]> => {
  const now = clock.now();
  return Promise.all(
    sources.map(async (s, i): Promise<UpstreamRow> => {
      const own = upstreamConfig(config, s.name);
      const tokenLimit = tokenLimitOf(config, ticketUpstream({ name: s.name, primary: i === 0 }));
      const [record, slots, inFlight, bucket] = await Promise.all([
        s.retreat.get(),
        s.outcomes.read(now - own.retreatWindowMs, now + SLOT_MS),
        s.inFlight(),
        // Tokens per minute only: one read of its bucket item (none for the first one when given).
        tokenLimit ? (i === 0 && firstBucket ? firstBucket : s.bucket?.get()) : undefined,
      ]);
      const retreat = rebaseRetreat(record ?? initialRetreat(baseRpmOf(own), now), baseRpmOf(own));
      const window = windowStats(slots, now - own.retreatWindowMs, now + SLOT_MS);
      return {
        name: s.name,
        pool: pools.get(s.name) ?? [s.name],
        limit: own.upstreamLimit,
        windowMs: own.upstreamWindowMs,
        tpm: own.upstreamTpm,
        tokensInWindow: tokenLimit
          ? tokensInWindow(bucket?.tokens?.entries ?? [], now, tokenLimit.windowMs)
          : null,
        rpm: Math.round(retreat.effectiveRpm * 100) / 100,
        retreatState: retreat.state,
        inFlight,
        maxInflight: own.maxInflight,
        throttled: window.throttled + window.capacity,
        answers: window.total,
      };
    }),
  );
};
