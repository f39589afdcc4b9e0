// Status use case: one snapshot of the gateway (bucket, retreat, queues, throughput, latency, dispatcher, config)
// built from the stores; settled outcome slots are kept per container so each build reads only the newest ones.
import type { Clock } from '../domain/clock.js';
import type { GatewayConfig, QueueFullPolicy } from '../domain/config.js';
import { availableTokens, type BucketState, priorityBurst } from '../domain/gcra.js';
import {
  COUNTERS,
  type CounterName,
  percentiles,
  SLOT_MS,
  type SlotCounters,
  slotOf,
  throttleRate,
  type WindowStats,
  windowStats,
} from '../domain/outcomes.js';
import type {
  BucketStore,
  ConfigStore,
  LeaseStore,
  OutcomeStore,
  RetreatStore,
  TicketQueue,
  TicketStore,
  VersionedConfig,
} from '../domain/ports.js';
import { PRIORITIES, type Priority } from '../domain/priority.js';
import type { PriorityPolicy } from '../domain/priority-policy.js';
import { baseRpmOf, initialRetreat, rebaseRetreat } from '../domain/retreat.js';
import { bucketParamsFor } from '../domain/retreat-controller.js';
import { tokenLimitOf, tokensInWindow } from '../domain/token-window.js';
import type { UpstreamRow } from './upstream-rows.js';
import { type ConfigChangeView, changeView, type RetreatView, retreatView } from './views.js';

/** Throughput and latency cover this much history. */
export const THROUGHPUT_WINDOW_MS = 10 * 60_000;
/** A slot this long past its end gets no more writes (covers clock skew between functions); it is cached. */
export const SETTLE_MS = 15_000;
/** Upstream calls counted at most (the in-flight figure is `capped` beyond). */
export const IN_FLIGHT_LIMIT = 100;
/** Config changes listed. */
export const CHANGES_LISTED = 10;
/** Lambda price per GB-second on ARM (us-east-1), for the cost of ingress functions waiting in the queue. */
export const LAMBDA_USD_PER_GB_SECOND = 0.0000133334;

/** Percentiles of one histogram for one priority; values are bucket upper bounds (ms), null without samples. */
export interface PercentileView {
  count: number;
  p50: number | null;
  p95: number | null;
  p99: number | null;
}

