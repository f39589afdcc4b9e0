// Bench `retreat`: the upstream's hidden limit steps 40 → 20 → 40 rpm while agents keep sluice busy; every
// retreat preset runs side by side (one local system each, same workload) and is judged on how it follows.
import { mkdirSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { RETREAT_PRESETS } from '../lib/domain/config.js';
import type { RetreatRecord } from '../lib/domain/retreat.js';
import { startEmulators } from '../local/emulators.js';
import { callsPerBin, type TaggedCall, tagCalls } from './support/analysis.js';
import { codeVersion } from './support/code.js';
import { type RunningSetup, type SetupContext, sluiceEnv, sluiceSetup } from './support/setups.js';
import { simClock, sleep, timeScale } from './support/sim.js';
import { machine, round } from './support/stats.js';
import { binPanels, PALETTE, traceChart } from './support/svg.js';
import { agentPriorities, type RequestRecord, runWorkload } from './support/workload.js';

const RESULTS = 'bench/results';
/** Result files' name: `retreat` by default; e.g. `retreat-1x` keeps a real-time run beside the time-scaled one. */
const NAME = process.env.SLUICE_BENCH_NAME ?? 'retreat';

const knob = (name: string, fallback: number): number => {
  const raw = process.env[name];
  const n = raw === undefined || raw === '' ? Number.NaN : Number(raw);
  return Number.isFinite(n) && n > 0 ? n : fallback;
};

const MIN = 60_000;
const WINDOW_MS = MIN;
/** The modelled upstream, as in the fleet bench. */
const UPSTREAM = { maxConcurrency: 32, firstByteDelayMs: 1_000, tokenDelayMs: 250, tokensPerResponse: 12 };

export interface RetreatPhases {
  base: number;
  constrained: number;
  /** Modelled ms: the limit drops at `dropAt` and lifts at `liftAt`; the run ends at `endAt`. */
  dropAt: number;
  liftAt: number;
  endAt: number;
}

export interface PresetResult {
  preset: string;
  /** Seconds from the drop until the 429 rate stays under 2 % for a whole window (start of the first clean window). */
  settleSeconds: number | null;
  /** Upstream 429s from the drop until then. */
  transition429s: number;
  /** Steady constrained span (drop + 2 min → lift). */
  constrained: {
    goodputRpm: number;
    goodputPctOfLimit: number;
    upstream429: number;
    calls: number;
    rate429Pct: number;
  };
  /** Effective rate over the steady constrained span: min, max, mean and ± half-range around the mean. */
  oscillation: { min: number; max: number; mean: number; pct: number };
  /** Seconds from the lift until the effective rate is ≥ 90 % of base. */
  recoverSeconds: number | null;
  /** Completed requests per minute over the last 2 minutes (after the lift). */
  afterGoodputRpm: number;
  /** Whole run. */
  upstreamCalls: number;
  upstream429: number;
  failedAtAgent: number;
  /** Why they failed (the client's last error after its retries), by kind. */
  failureKinds?: Record<string, number>;
  /** Effective rate over time: [modelled ms, modelled rpm]. */
  trace: [number, number][];
  transitions: RetreatRecord['transitions'];
  bins: { binMs: number; accepted: number[]; refused: number[] };
}

/** The kinds of failure after a failed count: ` (429 queue_wait_exceeded 90, …)`; nothing for older results. */
const failureText = (kinds: Record<string, number> | undefined) =>
  kinds && Object.keys(kinds).length > 0
    ? ` (${Object.entries(kinds)
        .sort((a, b) => b[1] - a[1])
        .map(([k, n]) => `${k} ${n}`)
        .join(', ')})`
    : '';

export interface RetreatBenchResult {
  machine: ReturnType<typeof machine> & { loadavg: number[] };
  code: ReturnType<typeof codeVersion>;
  timeScale: { factor: number; note: string };
  settings: Record<string, unknown>;
  phases: RetreatPhases;
  results: PresetResult[];
  wallSeconds: number;
}

/** Upstream 429 rate over a window of calls. */
const rateOf = (calls: readonly TaggedCall[], from: number, to: number) => {
  const inside = calls.filter((c) => c.at > from && c.at <= to);
  const refused = inside.filter(
    (c) => !c.accepted && (c.kind === 'rate_limited' || c.kind === 'capacity'),
  ).length;
  return { calls: inside.length, refused, rate: inside.length ? refused / inside.length : 0 };
};

export const presetMetrics = (
  preset: string,
  calls: readonly TaggedCall[],
  records: readonly RequestRecord[],
  trace: [number, number][],
  transitions: RetreatRecord['transitions'],
  ph: RetreatPhases,
  limits: { base: number; constrained: number },
): PresetResult => {
  // First window after the drop whose 429 rate is under 2 % (at least 5 calls in it).
  let settle: number | null = null;
  for (let t = ph.dropAt; t + WINDOW_MS <= ph.liftAt; t += 1_000) {
    const r = rateOf(calls, t, t + WINDOW_MS);
    if (r.calls >= 5 && r.rate < 0.02) {
      settle = t - ph.dropAt;
      break;
    }
  }
  const steadyFrom = ph.dropAt + 2 * MIN;
  const done = (from: number, to: number) =>
    records.filter((r) => r.ok && r.end !== undefined && r.end > from && r.end <= to).length;
  const c = rateOf(calls, steadyFrom, ph.liftAt);
  const goodput = (done(steadyFrom, ph.liftAt) * MIN) / (ph.liftAt - steadyFrom);
  // The trace holds samples; the rate in force over the span is sample-weighted (samples are evenly spaced).
  const inSpan = trace.filter(([t]) => t >= steadyFrom && t <= ph.liftAt).map(([, v]) => v);
  const mean = inSpan.length ? inSpan.reduce((a, b) => a + b, 0) / inSpan.length : 0;
  const min = inSpan.length ? Math.min(...inSpan) : 0;
  const max = inSpan.length ? Math.max(...inSpan) : 0;
  const back = trace.find(([t, v]) => t >= ph.liftAt && v >= 0.9 * limits.base);
  return {
    preset,
    settleSeconds: settle === null ? null : round(settle / 1000, 0),
    transition429s:
      settle === null
        ? rateOf(calls, ph.dropAt, ph.liftAt).refused
        : rateOf(calls, ph.dropAt, ph.dropAt + settle).refused,
    constrained: {
      goodputRpm: round(goodput, 1),
      goodputPctOfLimit: round((100 * goodput) / limits.constrained, 0),
      upstream429: c.refused,
      calls: c.calls,
      rate429Pct: round(100 * c.rate, 1),
    },
    oscillation: {
      min: round(min, 1),
      max: round(max, 1),
      mean: round(mean, 1),
      pct: mean ? round((100 * (max - min)) / 2 / mean, 0) : 0,
    },
    recoverSeconds: back ? round((back[0] - ph.liftAt) / 1000, 0) : null,
    afterGoodputRpm: round((done(ph.endAt - 2 * MIN, ph.endAt) * MIN) / (2 * MIN), 1),
    upstreamCalls: calls.length,
    upstream429: calls.filter((x) => x.kind === 'rate_limited' || x.kind === 'capacity').length,
    failedAtAgent: records.filter((r) => !r.ok && !r.cut).length,
    failureKinds: records
      .filter((r) => !r.ok && !r.cut)
      .reduce<Record<string, number>>((k, r) => {
        k[r.error ?? 'error'] = (k[r.error ?? 'error'] ?? 0) + 1;
        return k;
      }, {}),
    trace,
    transitions,
    bins: callsPerBin(calls, 10_000, ph.endAt),
  };
};

export const runRetreatBench = async (opts: {
  log: (line: string) => void;
}): Promise<{ markdown: string }> => {
  const log = opts.log;
  const started = Date.now();
  const scale = timeScale(knob('SLUICE_BENCH_RETREAT_SCALE', 2));
  const agents = Math.round(knob('SLUICE_BENCH_RETREAT_AGENTS', 20));
  const seed = Math.round(knob('SLUICE_BENCH_SEED', 42));
  const presets = (process.env.SLUICE_BENCH_PRESETS ?? RETREAT_PRESETS.join(','))
    .split(',')
    .filter((p): p is (typeof RETREAT_PRESETS)[number] => (RETREAT_PRESETS as readonly string[]).includes(p));
  const limits = { base: 40, constrained: 20 };
  const ph: RetreatPhases = {
    base: limits.base,
    constrained: limits.constrained,
    dropAt: 2 * MIN,
    liftAt: 9 * MIN,
    endAt: 15 * MIN,
  };
  process.env.POWERTOOLS_LOG_LEVEL ??= 'ERROR';
  process.env.LOG_LEVEL ??= 'ERROR';
  const service = UPSTREAM.firstByteDelayMs + UPSTREAM.tokenDelayMs * (UPSTREAM.tokensPerResponse - 1);
  // Closed loop offering 1.5× the base rate without queueing: M / (think + service) = 60 rpm.
  const thinkMean = (agents * MIN) / (1.5 * limits.base) - service;
  log(
    `retreat: presets ${presets.join(', ')} side by side, limit ${limits.base} → ${limits.constrained} at ${ph.dropAt / MIN} min → ${limits.base} at ${ph.liftAt / MIN} min, ${ph.endAt / MIN} min modelled at ${scale.factor}× (≈ ${Math.ceil(scale.real(ph.endAt) / MIN)} min)`,
  );
  const loadBefore = loadavg();
  const emulators = await startEmulators();
  const priorities = agentPriorities(agents);
  const runs: { preset: string; running: RunningSetup; trace: [number, number][] }[] = [];
  const results: PresetResult[] = [];
  try {
    for (const preset of presets) {
      const ctx: SetupContext = {
        scale,
        priorities,
        limit: { requests: limits.base, windowMs: WINDOW_MS },
        upstream: {
          limit: { requests: limits.base, windowMs: scale.real(WINDOW_MS) },
          maxConcurrency: UPSTREAM.maxConcurrency,
          firstByteDelayMs: scale.real(UPSTREAM.firstByteDelayMs),
          tokenDelayMs: scale.real(UPSTREAM.tokenDelayMs),
          tokensPerResponse: UPSTREAM.tokensPerResponse,
          retryAfterSeconds: null,
        },
        emulators,
        redis: undefined,
        runId: `retreat-${preset}-${Date.now().toString(36)}`,
      };
      runs.push({ preset, running: await sluiceSetup(preset).start(ctx), trace: [] });
    }
    const workload = {
      kind: 'closed' as const,
      agents,
      durationMs: ph.endAt,
      streamFraction: 0.5,
      seed,
      thinkMs: (rng: { exponential(mean: number): number }) => rng.exponential(thinkMean),
    };
    const clock = simClock(scale);
    const stopSampling = new AbortController();
    // The hidden limit steps, and each preset's effective rate is sampled, on the shared modelled clock.
    const driver = (async () => {
      let phase = 0;
      while (!stopSampling.signal.aborted) {
        const now = clock.now();
        if (phase === 0 && now >= ph.dropAt) {
          for (const r of runs)
            r.running.upstream.setLimit({ requests: limits.constrained, windowMs: scale.real(WINDOW_MS) });
          log(`retreat: ${Math.round(now / 1000)} s — hidden limit now ${limits.constrained}/min`);
          phase = 1;
        }
        if (phase === 1 && now >= ph.liftAt) {
          for (const r of runs)
            r.running.upstream.setLimit({ requests: limits.base, windowMs: scale.real(WINDOW_MS) });
          log(`retreat: ${Math.round(now / 1000)} s — hidden limit back to ${limits.base}/min`);
          phase = 2;
        }
        await Promise.all(
          runs.map(async (r) => {
            const rec = await r.running.system?.stores.retreatStore.get().catch(() => undefined);
            if (rec) r.trace.push([Math.round(now), round(rec.effectiveRpm / scale.factor, 2)]);
          }),
        );
        await sleep(scale.real(2_000), stopSampling.signal);
      }
    })();
    const outcomes = await Promise.all(
      runs.map((r, i) =>
        runWorkload(workload, r.running.send, scale, {
          clock,
          tickMs: 10_000,
          ...(i === 0
            ? {
                onTick: () => {
                  const line = runs
                    .map((x) => {
                      const calls = x.running.upstream.calls;
                      const n429 = calls.filter(
                        (k) => k.kind === 'rate_limited' || k.kind === 'capacity',
                      ).length;
                      return `${x.preset} ${x.trace.at(-1)?.[1] ?? '?'} rpm, ${n429} × 429`;
                    })
                    .join(' · ');
                  log(`retreat: ${Math.round(clock.now() / 1000)}/${ph.endAt / 1000} s · ${line}`);
                },
              }
            : {}),
        }),
      ),
    );
    stopSampling.abort();
    await driver;
    for (const [i, r] of runs.entries()) {
      const run = outcomes[i];
      if (!run) continue;
      const record = await r.running.system?.stores.retreatStore.get();
      const m = presetMetrics(
        r.preset,
        tagCalls(r.running.upstream.calls, run.clock),
        run.records,
        r.trace,
        record?.transitions ?? [],
        ph,
        limits,
      );
      results.push(m);
      log(
        `retreat ${r.preset}: settles in ${m.settleSeconds ?? '–'} s (${m.transition429s} × 429), constrained goodput ${m.constrained.goodputRpm} rpm (${m.constrained.goodputPctOfLimit} % of 20), 429s ${m.constrained.rate429Pct} %, ±${m.oscillation.pct} %, back ≥ 36 rpm in ${m.recoverSeconds ?? '–'} s`,
      );
    }
  } finally {
    for (const r of runs) await r.running.stop().catch(() => undefined);
    await emulators.stop();
  }
  const result: RetreatBenchResult = {
    machine: { ...machine(), loadavg: loadBefore.map((x) => round(x, 2)) },
    code: codeVersion(),
    timeScale: {
      factor: scale.factor,
      note: `Runs ${scale.factor}× faster than the modelled world (windows, holds, think times divided by ${scale.factor}); sluice's outcome counters keep their fixed 10 s slots, which are ${10 * scale.factor} s modelled, so a higher scale distorts the slot-based presets more.`,
    },
    settings: {
      agents,
      priorities: 'mix 10 / 20 / 50 / 20 % (urgent / high / normal / low)',
      workload: `closed loop, think time exponential mean ${round(thinkMean / 1000, 1)} s (offered ≈ 60 rpm = 1.5× base), half the requests stream`,
      upstream: `sliding window ${limits.base} → ${limits.constrained} → ${limits.base} calls per 60 s, worker cap ${UPSTREAM.maxConcurrency}, 429 without Retry-After, answer ≈ ${service / 1000} s`,
      sluiceEnv: sluiceEnv(scale, { requests: limits.base, windowMs: WINDOW_MS }, '<preset>'),
      seed,
    },
    phases: ph,
    results,
    wallSeconds: Math.round((Date.now() - started) / 1000),
  };
  writeRetreatResults(result);
  return { markdown: retreatMarkdown(result) };
};

const writeRetreatResults = (r: RetreatBenchResult) => {
  mkdirSync(RESULTS, { recursive: true });
  writeFileSync(`${RESULTS}/${NAME}.json`, `${JSON.stringify(r, null, 2)}\n`);
  const { phases: ph } = r;
  const hidden: [number, number][] = [
    [0, ph.base],
    [ph.dropAt, ph.constrained],
    [ph.liftAt, ph.base],
    [ph.endAt, ph.base],
  ];
  writeFileSync(
    `${RESULTS}/${NAME}-rate.svg`,
    traceChart({
      title: `Effective rate per retreat preset while the upstream's hidden limit steps ${ph.base} → ${ph.constrained} → ${ph.base} rpm`,
      yLabel: 'rpm (modelled)',
      xMaxMs: ph.endAt,
      spans: [{ from: ph.dropAt, to: ph.liftAt, label: `hidden limit ${ph.constrained}/min` }],
      series: [
        { name: 'hidden limit', points: hidden, step: true, dashed: true, color: '#222', width: 1.5 },
        ...r.results.map((x, i) => ({
          name: x.preset,
          points: x.trace,
          step: true,
          color: PALETTE[i % PALETTE.length] as string,
        })),
      ],
    }),
  );
  writeFileSync(
    `${RESULTS}/${NAME}-calls.svg`,
    binPanels({
      title: `Upstream calls per 10 s per retreat preset (hidden limit ${ph.base} → ${ph.constrained} → ${ph.base})`,
      binMs: 10_000,
      limitPerBin: ph.base / 6,
      limitSteps: hidden.map(([t, v]) => [t, v / 6] as const),
      limitLabel: 'hidden limit per 10 s',
      panels: r.results.map((x) => ({
        title: `preset ${x.preset}`,
        subtitle: `${x.upstream429} × 429 of ${x.upstreamCalls} calls`,
        accepted: x.bins.accepted,
        refused: x.bins.refused,
      })),
    }),
  );
  writeFileSync(`${RESULTS}/${NAME}.md`, `${retreatMarkdown(r)}\n`);
};

export const retreatMarkdown = (r: RetreatBenchResult): string => {
  const s = (x: number | null) => (x === null ? 'never' : `${x} s`);
  return [
    `## Retreat: hidden limit ${r.phases.base} → ${r.phases.constrained} → ${r.phases.base} rpm`,
    '',
    `${r.machine.date.slice(0, 10)} · ${r.machine.cores} cores, ${r.machine.cpu} · node ${r.machine.node} · load average at start ${r.machine.loadavg.join(' / ')} · code ${r.code.commit}${r.code.dirty ? ' + uncommitted changes' : ''} · wall ${Math.round(r.wallSeconds / 60)} min`,
    '',
    `**Time scale ${r.timeScale.factor}×.** ${r.timeScale.note}`,
    '',
    `${String(r.settings.agents)} agents per preset, ${String(r.settings.workload)}; upstream ${String(r.settings.upstream)}. The limit drops at ${r.phases.dropAt / MIN} min and lifts at ${r.phases.liftAt / MIN} min; "constrained" figures cover ${r.phases.dropAt / MIN + 2}–${r.phases.liftAt / MIN} min. Each preset runs on its own local system, all at once, with the same workload and seed.`,
    '',
    '| preset | 429 rate < 2 % from (after the drop) | 429s in the transition | goodput constrained (vs 20) | 429s constrained | effective rate constrained (min–max, ±) | back to ≥ 36 rpm after the lift | goodput last 2 min (vs 40) | upstream 429s, whole run | failed at agent |',
    '|---|---|---|---|---|---|---|---|---|---|',
    ...r.results.map(
      (x) =>
        `| ${x.preset} | ${s(x.settleSeconds)} | ${x.transition429s} | ${x.constrained.goodputRpm} rpm (${x.constrained.goodputPctOfLimit} %) | ${x.constrained.upstream429} of ${x.constrained.calls} (${x.constrained.rate429Pct} %) | ${x.oscillation.min}–${x.oscillation.max} (±${x.oscillation.pct} %) | ${s(x.recoverSeconds)} | ${x.afterGoodputRpm} rpm | ${x.upstream429} of ${x.upstreamCalls} | ${x.failedAtAgent}${failureText(x.failureKinds)} |`,
    ),
    '',
    `![effective rate per preset](${NAME}-rate.svg)`,
    '',
    `![upstream calls per 10 s](${NAME}-calls.svg)`,
  ].join('\n');
};
