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
}

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
  return {
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
