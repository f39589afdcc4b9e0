// Bench `fleet`: M agents with a priority mix against a simulated NVIDIA-like upstream, the same workload run in
// turn straight to the upstream, with client-side AWS adaptive limiting, with a shared Bottleneck limiter on
// Redis, and through sluice — at heavy and moderate overload and with open-loop bursts.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { DEFAULT_CONFIG } from '../lib/domain/config.js';
import { PRIORITIES, type Priority } from '../lib/domain/priority.js';
import { parseWeights } from '../lib/domain/priority-policy.js';
import { startEmulators } from '../local/emulators.js';
import {
  callsPerBin,
  maxInWindow,
  type RefusalStats,
  type RunMetrics,
  refusalsOf,
  runMetrics,
  steadyRefusalStats,
  tagCalls,
  weightedShareCheck,
} from './support/analysis.js';
import { codeVersion } from './support/code.js';
import { type RedisServer, startRedis } from './support/redis.js';
import {
  adaptiveSetup,
  bottleneckSetup,
  directSetup,
  type Setup,
  type SetupContext,
  sluiceEnv,
  sluicePoolSetup,
  sluiceSetup,
} from './support/setups.js';
import { type TimeScale, timeScale } from './support/sim.js';
import { machine, round } from './support/stats.js';
import { binPanels, latencyBars } from './support/svg.js';
import {
  agentPriorities,
  burstyArrivals,
  type RequestRecord,
  runWorkload,
  type Workload,
} from './support/workload.js';

const RESULTS = 'bench/results';
/** Result files' name: `fleet` by default; e.g. `fleet-1x` keeps a real-time run beside the time-scaled one. */
const NAME = process.env.SLUICE_BENCH_NAME ?? 'fleet';
/** Scenarios where sluice runs a second time with less compression (SLUICE_BENCH_CHECK_SCALE). */
const CHECKED = ['heavy'];

/** Bench knobs from the environment (the `npm run bench` runner passes only names). */
const knob = (name: string, fallback: number): number => {
  const raw = process.env[name];
  const n = raw === undefined || raw === '' ? Number.NaN : Number(raw);
  return Number.isFinite(n) && n > 0 ? n : fallback;
};

/** The modelled upstream: NVIDIA-like, 40 calls per sliding minute, worker cap, 429 without Retry-After. */
export const UPSTREAM_MODEL = {
  limit: { requests: 40, windowMs: 60_000 },
  maxConcurrency: 32,
  firstByteDelayMs: 1_000,
  tokenDelayMs: 250,
  tokensPerResponse: 12,
  retryAfterSeconds: null,
} as const;

/** Modelled time of one answer with no queueing (first byte + tokens). */
export const SERVICE_MS =
  UPSTREAM_MODEL.firstByteDelayMs + UPSTREAM_MODEL.tokenDelayMs * (UPSTREAM_MODEL.tokensPerResponse - 1);

interface Scenario {
  name: string;
  title: string;
  description: string;
  /** Offered load without queueing, requests per modelled minute. */
  offeredRpm: number;
  workload: Workload;
  /** Setups this scenario runs (by name); unset = every setup except those only some scenarios name. */
  setups?: readonly string[];
}

/** Share of repeated prompts in the response cache's scenario (issue 16.1). */
const REPEAT_FRACTION = 0.3;
/** Setups that run only in the scenarios naming them. */
const SCENARIO_ONLY_SETUPS = ['sluice-cache'];
/** Setups that run only when SLUICE_BENCH_SETUPS names them (a default run keeps its rows and length). */
const OPT_IN_SETUPS = ['sluice-pool'];

