// Admin API end to end through the local runtime (status function, DynamoDB Local, fauxqs, real dispatcher):
// auth, every field's validation, the queue-depth rule, the success path and how fast the change spreads.
import { randomBytes } from 'node:crypto';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CONFIG_FIELDS, CONFIG_KEYS, externalName, type GatewayConfig } from '../../lib/domain/config.js';
import { CONFIG_CACHE_MS } from '../../lib/domain/config-service.js';
import { deriveAdmission, GRANT_TO_CALL_MAX_MS } from '../../lib/domain/gcra.js';
import { KeyAdmin } from '../../lib/domain/key-admin.js';
import type { Ticket } from '../../lib/domain/tickets.js';
import type { AdminConfigView, ConfigUpdateView, UsageView } from '../../lib/status/admin.js';
import type { StatusSnapshot } from '../../lib/status/snapshot.js';
import type { LocalSystem } from '../../local/runtime.js';
import { eventually } from '../support/system.js';
import { ADMIN_TOKEN, call, type ErrorJson, startStatusSystem, VIEWER_TOKEN } from './support.js';

let system: LocalSystem;
let agentKey: string;

beforeAll(async () => {
  system = await startStatusSystem('status-admin', { fakeUpstream: { limit: null } });
  agentKey = await system.createKey('agent-admin-test', 'urgent');
});

afterAll(async () => {
  await system?.stop();
});

const patch = (body: unknown, token = ADMIN_TOKEN) =>
  call<ConfigUpdateView & ErrorJson>(system, 'PATCH', '/admin/config', { token, body });
const getConfig = (token = ADMIN_TOKEN) =>
  call<AdminConfigView & ErrorJson>(system, 'GET', '/admin/config', { token });
const status = () => call<StatusSnapshot>(system, 'GET', '/status', { token: VIEWER_TOKEN });

/** Values each kind of field must refuse, with what the message must say. */
const invalidValues = (key: keyof GatewayConfig): [unknown, RegExp][] => {
  const spec = CONFIG_FIELDS[key];
  const scale = spec.seconds ? 1000 : 1;
  switch (spec.kind) {
    case 'int':
      return [
        [1.5, /must be an integer/],
        [(spec.min ?? 0) / scale - 1, /must be between/],
      ];
    case 'number':
      return [
        ['fast', /must be a number/],
        [(spec.max ?? 0) / scale + 1, /must be between/],
      ];
    case 'bool':
      return [['maybe', /must be a boolean/]];
    case 'enum':
      return [['sometimes', /must be one of/]];
    case 'weights':
      return [
        ['8:4:2', /must be four integers/],
        ['8:4:2:0', /must be four integers/],
      ];
    case 'list':
      return [
        [42, /must be a list of paths/],
        [['files', '../admin'], /is not a path below/],
      ];
    case 'upstreams':
      return [
        [42, /must be an object of upstream name → limits/],
        [{ 'nv-z': { limit: 10 } }, /no limited upstream nv-z besides the first/],
      ];
  }
};

const INVALID_ROWS = CONFIG_KEYS.flatMap((key) =>
  invalidValues(key).map(([value, message]) => [externalName(key), value, message] as const),
);

describe('admin API auth', () => {
  it('answers 401 without a token or with an unknown one, 403 for viewer and agent tokens', async () => {
    for (const [token, code] of [
      [undefined, 401],
      ['wrong-token', 401],
      [VIEWER_TOKEN, 403],
      [() => agentKey, 403],
    ] as const) {
      const t = typeof token === 'function' ? token() : token;
      const get = await call<ErrorJson>(system, 'GET', '/admin/config', t ? { token: t } : {});
      const change = await call<ErrorJson>(system, 'PATCH', '/admin/config', {
        ...(t ? { token: t } : {}),
        body: { queue_max_size: 10 },
      });
      const reset = await call<ErrorJson>(system, 'POST', '/admin/retreat/reset', t ? { token: t } : {});
      for (const res of [get, change, reset]) {
        expect(res.status).toBe(code);
        expect(res.json.error.type).toBe(code === 401 ? 'authentication_error' : 'permission_error');
      }
    }
    // The refused PATCHes changed nothing.
    expect((await getConfig()).json.config.queue_max_size).toBe(500);
  });

  it('lets an agent key read /status but nothing else', async () => {
    expect((await call(system, 'GET', '/status', { token: agentKey })).status).toBe(200);
  });
});

