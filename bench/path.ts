// Bench `path`: the gateway's overhead against calling the simulated upstream directly — fast path and queued —
// plus DynamoDB and SQS calls per request (counted by proxies in front of the emulators).
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { DynamoDBClient, ScanCommand } from '@aws-sdk/client-dynamodb';
import { unmarshall } from '@aws-sdk/util-dynamodb';
import OpenAI from 'openai';
import type { Ticket } from '../lib/domain/tickets.js';
import { localAwsConfig, startEmulators } from '../local/emulators.js';
import { startFakeUpstream } from '../local/fake-upstream.js';
import { type LocalSystem, startLocalSystem } from '../local/runtime.js';
import { type CountingProxy, startCountingProxy } from './support/counting-proxy.js';
import { machine, round, summary } from './support/stats.js';
import { type StreamTiming, TimingClient, timeChat } from './support/timing-client.js';

/** Requests each way before the fast path is timed (DynamoDB Local's JIT; see the fast phase). */
const WARMUP_REQUESTS = 200;
const WARMUP_CONCURRENCY = 20;

/**
 * Tickets of a system granted on the fast path: claimed within a few ms of admission (a queued ticket needs a
 * queue message, a dispatcher grant and the ingress's read first).
 */
const fastPathTickets = async (
  dynamoEndpoint: string,
  table: string,
): Promise<{ fast: number; total: number; tickets: Ticket[] }> => {
  const client = new DynamoDBClient(localAwsConfig(dynamoEndpoint));
  const tickets: Ticket[] = [];
  try {
    let start: Record<string, import('@aws-sdk/client-dynamodb').AttributeValue> | undefined;
    do {
      const res = await client.send(new ScanCommand({ TableName: table, ExclusiveStartKey: start }));
      for (const item of res.Items ?? []) tickets.push(unmarshall(item) as Ticket);
      start = res.LastEvaluatedKey;
    } while (start);
  } finally {
    client.destroy();
  }
  const fast = tickets.filter((t) => t.claimedAt !== undefined && t.claimedAt - t.enqueuedAt <= 5).length;
  return { fast, total: tickets.length, tickets };
};

/**
 * Grant slot → claim (the start of the last write before the call; negative when the claim starts ahead of a
 * reserved slot) per queued ticket, and grant slot → upstream send (its arrival at the simulated upstream). Each
 * agent has its own key and tags its i-th request (`a<agent>-r<i>`): its i-th ticket (by enqueue time) is paired
 * with the upstream call carrying that tag. Agents with a request that left no ticket are left out.
 */
const slotDelays = (
  tickets: readonly Ticket[],
  calls: readonly { at: number; tag: string | undefined }[],
) => {
  const queued = (t: Ticket) =>
    t.grantedAt !== undefined && t.claimedAt !== undefined && t.claimedAt - t.enqueuedAt > 5;
  const sendAt = new Map(calls.flatMap((c) => (c.tag ? [[c.tag, c.at] as const] : [])));
  const byAgent = new Map<string, Ticket[]>();
  for (const t of tickets) byAgent.set(t.agent, [...(byAgent.get(t.agent) ?? []), t]);
  const toSend: number[] = [];
  for (const [agent, own] of byAgent) {
    own.sort((a, b) => a.enqueuedAt - b.enqueuedAt);
    own.forEach((t, i) => {
      const at = sendAt.get(`${agent.replace(/^bench-/, '')}-r${i}`);
      if (queued(t) && at !== undefined) toSend.push(at - t.grantedAt!);
    });
  }
  return {
    toClaim: summary(tickets.filter(queued).map((t) => t.claimedAt! - t.grantedAt!)),
    toSend: summary(toSend),
  };
};

const sequential = async <T>(n: number, fn: () => Promise<T>): Promise<T[]> => {
  const out: T[] = [];
  for (let i = 0; i < n; i++) out.push(await fn());
  return out;
};

const perRequest = (proxy: CountingProxy, requests: number) => {
  const out: Record<string, number> = {};
  for (const [action, n] of [...proxy.counts.entries()].sort()) out[action] = round(n / requests, 2);
  return { total: round(proxy.total() / requests, 2), byAction: out };
};

/** DynamoDB calls per request by what they touch (`action table key`, see CountingProxy.tags), most first. */
const perSource = (proxy: CountingProxy, requests: number, actions?: readonly string[]) =>
  Object.fromEntries(
    [...proxy.tags.entries()]
      .filter(([tag]) => !actions || actions.includes(tag.split(' ')[0]!))
      .sort((a, b) => b[1] - a[1])
      .map(([tag, n]) => [tag, round(n / requests, 2)]),
  );

