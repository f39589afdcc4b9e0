// Bench `soak`: hundreds of concurrent agents against the local runtime for minutes (loopback only), with client
// disconnects and injected upstream faults. Checks that every request ends in exactly one terminal state, that no
// window of the upstream ever sees more calls than its limit, and that the runtime's memory and open handles stay
// flat. The runtime runs in a child process (as `npm start` would), so its RSS and handles are its own.
//
//   npm run bench -- soak --minutes 10 --agents 500      (defaults; SOAK_MINUTES / SOAK_AGENTS work too)
import { type ChildProcess, fork } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { BenchOptions, BenchResult } from './run.js';
import { machine, round, summary } from './support/stats.js';

const RESULTS = 'bench/results';
const MODEL = 'meta/llama-3.1-8b-instruct';

/** The modelled upstream: 600 calls per sliding minute (10/s), so a 500-agent fleet keeps the queue deep. */
const LIMIT = { requests: 600, windowMs: 60_000 };

const PRIORITY_MIX = [
  ['urgent', 0.1],
  ['high', 0.2],
  ['normal', 0.65],
  ['low', 0.05],
] as const;

/**
 * Think time between an agent's requests: urgent and high agents alone then offer less than the limit (they are
 * served at once), the normal ones keep the queue deep, the low ones mostly meet low_priority_timeout.
 */
const THINK_MS = { min: 5_000, max: 35_000 };

/** Upstream faults injected in turn, one burst per minute (each hits the next `times` calls). */
const FAULTS = [
  { fault: { kind: 'status', status: 500 }, times: 3 },
  { fault: { kind: 'reset' }, times: 3 },
  { fault: { kind: 'cut_mid_stream', afterChunks: 2 }, times: 3 },
  { fault: { kind: 'status', status: 429, body: '{"status":429,"title":"Too Many Requests"}' }, times: 3 },
] as const;

/** The most timestamps in any sliding window of `windowMs`. */
const maxInWindow = (times: number[], windowMs: number): number => {
  const ts = [...times].sort((a, b) => a - b);
  let best = 0;
  for (let lo = 0, hi = 0; hi < ts.length; hi++) {
    while (ts[lo]! <= ts[hi]! - windowMs) lo++;
    best = Math.max(best, hi - lo + 1);
  }
  return best;
};

const option = (name: string, env: string, fallback: number): number => {
  const i = process.argv.indexOf(`--${name}`);
  const raw = i >= 0 ? process.argv[i + 1] : process.env[env];
  const n = raw === undefined ? Number.NaN : Number(raw);
  return Number.isFinite(n) && n > 0 ? n : fallback;
};

// ------------------------------------------------------------------------------------------------------------
// The runtime child: the local system (emulators, handlers, simulated upstream), driven over IPC.

interface Sample {
  at: number;
  rssMiB: number;
  heapMiB: number;
  handles: number;
  byType: Record<string, number>;
}

type ChildRequest =
  | { id: number; type: 'sample' }
  | { id: number; type: 'audit' }
  | { id: number; type: 'upstream' }
  | { id: number; type: 'fault'; fault: unknown; times: number }
  | { id: number; type: 'stop' };

