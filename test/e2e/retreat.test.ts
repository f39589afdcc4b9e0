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
  // Base: 30 calls per 3 s (600 rpm). Hidden upstream limit: 8 per 3 s. Windows compressed 20×.
  system = await startTestSystem('e2e-retreat', {
    fakeUpstream: {
      tokenDelayMs: 5,
      firstByteDelayMs: 5,
      limit: { requests: 8, windowMs: 3_000 },
      maxConcurrency: null,
    },
    env: {
      SLUICE_UPSTREAM_LIMIT: '30',
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

describe('retreat end to end', () => {
  it('enters RETREAT under a hidden limit, sheds 429s, and recovers when the limit lifts', async () => {
    const retreated = await eventually(
      async () => {
        const r = await system.stores.retreatStore.get();
        return r && r.state === 'retreat' && r.effectiveRpm < 600 ? r : undefined;
      },
      60_000,
      200,
    );
    expect(retreated.transitions[0]).toMatchObject({ from: 'normal', to: 'retreat' });
    const early = upstream429Rate(0);
    // Let the lower rate settle, then measure the 429 rate again: it must have fallen.
    await new Promise((r) => setTimeout(r, 8_000));
    const settledFrom = Date.now();
    await new Promise((r) => setTimeout(r, 6_000));
    const late = upstream429Rate(settledFrom);
    expect(early.rate).toBeGreaterThan(0.05);
    expect(late.total).toBeGreaterThan(0);
    // Settled: at most one 429 in five calls (the probe preset holds the bucket along a refusal streak, so the
    // early rate is already low and a 6 s sample of the late one is a handful of calls — hence a count bound).
    expect(late.throttled).toBeLessThanOrEqual(Math.max(1, Math.floor(late.total / 5)));

    system.upstream!.setLimit(null);
    const recovered = await eventually(
      async () => {
        const r = await system.stores.retreatStore.get();
        return r?.state === 'normal' && r.effectiveRpm === 600 ? r : undefined;
      },
      90_000,
      250,
    );
    expect(
      recovered.transitions.some((t) => t.to === 'recover' || (t.from === 'retreat' && t.to === 'normal')),
    ).toBe(true);
  }, 180_000);
});