/** Which phases to run: `--phases queued` runs the queued phase alone (the fast-path figures stay as last written). */
const phasesArg = (): { fast: boolean; queued: boolean } => {
  const i = process.argv.indexOf('--phases');
  const given = i >= 0 ? (process.argv[i + 1] ?? '').split(',') : ['fast', 'queued'];
  return { fast: given.includes('fast'), queued: given.includes('queued') };
};

export interface PathBenchResult {
  machine: ReturnType<typeof machine>;
  settings: Record<string, unknown>;
  nonStreaming: {
    direct: ReturnType<typeof summary>;
    gateway: ReturnType<typeof summary>;
    addedP50: number;
    addedP99: number;
    /** Gateway minus direct, pair by pair (each pair ran back to back). */
    addedPerPair?: ReturnType<typeof summary>;
  };
  streaming: {
    direct: { ttfb: ReturnType<typeof summary>; gaps: ReturnType<typeof summary> };
    gateway: { ttfb: ReturnType<typeof summary>; gaps: ReturnType<typeof summary> };
  };
  callsPerRequest: {
    fastPath: { dynamodb: ReturnType<typeof perRequest>; sqs: ReturnType<typeof perRequest> };
    queued: { dynamodb: ReturnType<typeof perRequest>; sqs: ReturnType<typeof perRequest> };
  };
  queued: {
    agents: number;
    requests: number;
    latency: ReturnType<typeof summary>;
    failed: number;
    rateRpm: number;
    /** Requests of the queued run granted on the fast path anyway (the bucket had a token, nothing waited). */
    fastPath: number;
    /** DynamoDB reads (GetItem, Query) per queued request, all functions. */
    readsPerRequest: number;
    slotToClaim: ReturnType<typeof summary>;
    slotToSend: ReturnType<typeof summary>;
    /** Reads (GetItem, Query) per queued request by what they read (see CountingProxy.tags). */
    readsBySource?: Record<string, number>;
    /** Writes per queued request by what they write. */
    writesBySource?: Record<string, number>;
    /** When the queued phase ran and the machine's load average (1, 5, 15 min) at its start and end. */
    ranAt?: string;
    loadAverage?: { start: number[]; end: number[] };
  };
  /** Requests of the fast-path run that took the fast path (all of them, when it works). */
  fastPathRun: { fast: number; total: number };
  /** The machine's load average (1, 5, 15 min) when the interleaved fast-path timing started and ended. */
  fastLoadAverage?: { start: number[]; end: number[] };
}

