// Bench support: what a run did to the upstream and to the agents — goodput, 429s, latency per priority,
// priority inversions, the busiest window — all in modelled time.

import { PRIORITIES, type Priority } from '../../lib/domain/priority.js';
import type { UpstreamCall } from '../../local/fake-upstream.js';
import type { SimClock } from './sim.js';
import { percentile, round } from './stats.js';
import { parseBenchUserAgent, type RequestRecord } from './workload.js';

const LIMITED_PATHS = new Set(['/v1/chat/completions', '/v1/completions', '/v1/embeddings']);

/** An upstream call in modelled time, with the bench request it served (from its User-Agent tag). */
export interface TaggedCall {
  at: number;
  accepted: boolean;
  kind: UpstreamCall['kind'];
  id?: string;
  priority?: Priority;
}

export const tagCalls = (calls: readonly UpstreamCall[], clock: SimClock): TaggedCall[] =>
  calls
    .filter((c) => LIMITED_PATHS.has(c.path))
    .map((c) => {
      const tag = parseBenchUserAgent(c.headers['user-agent']);
      return {
        at: clock.at(c.at),
        accepted: c.kind === 'ok' || c.kind === 'fault',
        kind: c.kind,
        ...(tag ? { id: tag.id, priority: tag.priority } : {}),
      };
    })
    .sort((a, b) => a.at - b.at);

/** Most times (ascending) in any window (t − windowMs, t]. */
export const maxInWindow = (times: readonly number[], windowMs: number): number => {
  let best = 0;
  for (let lo = 0, hi = 0; hi < times.length; hi++) {
    while ((times[lo] as number) <= (times[hi] as number) - windowMs) lo++;
    best = Math.max(best, hi - lo + 1);
  }
  return best;
};

/** Calls per bin of `binMs` from 0 to `durationMs`: accepted and refused (429) apart. */
export const callsPerBin = (calls: readonly TaggedCall[], binMs: number, durationMs: number) => {
  const n = Math.ceil(durationMs / binMs);
  const accepted = new Array(n).fill(0) as number[];
  const refused = new Array(n).fill(0) as number[];
  for (const c of calls) {
    const i = Math.floor(c.at / binMs);
    if (i < 0 || i >= n) continue;
    if (c.accepted) accepted[i] = (accepted[i] ?? 0) + 1;
    else if (c.kind === 'rate_limited' || c.kind === 'capacity') refused[i] = (refused[i] ?? 0) + 1;
  }
  return { binMs, accepted, refused };
};

const RANK: Record<Priority, number> = { urgent: 0, high: 1, normal: 2, low: 3 };

/**
 * Priority inversions: accepted upstream calls of some priority made while a request of a strictly higher
 * priority had been waiting (issued, not yet accepted upstream, not given up) for longer than `boundMs`.
 */
export const priorityInversions = (
  calls: readonly TaggedCall[],
  records: readonly RequestRecord[],
  boundMs: number,
): { count: number; byPriority: Record<Priority, number> } => {
  const admitted = new Map<string, number>();
  for (const c of calls) if (c.accepted && c.id && !admitted.has(c.id)) admitted.set(c.id, c.at);
  const waiting = records.map((r) => ({
    rank: RANK[r.priority],
    start: r.start,
    // Waiting ends when the upstream accepted it or the agent stopped waiting (answer, failure, end of run).
    until: Math.min(
      admitted.get(r.id) ?? Number.POSITIVE_INFINITY,
      r.cut ? Number.POSITIVE_INFINITY : (r.end ?? Number.POSITIVE_INFINITY),
    ),
  }));
  const byPriority = Object.fromEntries(PRIORITIES.map((p) => [p, 0])) as Record<Priority, number>;
  let count = 0;
  for (const c of calls) {
    if (!c.accepted || !c.priority) continue;
    const rank = RANK[c.priority];
    if (rank === 0) continue;
    if (waiting.some((w) => w.rank < rank && w.start < c.at - boundMs && w.until > c.at)) {
      count++;
      byPriority[c.priority]++;
    }
  }
  return { count, byPriority };
};

export interface LatencyStats {
  n: number;
  p50: number | null;
  p95: number | null;
  p99: number | null;
}

const latency = (values: readonly number[]): LatencyStats =>
  values.length === 0
    ? { n: 0, p50: null, p95: null, p99: null }
    : {
        n: values.length,
        p50: round(percentile(values, 0.5) / 1000, 2),
        p95: round(percentile(values, 0.95) / 1000, 2),
        p99: round(percentile(values, 0.99) / 1000, 2),
      };