const scenarios = (agents: number, durationMs: number, seed: number): Scenario[] => {
  const limitRpm = (UPSTREAM_MODEL.limit.requests * 60_000) / UPSTREAM_MODEL.limit.windowMs;
  const heavyThink = 1_000;
  // Closed loop at 1.5× the limit: M / (think + service) = 1.5 · limit.
  const moderateThink = (agents * 60_000) / (1.5 * limitRpm) - SERVICE_MS;
  const base = { agents, durationMs, streamFraction: 0.5, seed };
  return [
    {
      name: 'heavy',
      title: 'Heavy overload',
      description: `closed loop, think time uniform 0–${heavyThink / 1000} s`,
      offeredRpm: round((agents * 60_000) / (heavyThink / 2 + SERVICE_MS), 0),
      workload: { ...base, kind: 'closed', thinkMs: (rng) => rng.uniform(0, heavyThink) },
    },
    {
      name: 'moderate',
      title: 'Moderate overload',
      description: `closed loop, think time exponential, mean ${round(moderateThink / 1000, 1)} s`,
      offeredRpm: round(1.5 * limitRpm, 0),
      workload: { ...base, kind: 'closed', thinkMs: (rng) => rng.exponential(moderateThink) },
    },
    {
      name: 'bursty',
      title: 'Open loop with bursts',
      description: `open loop: Poisson ${0.75 * limitRpm} rpm plus a burst of ${0.75 * limitRpm} requests within 2 s every minute`,
      offeredRpm: round(1.5 * limitRpm, 0),
      workload: {
        ...base,
        kind: 'open',
        arrivals: burstyArrivals({
          agents,
          durationMs,
          rpm: 0.75 * limitRpm,
          burst: { size: 0.75 * limitRpm, everyMs: 60_000, spreadMs: 2_000 },
          seed,
        }),
      },
    },
    {
      // The heavy overload with 30 % of the requests repeating one of 10 shared prompts: with the response cache
      // on, completed requests per minute may exceed the key's limit while upstream calls stay at it.
      name: 'repeated',
      title: 'Heavy overload, 30 % repeated prompts',
      description: `closed loop, think time uniform 0–${heavyThink / 1000} s; ${REPEAT_FRACTION * 100} % of requests repeat one of 10 prompts shared by all agents`,
      offeredRpm: round((agents * 60_000) / (heavyThink / 2 + SERVICE_MS), 0),
      workload: {
        ...base,
        kind: 'closed',
        thinkMs: (rng) => rng.uniform(0, heavyThink),
        repeatFraction: REPEAT_FRACTION,
        repeatPool: 10,
      },
      setups: ['sluice-probe', 'sluice-cache'],
    },
  ];
};

interface SetupResult {
  setup: string;
  label: string;
  skipped?: string;
  metrics?: RunMetrics;
  /** Calls per 10 s (modelled): accepted and 429. */
  bins?: { binMs: number; accepted: number[]; refused: number[] };
  /** A pool: the hidden total (calls per modelled minute) goodput is measured against. */
  hiddenLimitRpm?: number;
  /** A pool: each member's calls (metrics' calls, 429s and busiest window are summed over them). */
  perUpstream?: PoolMemberResult[];
  /** A row merged in from a later run (mergeFleetResults): that run's date, code and load. */
  run?: RowRun;
}

/** Where a merged row came from. */
interface RowRun {
  date: string;
  code: ReturnType<typeof codeVersion>;
  loadavg: number[];
}

interface PoolMemberResult {
  name: string;
  calls: number;
  upstream429: number;
  maxCallsIn60s: number;
  maxAcceptedIn60s: number;
}

export interface FleetResult {
  machine: ReturnType<typeof machine> & { loadavg: number[] };
  code: ReturnType<typeof codeVersion>;
  timeScale: { factor: number; note: string };
  settings: Record<string, unknown>;
  scenarios: {
    name: string;
    title: string;
    description: string;
    offeredRpm: number;
    results: SetupResult[];
  }[];
  wallSeconds: number;
}

