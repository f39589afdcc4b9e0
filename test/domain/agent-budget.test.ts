// Per-agent daily budgets (issue 16.2): the pure rule on a table, then admission on the memory stores and a fake
// clock — refused exactly at the limit (requests and tokens), nothing spent by a refusal, reset at UTC midnight.
import { describe, expect, it } from 'vitest';
import { MemoryBucketStore, MemoryOutcomeStore } from '../../lib/adapters/memory/stores.js';
import { MemoryLeaseStore, MemoryTicketQueue, MemoryTicketStore } from '../../lib/adapters/memory/tickets.js';
import { Admission, type AdmitRequest } from '../../lib/domain/admission.js';
import {
  type AgentBudget,
  budgetDay,
  budgetExceeded,
  budgetOf,
  budgetRemaining,
  budgetResetAt,
  checkBudget,
  DAY_MS,
  parseBudgetLimit,
} from '../../lib/domain/agent-budget.js';
import { TokenBucket } from '../../lib/domain/bucket.js';
import { FakeClock } from '../../lib/domain/clock.js';
import { DEFAULT_CONFIG, type GatewayConfig } from '../../lib/domain/config.js';
import { GatewayError, ValidationError } from '../../lib/domain/errors.js';
import { KeyAdmin } from '../../lib/domain/key-admin.js';
import type { AgentKey, KeyStore } from '../../lib/domain/ports.js';
import { errorReply } from '../../lib/http/reply.js';

/** 2033-05-18T03:33:20Z: mid-day UTC. */
const T0 = 2_000_000_000_000;
const MIDNIGHT = Math.ceil(T0 / DAY_MS) * DAY_MS;

describe('the budget rule', () => {
  it.each<[string, AgentBudget, { requests: number; tokens: number }, ReturnType<typeof checkBudget>]>([
    ['no limits', {}, { requests: 10_000, tokens: 10_000_000 }, { ok: true }],
    ['requests below the limit', { requestsPerDay: 3 }, { requests: 2, tokens: 0 }, { ok: true }],
    [
      'requests at the limit',
      { requestsPerDay: 3 },
      { requests: 3, tokens: 0 },
      { ok: false, which: 'requests', used: 3, limit: 3 },
    ],
    ['tokens below the limit', { tokensPerDay: 100 }, { requests: 50, tokens: 99 }, { ok: true }],
    [
      'tokens at the limit',
      { tokensPerDay: 100 },
      { requests: 1, tokens: 100 },
      { ok: false, which: 'tokens', used: 100, limit: 100 },
    ],
    [
      'tokens past the limit (the last answer overshot)',
      { tokensPerDay: 100 },
      { requests: 1, tokens: 180 },
      { ok: false, which: 'tokens', used: 180, limit: 100 },
    ],
    [
      'both reached: requests named first',
      { requestsPerDay: 2, tokensPerDay: 10 },
      { requests: 2, tokens: 10 },
      { ok: false, which: 'requests', used: 2, limit: 2 },
    ],
  ])('%s', (_name, limits, used, verdict) => {
    expect(checkBudget(limits, used)).toEqual(verdict);
  });

  it.each([
    [T0, '2033-05-18', MIDNIGHT],
    [MIDNIGHT - 1, '2033-05-18', MIDNIGHT],
    [MIDNIGHT, '2033-05-19', MIDNIGHT + DAY_MS],
  ])('at %i the day is %s and it resets at %i (UTC midnight)', (now, day, reset) => {
    expect(budgetDay(now)).toBe(day);
    expect(budgetResetAt(now)).toBe(reset);
  });

  it.each<[AgentBudget, { requests: number; tokens: number }, object]>([
    [{}, { requests: 5, tokens: 5 }, {}],
    [{ requestsPerDay: 10 }, { requests: 4, tokens: 9 }, { requests: 6 }],
    [
      { requestsPerDay: 10, tokensPerDay: 100 },
      { requests: 12, tokens: 40 },
      { requests: 0, tokens: 60 },
    ],
  ])('remaining of %o after %o is %o', (limits, used, remaining) => {
    expect(budgetRemaining(limits, used)).toEqual(remaining);
  });

  it.each([
    ['hours before the reset', MIDNIGHT - 5 * 3_600_000, '60', '60000', 'false', '5 h 0 min'],
    ['within a minute of it', MIDNIGHT - 30_000, '30', '30000', undefined, '30 s'],
  ])(
    'the refusal %s: headers capped at 60 s, x-should-retry false only when the reset is further',
    (_n, now, ra, ram, should, inText) => {
      const err = budgetExceeded({ ok: false, which: 'tokens', used: 120, limit: 100 }, now);
      const reply = errorReply(err);

      expect(reply.status).toBe(429);
      expect(reply.headers['retry-after']).toBe(ra);
      expect(reply.headers['retry-after-ms']).toBe(ram);
      expect(reply.headers['x-should-retry']).toBe(should);
      const body = JSON.parse(reply.body as string);
      expect(body.error).toMatchObject({
        type: 'rate_limit_error',
        code: 'agent_budget_exceeded',
        param: 'budget_tokens_day',
      });
      expect(body.error.message).toContain('120 of 100 tokens');
      expect(body.error.message).toContain(new Date(MIDNIGHT).toISOString());
      expect(body.error.message).toContain(inText);
    },
  );

  it.each([
    ['500', 500],
    ['off', null],
    ['0', null],
    ['OFF', null],
  ])('a CLI limit %s reads as %s', (text, value) => {
    expect(parseBudgetLimit(text, 'budget-requests-day')).toBe(value);
  });

  it.each(['-1', '1.5', 'ten', ''])('a CLI limit %s is refused', (text) => {
    expect(() => parseBudgetLimit(text, 'budget-requests-day')).toThrow(ValidationError);
  });

  it('a key without budgets adds nothing to its admission request', () => {
    expect(budgetOf({})).toEqual({});
    expect(budgetOf({ budgetTokensDay: 7 })).toEqual({ budget: { tokensPerDay: 7 } });
  });
});

