// Bench: the admission core on DynamoDB Local — grants/s, conditional-write conflicts per grant, window conformance.
import { randomUUID } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { loadavg } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { SQSClient } from '@aws-sdk/client-sqs';
import { DynamoBucketStore } from '../lib/adapters/dynamo/bucket-store.js';
import { TokenBucket } from '../lib/domain/bucket.js';
import { systemClock } from '../lib/domain/clock.js';
import { type BucketParams, type ConsumeAttempt, deriveBucket, windowAllowance } from '../lib/domain/gcra.js';
import type { BucketStore, ConsumeOutcome } from '../lib/domain/ports.js';
import type { Priority } from '../lib/domain/priority.js';
import { localAwsConfig, provisionResources, startEmulators } from '../local/emulators.js';
import { machine, round } from './support/stats.js';

/** Every grant a run handed out, and what the conditional writes cost. */
export interface ConsumerRun {
  /** `now` of each granted write's condition (ms, ascending): the time the bucket's guarantee is about. */
  grantTimes: number[];
  /** When each granting write's answer arrived at its consumer (ms, ascending): what an upstream would see. */
  answerTimes: number[];
  /** Conditional writes tried, and lost. */
  writes: number;
  conflicts: number;
  startedAt: number;
  durationMs: number;
  /** Each time this process could not run for over 20 ms (event-loop delay): a loaded machine, not the bucket. */
  stallsMs: number[];
}

export interface ConsumerRunOptions {
  /** One client per consumer, as separate function instances would have. */
  makeClient: () => DynamoDBClient;
  table: string;
  /** A fresh key per run: the bucket item starts full. */
  bucketKey: string;
  params: BucketParams;
  consumers: number;
  durationMs: number;
  /** @default 'urgent' (the whole burst) */
  priority?: Priority;
  /** Up to this much random extra sleep after a refusal, so waiting consumers do not wake in lockstep. @default 3 */
  jitterMs?: number;
}

/** Records the condition time of every successful consume (the grant's logical time). */
class RecordingStore implements BucketStore {
  constructor(
    private readonly inner: BucketStore,
    private readonly grantTimes: number[],
    private readonly answerTimes: number[],
  ) {}
  get = () => this.inner.get();
  ensure = (params: BucketParams) => this.inner.ensure(params);
  compareAndSet = (...args: Parameters<BucketStore['compareAndSet']>) => this.inner.compareAndSet(...args);
  writeTokens = (...args: Parameters<BucketStore['writeTokens']>) => this.inner.writeTokens(...args);
  async consume(attempt: ConsumeAttempt): Promise<ConsumeOutcome> {
    const out = await this.inner.consume(attempt);
    if (out.ok) {
      this.grantTimes.push(attempt.now);
      this.answerTimes.push(Date.now());
    }
    return out;
  }
}

/**
 * Runs `consumers` independent TokenBuckets (each with its own client and the real clock) against one bucket item
 * for `durationMs`: each takes a token whenever it can and otherwise sleeps the wait the bucket reported.
 */
export const runConsumers = async (opts: ConsumerRunOptions): Promise<ConsumerRun> => {
  const { params, consumers, durationMs, priority = 'urgent', jitterMs = 3 } = opts;
  const reserve = { fraction: 0.5, forNormal: false };
  const setup = opts.makeClient();
  try {
    await new TokenBucket(
      new DynamoBucketStore(setup, opts.table, opts.bucketKey),
      systemClock,
      reserve,
    ).configure(params);
  } finally {
    setup.destroy();
  }
  const grantTimes: number[] = [];
  const answerTimes: number[] = [];
  const buckets: TokenBucket[] = [];
  const clients: DynamoDBClient[] = [];
  for (let i = 0; i < consumers; i++) {
    const client = opts.makeClient();
    clients.push(client);
    const store = new RecordingStore(
      new DynamoBucketStore(client, opts.table, opts.bucketKey),
      grantTimes,
      answerTimes,
    );
    buckets.push(new TokenBucket(store, systemClock, reserve));
  }
  // Warm up every client (connection, signing) and learn the state before the clock starts.
  await Promise.all(buckets.map((b) => b.refresh()));
  const startedAt = Date.now();
  const endAt = startedAt + durationMs;
  const stalls = stallMonitor();
  const consume = async (bucket: TokenBucket) => {
    while (Date.now() < endAt) {
      const res = await bucket.tryConsume(priority);
      if (!res.granted) {
        await systemClock.sleep(
          Math.min(res.waitMs + Math.random() * jitterMs, Math.max(0, endAt - Date.now())),
        );
      }
    }
  };
  try {
    await Promise.all(buckets.map(consume));
  } finally {
    stalls.stop();
    for (const c of clients) c.destroy();
  }
  const sum = (k: 'writes' | 'conflicts') => buckets.reduce((a, b) => a + b.stats[k], 0);
  return {
    grantTimes: grantTimes.sort((a, b) => a - b),
    answerTimes: answerTimes.sort((a, b) => a - b),
    writes: sum('writes'),
    conflicts: sum('conflicts'),
    startedAt,
    durationMs: Date.now() - startedAt,
    stallsMs: stalls.stalls(),
  };
};