export const runFleetBench = async (opts: { log: (line: string) => void }): Promise<{ markdown: string }> => {
  const log = opts.log;
  const started = Date.now();
  const scale = timeScale(knob('SLUICE_BENCH_SCALE', 10));
  const agents = Math.round(knob('SLUICE_BENCH_AGENTS', 40));
  // Longer than max_wait_s + request_timeout_s: a request queued in vain must end (or count as unserved) within it.
  const durationMs = knob('SLUICE_BENCH_DURATION_S', 360) * 1000;
  const seed = Math.round(knob('SLUICE_BENCH_SEED', 42));
  const inversionBoundMs = 5_000;
  const only = (process.env.SLUICE_BENCH_SETUPS ?? '').split(',').filter(Boolean);
  const onlyScenarios = (process.env.SLUICE_BENCH_SCENARIOS ?? '').split(',').filter(Boolean);
  const limit = UPSTREAM_MODEL.limit;
  const limitRpm = (limit.requests * 60_000) / limit.windowMs;
  process.env.POWERTOOLS_LOG_LEVEL ??= 'ERROR';
  process.env.LOG_LEVEL ??= 'ERROR';

  const sluice = sluiceSetup(DEFAULT_CONFIG.retreatPreset);
  // The same system with weighted priority shares (issue 11.3): no priority starves under sustained overload.
  const weightedBase = sluiceSetup(DEFAULT_CONFIG.retreatPreset, { SLUICE_PRIORITY_POLICY: 'weighted' });
  const weighted: Setup = {
    ...weightedBase,
    settings: { ...weightedBase.settings, priorityPolicy: `weighted ${DEFAULT_CONFIG.priorityWeights}` },
    name: 'sluice-weighted',
    label: `sluice, priority_policy weighted ${DEFAULT_CONFIG.priorityWeights}`,
  };
  // The response cache on by config default for the whole run (a day, modelled): repeated prompts are answered
  // from it, every other request stores its answer too (issue 16.1).
  const cachedBase = sluiceSetup(DEFAULT_CONFIG.retreatPreset, {
    SLUICE_CACHE_TTL_S: String(scale.real(86_400_000) / 1000),
  });
  const cached: Setup = {
    ...cachedBase,
    settings: { ...cachedBase.settings, responseCache: 'cache_ttl_s = a day (modelled), scope deployment' },
    name: 'sluice-cache',
    label: 'sluice, response cache on (cache_ttl_s)',
  };
  const setups: Setup[] = [
    directSetup,
    adaptiveSetup('default'),
    adaptiveSetup('fair'),
    bottleneckSetup,
    sluice,
    weighted,
    cached,
    sluicePoolSetup(DEFAULT_CONFIG.retreatPreset),
  ].filter((s) => (only.length === 0 ? !OPT_IN_SETUPS.includes(s.name) : only.includes(s.name)));
  const setupsOf = (sc: Scenario) =>
    setups.filter((s) => (sc.setups ? sc.setups.includes(s.name) : !SCENARIO_ONLY_SETUPS.includes(s.name)));
  const checkFactor = knob('SLUICE_BENCH_CHECK_SCALE', 1);
  const checkScale = checkFactor < scale.factor ? timeScale(checkFactor) : undefined;
  const plan = scenarios(agents, durationMs, seed).filter(
    (s) => onlyScenarios.length === 0 || onlyScenarios.includes(s.name),
  );
  const runs = plan.reduce((n, sc) => n + setupsOf(sc).length, 0);
  const checkRuns = checkScale
    ? plan
        .filter((sc) => CHECKED.includes(sc.name))
        .reduce((n, sc) => n + setupsOf(sc).filter((s) => s === sluice || s === weighted).length, 0)
    : 0;
  log(
    `fleet: ${plan.length} scenarios, ${runs} runs, ${durationMs / 1000} s modelled each at ${scale.factor}×${checkScale ? `, plus ${checkRuns} sluice runs at ${checkScale.factor}× in ${CHECKED.join(' and ')}` : ''} (≈ ${Math.ceil((runs * scale.real(durationMs) + (checkScale ? checkRuns * checkScale.real(durationMs) : 0)) / 60_000)} min)`,
  );

  const emulators = await startEmulators();
  const redisStart = await startRedis();
  const redis: RedisServer | undefined = 'missing' in redisStart ? undefined : redisStart;
  if ('missing' in redisStart) log(`fleet: ${redisStart.missing}; the Bottleneck setup is skipped`);
  const priorities = agentPriorities(agents);
  const result: FleetResult = {
    machine: { ...machine(), loadavg: loadavg().map((x) => round(x, 2)) },
    code: codeVersion(),
    timeScale: {
      factor: scale.factor,
      note: `Everything runs ${scale.factor}× faster than the modelled world: the upstream allows ${limit.requests} calls per ${scale.real(limit.windowMs) / 1000} s real, think times, backoffs and sluice's windows are divided by ${scale.factor}. All times and rates below are modelled.`,
    },
    settings: {
      upstream: {
        simulator: 'local/fake-upstream.ts startFakeUpstream',
        hiddenLimit: `${limit.requests} calls per sliding ${limit.windowMs / 1000} s (rate-limited calls do not count)`,
        maxConcurrency: UPSTREAM_MODEL.maxConcurrency,
        answer: `first byte ${UPSTREAM_MODEL.firstByteDelayMs / 1000} s, ${UPSTREAM_MODEL.tokensPerResponse} tokens × ${UPSTREAM_MODEL.tokenDelayMs / 1000} s`,
        on429:
          'NVIDIA body {"status":429,"title":"Too Many Requests"}, no Retry-After; worker cap: ResourceExhausted 429',
      },
      workload: {
        agents,
        priorities: Object.fromEntries(PRIORITIES.map((p) => [p, priorities.filter((x) => x === p).length])),
        streaming: '50 % of requests (seeded)',
        seed,
        durationSeconds: durationMs / 1000,
        steadyStateFrom: `${limit.windowMs / 1000} s (the first window is excluded from goodput and latency)`,
        inversionBoundSeconds: inversionBoundMs / 1000,
      },
      setups: Object.fromEntries(setups.map((s) => [s.name, { label: s.label, ...s.settings }])),
      sluiceEnv: sluiceEnv(scale, limit, DEFAULT_CONFIG.retreatPreset),
      priorityWeights: DEFAULT_CONFIG.priorityWeights,
      redis: redis ? `redis-server ${redis.version}, --save '' --appendonly no` : 'missing',
    },
    scenarios: [],
    wallSeconds: 0,
  };
  try {
    const runOne = async (
      sc: Scenario,
      setup: Setup,
      runScale: TimeScale,
      where: string,
      label = setup.label,
      name = setup.name,
    ): Promise<SetupResult> => {
      const skipped = setup.unavailable?.({ redis });
      if (skipped) return { setup: name, label, skipped };
      const ctx: SetupContext = {
        scale: runScale,
        priorities,
        limit,
        upstream: {
          limit: { requests: limit.requests, windowMs: runScale.real(limit.windowMs) },
          maxConcurrency: UPSTREAM_MODEL.maxConcurrency,
          firstByteDelayMs: runScale.real(UPSTREAM_MODEL.firstByteDelayMs),
          tokenDelayMs: runScale.real(UPSTREAM_MODEL.tokenDelayMs),
          tokensPerResponse: UPSTREAM_MODEL.tokensPerResponse,
          retryAfterSeconds: null,
        },
        emulators,
        redis,
        runId: `${sc.name}-${name}-${Date.now().toString(36)}`.replace(/[^A-Za-z0-9_-]/g, '-'),
      };
      const running = await setup.start(ctx);
      const members = running.pool ?? [{ name: '', upstream: running.upstream }];
      const allCalls = () => members.flatMap((m) => m.upstream.calls);
      const hiddenLimitRpm = limitRpm * (setup.upstreamCount ?? 1);
      try {
        const run = await runWorkload(sc.workload, running.send, runScale, {
          onTick: (records, clock) => {
            const calls = allCalls();
            const refused = calls.filter((c) => c.kind === 'rate_limited' || c.kind === 'capacity').length;
            log(
              `${where}: ${Math.round(clock.now() / 1000)}/${durationMs / 1000} s · ${records.filter((r) => r.ok).length} ok · ${records.filter((r) => r.end !== undefined && !r.ok).length} failed · upstream ${calls.length} calls, ${refused} × 429`,
            );
          },
        });
        const calls = tagCalls(allCalls(), run.clock);
        const metrics = runMetrics({
          records: run.records,
          calls,
          durationMs,
          windowMs: limit.windowMs,
          limitRpm: hiddenLimitRpm,
          inversionBoundMs,
        });
        // A pool: each member's own figures (its hidden limit is the single upstream's).
        const perUpstream = running.pool?.map((m): PoolMemberResult => {
          // As runMetrics counts the whole: calls within the run, 429 = rate limit or worker cap.
          const own = tagCalls(m.upstream.calls, run.clock).filter((c) => c.at >= 0 && c.at <= durationMs);
          return {
            name: m.name,
            calls: own.length,
            upstream429: own.filter((c) => c.kind === 'rate_limited' || c.kind === 'capacity').length,
            maxCallsIn60s: maxInWindow(
              own.map((c) => c.at),
              limit.windowMs,
            ),
            maxAcceptedIn60s: maxInWindow(
              own.filter((c) => c.accepted).map((c) => c.at),
              limit.windowMs,
            ),
          };
        });
        log(
          `${where}: goodput ${metrics.goodputRpm} rpm (${metrics.goodputPctOfLimit} % of ${hiddenLimitRpm}), 429s ${metrics.upstream429} (${metrics.upstream429Pct} %), failed ${metrics.failed}, unserved ${metrics.unserved} (${byPriority(metrics.unservedByPriority)}), inversions ${metrics.inversions}, max ${metrics.maxCallsIn60s} calls/60 s, refusals ${metrics.refusals?.all.n} (p99 ${metrics.refusals?.all.p99} s, ${metrics.refusals?.all.over10sPct} % after > 10 s)`,
        );
        if (perUpstream) log(`${where}: per upstream ${perUpstreamText(perUpstream)}`);
        // Per-request and per-call data for tracing a run (every attempt of every request, every upstream call).
        const dump = process.env.SLUICE_BENCH_DUMP;
        if (dump) {
          mkdirSync(dump, { recursive: true });
          writeFileSync(
            `${dump}/${NAME}-${sc.name}-${name}.json`,
            JSON.stringify({ records: run.records, calls }),
          );
        }
        return {
          setup: name,
          label,
          metrics,
          bins: callsPerBin(calls, 10_000, durationMs),
          ...(perUpstream ? { hiddenLimitRpm, perUpstream } : {}),
        };
      } finally {
        await running.stop();
      }
    };
    for (const [si, sc] of plan.entries()) {
      const results: SetupResult[] = [];
      const own = setupsOf(sc);
      for (const [i, setup] of own.entries()) {
        const where = `fleet [${si + 1}/${plan.length} ${sc.name}] ${setup.name} (${i + 1}/${own.length})`;
        results.push(await runOne(sc, setup, scale, where));
      }
      // The same sluice runs with less compression (by default at real time): the headline figures, in the same
      // table as the time-scaled alternatives, and what the time scale costs a system with real-time overheads.
      if (checkScale && CHECKED.includes(sc.name)) {
        for (const setup of own.filter((s) => s === sluice || s === weighted)) {
          results.push(
            await runOne(
              sc,
              setup,
              checkScale,
              `fleet [${si + 1}/${plan.length} ${sc.name}] ${setup.name} at ${checkScale.factor}×`,
              `${setup.label}, at ${checkScale.factor}× instead of ${scale.factor}×`,
              `${setup.name}-at-${checkScale.factor}x`,
            ),
          );
        }
      }
      result.scenarios.push({ ...sc, results });
      writeCharts(NAME, result.scenarios.at(-1) as FleetResult['scenarios'][number], limit);
    }
  } finally {
    await redis?.stop();
    await emulators.stop();
  }
  result.wallSeconds = Math.round((Date.now() - started) / 1000);
  mkdirSync(RESULTS, { recursive: true });
  writeFileSync(`${RESULTS}/${NAME}.json`, `${JSON.stringify(result, null, 2)}\n`);
  const markdown = fleetMarkdown(result);
  writeFileSync(`${RESULTS}/${NAME}.md`, `${markdown}\n`);
  return { markdown };
};

