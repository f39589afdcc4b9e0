// Domain: outcome counters per 10-second slot, latency histograms and the window stats retreat reads.
import { PRIORITIES, type Priority } from './priority.js';

export const SLOT_MS = 10_000;
export const slotOf = (t: number): number => Math.floor(t / SLOT_MS) * SLOT_MS;

/**
 * Counted events. Upstream outcomes (ok/throttled/capacity/upstreamError) feed retreat; the rest the dashboard.
 * The response cache's: requests answered from it and those that fetched for it, with the bytes and upstream
 * tokens the hits saved.
 */
export const COUNTERS = [
  'granted',
  'ok',
  'throttled',
  'capacity',
  'upstreamError',
  'refused',
  'abandoned',
  'expired',
  'dropped',
  'requeued',
  'cacheHit',
  'cacheMiss',
  'cacheBytesSaved',
  'cacheTokensSaved',
] as const;
export type CounterName = (typeof COUNTERS)[number];

/** Upper bounds (ms) of the fixed latency buckets; the last bucket is open. */
export const LATENCY_BOUNDS_MS = [
  50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 120_000, 300_000,
] as const;
/** Reported for observations past the last bound (the longest a Lambda can run). */
export const OPEN_BUCKET_MS = 900_000;
export const HISTOGRAMS = ['queueWait', 'upstream'] as const;
export type HistogramName = (typeof HISTOGRAMS)[number];

export const latencyBucket = (ms: number): number => {
  const i = LATENCY_BOUNDS_MS.findIndex((b) => ms <= b);
  return i === -1 ? LATENCY_BOUNDS_MS.length : i;
};

/** One slot's totals as stored. `hist[name][priority][bucket]` counts observations. */
export interface SlotCounters {
  slot: number;
  counts: Record<CounterName, number>;
  hist: Record<HistogramName, Record<Priority, number[]>>;
  /** Sum of the observed latencies (ms) per histogram and priority: waiting time billed, mean latencies. */
  sums: Record<HistogramName, Record<Priority, number>>;
}

/** What one call site records at once (one write). */
export interface OutcomeEvent {
  counts: Partial<Record<CounterName, number>>;
  latencies?: { name: HistogramName; priority: Priority; ms: number }[];
}

export const emptySlot = (slot: number): SlotCounters => ({
  slot,
  counts: Object.fromEntries(COUNTERS.map((c) => [c, 0])) as Record<CounterName, number>,
  hist: Object.fromEntries(
    HISTOGRAMS.map((h) => [
      h,
      Object.fromEntries(PRIORITIES.map((p) => [p, new Array(LATENCY_BOUNDS_MS.length + 1).fill(0)])),
    ]),
  ) as SlotCounters['hist'],
  sums: Object.fromEntries(
    HISTOGRAMS.map((h) => [h, Object.fromEntries(PRIORITIES.map((p) => [p, 0]))]),
  ) as SlotCounters['sums'],
});

/**
 * Sums the slots that share a start (the shards of one slot, written apart to spread a hot item's writes) and
 * returns one per start, in time order.
 */
export const mergeSlots = (slots: readonly SlotCounters[]): SlotCounters[] => {
  const bySlot = new Map<number, SlotCounters>();
  for (const s of slots) {
    const into = bySlot.get(s.slot);
    if (!into) {
      bySlot.set(s.slot, s);
      continue;
    }
    for (const c of COUNTERS) into.counts[c] += s.counts[c];
    for (const h of HISTOGRAMS) {
      for (const p of PRIORITIES) {
        into.hist[h][p] = into.hist[h][p].map((n, i) => n + (s.hist[h][p][i] ?? 0));
        into.sums[h][p] += s.sums[h][p];
      }
    }
  }
  return [...bySlot.values()].sort((a, b) => a.slot - b.slot);
};

/** Upstream answers in a span: what retreat judges. Capacity errors are counted apart from 429s. */
export interface WindowStats {
  total: number;
  throttled: number;
  capacity: number;
}

export const windowStats = (slots: readonly SlotCounters[], from: number, to: number): WindowStats => {
  const stats: WindowStats = { total: 0, throttled: 0, capacity: 0 };
  for (const s of slots) {
    // A slot counts when it lies within [from, to); partial slots at the edges count whole.
    if (s.slot + SLOT_MS <= from || s.slot >= to) continue;
    stats.throttled += s.counts.throttled;
    stats.capacity += s.counts.capacity;
    stats.total += s.counts.ok + s.counts.throttled + s.counts.capacity + s.counts.upstreamError;
  }
  return stats;
};

export const throttleRate = (s: WindowStats, countCapacity = false): number =>
  s.total === 0 ? 0 : (s.throttled + (countCapacity ? s.capacity : 0)) / s.total;

/** Merges histograms over slots and returns p50/p95/p99 (bucket upper bounds, ms) per priority. */
export const percentiles = (
  slots: readonly SlotCounters[],
  name: HistogramName,
  qs: readonly number[] = [0.5, 0.95, 0.99],
): Record<Priority, { count: number; p: Record<string, number | null> }> => {
  const out = {} as Record<Priority, { count: number; p: Record<string, number | null> }>;
  for (const priority of PRIORITIES) {
    const merged = new Array(LATENCY_BOUNDS_MS.length + 1).fill(0) as number[];
    for (const s of slots) {
      s.hist[name][priority].forEach((n, i) => {
        merged[i] = (merged[i] ?? 0) + n;
      });
    }
    const count = merged.reduce((a, b) => a + b, 0);
    const p: Record<string, number | null> = {};
    for (const q of qs) p[`p${Math.round(q * 100)}`] = count === 0 ? null : quantile(merged, count, q);
    out[priority] = { count, p };
  }
  return out;
};

const quantile = (buckets: readonly number[], count: number, q: number): number => {
  const rank = Math.ceil(q * count);
  let seen = 0;
  for (let i = 0; i < buckets.length; i++) {
    seen += buckets[i] ?? 0;
    if (seen >= rank) return LATENCY_BOUNDS_MS[i] ?? OPEN_BUCKET_MS;
  }
  return OPEN_BUCKET_MS;
};