/** Watches a 10 ms timer: each time it fires late, the event loop (this process) could not run for that long. */
const stallMonitor = () => {
  const tick = 10;
  let last = performance.now();
  const stalls: number[] = [];
  const timer = setInterval(() => {
    const now = performance.now();
    const late = now - last - tick;
    if (late > 20) stalls.push(Math.round(late));
    last = now;
  }, tick);
  return { stop: () => clearInterval(timer), stalls: () => stalls };
};

/** Most times (ascending) in any half-open window (t − windowMs, t]. */
export const maxInWindow = (times: readonly number[], windowMs: number): number => {
  let best = 0;
  let i = 0;
  for (let j = 0; j < times.length; j++) {
    while ((times[i] ?? 0) <= (times[j] ?? 0) - windowMs) i++;
    best = Math.max(best, j - i + 1);
  }
  return best;
};

export interface CoreBenchOptions {
  /** Progress lines. @default console.log */
  log?: (line: string) => void;
  /** Where core.json and core.md go. @default bench/results */
  outDir?: string;
  /** Multiplies every run's duration (e.g. 0.2 for a smoke run; results then say so). @default 1 */
  timeScale?: number;
}

export interface CoreBenchResult {
  name: 'core';
  machine: ReturnType<typeof machine>;
  /** 1-minute load average at the start and the end: other work on the machine skews grants/s. */
  loadAverage: { start: number; end: number };
  throughput: {
    consumers: 1;
    params: BucketParams;
    seconds: number;
    grants: number;
    grantsPerSecond: number;
  };
  conflicts: {
    params: BucketParams;
    seconds: number;
    rows: {
      consumers: number;
      grants: number;
      grantsPerSecond: number;
      writes: number;
      conflictsPerGrant: number;
    }[];
  };
  conformance: {
    scale: string;
    limit: number;
    windowMs: number;
    params: BucketParams;
    consumers: number;
    seconds: number;
    grants: number;
    /** Grants in the busiest window by condition time: must be ≤ limit. */
    maxInWindow: number;
    /** The same by answer arrival (network jitter included; informational). */
    maxInWindowByAnswer: number;
    allowance: number;
    conflictsPerGrant: number;
  };
  markdown: string;
}

const RESULTS_DIR = join(dirname(fileURLToPath(import.meta.url)), 'results');

/**
 * Starts its own emulators, measures the bucket on DynamoDB Local, writes `core.json` and `core.md`, stops them.
 * @example const result = await runCoreBench({ log: console.log });
 */