/** Refusal codes of a gateway (sluice) or an upstream that end an attempt without an answer. */
const REFUSED_IN_STREAM =
  /queue_wait_exceeded|low_priority_timeout|queue_full|agent_quota|agent_queue_full|rate_limit/;

/** One refusal an agent's client saw: an attempt answered 429 / 503, or a stream whose events carried one. */
export interface Refusal {
  priority: Priority;
  /** From the attempt's send to the refusal (modelled ms). */
  ms: number;
  code: string;
  /** When the refused attempt was sent (modelled ms since the run started). */
  at: number;
}

export const refusalsOf = (records: readonly RequestRecord[]): Refusal[] =>
  records.flatMap((r) => {
    const attempts = r.attempts ?? [];
    // Refusals: every 429, and the 503 of a full queue (a store or gateway failure is an error, not a refusal).
    const out: Refusal[] = attempts
      .filter((a) => a.status === 429 || (a.status === 503 && a.code === 'queue_full'))
      .map((a) => ({
        priority: r.priority,
        ms: a.end - a.start,
        code: a.code ?? String(a.status),
        at: a.start,
      }));
    // A stream refused after its heartbeats: its 200 came at once, the refusal at the request's end.
    const last = attempts.at(-1);
    if (
      !r.ok &&
      !r.cut &&
      last?.status === 200 &&
      r.end !== undefined &&
      REFUSED_IN_STREAM.test(r.error ?? '')
    )
      out.push({
        priority: r.priority,
        ms: r.end - last.start,
        code: `${r.error} (in stream)`,
        at: last.start,
      });
    return out;
  });

export interface RefusalStats {
  n: number;
  /** p99 time to refusal, seconds (null without refusals). */
  p99: number | null;
  /** Refusals that came after a wait of more than 10 s, % of refusals. */
  over10sPct: number | null;
}

const refusalStats = (list: readonly Refusal[]): RefusalStats =>
  list.length === 0
    ? { n: 0, p99: null, over10sPct: null }
    : {
        n: list.length,
        p99: round(
          percentile(
            list.map((r) => r.ms),
            0.99,
          ) / 1000,
          2,
        ),
        over10sPct: round((100 * list.filter((r) => r.ms > 10_000).length) / list.length, 1),
      };

/** Time to refusal of the attempts sent from `fromMs` on (steady state), all priorities. */
export const steadyRefusalStats = (refusals: readonly Refusal[], fromMs: number): RefusalStats =>
  refusalStats(refusals.filter((r) => r.at >= fromMs));

/**
 * Share of the steady state (from `fromMs` to `toMs`) during which at least one request of the priority was
 * waiting for its grant: from the attempt's send for sluice's `x-sluice-queue-ms` (enqueue → grant) when the
 * answer carried it, else (other setups, streams answered with heartbeats) until the upstream accepted it or it
 * ended. A priority waiting all the time is backlogged; one that is not (a few closed-loop agents, each with one
 * request at a time) takes less than its weighted share by choice.
 */
export const backloggedShare = (
  records: readonly RequestRecord[],
  calls: readonly TaggedCall[],
  fromMs: number,
  toMs: number,
): Record<Priority, number> => {
  const accepted = new Map<string, number>();
  for (const c of calls) if (c.accepted && c.id && !accepted.has(c.id)) accepted.set(c.id, c.at);
  return Object.fromEntries(
    PRIORITIES.map((p) => {
      const spans = records
        .filter((r) => r.priority === p)
        .map((r) => {
          const granted = r.attempts?.find((a) => a.queueMs !== undefined);
          const until = granted
            ? granted.start + (granted.queueMs as number)
            : Math.min(accepted.get(r.id) ?? Number.POSITIVE_INFINITY, r.end ?? Number.POSITIVE_INFINITY);
          return [Math.max(fromMs, r.start), Math.min(toMs, until)];
        })
        .filter(([a, b]) => (b as number) > (a as number))
        .sort((x, y) => (x[0] as number) - (y[0] as number));
      let covered = 0;
      let reach = fromMs;
      for (const [a, b] of spans as [number, number][]) {
        if (b <= reach) continue;
        covered += b - Math.max(a, reach);
        reach = b;
      }
      return [p, toMs > fromMs ? round((100 * covered) / (toMs - fromMs), 1) : 0];
    }),
  ) as Record<Priority, number>;
};