/** Everything `GET /status` answers. Times are epoch milliseconds, rates requests per minute. */
export interface StatusSnapshot {
  /** When this snapshot was built. */
  at: number;
  configVersion: number;
  bucket: {
    /** Rate the bucket grants at (from its stored interval). */
    rpm: number;
    intervalMs: number;
    burst: number;
    /** Whole tokens the most important priority could take now. */
    tokens: number;
    /** The same as a continuous fill level in [0, burst] (the part of the next token included). */
    level: number;
    tokensByPriority: Record<Priority, number>;
    /** End of an upstream-requested hold (Retry-After) still in force, else null. */
    holdUntil: number | null;
    /** False until the dispatcher first configured the bucket (figures derived from the config then). */
    configured: boolean;
    /**
     * The (first) upstream's tokens per minute: what its grants hold in the current token window (reservations,
     * corrected to the answers' usage) against its tpm, from the item read above; null without tpm.
     */
    tokensPerMinute: { tpm: number; inWindow: number } | null;
  };
  retreat: RetreatView & {
    /** Upstream 429s / upstream answers over the retreat window (0–1). */
    throttleRate: number;
    windowMs: number;
    window: WindowStats;
  };
  queue: {
    /** Queued tickets (the exact admission counter). */
    total: number;
    maxSize: number;
    policy: QueueFullPolicy;
    /** How the dispatcher orders priorities: `strict`, or `weighted` shares (urgent:high:normal:low). */
    order: { policy: PriorityPolicy; weights: string };
    /** Per priority from SQS (approximate): waiting in the queue, and held by the dispatcher's buffers. */
    byPriority: Record<Priority, { waiting: number; buffered: number }>;
    /** Granted tickets not yet claimed, and claimed ones (upstream calls in progress). */
    inFlight: { granted: number; calling: number; capped: boolean; counter: number; max: number };
  };
  /** Operator switches (admin pause/resume/drain). */
  mode: { paused: boolean; draining: boolean };
  /**
   * What waiting costs: ingress functions are billed while they wait for a grant. Over the throughput window:
   * summed queue wait, × the ingress memory size = GB-seconds, × the ARM Lambda price.
   */
  cost: {
    windowMs: number;
    waitingSeconds: number;
    memoryMb: number;
    gbSeconds: number;
    usd: number;
    usdPerHour: number;
  };
  throughput: {
    slotMs: number;
    /** Slot start times, oldest first; the last slot is the current (partial) one. */
    t: number[];
    /** One count per slot for every outcome counter. */
    series: Record<CounterName, number[]>;
    /** Sums over the window; `requests` = granted − requeued + refused + expired + dropped + abandoned. */
    totals: Record<CounterName, number> & { requests: number };
  };
  /**
   * The response cache over the throughput window: requests answered from it (no token, no upstream call), those
   * that fetched an answer for it, and what the hits saved (bytes sent, upstream tokens by the stored usage).
   */
  cache: {
    windowMs: number;
    hits: number;
    misses: number;
    /** hits / (hits + misses), 0 without either. */
    hitRate: number;
    bytesSaved: number;
    tokensSaved: number;
  };
  latency: {
    windowMs: number;
    queueWait: Record<Priority, PercentileView>;
    upstream: Record<Priority, PercentileView>;
  };
  dispatcher: {
    state: 'running' | 'idle';
    /** Lease expiry while running. */
    expiresAt: number | null;
    /** When this status container first saw the current state. */
    observedSince: number;
    /** When the lease was last taken (running) or released (idle), from the lease item. */
    since: number | null;
  };
  limits: Pick<
    GatewayConfig,
    | 'upstreamLimit'
    | 'upstreamWindowMs'
    | 'bucketBurst'
    | 'queueMaxSize'
    | 'queueFullPolicy'
    | 'lowPriorityTimeoutMs'
    | 'maxRequeues'
    | 'statusPublic'
  >;
  /** Latest first. */
  configChanges: ConfigChangeView[];
  /** Several limited upstreams: a row each (the first one first), pools named in each row. */
  upstreams?: UpstreamRow[];
}

/** What the builder reads; each member is a narrow slice of a domain port, so fakes stay small. */
export interface SnapshotSources {
  bucket: Pick<BucketStore, 'get'>;
  retreat: Pick<RetreatStore, 'get'>;
  tickets: Pick<TicketStore, 'admissionCount' | 'listPhase' | 'counts'>;
  queue: Pick<TicketQueue, 'depth'>;
  lease: Pick<LeaseStore, 'get'>;
  outcomes: Pick<OutcomeStore, 'read'>;
  config: { current(): Promise<VersionedConfig> };
  configHistory: Pick<ConfigStore, 'history'>;
  clock: Clock;
  /** The ingress function's memory size (MB), for the waiting cost. */
  ingressMemoryMb: number;
  /**
   * Several limited upstreams: their rows under the config (`firstBucket`: the first upstream's bucket item as this
   * snapshot read it, so its row reads it no second time).
   */
  upstreams?: (config: GatewayConfig, firstBucket?: BucketState) => Promise<UpstreamRow[]>;
}

const round = (x: number, digits = 2): number => {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
};

/** Continuous fill level of a bucket: whole tokens plus the share of the next one already earned. */
const fillLevel = (state: BucketState, now: number): number => {
  if (state.tat === undefined || state.tat < now) return state.burst;
  const spare = now + (state.burst - 1) * state.intervalMs - state.tat;
  return Math.min(state.burst, Math.max(0, spare / state.intervalMs + 1));
};

const percentileView = (p: { count: number; p: Record<string, number | null> }): PercentileView => ({
  count: p.count,
  p50: p.p.p50 ?? null,
  p95: p.p.p95 ?? null,
  p99: p.p.p99 ?? null,
});

/**
 * Builds snapshots. Keep one per container: it caches settled outcome slots (immutable once past) and remembers
 * when it saw the dispatcher change state.
 */
export class SnapshotBuilder {
  private readonly settled = new Map<number, SlotCounters>();
  /** Slots before this start time are settled and cached (absent ones were empty). */
  private settledUpTo = 0;
  private lease: { state: 'running' | 'idle'; since: number } | undefined;

  constructor(private readonly s: SnapshotSources) {}

