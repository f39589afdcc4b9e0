// Bench `throughput`: the full path (ingress → queue → dispatcher → upstream) at a 12,000 rpm limit with a fast
// simulated upstream and enough closed-loop agents to saturate it: sustained grants/s, the most calls in any
// window against the limit, grant slot → upstream send, DynamoDB/SQS calls per request, unserved requests.
import { mkdirSync, writeFileSync } from 'node:fs';
import { type AttributeValue, DynamoDBClient, ScanCommand } from '@aws-sdk/client-dynamodb';
import { unmarshall } from '@aws-sdk/util-dynamodb';
import type { Ticket } from '../lib/domain/tickets.js';
import { startEmulators } from '../local/emulators.js';
import { startFakeUpstream } from '../local/fake-upstream.js';
import { startLocalSystem } from '../local/runtime.js';
import type { BenchOptions, BenchResult } from './run.js';
import { startCountingProxy } from './support/counting-proxy.js';
import { type CpuUse, startCpuMeter } from './support/process-cpu.js';
import { machine, round, summary } from './support/stats.js';
import {
  type DispatcherAloneResult,
  measureDispatcherAlone,
  throughputEnv,
} from './throughput-dispatcher.js';

const MODEL = 'meta/llama-3.1-8b-instruct';
/** 12,000 rpm expressed over a 10 s window (2,000 per 10 s): several whole windows fit in one run. */
const LIMIT = 2_000;
const WINDOW_MS = 10_000;

const arg = (name: string, fallback: number): number => {
  const i = process.argv.indexOf(`--${name}`);
  const v = i >= 0 ? Number(process.argv[i + 1]) : Number.NaN;
  return Number.isFinite(v) && v > 0 ? v : fallback;
};

const scanTickets = async (endpoint: string, table: string): Promise<Ticket[]> => {
  const client = new DynamoDBClient({
    endpoint,
    region: 'us-east-1',
    credentials: { accessKeyId: 'local', secretAccessKey: 'local' },
  });
  const out: Ticket[] = [];
  let start: Record<string, AttributeValue> | undefined;
  try {
    do {
      const res = await client.send(new ScanCommand({ TableName: table, ExclusiveStartKey: start }));
      for (const item of res.Items ?? []) out.push(unmarshall(item) as Ticket);
      start = res.LastEvaluatedKey;
    } while (start);
  } finally {
    client.destroy();
  }
  return out;
};

export interface ThroughputResult {
  machine: ReturnType<typeof machine>;
  settings: Record<string, unknown>;
  requests: number;
  completed: number;
  unserved: number;
  refused: Record<string, number>;
  /** `byTenSeconds`: grants/s in each 10 s of the load (DynamoDB Local's JIT warms up over the first ~20 s). */
  grantsPerSecond: { sustained: number; bestSecond: number; byTenSeconds: number[] };
  maxInWindow: number;
  limitPerWindow: number;
  overspend: number;
  /** The bucket's pace once its burst is spent (window-safe with the grant slack: below limit / window). */
  bucket?: { intervalMs: number; perSecond: number };
  slotToSendMs: ReturnType<typeof summary>;
  endToEndMs: ReturnType<typeof summary>;
  /** `bySource`: DynamoDB calls per request by what they touch (`action item…`, see CountingProxy.tags), most first. */
  callsPerRequest: {
    dynamodb: number;
    sqs: number;
    byAction: Record<string, number>;
    bySource: Record<string, number>;
  };
  /** Grants before this many seconds of the load are left out of `sustained`. */
  warmupS: number;
  ticketsByStatus: Record<string, number>;
  /** Tickets granted on the fast path (claimed at admission) and the rest (through the queue). */
  fastPath: number;
  queued: number;
  /**
   * CPU over the measured part (after the warm-up, to the end of the load): cores each process used and their CPU
   * ms per grant in it. `self` is this process: the gateway's functions, fauxqs, the agents, the simulated upstream
   * and the counting proxies. Absent without /proc.
   */
  cpu?: CpuUse & { msPerGrant: Record<string, number> };
  /**
   * Second phase (`--dispatcher-tickets N`, 0 skips it): the dispatcher alone granting N tickets queued before it,
   * at this bench's 12,000 rpm (stated per minute) and at 60,000 rpm (where the dispatcher, not the bucket, is the
   * limit).
   */
  dispatcherAlone?: DispatcherAloneResult[];
}