export const runPathBench = async (
  opts: {
    progress?: (line: string) => void;
    n?: number;
    /** @default both, or `--phases fast|queued` on the command line (a phase left out keeps its last figures) */
    phases?: { fast: boolean; queued: boolean };
  } = {},
): Promise<PathBenchResult> => {
  const progress = opts.progress ?? (() => {});
  const n = opts.n ?? 40;
  const emulators = await startEmulators();
  const dynamoProxy = await startCountingProxy(emulators.dynamoEndpoint);
  const sqsProxy = await startCountingProxy(emulators.sqsEndpoint);
  const upstream = await startFakeUpstream({
    apiKey: 'bench-key',
    limit: null,
    maxConcurrency: null,
    tokenDelayMs: 25,
    firstByteDelayMs: 40,
  });
  const systems: LocalSystem[] = [];
  try {
    const direct = new OpenAI({ baseURL: `${upstream.url}/v1`, apiKey: 'bench-key', maxRetries: 0 });
    const counting = { dynamoEndpoint: dynamoProxy.endpoint, sqsEndpoint: sqsProxy.endpoint };
    const start = (
      prefix: string,
      env: Record<string, string>,
      endpoints: { dynamoEndpoint: string; sqsEndpoint: string } = counting,
    ) =>
      startLocalSystem({
        port: 0,
        prefix,
        emulators: { dynamoEndpoint: endpoints.dynamoEndpoint, sqsEndpoint: endpoints.sqsEndpoint },
        upstreamUrl: `${upstream.url}/v1`,
        upstreamApiKey: 'bench-key',
        scheduleMs: 0,
        env: {
          POWERTOOLS_METRICS_DISABLED: 'true',
          LOG_LEVEL: 'ERROR',
          POWERTOOLS_LOG_LEVEL: 'ERROR',
          ...env,
        },
      }).then((s) => {
        systems.push(s);
        return s;
      });

    const phases = opts.phases ?? phasesArg();
    const previous = (): PathBenchResult | undefined =>
      existsSync('bench/results/path.json')
        ? (JSON.parse(readFileSync('bench/results/path.json', 'utf8')) as PathBenchResult)
        : undefined;

    const fastPhase = async (): Promise<
      Omit<PathBenchResult, 'queued' | 'callsPerRequest'> & {
        fastCalls: PathBenchResult['callsPerRequest']['fastPath'];
      }
    > => {
      const fastEnv = { SLUICE_UPSTREAM_LIMIT: '100000', SLUICE_BUCKET_BURST: '50' };
      // Timed on the emulators themselves (a counting proxy would add a hop to every store call); calls are
      // counted on a second system behind the proxies, below.
      const fast = await start('bench-fast', fastEnv, emulators);
      const fastKey = await fast.createKey('bench', 'urgent');
      const fastClient = new OpenAI({ baseURL: `${fast.url}/v1`, apiKey: fastKey, maxRetries: 0 });
      // DynamoDB Local is a JVM: its first few hundred transactions run interpreted and take several times as
      // long as once compiled (a long-running `npm start` is past that within a minute; DynamoDB itself has no
      // such phase). Warm both paths up with concurrent requests before timing anything.
      progress(`path: warm-up (${WARMUP_REQUESTS} requests each way, ${WARMUP_CONCURRENCY} at a time)`);
      await Promise.all(
        Array.from({ length: WARMUP_CONCURRENCY }, () =>
          sequential(WARMUP_REQUESTS / WARMUP_CONCURRENCY, async () => {
            await timeChat(direct);
            await timeChat(fastClient);
          }),
        ),
      );
      await fast.settled();
      // Direct and gateway requests alternate one by one (which goes first alternates too), so both see the same
      // load on a shared machine; each request's bookkeeping ends before the next one starts.
      progress('path: direct and gateway fast path, interleaved (tokens always free)');
      // The timed requests leave from a worker thread: an agent is not on the gateway's event loop.
      const timer = new TimingClient();
      await timer.client('direct', `${upstream.url}/v1`, 'bench-key');
      await timer.client('gateway', `${fast.url}/v1`, fastKey);
      // Pair i: direct then gateway when i is even, the other way round when odd; each pair's bookkeeping ends
      // before the next pair starts.
      const pairs = async <T>(count: number, time: (name: string) => Promise<T>) => {
        const out = { direct: [] as T[], gateway: [] as T[] };
        for (let i = 0; i < count; i++) {
          for (const name of i % 2 === 0 ? ['direct', 'gateway'] : ['gateway', 'direct'])
            out[name as 'direct' | 'gateway'].push(await time(name));
          await fast.settled();
        }
        return out;
      };
      const loadStart = os.loadavg().map((x) => round(x, 2));
      let chats: { direct: number[]; gateway: number[] };
      let streams: { direct: StreamTiming[]; gateway: StreamTiming[] };
      try {
        chats = await pairs(n, (name) => timer.chat(name));
        streams = await pairs(n / 2, (name) => timer.stream(name));
      } finally {
        await timer.stop();
      }
      const { direct: directChat, gateway: gwChat } = chats;
      const { direct: directStream, gateway: gwStream } = streams;
      const loadEnd = os.loadavg().map((x) => round(x, 2));
      const { fast: fastCount, total: fastTotal } = await fastPathTickets(
        emulators.dynamoEndpoint,
        fast.env.SLUICE_TICKETS_TABLE!,
      );

      progress('path: fast-path calls per request (behind the counting proxies)');
      const counted = await start('bench-fast-counted', fastEnv, {
        dynamoEndpoint: dynamoProxy.endpoint,
        sqsEndpoint: sqsProxy.endpoint,
      });
      const countedClient = new OpenAI({
        baseURL: `${counted.url}/v1`,
        apiKey: await counted.createKey('bench', 'urgent'),
        maxRetries: 0,
      });
      await sequential(5, () => timeChat(countedClient));
      await counted.settled();
      dynamoProxy.reset();
      sqsProxy.reset();
      await sequential(n, () => timeChat(countedClient));
      // Each request's outcome is written right after its reply, before its invocation returns.
      await counted.settled();
      const fastCalls = { dynamodb: perRequest(dynamoProxy, n), sqs: perRequest(sqsProxy, n) };
      const d = summary(directChat);
      const g = summary(gwChat);
      return {
        machine: machine(),
        settings: {
          sequentialRequests: n,
          warmup: { requests: WARMUP_REQUESTS, concurrency: WARMUP_CONCURRENCY },
          interleaved: true,
          upstream: { firstByteDelayMs: 40, tokenDelayMs: 25, tokens: 12 },
        },
        nonStreaming: {
          direct: d,
          gateway: g,
          addedP50: round(g.p50 - d.p50),
          addedP99: round(g.p99 - d.p99),
          addedPerPair: summary(gwChat.map((x, i) => x - directChat[i]!)),
        },
        streaming: {
          direct: {
            ttfb: summary(directStream.map((s) => s.ttfb)),
            gaps: summary(directStream.flatMap((s) => s.gaps)),
          },
          gateway: {
            ttfb: summary(gwStream.map((s) => s.ttfb)),
            gaps: summary(gwStream.flatMap((s) => s.gaps)),
          },
        },
        fastPathRun: { fast: fastCount, total: fastTotal },
        fastLoadAverage: { start: loadStart, end: loadEnd },
        fastCalls,
      };
    };

    const queuedPhase = async (): Promise<{
      queued: PathBenchResult['queued'];
      calls: PathBenchResult['callsPerRequest']['queued'];
    }> => {
      progress('path: gateway queued (30 agents, 10 grants/s)');
      const rateRpm = 600;
      const queued = await start('bench-queued', {
        SLUICE_UPSTREAM_LIMIT: String(rateRpm),
        SLUICE_BUCKET_BURST: '2',
      });
      const agents = 30;
      // One key per agent (agent `bench-a<i>`), so each ticket names the agent whose request it is.
      const qKeys: string[] = [];
      for (let a = 0; a < agents; a++) qKeys.push(await queued.createKey(`bench-a${a}`, 'urgent'));
      const perAgent = 4;
      const loadStart = os.loadavg().map((x) => round(x, 2));
      dynamoProxy.reset();
      sqsProxy.reset();
      upstream.reset();
      const latencies: number[] = [];
      let failed = 0;
      await Promise.all(
        Array.from({ length: agents }, async (_, a) => {
          const c = new OpenAI({ baseURL: `${queued.url}/v1`, apiKey: qKeys[a]!, maxRetries: 0 });
          for (let i = 0; i < perAgent; i++) {
            try {
              latencies.push(await timeChat(c, `a${a}-r${i}`));
            } catch {
              failed++;
            }
          }
        }),
      );
      await queued.settled();
      await queued.lambda.idle();
      const requests = agents * perAgent;
      const sends = upstream.calls
        .filter((c) => c.status === 200)
        .map((c) => ({ at: c.at, tag: [c.headers['openai-beta']].flat()[0] }));
      const calls = { dynamodb: perRequest(dynamoProxy, requests), sqs: perRequest(sqsProxy, requests) };
      const readsBySource = perSource(dynamoProxy, requests, ['GetItem', 'Query']);
      const writesBySource = perSource(dynamoProxy, requests, [
        'PutItem',
        'UpdateItem',
        'DeleteItem',
        'TransactWriteItems',
      ]);
      const readsPerRequest = round(
        ((dynamoProxy.counts.get('GetItem') ?? 0) + (dynamoProxy.counts.get('Query') ?? 0)) / requests,
        2,
      );
      const queuedTickets = await fastPathTickets(emulators.dynamoEndpoint, queued.env.SLUICE_TICKETS_TABLE!);
      const delays = slotDelays(queuedTickets.tickets, sends);
      return {
        calls,
        queued: {
          agents,
          requests,
          latency: summary(latencies),
          failed,
          rateRpm,
          fastPath: queuedTickets.fast,
          readsPerRequest,
          slotToClaim: delays.toClaim,
          slotToSend: delays.toSend,
          readsBySource,
          writesBySource,
          ranAt: new Date().toISOString(),
          loadAverage: { start: loadStart, end: os.loadavg().map((x) => round(x, 2)) },
        },
      };
    };

    const before = phases.fast && phases.queued ? undefined : previous();
    const f = phases.fast ? await fastPhase() : undefined;
    const q = phases.queued ? await queuedPhase() : undefined;
    const fastPart = f ?? { ...before!, fastCalls: before!.callsPerRequest.fastPath };
    const queuedPart = q ?? { queued: before!.queued, calls: before!.callsPerRequest.queued };
    return {
      machine: fastPart.machine,
      settings: fastPart.settings,
      nonStreaming: fastPart.nonStreaming,
      streaming: fastPart.streaming,
      callsPerRequest: { fastPath: fastPart.fastCalls, queued: queuedPart.calls },
      queued: queuedPart.queued,
      fastPathRun: fastPart.fastPathRun,
      ...(fastPart.fastLoadAverage ? { fastLoadAverage: fastPart.fastLoadAverage } : {}),
    };
  } finally {
    for (const s of systems) await s.stop();
    await upstream.stop();
    await dynamoProxy.stop();
    await sqsProxy.stop();
    await emulators.stop();
  }
};