const CONFIG: GatewayConfig = { ...DEFAULT_CONFIG, queueMaxSize: 1000, maxQueuedPerAgent: 1000 };

const setup = async () => {
  const clock = new FakeClock(T0);
  const bucketStore = new MemoryBucketStore();
  const tickets = new MemoryTicketStore(bucketStore);
  const queue = new MemoryTicketQueue(clock);
  const outcomes = new MemoryOutcomeStore();
  const bucket = new TokenBucket(bucketStore, clock, { fraction: 0, forNormal: false });
  // Plenty of tokens: only the budget refuses.
  await bucket.configure({ intervalMs: 10, burst: 1000 });
  let n = 0;
  const admission = new Admission({
    tickets,
    queue,
    lease: new MemoryLeaseStore(clock),
    outcomes,
    bucket,
    wakeDispatcher: async () => {},
    clock,
    newId: () => `t${++n}`,
    budgets: tickets.budgets,
  });
  const request = (budget: AgentBudget, over: Partial<AdmitRequest> = {}): AdmitRequest => ({
    agent: 'a',
    priority: 'normal',
    model: 'm',
    stream: false,
    deadline: clock.now() + 60_000,
    budget,
    ...over,
  });
  /** Everything a refusal must leave as it was. */
  const state = async () => ({
    tickets: tickets.tickets.size,
    counts: await tickets.counts(),
    tat: bucketStore.state?.tat,
    used: await tickets.budgets.used('a', budgetDay(clock.now())),
  });
  return { clock, bucketStore, tickets, queue, outcomes, admission, request, state };
};

const refusal = (p: Promise<unknown>) =>
  p.then(
    () => {
      throw new Error('admitted past the budget');
    },
    (e: unknown) => e as GatewayError,
  );