const writeCharts = (
  name: string,
  sc: FleetResult['scenarios'][number],
  limit: { requests: number; windowMs: number },
) => {
  mkdirSync(RESULTS, { recursive: true });
  const ran = sc.results.filter((r) => r.metrics && r.bins);
  const perBin = (limit.requests * 10_000) / limit.windowMs;
  writeFileSync(
    `${RESULTS}/${name}-${sc.name}-calls.svg`,
    binPanels({
      title: `${sc.title} (${sc.description}): upstream calls per 10 s`,
      binMs: 10_000,
      limitPerBin: perBin,
      limitLabel: `hidden limit ${limit.requests}/min = ${round(perBin, 1)} per 10 s`,
      yCap: perBin * 6,
      panels: ran.map((r) => ({
        title: r.label,
        subtitle: `goodput ${r.metrics?.goodputRpm} rpm${r.hiddenLimitRpm ? ` (pool: hidden total ${r.hiddenLimitRpm}/min)` : ''} · ${r.metrics?.upstream429} × 429 (${r.metrics?.upstream429Pct} %) · ${r.metrics?.failed} failed at agent`,
        accepted: r.bins?.accepted ?? [],
        refused: r.bins?.refused ?? [],
      })),
    }),
  );
  writeFileSync(
    `${RESULTS}/${name}-${sc.name}-latency.svg`,
    latencyBars({
      title: `${sc.title}: end-to-end latency of completed requests per priority (steady state)`,
      groups: PRIORITIES,
      series: ran.map((r) => ({ name: r.setup, values: r.metrics?.latency ?? {} })),
    }),
  );
};