export const pathMarkdown = (r: PathBenchResult): string => {
  const row = (name: string, s: ReturnType<typeof summary>) =>
    `| ${name} | ${s.p50} | ${s.p95} | ${s.p99} | ${s.n} |`;
  const calls = (c: ReturnType<typeof perRequest>) =>
    `${c.total} (${Object.entries(c.byAction)
      .map(([k, v]) => `${k} ${v}`)
      .join(', ')})`;
  return [
    `## Request path overhead (${r.machine.date.slice(0, 10)}, ${r.machine.cores} cores, ${r.machine.cpu}, node ${r.machine.node})`,
    '',
    '| latency (ms) | p50 | p95 | p99 | n |',
    '|---|---|---|---|---|',
    row('direct, non-streaming', r.nonStreaming.direct),
    row('gateway fast path, non-streaming', r.nonStreaming.gateway),
    row('direct, stream time to first byte', r.streaming.direct.ttfb),
    row('gateway, stream time to first byte', r.streaming.gateway.ttfb),
    row('direct, inter-chunk gap', r.streaming.direct.gaps),
    row('gateway, inter-chunk gap', r.streaming.gateway.gaps),
    row(`gateway queued (${r.queued.agents} agents, ${r.queued.rateRpm} rpm)`, r.queued.latency),
    '',
    `Fast path: ${r.settings.interleaved ? `direct and gateway requests alternate one by one, after a warm-up of ${WARMUP_REQUESTS} requests each way (DynamoDB Local's JIT)${r.fastLoadAverage ? `, load average ${r.fastLoadAverage.start[0]} at the start and ${r.fastLoadAverage.end[0]} at the end` : ''}; ` : ''}timed from a worker thread (an agent is not on the gateway's event loop) against a system on the emulators directly, calls counted on a second system behind the counting proxies.`,
    '',
    `Added latency, fast path: p50 ${r.nonStreaming.addedP50} ms, p99 ${r.nonStreaming.addedP99} ms${r.nonStreaming.addedPerPair ? ` (pair by pair: p50 ${r.nonStreaming.addedPerPair.p50} ms, p95 ${r.nonStreaming.addedPerPair.p95} ms)` : ''}; added time to first byte p50 ${round(r.streaming.gateway.ttfb.p50 - r.streaming.direct.ttfb.p50)} ms, inter-chunk gap p50 ${round(r.streaming.gateway.gaps.p50 - r.streaming.direct.gaps.p50)} ms. Fast-path run: ${r.fastPathRun.fast} of ${r.fastPathRun.total} requests granted on the fast path. Queued run: ${r.queued.requests} requests, ${r.queued.failed} failed, ${r.queued.fastPath} granted on the fast path (a token free and nothing waiting), the rest through the queue.`,
    '',
    `Queued: grant slot → claim p50 ${r.queued.slotToClaim.p50} ms, p99 ${r.queued.slotToClaim.p99} ms; grant slot → upstream send p50 ${r.queued.slotToSend.p50} ms, p99 ${r.queued.slotToSend.p99} ms (n ${r.queued.slotToSend.n}); DynamoDB reads (GetItem, Query) per queued request ${r.queued.readsPerRequest}, all functions${r.queued.loadAverage ? ` (queued phase ${r.queued.ranAt?.slice(0, 16)}, load average ${r.queued.loadAverage.start[0]} at its start, ${r.queued.loadAverage.end[0]} at its end)` : ''}.`,
    ...(r.queued.readsBySource
      ? [
          '',
          `Queued reads per request by what they read: ${Object.entries(r.queued.readsBySource)
            .map(([k, v]) => `${k} ${v}`)
            .join('; ')}.`,
        ]
      : []),
    '',
    '| calls per request | DynamoDB | SQS |',
    '|---|---|---|',
    `| fast path | ${calls(r.callsPerRequest.fastPath.dynamodb)} | ${calls(r.callsPerRequest.fastPath.sqs)} |`,
    `| queued | ${calls(r.callsPerRequest.queued.dynamodb)} | ${calls(r.callsPerRequest.queued.sqs)} |`,
    '',
    'Fast path: the ingress grants itself (one transaction) and never wakes the dispatcher. Queued: DynamoDB and SQS calls include the dispatcher (grants, lease renewals, long polls while it runs) divided over the requests.',
  ].join('\n');
};

export const writePathResults = (r: PathBenchResult): string => {
  mkdirSync('bench/results', { recursive: true });
  writeFileSync('bench/results/path.json', `${JSON.stringify(r, null, 2)}\n`);
  const md = pathMarkdown(r);
  writeFileSync('bench/results/path.md', `${md}\n`);
  return md;
};