export const runThroughputBench = async (o: BenchOptions): Promise<BenchResult> => {
  const agents = arg('agents', 240);
  const seconds = arg('seconds', 40);
  // DynamoDB Local starts cold (its JIT): with --seconds 60, --warmup 20 measures the warm emulator.
  const warmupS = arg('warmup', 5);
  const dispatcherTickets = process.argv.includes('--dispatcher-tickets')
    ? arg('dispatcher-tickets', 0)
    : 3_000;
  const emulators = await startEmulators();
  const dynamoProxy = await startCountingProxy(emulators.dynamoEndpoint);
  // Tickets sent to the queue (a fast-path grant never is): what tells the two paths apart.
  const queuedIds = new Set<string>();
  const sqsProxy = await startCountingProxy(emulators.sqsEndpoint, (action, body) => {
    if (!action.startsWith('SendMessage')) return;
    for (const m of body.matchAll(/ticketId\\?"\s*:\s*\\?"([^"\\]+)/g)) if (m[1]) queuedIds.add(m[1]);
  });
  const upstream = await startFakeUpstream({
    apiKey: 'bench-key',
    limit: { requests: LIMIT, windowMs: WINDOW_MS },
    maxConcurrency: null,
    tokenDelayMs: 0,
    firstByteDelayMs: 2,
  });
  const system = await startLocalSystem({
    port: 0,
    prefix: 'bench-tput',
    emulators: { dynamoEndpoint: dynamoProxy.endpoint, sqsEndpoint: sqsProxy.endpoint },
    upstreamUrl: `${upstream.url}/v1`,
    upstreamApiKey: 'bench-key',
    scheduleMs: 0,
    env: throughputEnv({ limit: LIMIT, windowMs: WINDOW_MS, queueMax: agents * 2, maxWaitS: 30 }),
  });
  try {
    o.log(`throughput: ${agents} agents for ${seconds} s at ${LIMIT} per ${WINDOW_MS / 1000} s`);
    const keys = await Promise.all(
      Array.from({ length: Math.min(agents, 20) }, (_, i) => system.createKey(`agent-${i}`, 'normal')),
    );
    dynamoProxy.reset();
    sqsProxy.reset();
    upstream.reset();
    const started = Date.now();
    const stopAt = started + seconds * 1000;
    // What bounds the rate on one machine: the CPU each process spends per grant once the emulator is warm.
    let cpuMeter: ReturnType<typeof startCpuMeter> | undefined;
    const startMeter = () => {
      cpuMeter = startCpuMeter({ dynamoDbLocal: emulators.dynamoPid });
    };
    const meterTimer = setTimeout(startMeter, Math.min(warmupS, seconds) * 1000);
    const latencies: number[] = [];
    const refused: Record<string, number> = {};
    let requests = 0;
    let completed = 0;
    await Promise.all(
      Array.from({ length: agents }, async (_, a) => {
        const key = keys[a % keys.length]!;
        for (let seq = 0; Date.now() < stopAt; seq++) {
          const id = `a${a}-${seq}`;
          requests++;
          const t0 = performance.now();
          try {
            const res = await fetch(`${system.url}/v1/chat/completions`, {
              method: 'POST',
              headers: {
                authorization: `Bearer ${key}`,
                'content-type': 'application/json',
                'user-agent': id,
                'idempotency-key': id,
              },
              body: JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'x' }] }),
            });
            const text = await res.text();
            if (res.status === 200) {
              completed++;
              latencies.push(performance.now() - t0);
            } else {
              const code =
                (JSON.parse(text) as { error?: { code?: string } }).error?.code ?? String(res.status);
              refused[code] = (refused[code] ?? 0) + 1;
              await new Promise((r) => setTimeout(r, 200));
            }
          } catch {
            refused.network = (refused.network ?? 0) + 1;
          }
        }
      }),
    );
    const ended = Date.now();
    clearTimeout(meterTimer);
    const cpuUse = cpuMeter?.stop();
    await system.lambda.idle();
    const tickets = await scanTickets(emulators.dynamoEndpoint, system.env.SLUICE_TICKETS_TABLE!);
    const ticketsByStatus: Record<string, number> = {};
    for (const t of tickets) ticketsByStatus[t.status] = (ticketsByStatus[t.status] ?? 0) + 1;
    const byKey = new Map(tickets.map((t) => [t.idempotencyKey, t]));
    // Granted on the fast path: claimed at admission, never sent to the queue (also when the bucket refused a try
    // or two first: claimedAt − enqueuedAt ≤ 5 ms missed those).
    const isFast = (t: Ticket) => t.claimedAt !== undefined && t.attempt === 0 && !queuedIds.has(t.id);
    const fastPath = tickets.filter(isFast).length;
    const accepted = upstream.calls.filter((c) => c.status === 200);
    const slotToSend: number[] = [];
    for (const c of accepted) {
      const t = byKey.get(String(c.headers['user-agent']));
      // Queued tickets only: a fast-path grant is its own claim, a few ms before its send.
      if (t?.grantedAt !== undefined && !isFast(t)) slotToSend.push(c.at - t.grantedAt);
    }
    // Sustained: accepted calls per second after the warm-up, up to the end of the load.
    const steady = accepted.filter((c) => c.at >= started + warmupS * 1000 && c.at < ended);
    const perSecond = new Map<number, number>();
    for (const c of steady)
      perSecond.set(Math.floor(c.at / 1000), (perSecond.get(Math.floor(c.at / 1000)) ?? 0) + 1);
    const dynamoCalls = dynamoProxy.total();
    const byAction: Record<string, number> = {};
    for (const [k, v] of [...dynamoProxy.counts.entries(), ...sqsProxy.counts.entries()].sort())
      byAction[k] = round(v / Math.max(1, requests), 2);
    const maxInWindow = upstream.maxInWindow(WINDOW_MS);
    const intervalMs = (await system.stores.bucket.refresh())?.intervalMs;
    const result: ThroughputResult = {
      machine: machine(),
      settings: {
        agents,
        seconds,
        limit: `${LIMIT} per ${WINDOW_MS / 1000} s (12,000 rpm)`,
        upstream: { firstByteDelayMs: 2, tokenDelayMs: 0 },
        burst: 20,
      },
      requests,
      completed,
      unserved: requests - completed,
      refused,
      grantsPerSecond: {
        byTenSeconds: Array.from({ length: Math.ceil((ended - started) / 10_000) }, (_, i) =>
          round(
            accepted.filter(
              (c) => c.at >= started + i * 10_000 && c.at < Math.min(ended, started + (i + 1) * 10_000),
            ).length / Math.max(1, Math.min(10, (ended - started) / 1000 - i * 10)),
            1,
          ),
        ),
        sustained: round(steady.length / Math.max(1, (ended - started) / 1000 - warmupS), 1),
        bestSecond: Math.max(0, ...perSecond.values()),
      },
      maxInWindow,
      limitPerWindow: LIMIT,
      overspend: Math.max(0, maxInWindow - LIMIT),
      ...(intervalMs ? { bucket: { intervalMs, perSecond: round(1000 / intervalMs, 1) } } : {}),
      slotToSendMs: summary(slotToSend),
      endToEndMs: summary(latencies),
      callsPerRequest: {
        dynamodb: round(dynamoCalls / Math.max(1, requests), 2),
        sqs: round(sqsProxy.total() / Math.max(1, requests), 2),
        byAction,
        bySource: Object.fromEntries(
          [...dynamoProxy.tags.entries()]
            .sort((a, b) => b[1] - a[1])
            .slice(0, 12)
            .map(([tag, n]) => [tag, round(n / Math.max(1, requests), 2)]),
        ),
      },
      warmupS,
      ticketsByStatus,
      fastPath,
      queued: tickets.length - fastPath,
      ...(cpuUse
        ? {
            cpu: {
              ...cpuUse,
              msPerGrant: Object.fromEntries(
                Object.entries(cpuUse.coresByProcess).map(([name, cores]) => [
                  name,
                  round((cores * cpuUse.seconds * 1000) / Math.max(1, steady.length), 1),
                ]),
              ),
            },
          }
        : {}),
    };
    if (dispatcherTickets > 0) {
      result.dispatcherAlone = [];
      // The same 12,000 rpm over a minute, as an upstream states it (its bucket paces at 195/s; a 10 s window
      // plus the grant slack allows 180/s at most), then five times that: the dispatcher's own ceiling.
      for (const [rpm, count] of [
        [LIMIT * 6, dispatcherTickets],
        [LIMIT * 30, dispatcherTickets * 2],
      ] as const) {
        result.dispatcherAlone.push(
          await measureDispatcherAlone({
            emulators,
            proxies: { dynamo: dynamoProxy, sqs: sqsProxy },
            upstreamUrl: `${upstream.url}/v1`,
            limit: rpm,
            windowMs: 60_000,
            count,
            log: o.log,
          }),
        );
      }
    }
    return { markdown: writeThroughputResults(result) };
  } finally {
    await system.stop();
    await upstream.stop();
    await dynamoProxy.stop();
    await sqsProxy.stop();
    await emulators.stop();
  }
};