const runtimeChild = async (): Promise<void> => {
  const { startLocalSystem } = await import('../local/runtime.js');
  const { DynamoDBClient, ScanCommand } = await import('@aws-sdk/client-dynamodb');
  const { unmarshall } = await import('@aws-sdk/util-dynamodb');
  const agents = Number(process.env.SOAK_CHILD_AGENTS ?? 500);
  process.env.LOG_LEVEL = 'ERROR';
  process.env.POWERTOOLS_LOG_LEVEL = 'ERROR';
  const system = await startLocalSystem({
    port: 0,
    prefix: `soak-${randomBytes(3).toString('hex')}`,
    fakeUpstream: {
      limit: LIMIT,
      maxConcurrency: null,
      firstByteDelayMs: 50,
      tokenDelayMs: 20,
      tokensPerResponse: 12,
    },
    env: {
      SLUICE_UPSTREAM_LIMIT: String(LIMIT.requests),
      SLUICE_UPSTREAM_WINDOW_S: String(LIMIT.windowMs / 1000),
      SLUICE_BUCKET_BURST: '2',
      SLUICE_QUEUE_MAX: '1000',
      POWERTOOLS_METRICS_DISABLED: 'true',
    },
  });
  const keys: string[] = [];
  for (let i = 0; i < agents; i++) keys.push(await system.createKey(`soak-agent-${i}`, 'urgent'));
  const dynamo = new DynamoDBClient({
    endpoint: system.env.SLUICE_DYNAMODB_ENDPOINT!,
    region: 'us-east-1',
    credentials: { accessKeyId: 'local', secretAccessKey: 'local' },
  });
  const gc = (globalThis as { gc?: () => void }).gc;

  const sample = (): Sample => {
    gc?.();
    const byType: Record<string, number> = {};
    for (const r of process.getActiveResourcesInfo()) byType[r] = (byType[r] ?? 0) + 1;
    const mem = process.memoryUsage();
    return {
      at: Date.now(),
      rssMiB: round(mem.rss / 2 ** 20),
      heapMiB: round(mem.heapUsed / 2 ** 20),
      handles: Object.values(byType).reduce((a, b) => a + b, 0),
      byType,
    };
  };

  const audit = async () => {
    const counts: Record<string, number> = {};
    const grants: number[] = [];
    const claimDelays: number[] = [];
    let open = 0;
    let start: Record<string, import('@aws-sdk/client-dynamodb').AttributeValue> | undefined;
    do {
      const res = await dynamo.send(
        new ScanCommand({
          TableName: system.env.SLUICE_TICKETS_TABLE,
          ConsistentRead: true,
          ExclusiveStartKey: start,
          ProjectionExpression: '#s, reason, grantedAt, claimedAt',
          ExpressionAttributeNames: { '#s': 'status' },
        }),
      );
      for (const item of res.Items ?? []) {
        const t = unmarshall(item) as {
          status: string;
          reason?: string;
          grantedAt?: number;
          claimedAt?: number;
        };
        if (t.grantedAt !== undefined) grants.push(t.grantedAt);
        if (t.grantedAt !== undefined && t.claimedAt !== undefined)
          claimDelays.push(t.claimedAt - t.grantedAt);
        const k = t.reason && t.status !== 'completed' ? `${t.status} (${t.reason})` : t.status;
        counts[k] = (counts[k] ?? 0) + 1;
        if (['queued', 'granted', 'claimed'].includes(t.status)) open++;
      }
      start = res.LastEvaluatedKey;
    } while (start);
    const stored = await system.stores.tickets.counts();
    return {
      counts,
      open,
      total: Object.values(counts).reduce((a, b) => a + b, 0),
      counters: stored,
      // Grants per sliding window (what the bucket bounds) and how late the ingress claimed them.
      maxGrantsInWindow: maxInWindow(grants, LIMIT.windowMs),
      claimDelayMs: summary(claimDelays),
    };
  };

  process.on('message', async (msg: ChildRequest) => {
    const reply = (body: unknown) => process.send?.({ id: msg.id, body });
    switch (msg.type) {
      case 'sample':
        return reply(sample());
      case 'audit':
        return reply(await audit());
      case 'upstream':
        return reply({
          maxInWindow: system.upstream!.maxInWindow(LIMIT.windowMs),
          stats: system.upstream!.stats(),
        });
      case 'fault':
        system.upstream!.setFault(msg.fault as never, msg.times);
        return reply({});
      case 'stop':
        dynamo.destroy();
        await system.stop();
        reply({});
        setTimeout(() => process.exit(0), 100).unref();
        return;
    }
  });
  process.send?.({ id: 0, body: { url: system.url, keys } });
};

/** Talks to the runtime child: one pending answer per request id. */
class Runtime {
  private next = 1;
  private readonly pending = new Map<number, (body: unknown) => void>();
  constructor(readonly child: ChildProcess) {
    child.on('message', (m: { id: number; body: unknown }) => {
      this.pending.get(m.id)?.(m.body);
      this.pending.delete(m.id);
    });
  }
  ask<T>(req: Record<string, unknown>): Promise<T> {
    const id = this.next++;
    return new Promise<T>((resolve) => {
      this.pending.set(id, (b) => resolve(b as T));
      this.child.send({ ...req, id });
    });
  }
}

// ------------------------------------------------------------------------------------------------------------
// The load: closed-loop agents with a priority mix, streams, think time and a few disconnects.

interface Outcome {
  status: number;
  code: string;
  priority: string;
  stream: boolean;
  ms: number;
}

/** Small deterministic PRNG (mulberry32), so two runs offer the same load. */
const rng = (seed: number) => () => {
  seed = (seed + 0x6d2b79f5) | 0;
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
};