describe('PATCH /admin/config validation', () => {
  it(`covers every config field (${CONFIG_KEYS.length})`, () => {
    expect(new Set(INVALID_ROWS.map(([name]) => name)).size).toBe(CONFIG_KEYS.length);
  });

  it.each(INVALID_ROWS)('refuses %s = %j with a 400 naming it', async (name, value, message) => {
    const res = await patch({ [name]: value });
    expect(res.status).toBe(400);
    expect(res.json.error).toEqual({
      message: expect.stringMatching(message),
      type: 'invalid_request_error',
      param: name,
      code: 'invalid_value',
    });
  });

  it.each([
    ['a burst as large as the limit', { bucket_burst: 40 }, 'bucket_burst'],
    ['a retreat floor above the limit', { retreat_floor_rpm: 41 }, 'retreat_floor_rpm'],
    [
      'a retreat-again threshold below the retreat threshold',
      { retreat_again_threshold: 0.01 },
      'retreat_again_threshold',
    ],
    ["the seed's field name", { rate_rpm: 60 }, 'rate_rpm'],
    ['one bad field among good ones', { queue_max_size: 100, upstream_limit: -1 }, 'upstream_limit'],
  ])('refuses %s', async (_what, body, param) => {
    const res = await patch(body);
    expect(res.status).toBe(400);
    expect(res.json.error.param).toBe(param);
  });

  it('wrote nothing for any refused patch', async () => {
    const res = await getConfig();
    expect(res.json.version).toBe(1);
    expect(res.json.history).toEqual([]);
  });
});

describe('queue_max_size and the current queue depth', () => {
  it('may not go below the requests queued now (seed set_max_size)', async () => {
    const now = Date.now();
    const queued: Ticket[] = ['d1', 'd2', 'd3'].map((id) => ({
      id: `${id}-${now}`,
      agent: 'depth-test',
      priority: 'low',
      model: 'meta/llama-3.1-8b-instruct',
      stream: false,
      status: 'queued',
      attempt: 0,
      enqueuedAt: now,
      deadline: now + 120_000,
    }));
    for (const t of queued) await system.stores.tickets.create(t, { queueMaxSize: 500 });
    try {
      const refused = await patch({ queue_max_size: 2 });
      expect(refused.status).toBe(400);
      expect(refused.json.error).toMatchObject({ param: 'queue_max_size', code: 'below_queue_depth' });
      expect(refused.json.error.message).toMatch(/below the 3 requests queued now/);
      const ok = await patch({ queue_max_size: 3 });
      expect(ok.status).toBe(200);
      expect(ok.json.changes).toEqual([
        expect.objectContaining({ field: 'queue_max_size', from: 500, to: 3 }),
      ]);
    } finally {
      for (const t of queued) {
        await system.stores.tickets.transition(t.id, 'queued', 'expired', { finishedAt: Date.now() });
      }
    }
    // Growing is always allowed.
    expect((await patch({ queue_max_size: 500 })).status).toBe(200);
  });
});