const CPU_NAMES: Record<string, string> = {
  dynamoDbLocal: 'DynamoDB Local',
  self: 'bench process (gateway, fauxqs, agents, upstream, counting proxies)',
};

const cpuRow = (cpu: NonNullable<ThroughputResult['cpu']>): string =>
  `| CPU after the warm-up: cores used (ms per grant) | ${Object.entries(cpu.coresByProcess)
    .map(([name, cores]) => `${CPU_NAMES[name] ?? name} ${round(cores, 2)} (${cpu.msPerGrant[name]})`)
    .join('; ')}${
    cpu.machineCores === undefined
      ? ''
      : `; whole machine ${round(cpu.machineCores, 2)} of ${cpu.cores} cores`
  } |`;

export const throughputMarkdown = (r: ThroughputResult): string =>
  [
    `## Dispatcher throughput (${r.machine.date.slice(0, 10)}, ${r.machine.cores} cores, ${r.machine.cpu}, node ${r.machine.node})`,
    '',
    `Full path on the local emulators (DynamoDB Local, fauxqs), limit ${String(r.settings.limit)}, ${String(r.settings.agents)} closed-loop agents for ${String(r.settings.seconds)} s, simulated upstream answering in ~2 ms.`,
    '',
    '| measure | value |',
    '|---|---|',
    `| sustained grants/s (after ${r.warmupS} s warm-up) | ${r.grantsPerSecond.sustained}${r.bucket ? ` (the bucket's pace: ${r.bucket.perSecond}, interval ${r.bucket.intervalMs} ms)` : ''} |`,
    `| best second | ${r.grantsPerSecond.bestSecond} |`,
    `| grants/s in each 10 s of the load | ${r.grantsPerSecond.byTenSeconds.join(', ')} |`,
    `| most calls in any ${r.limitPerWindow}-call window vs limit | ${r.maxInWindow} / ${r.limitPerWindow} (overspend ${r.overspend}) |`,
    `| grant slot → upstream send p50 / p99 (ms), queued tickets | ${r.slotToSendMs.p50} / ${r.slotToSendMs.p99} |`,
    `| end to end p50 / p99 (ms) | ${r.endToEndMs.p50} / ${r.endToEndMs.p99} |`,
    `| requests / completed / unserved | ${r.requests} / ${r.completed} / ${r.unserved} |`,
    `| tickets granted on the fast path / through the queue | ${r.fastPath} / ${r.queued} |`,
    `| refused by code | ${
      Object.entries(r.refused)
        .map(([k, v]) => `${k} ${v}`)
        .join(', ') || 'none'
    } |`,
    `| DynamoDB / SQS calls per request | ${r.callsPerRequest.dynamodb} / ${r.callsPerRequest.sqs} |`,
    ...(r.cpu ? [cpuRow(r.cpu)] : []),
    '',
    `Calls per request by action: ${Object.entries(r.callsPerRequest.byAction)
      .map(([k, v]) => `${k} ${v}`)
      .join(', ')}.`,
    '',
    `DynamoDB calls per request by what they touch (most first): ${Object.entries(r.callsPerRequest.bySource)
      .map(([k, v]) => `${k} ${v}`)
      .join('; ')}.`,
    ...(r.dispatcherAlone ? ['', dispatcherAloneMarkdown(r.dispatcherAlone)] : []),
  ].join('\n');

const dispatcherAloneMarkdown = (runs: readonly DispatcherAloneResult[]): string =>
  [
    '### The dispatcher alone',
    '',
    "Tickets written queued straight into the stores (no HTTP, no waiting ingress), then one dispatcher run grants them; nobody claims (the claim window and the sweep are pushed past the run). The single consumer's ceiling, apart from the per-request work of the full path above. Grants/s from the grant slots, first to last.",
    '',
    "| limit | tickets granted / queued | grants/s vs the bucket's pace (interval) | grants in each second | all granted after | most slots in any window vs limit | DynamoDB (transactions) / SQS calls per grant | cores: DynamoDB Local / bench process / machine |",
    '|---|---|---|---|---|---|---|---|',
    ...runs.map(
      (d) =>
        `| ${d.limitPerWindow} per ${d.windowS} s | ${d.granted} / ${d.tickets} | ${d.grantsPerSecond} vs ${d.bucketPerSecond} (${d.intervalMs} ms) | ${d.bySecond.join(', ')} | ${round(d.drainMs / 1000, 1)} s | ${d.maxInWindow} / ${d.limitPerWindow} | ${d.dynamoPerGrant} (${d.dynamoByAction.TransactWriteItems ?? 0}) / ${d.sqsPerGrant} | ${
          d.cpu
            ? `${round(d.cpu.coresByProcess.dynamoDbLocal ?? Number.NaN, 2)} / ${round(d.cpu.coresByProcess.self ?? Number.NaN, 2)} / ${round(d.cpu.machineCores ?? Number.NaN, 2)}`
            : '—'
        } |`,
    ),
  ].join('\n');

export const writeThroughputResults = (r: ThroughputResult): string => {
  mkdirSync('bench/results', { recursive: true });
  writeFileSync('bench/results/throughput.json', `${JSON.stringify(r, null, 2)}\n`);
  const md = throughputMarkdown(r);
  writeFileSync('bench/results/throughput.md', `${md}\n`);
  return md;
};
