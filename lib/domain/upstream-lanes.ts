// Domain: one lane per limited upstream — its own bucket and retreat — and which lane serves a ticket now.
import type { TokenBucket } from './bucket.js';
import type { GatewayConfig } from './config.js';
import type { ConsumeAttempt } from './gcra.js';
import type { OutcomeStore } from './ports.js';
import type { Priority } from './priority.js';
import type { RetreatController } from './retreat-controller.js';
import type { TokenNeed } from './token-window.js';
import { upstreamLimits } from './upstreams.js';

/** A limited upstream as the dispatcher and the ingress meter it. */
export interface UpstreamLane {
  name: string;
  /** The first limited upstream: its items keep the single-upstream keys, tickets name no upstream for it. */
  primary: boolean;
  bucket: TokenBucket;
  retreat: RetreatController;
  /** Its upstream answers (its retreat reads them); the first upstream's are the gateway's outcome slots. */
  outcomes: OutcomeStore;
}

/**
 * The live reserve (`reserve_fraction`, `reserve_for_normal`) on every bucket a function meters with: the first
 * upstream's and each lane's, from the cached config every other field is read from (a PATCH reaches them all).
 */
export const applyLiveReserve = (
  config: Pick<GatewayConfig, 'reserveFraction' | 'reserveForNormal'>,
  bucket: TokenBucket,
  lanes: readonly Pick<UpstreamLane, 'bucket'>[] = [],
): void => {
  const reserve = { fraction: config.reserveFraction, forNormal: config.reserveForNormal };
  bucket.setReserve(reserve);
  for (const lane of lanes) lane.bucket.setReserve(reserve);
};

/** The lane of a granted ticket: its upstream's, the first one's when it names none. */
export const laneOf = (
  ticket: { upstream?: string | undefined },
  lanes: readonly UpstreamLane[] | undefined,
): UpstreamLane | undefined =>
  lanes?.find((l) => (ticket.upstream === undefined ? l.primary : l.name === ticket.upstream));

/**
 * The config as one upstream sees it: its limits in the top-level fields, so the bucket, retreat and in-flight
 * rules written for one upstream apply to each unchanged.
 */
export const upstreamConfig = (config: GatewayConfig, name: string): GatewayConfig => {
  const l = upstreamLimits(config, name);
  return {
    ...config,
    upstreamLimit: l.limit,
    upstreamWindowMs: l.windowMs,
    upstreamTpm: l.tpm,
    maxInflight: l.maxInflight,
    retreatPreset: l.retreatPreset,
  };
};

/** The name a ticket records for a lane (none for the first upstream: nothing about it changes). */
export const ticketUpstream = (lane: Pick<UpstreamLane, 'name' | 'primary'>): string | undefined =>
  lane.primary ? undefined : lane.name;

/** The lanes a ticket may take: its pool, or the first upstream. Unknown names are skipped. */
export const lanesFor = (
  pool: readonly string[] | undefined,
  lanes: readonly UpstreamLane[],
): UpstreamLane[] => {
  if (!pool || pool.length === 0) return lanes.filter((l) => l.primary);
  return pool.map((name) => lanes.find((l) => l.name === name)).filter((l): l is UpstreamLane => !!l);
};

export type LaneChoice =
  | { lane: UpstreamLane; attempt: ConsumeAttempt }
  /** No lane has a token for it now: the soonest one comes in this long. */
  | { waitMs: number };

/**
 * Within a pool: a lane with a token now — the one with the most tokens left, then the one that took the fewest
 * grants lately (`recent`), so a pool's members share the load; otherwise how long until the first token.
 * Lanes in `blocked` (max_inflight reached) are passed over. `tokensFor`: the ticket's need on a lane metered in
 * tokens per minute (its reservation rides on the grant's write; a lane without room for it waits).
 */
export const chooseLane = (
  lanes: readonly UpstreamLane[],
  priority: Priority,
  recent: ReadonlyMap<string, number>,
  blocked: ReadonlySet<string> = new Set(),
  tokensFor: (lane: UpstreamLane) => TokenNeed | undefined = () => undefined,
): LaneChoice | undefined => {
  let best: { lane: UpstreamLane; attempt: ConsumeAttempt; available: number } | undefined;
  let waitMs = Number.POSITIVE_INFINITY;
  for (const lane of lanes) {
    if (blocked.has(lane.name) || !lane.bucket.state) continue;
    const plan = lane.bucket.plan(priority, tokensFor(lane));
    if ('waitMs' in plan) {
      waitMs = Math.min(waitMs, plan.waitMs);
      continue;
    }
    const available = lane.bucket.available(priority);
    if (
      !best ||
      available > best.available ||
      (available === best.available && (recent.get(lane.name) ?? 0) < (recent.get(best.lane.name) ?? 0))
    )
      best = { lane, attempt: plan.attempt, available };
  }
  if (best) return { lane: best.lane, attempt: best.attempt };
  return Number.isFinite(waitMs) ? { waitMs } : undefined;
};