describe('a successful change', () => {
  it('is applied, recorded (who, when, old → new), shown by /status and seen by the dispatcher within 2 s', async () => {
    const dispatcherConfig = system.stores.config; // the dispatcher's own cached view
    expect((await dispatcherConfig.config()).upstreamLimit).toBe(40);
    const before = (await getConfig()).json.version;

    const sent = Date.now();
    const res = await patch({
      upstream_limit: 60,
      queue_full_policy: 'drop_lowest',
      low_priority_timeout_s: 5,
    });
    expect(res.status).toBe(200);
    expect(res.json.version).toBe(before + 1);
    expect(res.json.changes).toEqual([
      { at: expect.any(Number), by: 'admin', field: 'upstream_limit', from: 40, to: 60 },
      { at: expect.any(Number), by: 'admin', field: 'queue_full_policy', from: 'reject', to: 'drop_lowest' },
      { at: expect.any(Number), by: 'admin', field: 'low_priority_timeout_s', from: 6, to: 5 },
    ]);
    expect(res.json.config).toMatchObject({
      upstream_limit: 60,
      queue_full_policy: 'drop_lowest',
      low_priority_timeout_s: 5,
    });

    const view = (await getConfig()).json;
    expect(view.config.upstream_limit).toBe(60);
    expect(
      view.history
        .slice(0, 3)
        .map((c) => c.field)
        .sort(),
    ).toEqual(['low_priority_timeout_s', 'queue_full_policy', 'upstream_limit']);
    expect(view.fields.find((f) => f.name === 'upstream_limit')).toMatchObject({ kind: 'int', min: 1 });

    const snapshot = (await status()).json;
    expect(snapshot.configVersion).toBe(before + 1);
    expect(snapshot.limits).toMatchObject({ upstreamLimit: 60, queueFullPolicy: 'drop_lowest' });
    expect(snapshot.retreat.baseRpm).toBe(60);
    expect(snapshot.configChanges[0]).toMatchObject({ by: 'admin' });

    // The stated bound: the dispatcher's config cache is at most CONFIG_CACHE_MS old.
    const wait = sent + CONFIG_CACHE_MS + 50 - Date.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    expect((await dispatcherConfig.config()).upstreamLimit).toBe(60);
  });

  it('reaches the bucket: the next dispatcher run grants at the new rate', async () => {
    const client = new OpenAI({ baseURL: `${system.url}/v1`, apiKey: agentKey, maxRetries: 0 });
    const reply = await client.chat.completions.create({
      model: 'meta/llama-3.1-8b-instruct',
      messages: [{ role: 'user', content: 'hi' }],
    });
    expect(reply.choices[0]?.message.content).toMatch(/^tok0/);
    const expected = deriveAdmission(60, 60_000, 2, GRANT_TO_CALL_MAX_MS).intervalMs;
    const snapshot = await eventually(
      async () => {
        const s = (await status()).json;
        return s.bucket.intervalMs === expected ? s : undefined;
      },
      30_000,
      250,
    );
    expect(snapshot.bucket.rpm).toBeCloseTo(60_000 / expected, 1);
  });

  it('a new limit holds when the PATCH answers: the bucket is at its rate with no dispatcher run in between', async () => {
    // Prepare: the bucket at the current limit (60 per minute, from the tests above).
    const bucketNow = async () => (await system.stores.bucket.refresh())?.intervalMs;
    const at = (limit: number) => deriveAdmission(limit, 60_000, 2, GRANT_TO_CALL_MAX_MS).intervalMs;
    expect(await bucketNow()).toBe(at(60));

    // Act + Assess: raised (plain GCRA above the log: an interval in eighths of a ms), then lowered again.
    expect((await patch({ upstream_limit: 12_000 })).status).toBe(200);
    expect(await bucketNow()).toBe(at(12_000));
    expect(at(12_000)).toBe(5.125);
    expect((await patch({ upstream_limit: 60 })).status).toBe(200);
    expect(await bucketNow()).toBe(at(60));
  });

  it('resets retreat to the base rate (and records nothing when already there)', async () => {
    // Put the record in RETREAT at a lower rate, as the dispatcher would.
    const record = await system.stores.retreat.load(await system.stores.config.config());
    await system.stores.retreatStore.put(
      { ...record, state: 'retreat', effectiveRpm: 30, version: record.version + 1 },
      record.version,
    );
    const res = await call<{ retreat: StatusSnapshot['retreat'] }>(system, 'POST', '/admin/retreat/reset', {
      token: ADMIN_TOKEN,
    });
    expect(res.status).toBe(200);
    expect(res.json.retreat).toMatchObject({ state: 'normal', effectiveRpm: 60, baseRpm: 60 });
    expect(res.json.retreat.transitions[0]).toMatchObject({
      from: 'retreat',
      to: 'normal',
      reason: 'reset by admin',
    });
    const again = await call<{ retreat: StatusSnapshot['retreat'] }>(system, 'POST', '/admin/retreat/reset', {
      token: ADMIN_TOKEN,
    });
    expect(again.json.retreat.transitions).toHaveLength(res.json.retreat.transitions.length);
  });
});