export interface ShareCheck {
  priority: Priority;
  weight: number;
  backloggedPct: number;
  /** In the share computation: backlogged, or at least taking its weighted share. */
  backlogged: boolean;
  expectedRpm: number;
  measuredRpm: number;
  /** measured / expected − 1, % (null when not backlogged: it takes what it asks for). */
  deviationPct: number | null;
  withinTolerance: boolean | null;
}

/**
 * Work-conserving weighted shares: the goodput is split by weight among the backlogged priorities; a priority
 * that is not backlogged (waiting < `backlogPct` of the time) and takes less than its share is served what it
 * asked for, and the rest flows to the others (water-filling until no share is left over).
 */
export const weightedShareCheck = (opts: {
  weights: Record<Priority, number>;
  measuredRpm: Record<Priority, number>;
  backloggedPct: Record<Priority, number>;
  totalRpm: number;
  /** @default 95 */
  backlogPct?: number;
  /** @default 15 */
  tolerancePct?: number;
}): ShareCheck[] => {
  const { weights, measuredRpm, backloggedPct, totalRpm } = opts;
  const backlogPct = opts.backlogPct ?? 95;
  const tolerance = opts.tolerancePct ?? 15;
  const active = new Set(PRIORITIES.filter((p) => measuredRpm[p] > 0 || backloggedPct[p] > 0));
  const demandLimited = new Set<Priority>();
  for (;;) {
    const sharing = [...active].filter((p) => !demandLimited.has(p));
    const pool = totalRpm - [...demandLimited].reduce((a, p) => a + measuredRpm[p], 0);
    const weightSum = sharing.reduce((a, p) => a + weights[p], 0);
    const next = sharing.find(
      (p) => backloggedPct[p] < backlogPct && measuredRpm[p] < (pool * weights[p]) / weightSum,
    );
    if (!next) {
      return PRIORITIES.filter((p) => active.has(p)).map((p) => {
        const backlogged = !demandLimited.has(p);
        const expectedRpm = backlogged ? round((pool * weights[p]) / weightSum, 1) : measuredRpm[p];
        const deviation = backlogged && expectedRpm > 0 ? (100 * measuredRpm[p]) / expectedRpm - 100 : null;
        return {
          priority: p,
          weight: weights[p],
          backloggedPct: backloggedPct[p],
          backlogged,
          expectedRpm,
          measuredRpm: measuredRpm[p],
          deviationPct: deviation === null ? null : round(deviation, 1),
          withinTolerance: deviation === null ? null : Math.abs(deviation) <= tolerance,
        };
      });
    }
    demandLimited.add(next);
  }
};

export interface RunMetrics {
  /** Completed requests per modelled minute in steady state (after the first window). */
  goodputRpm: number;
  goodputPctOfLimit: number;
  completed: number;
  /** Requests that failed at the agent (after the client's retries), whole run. */
  failed: number;
  /** Requests still waiting or running when the run ended (nobody answered them within the run). */
  unserved: number;
  unservedByPriority: Record<Priority, number>;
  /** Completed requests per modelled minute in steady state, per priority. */
  completedRpmByPriority: Record<Priority, number>;
  /** Agents that issued requests but completed none in the whole run, per priority. */
  starvedAgentsByPriority: Record<Priority, number>;
  failedByPriority: Record<Priority, number>;
  failureKinds: Record<string, number>;
  upstreamCalls: number;
  /** HTTP 429s from the upstream: rate limit and worker capacity. */
  upstream429: number;
  upstream429Pct: number;
  rateLimited: number;
  capacity: number;
  /** Steady state only (after the first window). */
  steady429Pct: number;
  maxCallsIn60s: number;
  maxAcceptedIn60s: number;
  inversions: number;
  inversionsByPriority: Record<Priority, number>;
  /** End-to-end latency of completed requests in steady state, seconds (modelled). */
  latency: Record<Priority, LatencyStats>;
  /** Time to refusal per priority and overall (whole run, every refused attempt). */
  refusals?: Record<Priority | 'all', RefusalStats>;
  /** Refusals per error code. */
  refusalCodes?: Record<string, number>;
  /**
   * Time to refusal of the attempts sent in steady state (after the first window, as goodput and latency): the
   * whole run's figure includes a fresh deployment's first seconds, before any load of more important work is known.
   */
  refusalsSteady?: RefusalStats;
  /** % of the steady state with at least one request of the priority waiting (see backloggedShare). */
  backloggedPct?: Record<Priority, number>;
}