describe('admission with a budget', () => {
  it.each([
    ['fast path', { callBudgetMs: 65_000 }],
    ['queued path', {}],
    ['queued path with an Idempotency-Key', { idempotencyKey: 'k' }],
  ])(
    'requests: exactly the limit is admitted (%s), the next is refused and spends nothing',
    async (_name, over) => {
      // Prepare
      const s = await setup();
      const budget = { requestsPerDay: 3 };
      for (let i = 0; i < 3; i++) {
        const extra = 'idempotencyKey' in over ? { idempotencyKey: `k${i}` } : over;
        await s.admission.admit(s.request(budget, extra), CONFIG);
      }
      const before = await s.state();
      expect(before.used).toEqual({ requests: 3, tokens: 0 });

      // Act
      const err = await refusal(s.admission.admit(s.request(budget, over), CONFIG));

      // Assess
      expect(err).toBeInstanceOf(GatewayError);
      expect(err).toMatchObject({ status: 429, code: 'agent_budget_exceeded', shouldRetry: false });
      expect(err.message).toContain('3 of 3 requests');
      expect(await s.state()).toEqual(before);
      expect([...s.outcomes.slots.values()].reduce((a, slot) => a + slot.counts.refused, 0)).toBe(1);
      // Another agent is not affected.
      await s.admission.admit(s.request(budget, { ...over, agent: 'b' }), CONFIG);
    },
  );

  it('tokens: admitted while under, refused once the answers reached the limit (the last one may overshoot)', async () => {
    // Prepare
    const s = await setup();
    const budget = { tokensPerDay: 100 };
    const first = await s.admission.admit(s.request(budget, { callBudgetMs: 65_000 }), CONFIG);
    await s.admission.finish(first.ticket, 'completed', { upstreamStatus: 200, totalTokens: 60 });
    const second = await s.admission.admit(s.request(budget, { callBudgetMs: 65_000 }), CONFIG);
    await s.admission.finish(second.ticket, 'completed', { upstreamStatus: 200, totalTokens: 70 });
    await Promise.resolve();
    const before = await s.state();
    expect(before.used).toEqual({ requests: 2, tokens: 130 });

    // Act
    const err = await refusal(s.admission.admit(s.request(budget, { callBudgetMs: 65_000 }), CONFIG));

    // Assess
    expect(err).toMatchObject({ status: 429, code: 'agent_budget_exceeded', param: 'budget_tokens_day' });
    expect(err.message).toContain('130 of 100 tokens');
    expect(await s.state()).toEqual(before);
  });

  it('resets at UTC midnight: refused at 23:59:59.999, admitted at 00:00', async () => {
    // Prepare
    const s = await setup();
    const budget = { requestsPerDay: 1, tokensPerDay: 50 };
    const got = await s.admission.admit(s.request(budget, { callBudgetMs: 65_000 }), CONFIG);
    await s.admission.finish(got.ticket, 'completed', { upstreamStatus: 200, totalTokens: 80 });
    s.clock.set(MIDNIGHT - 1);
    const late = await refusal(s.admission.admit(s.request(budget), CONFIG));
    expect(late).toMatchObject({ code: 'agent_budget_exceeded', retryAfterMs: 1, shouldRetry: undefined });

    // Act
    s.clock.set(MIDNIGHT);
    const next = await s.admission.admit(s.request(budget), CONFIG);

    // Assess
    expect(next.ticket.budgetDay).toBe(budgetDay(MIDNIGHT));
    expect(await s.tickets.budgets.used('a', budgetDay(MIDNIGHT))).toEqual({ requests: 1, tokens: 0 });
    expect(await s.tickets.budgets.used('a', budgetDay(T0))).toEqual({ requests: 1, tokens: 80 });
  });

  it('a request attaching to its Idempotency-Key ticket is not counted and not refused', async () => {
    const s = await setup();
    const budget = { requestsPerDay: 1 };
    const first = await s.admission.admit(s.request(budget, { idempotencyKey: 'same' }), CONFIG);

    const again = await s.admission.admit(s.request(budget, { idempotencyKey: 'same' }), CONFIG);

    expect(again).toMatchObject({ attached: true, ticket: { id: first.ticket.id } });
    expect((await s.state()).used).toEqual({ requests: 1, tokens: 0 });
  });

  it('a key without a budget writes no day count', async () => {
    const s = await setup();
    await s.admission.admit(s.request({}, { callBudgetMs: 65_000 }), CONFIG);
    await s.admission.admit(s.request({}), CONFIG);
    expect(s.tickets.budgets.days.size).toBe(0);
  });
});

describe('admission with a budget when the queue is full (passthrough)', () => {
  it('the passthrough grant is counted; past the limit it is refused before any token is taken', async () => {
    // Prepare: no room in the queue, so every request goes through the passthrough policy
    const s = await setup();
    const config: GatewayConfig = { ...CONFIG, queueMaxSize: 0, queueFullPolicy: 'passthrough' };
    const budget = { requestsPerDay: 1 };
    const first = await s.admission.admit(s.request(budget), config);
    expect(first.passthrough).toBe(true);
    const before = await s.state();
    expect(before.used).toEqual({ requests: 1, tokens: 0 });

    // Act
    const err = await refusal(s.admission.admit(s.request(budget), config));

    // Assess
    expect(err).toMatchObject({ code: 'agent_budget_exceeded' });
    expect(await s.state()).toEqual(before);
  });
});