/** Agent `i`'s priority: the mix exactly, by index (out of every 20 agents: 2 urgent, 4 high, 13 normal, 1 low). */
const priorityOf = (i: number): string => {
  const x = ((i * 7) % 20) / 20;
  let acc = 0;
  for (const [p, share] of PRIORITY_MIX) {
    acc += share;
    if (x < acc - 1e-9) return p;
  }
  return 'normal';
};

export interface SoakResult {
  machine: ReturnType<typeof machine>;
  settings: Record<string, unknown>;
  requests: { sent: number; byReply: Record<string, number>; clientAborts: number };
  tickets: { byState: Record<string, number>; total: number; open: number; refusedBeforeAdmission: number };
  accounted: boolean;
  upstream: {
    maxInWindow: number;
    limit: number;
    windowMs: number;
    rateLimited: number;
    calls: number;
    maxGrantsInWindow: number;
    claimDelayMs: ReturnType<typeof summary>;
  };
  memory: {
    idleBefore: Sample;
    warmup: Sample;
    end: Sample;
    idleAfter: Sample;
    rssChangePct: number;
    series: { t: number; rssMiB: number; heapMiB: number; handles: number }[];
  };
  latency: Record<string, ReturnType<typeof summary>>;
}

export const runSoak = async (opts: {
  minutes: number;
  agents: number;
  log: (line: string) => void;
}): Promise<SoakResult> => {
  const { log } = opts;
  const durationMs = opts.minutes * 60_000;
  const warmupMs = Math.min(60_000, durationMs / 5);
  const child = fork(fileURLToPath(import.meta.url), ['--soak-runtime'], {
    execArgv: ['--import', 'tsx', '--expose-gc'],
    env: { ...process.env, SOAK_CHILD_AGENTS: String(opts.agents) },
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const runtime = new Runtime(child);
  try {
    const ready = await new Promise<{ url: string; keys: string[] }>((resolve, reject) => {
      child.once('message', (m: { body: { url: string; keys: string[] } }) => resolve(m.body));
      child.once('exit', (code) => reject(new Error(`runtime exited early (${code})`)));
    });
    log(`soak: runtime up at ${ready.url}, ${opts.agents} agents for ${opts.minutes} min`);
    await new Promise((r) => setTimeout(r, 2_000));
    const idleBefore = await runtime.ask<Sample>({ type: 'sample' });

    const outcomes: Outcome[] = [];
    let sent = 0;
    let clientAborts = 0;
    let stopping = false;
    const started = Date.now();
    const agent = async (i: number) => {
      const random = rng(i + 1);
      const priority = priorityOf(i);
      const key = ready.keys[i]!;
      // Agents start spread over the first 10 s.
      await new Promise((r) => setTimeout(r, random() * 10_000));
      while (!stopping) {
        const stream = random() < 0.3;
        const abortAfter = random() < 0.02 ? random() * 20_000 : undefined;
        const t0 = Date.now();
        sent++;
        const ac = new AbortController();
        const timer = abortAfter === undefined ? undefined : setTimeout(() => ac.abort(), abortAfter);
        try {
          const res = await fetch(`${ready.url}/v1/chat/completions`, {
            method: 'POST',
            headers: {
              authorization: `Bearer ${key}`,
              'content-type': 'application/json',
              'x-priority': priority,
            },
            body: JSON.stringify({
              model: MODEL,
              stream,
              messages: [{ role: 'user', content: `soak ${i}` }],
            }),
            signal: ac.signal,
          });
          const text = await res.text();
          const code = /"code":"([a-z_0-9]+)"/.exec(text)?.[1] ?? '';
          outcomes.push({ status: res.status, code, priority, stream, ms: Date.now() - t0 });
        } catch {
          if (ac.signal.aborted) clientAborts++;
          outcomes.push({
            status: 0,
            code: ac.signal.aborted ? 'client_abort' : 'network_error',
            priority,
            stream,
            ms: Date.now() - t0,
          });
        } finally {
          clearTimeout(timer);
        }
        await new Promise((r) => setTimeout(r, THINK_MS.min + random() * (THINK_MS.max - THINK_MS.min)));
      }
    };
    const fleet = Array.from({ length: opts.agents }, (_, i) => agent(i));

    const series: SoakResult['memory']['series'] = [];
    let warmup: Sample | undefined;
    let end: Sample | undefined;
    let faultIndex = 0;
    let lastFault = Date.now();
    while (Date.now() - started < durationMs) {
      await new Promise((r) => setTimeout(r, 10_000));
      const s = await runtime.ask<Sample>({ type: 'sample' });
      const t = round((s.at - started) / 1000, 0);
      series.push({ t, rssMiB: s.rssMiB, heapMiB: s.heapMiB, handles: s.handles });
      if (!warmup && Date.now() - started >= warmupMs) warmup = s;
      end = s;
      if (Date.now() - lastFault >= 60_000) {
        const f = FAULTS[faultIndex++ % FAULTS.length]!;
        await runtime.ask({ type: 'fault', fault: f.fault, times: f.times });
        lastFault = Date.now();
      }
      log(
        `soak: ${t} s, ${sent} sent, ${outcomes.length} answered, rss ${s.rssMiB} MiB, heap ${s.heapMiB} MiB, handles ${s.handles}`,
      );
    }
    stopping = true;
    log('soak: load stopped, draining');
    await Promise.all(fleet);
    // Every ticket must reach a terminal state (sweeps may take a claim window).
    let audit = await runtime.ask<{
      counts: Record<string, number>;
      open: number;
      total: number;
      counters: { queued: number; inflight: number };
      maxGrantsInWindow: number;
      claimDelayMs: ReturnType<typeof summary>;
    }>({ type: 'audit' });
    for (let i = 0; i < 60 && audit.open > 0; i++) {
      await new Promise((r) => setTimeout(r, 2_000));
      audit = await runtime.ask({ type: 'audit' });
    }
    await new Promise((r) => setTimeout(r, 5_000));
    const idleAfter = await runtime.ask<Sample>({ type: 'sample' });
    const upstream = await runtime.ask<{
      maxInWindow: number;
      stats: { total: number; rateLimited: number };
    }>({ type: 'upstream' });

    const byReply: Record<string, number> = {};
    for (const o of outcomes) {
      const k = o.status === 200 && !o.code ? '200' : `${o.status} ${o.code}`.trim();
      byReply[k] = (byReply[k] ?? 0) + 1;
    }
    // Refusals that write no ticket (queue full, store unavailable before admission): none are expected here.
    const noTicket = new Set(['queue_full', 'store_unavailable', 'draining', 'agent_quota_exceeded']);
    const refusedBeforeAdmission = outcomes.filter((o) => noTicket.has(o.code) && o.status >= 500).length;
    const latency: SoakResult['latency'] = {};
    for (const [p] of PRIORITY_MIX) {
      latency[p] = summary(outcomes.filter((o) => o.priority === p && o.status === 200).map((o) => o.ms));
    }
    const w = warmup ?? end ?? idleBefore;
    const e = end ?? w;
    return {
      machine: machine(),
      settings: {
        minutes: opts.minutes,
        agents: opts.agents,
        limit: LIMIT,
        bucketBurst: 2,
        priorityMix: Object.fromEntries(PRIORITY_MIX),
        streamShare: 0.3,
        disconnectShare: 0.02,
        thinkMs: `${THINK_MS.min}–${THINK_MS.max} uniform`,
        faults: FAULTS.map(
          (f) => `${f.fault.kind}${'status' in f.fault ? ` ${f.fault.status}` : ''} ×${f.times}`,
        ),
        faultEveryMs: 60_000,
        warmupMs,
      },
      requests: { sent, byReply, clientAborts },
      tickets: { byState: audit.counts, total: audit.total, open: audit.open, refusedBeforeAdmission },
      accounted: audit.open === 0 && audit.total + refusedBeforeAdmission === sent,
      upstream: {
        maxInWindow: upstream.maxInWindow,
        limit: LIMIT.requests,
        windowMs: LIMIT.windowMs,
        rateLimited: upstream.stats.rateLimited,
        calls: upstream.stats.total,
        maxGrantsInWindow: audit.maxGrantsInWindow,
        claimDelayMs: audit.claimDelayMs,
      },
      memory: {
        idleBefore,
        warmup: w,
        end: e,
        idleAfter,
        rssChangePct: round(((e.rssMiB - w.rssMiB) / w.rssMiB) * 100),
        series,
      },
      latency,
    };
  } finally {
    if (child.connected) await runtime.ask({ type: 'stop' }).catch(() => undefined);
    if (child.exitCode === null) {
      await new Promise((r) => {
        const t = setTimeout(() => {
          child.kill('SIGKILL');
          r(undefined);
        }, 15_000);
        child.once('exit', () => {
          clearTimeout(t);
          r(undefined);
        });
      });
    }
  }
};

export const soakMarkdown = (r: SoakResult): string => {
  const rows = (o: Record<string, number>) =>
    Object.entries(o)
      .sort((a, b) => b[1] - a[1])
      .map(([k, v]) => `| ${k} | ${v} |`);
  const types = (s: Sample) =>
    Object.entries(s.byType)
      .sort((a, b) => b[1] - a[1])
      .slice(0, 4)
      .map(([k, v]) => `${k} ${v}`)
      .join(', ');
  const m = r.memory;
  return [
    `## Soak (${r.machine.date.slice(0, 10)}, ${r.machine.cores} cores, ${r.machine.cpu}, node ${r.machine.node})`,
    '',
    `${r.settings.agents} agents for ${r.settings.minutes} min against the local runtime (loopback), upstream limit ${r.upstream.limit} per ${r.upstream.windowMs / 1000} s; priority mix ${JSON.stringify(r.settings.priorityMix)}, 30 % streaming, 2 % disconnect mid-request, an upstream fault burst every minute (${(r.settings.faults as string[]).join(', ')}).`,
    '',
    `**Accounting: ${r.requests.sent} requests sent, ${r.tickets.total} tickets, ${r.tickets.refusedBeforeAdmission} refused before admission (no ticket), ${r.tickets.open} open — ${r.accounted ? 'every request in exactly one terminal state' : 'MISMATCH'}.**`,
    '',
    '| ticket state (reason) | count |',
    '|---|---|',
    ...rows(r.tickets.byState),
    '',
    '| reply the agent saw | count |',
    '|---|---|',
    ...rows(r.requests.byReply),
    '',
    `**Upstream: at most ${r.upstream.maxInWindow} calls accepted in any ${r.upstream.windowMs / 1000} s window (limit ${r.upstream.limit}); ${r.upstream.rateLimited} calls were refused by the upstream's own window limit (overspend), ${r.upstream.calls} calls in all.** Grants: at most ${r.upstream.maxGrantsInWindow} in any window; grant → claim delay p50 ${r.upstream.claimDelayMs.p50} ms, p99 ${r.upstream.claimDelayMs.p99} ms, max ${r.upstream.claimDelayMs.max} ms.`,
    '',
    '| runtime process | RSS MiB | heap MiB | active handles | top handle types |',
    '|---|---|---|---|---|',
    `| idle, before load | ${m.idleBefore.rssMiB} | ${m.idleBefore.heapMiB} | ${m.idleBefore.handles} | ${types(m.idleBefore)} |`,
    `| after warm-up (${round((r.settings.warmupMs as number) / 1000, 0)} s) | ${m.warmup.rssMiB} | ${m.warmup.heapMiB} | ${m.warmup.handles} | ${types(m.warmup)} |`,
    `| end of load | ${m.end.rssMiB} | ${m.end.heapMiB} | ${m.end.handles} | ${types(m.end)} |`,
    `| idle, after drain | ${m.idleAfter.rssMiB} | ${m.idleAfter.heapMiB} | ${m.idleAfter.handles} | ${types(m.idleAfter)} |`,
    '',
    `RSS at the end of the load vs after warm-up: ${r.memory.rssChangePct >= 0 ? '+' : ''}${r.memory.rssChangePct} % (bound ±10 %). Samples are taken after a forced GC.`,
    '',
    '| latency of successful requests (ms) | p50 | p95 | p99 | max | n |',
    '|---|---|---|---|---|---|',
    ...Object.entries(r.latency).map(
      ([p, s]) => `| ${p} | ${s.p50} | ${s.p95} | ${s.p99} | ${s.max} | ${s.n} |`,
    ),
  ].join('\n');
};

/** The bench runner's entry: `npm run bench -- soak [--minutes N] [--agents N]`. */
export const runSoakBench = async (opts: BenchOptions): Promise<BenchResult> => {
  const r = await runSoak({
    minutes: option('minutes', 'SOAK_MINUTES', 10),
    agents: option('agents', 'SOAK_AGENTS', 500),
    log: opts.log,
  });
  mkdirSync(RESULTS, { recursive: true });
  writeFileSync(`${RESULTS}/soak.json`, `${JSON.stringify(r, null, 2)}\n`);
  const markdown = soakMarkdown(r);
  writeFileSync(`${RESULTS}/soak.md`, `${markdown}\n`);
  return { markdown };
};

if (process.argv.includes('--soak-runtime')) await runtimeChild();