describe('health endpoints', () => {
  it('are open, and readiness probes the upstream once however often it is asked', async () => {
    expect((await call(system, 'GET', '/health')).status).toBe(200);
    const modelCalls = () => system.upstream!.calls.filter((c) => c.path === '/v1/models').length;
    const before = modelCalls();
    for (let i = 0; i < 5; i++) {
      const res = await call<{ ready: boolean }>(system, 'GET', '/health/ready');
      expect(res.status).toBe(200);
      expect(res.json.ready).toBe(true);
    }
    expect(modelCalls() - before).toBe(1);
  });
});

describe('agent budgets through the gateway (issue 16.2)', () => {
  it('refuses the request past the daily requests budget with 429 agent_budget_exceeded; /admin/usage shows it', async () => {
    // Prepare: a key with 2 requests a day (set on the existing key, as `npm run keys -- budget` does)
    const agent = 'agent-budget-test';
    const key = await system.createKey(agent, 'normal');
    const admin = new KeyAdmin(system.stores.keys, system.stores.clock, (n) => randomBytes(n));
    await admin.setBudget({ agent }, { budgetRequestsDay: 2, budgetTokensDay: 1_000_000 });
    const client = new OpenAI({ baseURL: `${system.url}/v1`, apiKey: key, maxRetries: 0 });
    const ask = { model: 'meta/llama-3.1-8b-instruct', messages: [{ role: 'user' as const, content: 'hi' }] };
    let tokens = 0;
    for (let i = 0; i < 2; i++)
      tokens += (await client.chat.completions.create(ask)).usage?.total_tokens ?? 0;
    expect(tokens).toBeGreaterThan(0);

    // Act
    const refused = await call<ErrorJson>(system, 'POST', '/v1/chat/completions', { token: key, body: ask });

    // Assess
    expect(refused.status).toBe(429);
    expect(refused.json.error).toMatchObject({ type: 'rate_limit_error', code: 'agent_budget_exceeded' });
    expect(refused.json.error.message).toMatch(
      /2 of 2 requests today.*resets at \d{4}-\d\d-\d\dT00:00:00\.000Z/,
    );
    const untilReset = Math.ceil((Date.now() + 1) / 86_400_000) * 86_400_000 - Date.now();
    expect(Number(refused.headers.get('retry-after'))).toBeLessThanOrEqual(60);
    expect(Number(refused.headers.get('retry-after-ms'))).toBeLessThanOrEqual(60_000);
    if (untilReset > 61_000) expect(refused.headers.get('x-should-retry')).toBe('false');
    const usage = await eventually(
      async () => {
        const view = (await call<UsageView>(system, 'GET', '/admin/usage', { token: ADMIN_TOKEN })).json;
        const row = view.budgets.find((b) => b.agent === agent);
        return row?.tokens === tokens ? row : undefined;
      },
      10_000,
      100,
    );
    expect(usage).toMatchObject({
      requests: 2,
      requestsLimit: 2,
      requestsRemaining: 0,
      tokens,
      tokensLimit: 1_000_000,
      tokensRemaining: 1_000_000 - tokens,
    });
  });
});