  async build(): Promise<StatusSnapshot> {
    const { clock } = this.s;
    const now = clock.now();
    const versioned = await this.s.config.current();
    const config = versioned.config;
    const span = Math.max(THROUGHPUT_WINDOW_MS, config.retreatWindowMs + SLOT_MS);
    const [bucket, record, counters, depths, lease, slots, granted, calling, history] = await Promise.all([
      this.s.bucket.get(),
      this.s.retreat.get(),
      this.s.tickets.counts(),
      Promise.all(PRIORITIES.map((p) => this.s.queue.depth(p))),
      this.s.lease.get(),
      this.readSlots(now, span),
      this.s.tickets.listPhase('granted', Number.MAX_SAFE_INTEGER, IN_FLIGHT_LIMIT),
      this.s.tickets.listPhase('claimed', Number.MAX_SAFE_INTEGER, IN_FLIGHT_LIMIT),
      this.s.configHistory.history(CHANGES_LISTED),
    ]);

    // What the dispatcher will apply at its next evaluation: a new base rate shows at once.
    const retreat = rebaseRetreat(record ?? initialRetreat(baseRpmOf(config), now), baseRpmOf(config));
    const state: BucketState = bucket ?? bucketParamsFor(retreat, config);
    const reserve = { fraction: config.reserveFraction, forNormal: config.reserveForNormal };
    const tokenLimit = tokenLimitOf(config, undefined);
    const window = windowStats(slots, now - config.retreatWindowMs, now + SLOT_MS);

    const firstSlot = slotOf(now) - THROUGHPUT_WINDOW_MS + SLOT_MS;
    const t = Array.from({ length: THROUGHPUT_WINDOW_MS / SLOT_MS }, (_, i) => firstSlot + i * SLOT_MS);
    const bySlot = new Map(slots.map((s) => [s.slot, s]));
    const series = Object.fromEntries(
      COUNTERS.map((c) => [c, t.map((slot) => bySlot.get(slot)?.counts[c] ?? 0)]),
    ) as Record<CounterName, number[]>;
    const sums = Object.fromEntries(COUNTERS.map((c) => [c, series[c].reduce((a, b) => a + b, 0)])) as Record<
      CounterName,
      number
    >;
    const inWindow = slots.filter((s) => s.slot >= firstSlot);
    const queueWait = percentiles(inWindow, 'queueWait');
    const upstream = percentiles(inWindow, 'upstream');

    const running = lease.owner !== undefined && (lease.expiresAt ?? 0) > now;
    const leaseState = running ? 'running' : 'idle';
    if (this.lease?.state !== leaseState) this.lease = { state: leaseState, since: now };

    return {
      at: now,
      configVersion: versioned.version,
      bucket: {
        rpm: round(60_000 / state.intervalMs),
        intervalMs: state.intervalMs,
        burst: state.burst,
        tokens: availableTokens(state, now, state.burst),
        level: round(fillLevel(state, now), 3),
        tokensByPriority: Object.fromEntries(
          PRIORITIES.map((p) => [p, availableTokens(state, now, priorityBurst(state.burst, p, reserve))]),
        ) as Record<Priority, number>,
        holdUntil: state.holdUntil !== undefined && state.holdUntil > now ? state.holdUntil : null,
        configured: bucket !== undefined,
        tokensPerMinute: tokenLimit
          ? {
              tpm: tokenLimit.tpm,
              inWindow: tokensInWindow(state.tokens?.entries ?? [], now, tokenLimit.windowMs),
            }
          : null,
      },
      retreat: {
        ...retreatView(retreat),
        effectiveRpm: round(retreat.effectiveRpm),
        baseRpm: round(retreat.baseRpm),
        throttleRate: round(throttleRate(window), 4),
        windowMs: config.retreatWindowMs,
        window,
      },
      queue: {
        total: counters.queued,
        maxSize: config.queueMaxSize,
        policy: config.queueFullPolicy,
        order: { policy: config.priorityPolicy, weights: config.priorityWeights },
        byPriority: Object.fromEntries(
          PRIORITIES.map((p, i) => [
            p,
            { waiting: depths[i]?.visible ?? 0, buffered: depths[i]?.inFlight ?? 0 },
          ]),
        ) as Record<Priority, { waiting: number; buffered: number }>,
        inFlight: {
          granted: granted.length,
          calling: calling.length,
          capped: granted.length >= IN_FLIGHT_LIMIT || calling.length >= IN_FLIGHT_LIMIT,
          counter: counters.inflight,
          max: config.maxInflight,
        },
      },
      mode: { paused: config.paused, draining: config.draining },
      cost: this.cost(inWindow),
      throughput: {
        slotMs: SLOT_MS,
        t,
        series,
        totals: {
          ...sums,
          // Each request once: a requeued ticket (upstream 429, or a grant too stale to call) is granted again.
          requests:
            sums.granted - sums.requeued + sums.refused + sums.expired + sums.dropped + sums.abandoned,
        },
      },
      cache: {
        windowMs: THROUGHPUT_WINDOW_MS,
        hits: sums.cacheHit,
        misses: sums.cacheMiss,
        hitRate: round(sums.cacheHit / Math.max(1, sums.cacheHit + sums.cacheMiss), 4),
        bytesSaved: sums.cacheBytesSaved,
        tokensSaved: sums.cacheTokensSaved,
      },
      latency: {
        windowMs: THROUGHPUT_WINDOW_MS,
        queueWait: Object.fromEntries(PRIORITIES.map((p) => [p, percentileView(queueWait[p])])) as Record<
          Priority,
          PercentileView
        >,
        upstream: Object.fromEntries(PRIORITIES.map((p) => [p, percentileView(upstream[p])])) as Record<
          Priority,
          PercentileView
        >,
      },
      dispatcher: {
        state: leaseState,
        expiresAt: running ? (lease.expiresAt ?? null) : null,
        observedSince: this.lease.since,
        since: (running ? lease.acquiredAt : lease.releasedAt) ?? null,
      },
      limits: {
        upstreamLimit: config.upstreamLimit,
        upstreamWindowMs: config.upstreamWindowMs,
        bucketBurst: config.bucketBurst,
        queueMaxSize: config.queueMaxSize,
        queueFullPolicy: config.queueFullPolicy,
        lowPriorityTimeoutMs: config.lowPriorityTimeoutMs,
        maxRequeues: config.maxRequeues,
        statusPublic: config.statusPublic,
      },
      configChanges: history.map(changeView),
      ...(this.s.upstreams ? { upstreams: await this.s.upstreams(config, bucket) } : {}),
    };
  }