/** A pool's members: calls, 429s and max calls in 60 s (sent / accepted) each. */
const perUpstreamText = (members: readonly PoolMemberResult[]) =>
  members
    .map(
      (u) =>
        `${u.name} ${u.calls} calls, ${u.upstream429} × 429, max ${u.maxCallsIn60s} / ${u.maxAcceptedIn60s} in 60 s`,
    )
    .join('; ');

/** `u / h / n / l` of a per-priority figure (older results without it show –). */
const byPriority = (v: Record<Priority, number> | undefined) =>
  v ? PRIORITIES.map((p) => v[p]).join(' / ') : '–';

const lat = (m: RunMetrics, p: Priority) => {
  const l = m.latency[p];
  return l.n === 0 ? '–' : `${l.p50} / ${l.p95} / ${l.p99}`;
};

/** A merged row's label says which run it came from. */
const withRunLabel = (x: SetupResult): SetupResult =>
  x.run
    ? {
        ...x,
        label: `${x.label} — rerun ${x.run.date.slice(0, 10)}, code ${x.run.code.commit}${x.run.code.dirty ? ' + uncommitted changes' : ''}, load ${x.run.loadavg.join(' / ')}`,
      }
    : x;

const steadyText = (v: RefusalStats | undefined) =>
  v ? `${v.n}, ${v.p99 ?? '–'}, ${v.over10sPct ?? '–'}` : '–';