export async function runCoreBench(opts: CoreBenchOptions = {}): Promise<CoreBenchResult> {
  const log = opts.log ?? console.log;
  const scale = opts.timeScale ?? 1;
  const ms = (base: number) => Math.max(1_000, Math.round(base * scale));
  const loadStart = round(loadavg()[0] ?? 0, 2);
  log('core: starting DynamoDB Local and fauxqs');
  const emulators = await startEmulators();
  try {
    const makeClient = () =>
      new DynamoDBClient({ ...localAwsConfig(emulators.dynamoEndpoint), maxAttempts: 3 });
    const dynamo = makeClient();
    const sqs = new SQSClient(localAwsConfig(emulators.sqsEndpoint));
    const names = await provisionResources({ dynamo, sqs }, `bench-core-${randomUUID().slice(0, 8)}`);
    dynamo.destroy();
    sqs.destroy();
    const run = (params: BucketParams, consumers: number, durationMs: number) =>
      runConsumers({
        makeClient,
        table: names.stateTable,
        bucketKey: `bench-${randomUUID()}`,
        params,
        consumers,
        durationMs,
      });

    // 1. How fast one consumer can spend tokens when the rate is no limit.
    const fast = { intervalMs: 1, burst: 100 };
    log(`core: throughput, 1 consumer, interval ${fast.intervalMs} ms, ${ms(5_000) / 1000} s`);
    const t = await run(fast, 1, ms(5_000));
    const throughput = {
      consumers: 1 as const,
      params: fast,
      seconds: round(t.durationMs / 1000),
      grants: t.grantTimes.length,
      grantsPerSecond: round(t.grantTimes.length / (t.durationMs / 1000)),
    };
    log(`core:   ${throughput.grantsPerSecond} grants/s`);

    // 2. What contention costs: conditional writes lost per grant at 20 grants/s.
    const paced = { intervalMs: 50, burst: 2 };
    const rows: CoreBenchResult['conflicts']['rows'] = [];
    for (const consumers of [1, 5, 20]) {
      log(`core: conflicts, ${consumers} consumer(s), 20 grants/s, ${ms(8_000) / 1000} s`);
      const r = await run(paced, consumers, ms(8_000));
      const grants = r.grantTimes.length;
      rows.push({
        consumers,
        grants,
        grantsPerSecond: round(grants / (r.durationMs / 1000)),
        writes: r.writes,
        conflictsPerGrant: round(r.conflicts / Math.max(1, grants), 2),
      });
      log(`core:   ${grants} grants, ${r.writes} writes, ${rows.at(-1)?.conflictsPerGrant} conflicts/grant`);
    }

    // 3. Window conformance, time-compressed ×10: 40 per 6 s stands in for the default 40 per 60 s.
    const limit = 40;
    const windowMs = 6_000;
    const params = deriveBucket(limit, windowMs, 2);
    log(
      `core: conformance, 20 consumers, limit ${limit}/${windowMs / 1000} s (bucket ${JSON.stringify(params)}), ${ms(20_000) / 1000} s`,
    );
    const c = await run(params, 20, ms(20_000));
    const conformance = {
      scale: `×10 time compression: ${limit} per ${windowMs / 1000} s stands in for ${limit} per ${(windowMs * 10) / 1000} s`,
      limit,
      windowMs,
      params,
      consumers: 20,
      seconds: round(c.durationMs / 1000),
      grants: c.grantTimes.length,
      maxInWindow: maxInWindow(c.grantTimes, windowMs),
      maxInWindowByAnswer: maxInWindow(c.answerTimes, windowMs),
      allowance: windowAllowance(params, windowMs),
      conflictsPerGrant: round(c.conflicts / Math.max(1, c.grantTimes.length), 2),
    };
    log(`core:   max ${conformance.maxInWindow} grants in any ${windowMs / 1000} s window (limit ${limit})`);

    const result: Omit<CoreBenchResult, 'markdown'> = {
      name: 'core',
      machine: machine(),
      loadAverage: { start: loadStart, end: round(loadavg()[0] ?? 0, 2) },
      throughput,
      conflicts: { params: paced, seconds: ms(8_000) / 1000, rows },
      conformance,
    };
    const markdown = toMarkdown(result, scale);
    const outDir = opts.outDir ?? RESULTS_DIR;
    await mkdir(outDir, { recursive: true });
    await writeFile(
      join(outDir, 'core.json'),
      `${JSON.stringify({ ...result, timeScale: scale }, null, 2)}\n`,
    );
    await writeFile(join(outDir, 'core.md'), markdown);
    return { ...result, markdown };
  } finally {
    log('core: stopping emulators');
    await emulators.stop();
  }
}

const toMarkdown = (r: Omit<CoreBenchResult, 'markdown'>, scale: number): string => {
  const m = r.machine;
  const lines = [
    '# Bench: admission core (GCRA bucket on DynamoDB Local)',
    '',
    `Machine: ${m.cpu}, ${m.cores} cores, Node ${m.node}, ${m.date}${scale === 1 ? '' : ` — durations ×${scale}`}; ` +
      `load average ${r.loadAverage.start} → ${r.loadAverage.end} (other work on the machine lowers grants/s).`,
    'Each consumer has its own SDK client and TokenBucket; refused consumers sleep the reported wait (+0–3 ms).',
    '',
    '| measurement | consumers | bucket | duration | grants | grants/s | writes | conflicts/grant | result |',
    '| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |',
    `| throughput | 1 | ${params(r.throughput.params)} | ${r.throughput.seconds} s | ${r.throughput.grants} | ${r.throughput.grantsPerSecond} | — | — | one consumer's ceiling |`,
    ...r.conflicts.rows.map(
      (row) =>
        `| contention | ${row.consumers} | ${params(r.conflicts.params)} | ${r.conflicts.seconds} s | ${row.grants} | ${row.grantsPerSecond} | ${row.writes} | ${row.conflictsPerGrant} | |`,
    ),
    `| conformance | ${r.conformance.consumers} | ${params(r.conformance.params)} | ${r.conformance.seconds} s | ${r.conformance.grants} | ${round(r.conformance.grants / r.conformance.seconds)} | — | ${r.conformance.conflictsPerGrant} | max ${r.conformance.maxInWindow} in any ${r.conformance.windowMs / 1000} s window ≤ limit ${r.conformance.limit} ${r.conformance.maxInWindow <= r.conformance.limit ? '✅' : '❌'} (by answer arrival: ${r.conformance.maxInWindowByAnswer}) |`,
    '',
    `Conformance scale: ${r.conformance.scale}; bucket derived with deriveBucket(${r.conformance.limit}, ${r.conformance.windowMs}, 2), allowance burst + ⌊W/T⌋ = ${r.conformance.allowance}.`,
    '',
  ];
  return lines.join('\n');
};

const params = (p: BucketParams) => `T=${p.intervalMs} ms, burst ${p.burst}`;