const perPriorityOf = <T>(f: (p: Priority) => T) =>
  Object.fromEntries(PRIORITIES.map((p) => [p, f(p)])) as Record<Priority, T>;

export const runMetrics = (opts: {
  records: readonly RequestRecord[];
  calls: readonly TaggedCall[];
  durationMs: number;
  windowMs: number;
  limitRpm: number;
  inversionBoundMs: number;
}): RunMetrics => {
  const { records, calls, durationMs, windowMs } = opts;
  const steady = (t: number | undefined) => t !== undefined && t >= windowMs && t <= durationMs;
  const done = records.filter((r) => r.ok && steady(r.end));
  const goodputRpm = (done.length * 60_000) / (durationMs - windowMs);
  const failedRecs = records.filter((r) => !r.ok && !r.cut);
  const unservedRecs = records.filter((r) => !r.ok && r.cut);
  const perPriority = (f: (p: Priority) => number) =>
    Object.fromEntries(PRIORITIES.map((p) => [p, f(p)])) as Record<Priority, number>;
  const agentsOf = (p: Priority, recs: readonly RequestRecord[]) =>
    new Set(recs.filter((r) => r.priority === p).map((r) => r.agent));
  const failedByPriority = Object.fromEntries(
    PRIORITIES.map((p) => [p, failedRecs.filter((r) => r.priority === p).length]),
  ) as Record<Priority, number>;
  const failureKinds: Record<string, number> = {};
  for (const r of failedRecs) failureKinds[r.error ?? 'error'] = (failureKinds[r.error ?? 'error'] ?? 0) + 1;
  const refused = (c: TaggedCall) => c.kind === 'rate_limited' || c.kind === 'capacity';
  const within = calls.filter((c) => c.at >= 0 && c.at <= durationMs);
  const steadyCalls = within.filter((c) => c.at >= windowMs);
  const n429 = within.filter(refused).length;
  const inv = priorityInversions(within, records, opts.inversionBoundMs);
  const refusals = refusalsOf(records);
  const refusalCodes: Record<string, number> = {};
  for (const r of refusals) refusalCodes[r.code] = (refusalCodes[r.code] ?? 0) + 1;
  return {
    refusals: {
      ...perPriorityOf((p) => refusalStats(refusals.filter((r) => r.priority === p))),
      all: refusalStats(refusals),
    },
    refusalCodes,
    refusalsSteady: steadyRefusalStats(refusals, windowMs),
    backloggedPct: backloggedShare(records, within, windowMs, durationMs),
    goodputRpm: round(goodputRpm, 1),
    goodputPctOfLimit: round((100 * goodputRpm) / opts.limitRpm, 1),
    completed: records.filter((r) => r.ok).length,
    failed: failedRecs.length,
    failedByPriority,
    unserved: unservedRecs.length,
    unservedByPriority: perPriority((p) => unservedRecs.filter((r) => r.priority === p).length),
    completedRpmByPriority: perPriority((p) =>
      round((done.filter((r) => r.priority === p).length * 60_000) / (durationMs - windowMs), 1),
    ),
    starvedAgentsByPriority: perPriority((p) => {
      const served = agentsOf(
        p,
        records.filter((r) => r.ok),
      );
      return [...agentsOf(p, records)].filter((a) => !served.has(a)).length;
    }),
    failureKinds,
    upstreamCalls: within.length,
    upstream429: n429,
    upstream429Pct: within.length ? round((100 * n429) / within.length, 1) : 0,
    rateLimited: within.filter((c) => c.kind === 'rate_limited').length,
    capacity: within.filter((c) => c.kind === 'capacity').length,
    steady429Pct: steadyCalls.length
      ? round((100 * steadyCalls.filter(refused).length) / steadyCalls.length, 1)
      : 0,
    maxCallsIn60s: maxInWindow(
      within.map((c) => c.at),
      windowMs,
    ),
    maxAcceptedIn60s: maxInWindow(
      within.filter((c) => c.accepted).map((c) => c.at),
      windowMs,
    ),
    inversions: inv.count,
    inversionsByPriority: inv.byPriority,
    latency: Object.fromEntries(
      PRIORITIES.map((p) => [
        p,
        latency(done.filter((r) => r.priority === p).map((r) => (r.end as number) - r.start)),
      ]),
    ) as Record<Priority, LatencyStats>,
  };
};