  private cost(slots: readonly SlotCounters[]): StatusSnapshot['cost'] {
    const waitingMs = slots.reduce(
      (sum, s) => sum + PRIORITIES.reduce((a, p) => a + s.sums.queueWait[p], 0),
      0,
    );
    const waitingSeconds = waitingMs / 1000;
    const gbSeconds = (waitingSeconds * this.s.ingressMemoryMb) / 1024;
    const usd = gbSeconds * LAMBDA_USD_PER_GB_SECOND;
    return {
      windowMs: THROUGHPUT_WINDOW_MS,
      waitingSeconds: round(waitingSeconds, 1),
      memoryMb: this.s.ingressMemoryMb,
      gbSeconds: round(gbSeconds, 2),
      usd: round(usd, 6),
      usdPerHour: round((usd * 3_600_000) / THROUGHPUT_WINDOW_MS, 5),
    };
  }

  /**
   * Slots of the last `span`: settled ones from memory, the rest (normally the newest two) from the store.
   * Settled slots never change, so an open dashboard costs a couple of item reads per build, not sixty.
   */
  private async readSlots(now: number, span: number): Promise<SlotCounters[]> {
    const from = slotOf(now - span);
    const cutoff = slotOf(now - SETTLE_MS) - SLOT_MS; // slots before this have ended ≥ SETTLE_MS ago
    const readFrom = Math.max(from, this.settledUpTo);
    const fresh = await this.s.outcomes.read(readFrom, now);
    for (const s of fresh) if (s.slot < cutoff) this.settled.set(s.slot, s);
    if (cutoff > this.settledUpTo) this.settledUpTo = cutoff;
    for (const slot of this.settled.keys()) if (slot < from) this.settled.delete(slot);
    const recent = fresh.filter((s) => s.slot >= cutoff);
    return [...this.settled.values(), ...recent]
      .filter((s) => s.slot >= from)
      .sort((a, b) => a.slot - b.slot);
  }
}