/** Agent keys in memory, with the budget update the DynamoDB store makes (null removes the field). */
const memoryKeys = (): KeyStore & { all: Map<string, AgentKey> } => {
  const all = new Map<string, AgentKey>();
  const update = async (h: string, patch: Partial<AgentKey>) => {
    const k = all.get(h);
    if (k) all.set(h, { ...k, ...patch });
  };
  return {
    all,
    get: async (h) => all.get(h),
    put: async (k) => {
      all.set(k.keyHash, k);
    },
    list: async () => [...all.values()],
    setEnabled: (h, enabled) => update(h, { enabled }),
    setExpiry: (h, expiresAt) => update(h, { expiresAt }),
    setBudget: async (h, budget) => {
      const k = all.get(h);
      if (!k) return;
      const next: AgentKey = { ...k };
      for (const f of ['budgetRequestsDay', 'budgetTokensDay'] as const) {
        const v = budget[f];
        if (v === null) delete next[f];
        else if (v !== undefined) next[f] = v;
      }
      all.set(h, next);
    },
    touch: async () => true,
  };
};

describe('budgets on agent keys', () => {
  let seed = 0;
  const random = (n: number) => new Uint8Array(n).map(() => (seed = (seed * 31 + 7) % 251));
  const admin = () => {
    const store = memoryKeys();
    return { store, admin: new KeyAdmin(store, new FakeClock(T0), random) };
  };

  it('create stores them; rotate carries them to the new key', async () => {
    const { admin: a } = admin();
    const { record } = await a.create(
      'planner',
      'high',
      {},
      { budgetRequestsDay: 500, budgetTokensDay: 100_000 },
    );
    expect(record).toMatchObject({ budgetRequestsDay: 500, budgetTokensDay: 100_000 });
    const rotated = await a.rotate('planner', 1_000);
    expect(rotated.record).toMatchObject({ budgetRequestsDay: 500, budgetTokensDay: 100_000 });
  });

  it.each([
    [{ budgetRequestsDay: 0 }, /budget-requests-day must be a whole number > 0/],
    [{ budgetTokensDay: 1.5 }, /budget-tokens-day must be a whole number > 0/],
    [{ budgetTokensDay: -3 }, /budget-tokens-day must be a whole number > 0/],
  ])('create refuses %o', async (budget, message) => {
    await expect(admin().admin.create('planner', 'normal', {}, budget)).rejects.toThrow(message);
  });

  it('setBudget by agent changes every key of the agent; null clears, a field left out stays', async () => {
    const { store, admin: a } = admin();
    const one = await a.create('planner', 'normal', {}, { budgetTokensDay: 9 });
    const two = await a.create('planner');
    const other = await a.create('coder');

    const changed = await a.setBudget({ agent: 'planner' }, { budgetRequestsDay: 10 });
    expect(changed).toHaveLength(2);
    expect(store.all.get(one.record.keyHash)).toMatchObject({ budgetRequestsDay: 10, budgetTokensDay: 9 });
    expect(store.all.get(two.record.keyHash)).toMatchObject({ budgetRequestsDay: 10 });
    expect(store.all.get(other.record.keyHash)?.budgetRequestsDay).toBeUndefined();

    await a.setBudget({ agent: 'planner' }, { budgetTokensDay: null });
    expect(store.all.get(one.record.keyHash)).not.toHaveProperty('budgetTokensDay');
    expect(budgetOf(store.all.get(one.record.keyHash)!)).toEqual({ budget: { requestsPerDay: 10 } });
  });

  it('setBudget by key id changes that key only', async () => {
    const { store, admin: a } = admin();
    const one = await a.create('planner');
    const two = await a.create('planner');
    await a.setBudget({ keyId: one.record.keyHash.slice(0, 12) }, { budgetRequestsDay: 3 });
    expect(store.all.get(one.record.keyHash)?.budgetRequestsDay).toBe(3);
    expect(store.all.get(two.record.keyHash)?.budgetRequestsDay).toBeUndefined();
  });

  it.each([
    [{ agent: 'planner' }, {}, /name a budget/],
    [{ agent: 'nobody' }, { budgetRequestsDay: 1 }, /no keys for agent nobody/],
    [{ keyId: 'abc' }, { budgetRequestsDay: 1 }, /at least 6 hex/],
  ])('setBudget refuses %o with %o', async (target, budget, message) => {
    const { admin: a } = admin();
    await a.create('planner');
    await expect(a.setBudget(target, budget)).rejects.toThrow(message);
  });
});