/**
 * Replaces rows of `into` (same scenario, same setup name) with those of a later run `from` (e.g. sluice's rows
 * rerun alone on newer code): each merged row keeps its run's date, code and load, the table and charts of `into`
 * are rendered again. Rows of `from` without a match are appended to their scenario.
 */
export const mergeFleetResults = (into: string, from: string, dumpDir?: string): FleetResult => {
  const target = JSON.parse(readFileSync(`${RESULTS}/${into}.json`, 'utf8')) as FleetResult;
  const source = JSON.parse(readFileSync(`${RESULTS}/${from}.json`, 'utf8')) as FleetResult;
  const run: RowRun = { date: source.machine.date, code: source.code, loadavg: source.machine.loadavg };
  for (const sc of source.scenarios) {
    const at = target.scenarios.find((t) => t.name === sc.name);
    if (!at) continue;
    for (const row of sc.results) {
      const merged = { ...row, run };
      // A run from before the steady-state refusal figure: computed from its dump (SLUICE_BENCH_DUMP), if kept.
      const dump = dumpDir ? `${dumpDir}/${from}-${sc.name}-${row.setup}.json` : undefined;
      if (merged.metrics && !merged.metrics.refusalsSteady && dump && existsSync(dump)) {
        const { records } = JSON.parse(readFileSync(dump, 'utf8')) as { records: RequestRecord[] };
        merged.metrics = {
          ...merged.metrics,
          refusalsSteady: steadyRefusalStats(refusalsOf(records), UPSTREAM_MODEL.limit.windowMs),
        };
      }
      const i = at.results.findIndex((t) => t.setup === row.setup);
      if (i >= 0) at.results[i] = merged;
      else at.results.push(merged);
    }
    writeCharts(into, at, UPSTREAM_MODEL.limit);
  }
  writeFileSync(`${RESULTS}/${into}.json`, `${JSON.stringify(target, null, 2)}\n`);
  writeFileSync(`${RESULTS}/${into}.md`, `${fleetMarkdown(target, into)}\n`);
  return target;
};

