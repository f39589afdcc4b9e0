// Throughput bench, second phase: the dispatcher alone. Tickets are written queued straight into the stores (as
// admission would, without the HTTP request, its reads or its wait), then one dispatcher run grants them as fast
// as the bucket allows. What the full path's rate on this machine is not: the ceiling of the single consumer.
import { messageFor, type Ticket } from '../lib/domain/tickets.js';
import type { RunningEmulators } from '../local/emulators.js';
import { startLocalSystem } from '../local/runtime.js';
import type { CountingProxy } from './support/counting-proxy.js';
import { type CpuUse, startCpuMeter } from './support/process-cpu.js';
import { round } from './support/stats.js';

export interface DispatcherAloneResult {
  /** Tickets queued before the dispatcher started (all of them granted by the end). */
  tickets: number;
  granted: number;
  /** Grants per second of their slots, from the first slot to the last (the bucket's own pace caps it). */
  grantsPerSecond: number;
  /** Grant slots in each second from the first slot (the last second partial). */
  bySecond: number[];
  /** The bucket's own pace once its burst is spent: one token per interval (`intervalMs`, derived from the limit). */
  bucketPerSecond: number;
  intervalMs: number;
  /** Most slots in any limit window, against the limit. */
  maxInWindow: number;
  limitPerWindow: number;
  windowS: number;
  /** Wall time from the dispatcher's start until every ticket was granted. */
  drainMs: number;
  /** DynamoDB and SQS calls the dispatcher made per grant (its transactions, receives, deletes, lease). */
  dynamoPerGrant: number;
  sqsPerGrant: number;
  dynamoByAction: Record<string, number>;
  cpu?: CpuUse;
}

/** The system both phases run: quiet, burst 20, no in-flight cap, the given limit, queue size and wait. */
export const throughputEnv = (o: {
  limit: number;
  windowMs: number;
  queueMax: number;
  maxWaitS: number;
}) => ({
  POWERTOOLS_METRICS_DISABLED: 'true',
  LOG_LEVEL: 'ERROR',
  POWERTOOLS_LOG_LEVEL: 'ERROR',
  SLUICE_UPSTREAM_LIMIT: String(o.limit),
  SLUICE_UPSTREAM_WINDOW_S: String(o.windowMs / 1000),
  SLUICE_BUCKET_BURST: '20',
  SLUICE_QUEUE_MAX: String(o.queueMax),
  SLUICE_MAX_INFLIGHT: '0',
  SLUICE_MAX_WAIT_S: String(o.maxWaitS),
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Queues `count` tickets (no claim will come: the claim window and the sweep are pushed past the run), starts the
 * dispatcher, and waits until all are granted.
 */
export const measureDispatcherAlone = async (opts: {
  emulators: RunningEmulators;
  proxies: { dynamo: CountingProxy; sqs: CountingProxy };
  upstreamUrl: string;
  limit: number;
  windowMs: number;
  count: number;
  log: (line: string) => void;
}): Promise<DispatcherAloneResult> => {
  const { limit, windowMs, count } = opts;
  const system = await startLocalSystem({
    port: 0,
    prefix: `bench-disp-${limit}`,
    emulators: { dynamoEndpoint: opts.proxies.dynamo.endpoint, sqsEndpoint: opts.proxies.sqs.endpoint },
    upstreamUrl: opts.upstreamUrl,
    upstreamApiKey: 'bench-key',
    scheduleMs: 0,
    // Nobody claims here: grants must stay granted (not swept back to the queue) until all are made.
    dispatcherTimings: { claimWindowMs: 600_000, sweepEveryMs: 600_000, reconcileEveryMs: 600_000 },
    env: throughputEnv({ limit, windowMs, queueMax: count * 2, maxWaitS: 120 }),
  });
  try {
    const { tickets, queue } = system.stores;
    const now = Date.now();
    const queued: Ticket[] = Array.from({ length: count }, (_, i) => ({
      id: `disp-${i}-${now}`,
      agent: `agent-${i % 20}`,
      priority: 'normal',
      model: 'meta/llama-3.1-8b-instruct',
      stream: false,
      status: 'queued',
      attempt: 0,
      enqueuedAt: now + i,
      deadline: now + 115_000,
    }));
    opts.log(`throughput (dispatcher alone): queueing ${count} tickets`);
    for (let i = 0; i < queued.length; i += 20) {
      await Promise.all(
        queued.slice(i, i + 20).map(async (t) => {
          await tickets.create(t, { queueMaxSize: count * 2 });
          await queue.send(messageFor(t));
        }),
      );
    }
    opts.proxies.dynamo.reset();
    opts.proxies.sqs.reset();
    opts.log('throughput (dispatcher alone): dispatcher started');
    const meter = startCpuMeter({ dynamoDbLocal: opts.emulators.dynamoPid });
    const started = Date.now();
    system.lambda.invokeAsync(system.env.SLUICE_DISPATCHER_FUNCTION!, { source: 'bench' });
    // Done when nothing is left queued (the admission counter counts queued tickets only).
    const deadline = started + 120_000;
    while ((await tickets.admissionCount()) > 0 && Date.now() < deadline) await sleep(250);
    const drainMs = Date.now() - started;
    const cpu = meter.stop();
    const dynamoCalls = opts.proxies.dynamo.total();
    const sqsCalls = opts.proxies.sqs.total();
    const byAction = Object.fromEntries(opts.proxies.dynamo.counts.entries());
    const slots: number[] = [];
    for (const t of queued) {
      const stored = await tickets.get(t.id);
      if (stored?.status === 'granted' && stored.grantedAt !== undefined) slots.push(stored.grantedAt);
    }
    slots.sort((a, b) => a - b);
    let maxInWindow = 0;
    for (let i = 0, j = 0; i < slots.length; i++) {
      while (slots[i]! - slots[j]! >= windowMs) j++;
      maxInWindow = Math.max(maxInWindow, i - j + 1);
    }
    const spanS = slots.length > 1 ? (slots[slots.length - 1]! - slots[0]!) / 1000 : 0;
    const granted = slots.length;
    const intervalMs = (await system.stores.bucket.refresh())?.intervalMs ?? Number.NaN;
    const bySecond: number[] = [];
    for (const slot of slots) {
      const i = Math.floor((slot - slots[0]!) / 1000);
      bySecond[i] = (bySecond[i] ?? 0) + 1;
    }
    return {
      bySecond: Array.from(bySecond, (n) => n ?? 0),
      tickets: count,
      granted,
      grantsPerSecond: spanS > 0 ? round((granted - 1) / spanS, 1) : 0,
      bucketPerSecond: round(1000 / intervalMs, 1),
      intervalMs,
      maxInWindow,
      limitPerWindow: limit,
      windowS: windowMs / 1000,
      drainMs,
      dynamoPerGrant: round(dynamoCalls / Math.max(1, granted), 2),
      sqsPerGrant: round(sqsCalls / Math.max(1, granted), 2),
      dynamoByAction: Object.fromEntries(
        Object.entries(byAction).map(([k, v]) => [k, round(v / Math.max(1, granted), 3)]),
      ),
      cpu,
    };
  } finally {
    await system.stop();
  }
};
