// Retreat end to end on short windows: a hidden upstream limit below the configured rate drives RETREAT,
// the upstream 429 rate then falls, and lifting the limit brings the rate back to NORMAL.
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LocalSystem } from '../../local/runtime.js';
import { auditTickets, eventually, startTestSystem } from '../support/system.js';

let system: LocalSystem;
let client: OpenAI;
let stopLoad = false;
let sent = 0;
const results: { at: number; ok: boolean }[] = [];

beforeAll(async () => {
  // Base: 15 calls per 3 s (300 rpm). Hidden upstream limit: 4 per 3 s. Windows compressed 20×. The rates are
  // low enough for 10 agents to reach them on a loaded 2-core machine: entering RETREAT needs more calls than the
  // hidden limit, and RECOVER grows only while grants reach 75 % of the rate (at 600 rpm a loaded full run fell
  // short of that and stayed below base).
  system = await startTestSystem('e2e-retreat', {
    fakeUpstream: {
      tokenDelayMs: 5,
      firstByteDelayMs: 5,
      limit: { requests: 4, windowMs: 3_000 },
      maxConcurrency: null,
    },
    env: {
      SLUICE_UPSTREAM_LIMIT: '15',
      SLUICE_UPSTREAM_WINDOW_S: '3',
      SLUICE_BUCKET_BURST: '2',
      SLUICE_RETREAT_WINDOW_S: '3',
      SLUICE_RECOVER_WINDOW_S: '3',
      SLUICE_RETREAT_EVAL_S: '0.5',
      SLUICE_RETREAT_STEP_S: '1',
      SLUICE_RETREAT_MIN_SAMPLE: '4',
      SLUICE_RETREAT_FLOOR_RPM: '60',
      SLUICE_RECOVER_STEP_RPM: '150',
      SLUICE_MAX_WAIT_S: '20',
      SLUICE_MAX_REQUEUES: '1',
    },
  });
  const key = await system.createKey('retreat-agent', 'urgent');
  client = new OpenAI({ baseURL: `${system.url}/v1`, apiKey: key, maxRetries: 0 });
  // 10 agents in a closed loop.
  for (let a = 0; a < 10; a++) {
    void (async () => {
      while (!stopLoad) {
        sent++;
        const ok = await client.chat.completions
          .create({ model: 'meta/llama-3.1-8b-instruct', messages: [{ role: 'user', content: 'x' }] })
          .then(
            () => true,
            () => false,
          );
        results.push({ at: Date.now(), ok });
      }
    })();
  }
});

afterAll(async () => {
  stopLoad = true;
  await eventually(
    async () => ((await auditTickets(system)).open.length === 0 ? true : undefined),
    60_000,
    250,
  );
  const audit = await auditTickets(system);
  expect(audit.stuck).toEqual([]);
  expect(audit.total).toBe(sent);
  await system?.stop();
});

const upstream429Rate = (fromMs: number) => {
  const calls = system.upstream!.calls.filter((c) => c.at >= fromMs && c.path.includes('chat'));
  const throttled = calls.filter((c) => c.kind === 'rate_limited').length;
  return { total: calls.length, throttled, rate: calls.length ? throttled / calls.length : 0 };
};

/** A timed-out wait says where the retreat record stopped and what the agents and the upstream saw lately. */
const explainRetreat = async (e: unknown): Promise<never> => {
  const r = await system.stores.retreatStore.get();
  const from = Date.now() - 10_000;
  const recent = results.filter((x) => x.at >= from);
  const upstream = upstream429Rate(from);
  throw new Error(
    `${String(e)}: ${r?.state} at ${r?.effectiveRpm} rpm; last 10 s: agents ${recent.length} calls (${recent.filter((x) => x.ok).length} ok), upstream ${upstream.total} calls (${upstream.throttled} × 429); steps: ${JSON.stringify(r?.transitions.slice(0, 6))}`,
  );
};

describe('retreat end to end', () => {
  it('enters RETREAT under a hidden limit, sheds 429s, and recovers when the limit lifts', async () => {
    const retreated = await eventually(
      async () => {
        const r = await system.stores.retreatStore.get();
        return r && r.state === 'retreat' && r.effectiveRpm < 300 ? r : undefined;
      },
      60_000,
      200,
    ).catch(explainRetreat);
    expect(retreated.transitions[0]).toMatchObject({ from: 'normal', to: 'retreat' });
    const early = upstream429Rate(0);
    // Let the lower rate settle, then measure the 429 rate again: it must have fallen.
    await new Promise((r) => setTimeout(r, 8_000));
    const settledFrom = Date.now();
    await new Promise((r) => setTimeout(r, 9_000));
    const late = upstream429Rate(settledFrom);
    expect(early.rate).toBeGreaterThan(0.05);
    expect(late.total).toBeGreaterThan(0);
    // Settled: at most about one 429 in three calls. Without retreat the 10 agents would send ~5 calls a second
    // into a hidden 4 per 3 s, three in four refused. Settled, a 9 s sample (three hidden windows) is about a
    // dozen calls, each probe upward costs one 429, and on a loaded machine the send-time jitter is a large part
    // of the 750 ms spacing of a 3 s window — so the bound is loose, not the 1 % the 1× bench measures.
    expect(late.throttled).toBeLessThanOrEqual(Math.max(2, Math.ceil(0.35 * late.total)));

    system.upstream!.setLimit(null);
    const recovered = await eventually(
      async () => {
        const r = await system.stores.retreatStore.get();
        return r?.state === 'normal' && r.effectiveRpm === 300 ? r : undefined;
      },
      90_000,
      250,
    ).catch(explainRetreat);
    expect(
      recovered.transitions.some((t) => t.to === 'recover' || (t.from === 'retreat' && t.to === 'normal')),
    ).toBe(true);
  }, 180_000);
});
