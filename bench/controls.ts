// Bench `controls`: the operator controls under load — max_inflight ends worker-capacity errors, and a per-agent
// quota keeps a greedy agent within its limit while a polite agent is unaffected.
import { mkdirSync, writeFileSync } from 'node:fs';
import OpenAI from 'openai';
import { startEmulators } from '../local/emulators.js';
import { type LocalSystem, startLocalSystem } from '../local/runtime.js';
import type { BenchOptions, BenchResult } from './run.js';
import { machine, round, summary } from './support/stats.js';

const MODEL = 'meta/llama-3.1-8b-instruct';

interface LoopStats {
  ok: number;
  failed: Record<string, number>;
  latencies: number[];
}

/** A closed-loop agent: request, wait for the answer (or error), think, repeat, until `until`. */
const agentLoop = async (client: OpenAI, until: number, thinkMs: number, stats: LoopStats): Promise<void> => {
  while (Date.now() < until) {
    const t0 = performance.now();
    try {
      await client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'x' }] });
      stats.ok++;
      stats.latencies.push(performance.now() - t0);
    } catch (err) {
      const code =
        (err as { code?: string; status?: number }).code ?? String((err as { status?: number }).status);
      stats.failed[code] = (stats.failed[code] ?? 0) + 1;
    }
    if (thinkMs > 0) await new Promise((r) => setTimeout(r, thinkMs));
  }
};

const newStats = (): LoopStats => ({ ok: 0, failed: {}, latencies: [] });

export interface ControlsResult {
  machine: ReturnType<typeof machine>;
  inflight: {
    settings: Record<string, unknown>;
    rows: {
      setup: string;
      completed: number;
      agentFailures: Record<string, number>;
      upstreamCapacityErrors: number;
      maxUpstreamConcurrency: number;
    }[];
  };
  quota: {
    settings: Record<string, unknown>;
    greedy: { quotaRpm: number; completedPerMin: number; refused: Record<string, number> };
    polite: { completed: number; failed: Record<string, number>; latency: ReturnType<typeof summary> };
  };
}