export const fleetMarkdown = (r: FleetResult, name = NAME): string => {
  const s = r.settings as {
    upstream: Record<string, unknown>;
    workload: {
      agents: number;
      priorities: Record<string, number>;
      durationSeconds: number;
      seed: number;
      inversionBoundSeconds: number;
    };
    setups: Record<string, { label: string } & Record<string, unknown>>;
    priorityWeights?: string;
  };
  const lines = [
    `## Fleet: ${s.workload.agents} agents sharing one 40 rpm key`,
    '',
    `${r.machine.date.slice(0, 10)} · ${r.machine.cores} cores, ${r.machine.cpu}, ${r.machine.memoryGiB} GiB · node ${r.machine.node} · load average at start ${r.machine.loadavg.join(' / ')} · code ${r.code.commit}${r.code.dirty ? ' + uncommitted changes' : ''} · wall ${Math.round(r.wallSeconds / 60)} min`,
    '',
    `**Time scale ${r.timeScale.factor}×.** ${r.timeScale.note}`,
    '',
    ...(r.scenarios.some((sc) => sc.results.some((x) => x.label.includes(' instead of ')))
      ? [
          'Rows labelled "at N× instead of …" are the same setup run again at that scale (1×: real time, nothing compressed): sluice has real-time overheads that compression inflates (DynamoDB and SQS round trips, reads of waiting tickets; at 10× it must grant every 150 ms real, and a grant is called on within 600 ms real — grant_slack_s is capped at a tenth of the 6 s window), so its 1× rows are the figures to read.',
          '',
        ]
      : []),
    `Upstream: ${s.upstream.hiddenLimit}; worker cap ${s.upstream.maxConcurrency} concurrent calls; answer ${s.upstream.answer}; 429s carry no Retry-After. Agents: ${Object.entries(
      s.workload.priorities,
    )
      .map(([p, n]) => `${n} ${p}`)
      .join(
        ', ',
      )}; half the requests stream; seed ${s.workload.seed}; ${s.workload.durationSeconds} s per run, goodput and latency from the second minute on; 429s, failures and inversions over the whole run; requests still waiting or running when a run ends are *unserved* (not successes, not hidden). An inversion is an upstream call admitted for a lower priority while a higher-priority request had waited more than ${s.workload.inversionBoundSeconds} s.`,
    '',
  ];
  const pools = r.scenarios.flatMap((sc) => sc.results).filter((x) => x.perUpstream);
  if (pools.length > 0)
    lines.push(
      `A pool row (${[...new Set(pools.map((x) => x.label))].join(', ')}) has several upstreams, each its own fake upstream with its own key and its own hidden limit as above: its goodput is against their total (${pools[0]?.hiddenLimitRpm}/min), its calls and 429s are summed over them (each member's in brackets), and the busiest 60 s is given for the whole and for each member (each at most the single limit).`,
      '',
    );
  for (const sc of r.scenarios) {
    lines.push(
      `### ${sc.title} — ${sc.description} (offered ≈ ${sc.offeredRpm} rpm, ${round(sc.offeredRpm / 40, 1)}× the limit)`,
      '',
      '| setup | goodput rpm (% of the hidden 40) | completed per min u / h / n / l | upstream calls | 429s (% of calls) | failed at agent | unserved at the end u / h / n / l | agents served nothing u / h / n / l | max calls in 60 s (sent / accepted) | inversions | latency s p50 / p95 / p99: urgent | high | normal | low |',
      '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|',
    );
    for (const x of sc.results.map(withRunLabel)) {
      if (!x.metrics) {
        lines.push(`| ${x.label} | skipped: ${x.skipped} | | | | | | | | | | | | |`);
        continue;
      }
      const m = x.metrics;
      // A pool: goodput against its hidden total, calls and 429s summed, the busiest window per member too.
      const ofHidden = x.hiddenLimitRpm ? ` of the pool's ${x.hiddenLimitRpm}` : '';
      const perMember = x.perUpstream
        ? `; per upstream ${x.perUpstream.map((u) => `${u.name} ${u.maxCallsIn60s} / ${u.maxAcceptedIn60s}`).join(', ')}`
        : '';
      const summed = x.perUpstream ? ` (sum of ${x.perUpstream.map((u) => u.calls).join(' + ')})` : '';
      const summed429 = x.perUpstream ? `; ${x.perUpstream.map((u) => u.upstream429).join(' + ')}` : '';
      lines.push(
        `| ${x.label} | ${m.goodputRpm} (${m.goodputPctOfLimit} %${ofHidden}) | ${byPriority(m.completedRpmByPriority)} | ${m.upstreamCalls}${summed} | ${m.upstream429} (${m.upstream429Pct} %${summed429}) | ${m.failed} | ${m.unserved}: ${byPriority(m.unservedByPriority)} | ${byPriority(m.starvedAgentsByPriority)} | ${m.maxCallsIn60s} / ${m.maxAcceptedIn60s}${perMember} | ${m.inversions} | ${lat(m, 'urgent')} | ${lat(m, 'high')} | ${lat(m, 'normal')} | ${lat(m, 'low')} |`,
      );
    }
    const withRefusals = sc.results.map(withRunLabel).filter((x) => x.metrics?.refusals);
    if (withRefusals.length > 0) {
      lines.push(
        '',
        `Time to refusal (whole run): every attempt answered 429 (or 503 \`queue_full\`), timed from the attempt's send to the refusal (a stream refused after heartbeats: to the refusing event). Targets: p99 ≤ 1 s, ≤ 1 % of refusals after a wait > 10 s. The last column counts only the attempts sent from the second minute on (as goodput and latency): the whole run includes a fresh deployment's first seconds, when the load of more important work is not known yet.`,
        '',
        '| setup | refusals u / h / n / l (all) | p99 time to refusal s u / h / n / l (all) | refused after > 10 s, % u / h / n / l (all) | refusals by code | from the second minute on: refusals, p99 s, % after > 10 s |',
        '|---|---|---|---|---|---|',
      );
      for (const x of withRefusals) {
        const f = x.metrics!.refusals!;
        const of = (k: (v: RefusalStats) => number | null) =>
          `${PRIORITIES.map((p) => k(f[p]) ?? '–').join(' / ')} (${k(f.all) ?? '–'})`;
        lines.push(
          `| ${x.label} | ${of((v) => v.n)} | ${of((v) => v.p99)} | ${of((v) => v.over10sPct)} | ${Object.entries(
            x.metrics!.refusalCodes ?? {},
          )
            .sort((a, b) => b[1] - a[1])
            .map(([c, n]) => `${c} ${n}`)
            .join(', ')} | ${steadyText(x.metrics!.refusalsSteady)} |`,
        );
      }
    }
    for (const x of sc.results.map(withRunLabel)) {
      const m = x.metrics;
      const weights = x.setup.includes('weighted') ? parseWeights(s.priorityWeights ?? '') : undefined;
      if (!m?.backloggedPct || !weights) continue;
      const checks = weightedShareCheck({
        weights,
        measuredRpm: m.completedRpmByPriority,
        backloggedPct: m.backloggedPct,
        totalRpm: m.goodputRpm,
      });
      const u95 = m.latency.urgent.p95;
      const n95 = m.latency.normal.p95;
      const limited = checks.filter((c) => !c.backlogged);
      lines.push(
        '',
        `Weighted shares (${x.label}, steady state): work-conserving, the goodput (${m.goodputRpm} completed/min) split by weight among the backlogged priorities; a priority is backlogged when one of its requests is waiting for its grant (sluice's \`x-sluice-queue-ms\`) ≥ 95 % of the time. Target: each backlogged priority within ±15 % of its share; urgent p95 ≤ ¼ of normal p95 (here ${u95 ?? '–'} s against ${n95 ?? '–'} s: ${u95 !== null && n95 !== null ? (u95 <= n95 / 4 ? 'met' : 'not met') : 'not measured'}).`,
        '',
        '| priority | weight | waiting, % of time | expected completed/min | measured completed/min | deviation | within ±15 % |',
        '|---|---|---|---|---|---|---|',
        ...checks.map(
          (c) =>
            `| ${c.priority} | ${c.weight} | ${c.backloggedPct} % | ${c.backlogged ? c.expectedRpm : `${c.expectedRpm} (what it asked for; not backlogged)`} | ${c.measuredRpm} | ${c.deviationPct === null ? '–' : `${c.deviationPct > 0 ? '+' : ''}${c.deviationPct} %`} | ${c.withinTolerance === null ? '– (not backlogged)' : c.withinTolerance ? 'yes' : 'no'} |`,
        ),
      );
      if (limited.length > 0)
        lines.push(
          '',
          `Not backlogged: ${limited.map((c) => `${c.priority} (waiting ${c.backloggedPct} % of the time)`).join(', ')} — its closed-loop agents hold one request each, so it asks for less than its share and the rest flows to the others (work conserving); its figure is what it asked for, not a share.`,
        );
    }
    lines.push(
      '',
      `![calls per 10 s](${name}-${sc.name}-calls.svg)`,
      '',
      `![latency per priority](${name}-${sc.name}-latency.svg)`,
      '',
    );
  }
  lines.push(`Settings of every setup (also in ${name}.json):`, '');
  for (const [name, v] of Object.entries(s.setups)) {
    const { label, ...rest } = v;
    lines.push(
      `- **${name}** — ${label}: ${Object.entries(rest)
        .map(([k, x]) => `${k}: ${String(x)}`)
        .join('; ')}`,
    );
  }
  return lines.join('\n');
};