export const runControlsBench = async (opts: BenchOptions): Promise<BenchResult> => {
  const emulators = await startEmulators();
  const systems: LocalSystem[] = [];
  const start = async (
    prefix: string,
    env: Record<string, string>,
    fake: Parameters<typeof startLocalSystem>[0],
  ) => {
    const s = await startLocalSystem({
      port: 0,
      prefix,
      emulators,
      scheduleMs: 0,
      ...fake,
      env: { LOG_LEVEL: 'ERROR', ...env },
    });
    systems.push(s);
    return s;
  };
  try {
    // (1) Upstream concurrency cap: 16 agents, answers of ~1.3 s, an upstream that allows 4 at once.
    const inflightRows: ControlsResult['inflight']['rows'] = [];
    const durationMs = 30_000;
    for (const maxInflight of [0, 4]) {
      opts.log(
        `controls: max_inflight ${maxInflight || 'unset'} against an upstream capped at 4 concurrent calls`,
      );
      const s = await start(
        `bench-inflight-${maxInflight}`,
        {
          SLUICE_UPSTREAM_LIMIT: '6000',
          SLUICE_BUCKET_BURST: '20',
          SLUICE_MAX_INFLIGHT: String(maxInflight),
          SLUICE_MAX_REQUEUES: '2',
        },
        {
          fakeUpstream: {
            limit: null,
            maxConcurrency: 4,
            tokensPerResponse: 12,
            tokenDelayMs: 100,
            firstByteDelayMs: 100,
          },
        },
      );
      const key = await s.createKey('fleet', 'urgent');
      const stats = newStats();
      const until = Date.now() + durationMs;
      await Promise.all(
        Array.from({ length: 16 }, () =>
          agentLoop(
            new OpenAI({ baseURL: `${s.url}/v1`, apiKey: key, maxRetries: 0, timeout: 120_000 }),
            until,
            0,
            stats,
          ),
        ),
      );
      const up = s.upstream!.stats();
      inflightRows.push({
        setup: maxInflight ? `sluice, max_inflight ${maxInflight}` : 'sluice, no max_inflight',
        completed: stats.ok,
        agentFailures: stats.failed,
        upstreamCapacityErrors: up.capacity,
        maxUpstreamConcurrency: up.maxInFlight,
      });
    }

    // (2) Per-agent quota: a greedy agent (quota 20 rpm, asks without pause) beside a polite one (one request / 3 s).
    opts.log('controls: greedy agent with a 20 rpm quota beside a polite agent, bucket 120 rpm');
    const s = await start(
      'bench-quota',
      { SLUICE_UPSTREAM_LIMIT: '120', SLUICE_BUCKET_BURST: '2' },
      {
        fakeUpstream: { limit: null, maxConcurrency: null, tokenDelayMs: 10, firstByteDelayMs: 20 },
      },
    );
    const quotaRpm = 20;
    const greedyKey = await s.createKey('greedy', 'high', { rpm: quotaRpm });
    const politeKey = await s.createKey('polite', 'normal');
    const greedy = newStats();
    const polite = newStats();
    const quotaMs = 60_000;
    const until = Date.now() + quotaMs;
    await Promise.all([
      ...Array.from({ length: 4 }, () =>
        agentLoop(new OpenAI({ baseURL: `${s.url}/v1`, apiKey: greedyKey, maxRetries: 0 }), until, 0, greedy),
      ),
      agentLoop(
        new OpenAI({ baseURL: `${s.url}/v1`, apiKey: politeKey, maxRetries: 0 }),
        until,
        3_000,
        polite,
      ),
    ]);

    const result: ControlsResult = {
      machine: machine(),
      inflight: {
        settings: {
          agents: 16,
          durationS: durationMs / 1000,
          upstreamConcurrencyCap: 4,
          answerMs: 1_300,
          rate: '6000 per 60 s',
        },
        rows: inflightRows,
      },
      quota: {
        settings: {
          bucket: '120 per 60 s',
          durationS: quotaMs / 1000,
          greedyAgents: 4,
          politeThinkMs: 3_000,
        },
        greedy: { quotaRpm, completedPerMin: round((greedy.ok * 60_000) / quotaMs), refused: greedy.failed },
        polite: { completed: polite.ok, failed: polite.failed, latency: summary(polite.latencies) },
      },
    };
    mkdirSync('bench/results', { recursive: true });
    writeFileSync('bench/results/controls.json', `${JSON.stringify(result, null, 2)}\n`);
    const md = controlsMarkdown(result);
    writeFileSync('bench/results/controls.md', `${md}\n`);
    return { markdown: md };
  } finally {
    for (const s of systems) await s.stop();
    await emulators.stop();
  }
};

const fmtCounts = (c: Record<string, number>) =>
  Object.entries(c)
    .map(([k, v]) => `${k} ${v}`)
    .join(', ') || '0';

export const controlsMarkdown = (r: ControlsResult): string =>
  [
    `## Operator controls (${r.machine.date.slice(0, 10)}, ${r.machine.cores} cores, node ${r.machine.node})`,
    '',
    `Upstream concurrency cap: 16 agents in a closed loop for ${r.inflight.settings.durationS} s, answers of ~1.3 s, an upstream that allows 4 calls at once (NVIDIA-style capacity 429s beyond).`,
    '',
    '| setup | completed | failed at the agent | upstream capacity errors | most upstream calls at once |',
    '|---|---|---|---|---|',
    ...r.inflight.rows.map(
      (row) =>
        `| ${row.setup} | ${row.completed} | ${fmtCounts(row.agentFailures)} | ${row.upstreamCapacityErrors} | ${row.maxUpstreamConcurrency} |`,
    ),
    '',
    `Per-agent quota: bucket 120 rpm for ${r.quota.settings.durationS} s; a greedy agent (4 loops, no pause, quota ${r.quota.greedy.quotaRpm} rpm) beside a polite one (one request every 3 s, no quota).`,
    '',
    '| agent | completed per minute | refused | latency p50 / p99 (ms) |',
    '|---|---|---|---|',
    `| greedy (quota ${r.quota.greedy.quotaRpm} rpm) | ${r.quota.greedy.completedPerMin} | ${fmtCounts(r.quota.greedy.refused)} | — |`,
    `| polite | ${round((r.quota.polite.completed * 60) / Number(r.quota.settings.durationS))} | ${fmtCounts(r.quota.polite.failed)} | ${r.quota.polite.latency.p50} / ${r.quota.polite.latency.p99} |`,
  ].join('\n');
