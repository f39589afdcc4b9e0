// Agent budgets on DynamoDB Local (issue 16.2): the day item is charged in the ticket's own transaction, so N
// concurrent admissions with a budget of k admit exactly k (queued and fast path); a refusal writes nothing (no
// ticket, no token, no count); tokens refuse once the answers reached the limit; the next UTC day starts at zero;
// /admin/usage shows used, limits and what remains.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Admission, type AdmitRequest } from '../../lib/domain/admission.js';
import { type AgentBudget, budgetDay, DAY_MS } from '../../lib/domain/agent-budget.js';
import { FakeClock } from '../../lib/domain/clock.js';
import { DEFAULT_CONFIG, type GatewayConfig } from '../../lib/domain/config.js';
import { GatewayError, StoreUnavailableError } from '../../lib/domain/errors.js';
import { PRIORITIES } from '../../lib/domain/priority.js';
import { AdminService } from '../../lib/status/admin.js';
import { storesFor } from '../support/stores.js';

let sys: Awaited<ReturnType<typeof storesFor>>;
const CONFIG: GatewayConfig = {
  ...DEFAULT_CONFIG,
  queueMaxSize: 1000,
  maxQueuedPerAgent: 1000,
  maxInflight: 0,
};
let agentSeq = 0;
/** A fresh agent per test: its day item starts empty. */
const newAgent = () => `budget-${process.pid}-${++agentSeq}`;

beforeAll(async () => {
  sys = await storesFor('agent-budget');
  // Tokens for every request: only the budget refuses.
  await sys.stores.bucket.configure({ intervalMs: 10, burst: 1000 });
});

afterAll(() => sys?.close());

// Nothing dispatches here: tickets left queued are ended, so the next test's fast path finds the queues idle.
afterEach(async () => {
  for (const p of PRIORITIES)
    for (const t of await sys.stores.tickets.listPhase(`queued#${p}`, Number.MAX_SAFE_INTEGER, 100))
      await sys.stores.tickets.transition(t.id, 'queued', 'abandoned', {
        finishedAt: t.enqueuedAt,
        reason: 'test',
      });
});

/** An admission of its own (its fast-path backoff is per container). */
const admissionFor = (over: { clock?: FakeClock; newId?: () => string } = {}) =>
  new Admission({ ...sys.stores, wakeDispatcher: async () => {}, ...over });

const request = (agent: string, budget: AgentBudget, over: Partial<AdmitRequest> = {}): AdmitRequest => ({
  agent,
  priority: 'normal',
  model: 'm',
  stream: false,
  deadline: sys.stores.clock.now() + 60_000,
  budget,
  ...over,
});

/** Admits like a client would: a 503 for contention (store unavailable) is retried; the outcome is returned. */
const admitRetrying = async (admission: Admission, req: AdmitRequest) => {
  for (let i = 0; ; i++) {
    try {
      return { admitted: await admission.admit(req, CONFIG) };
    } catch (err) {
      if (err instanceof StoreUnavailableError && i < 8) continue;
      if (err instanceof GatewayError) return { refused: err };
      throw err;
    }
  }
};

const used = (agent: string, now = sys.stores.clock.now()) => sys.stores.budgets.used(agent, budgetDay(now));

describe('requests budget under concurrency', () => {
  it.each([
    ['queued path', {}],
    ['fast path (falls back to the queue on contention)', { callBudgetMs: 65_000 }],
  ])('%s: 12 concurrent admissions with a budget of 5 admit exactly 5', async (_name, over) => {
    // Prepare
    const agent = newAgent();
    const budget = { requestsPerDay: 5 };
    const admission = admissionFor();

    // Act
    const outcomes = await Promise.all(
      Array.from({ length: 12 }, () => admitRetrying(admission, request(agent, budget, over))),
    );

    // Assess
    const admitted = outcomes.filter((o) => o.admitted);
    const refused = outcomes.filter((o) => o.refused);
    expect(refused.map((o) => o.refused?.code)).toEqual(Array(7).fill('agent_budget_exceeded'));
    expect(admitted).toHaveLength(5);
    expect(await used(agent)).toEqual({ requests: 5, tokens: 0 });
    if ('callBudgetMs' in over) expect(admission.stats.fastPath).toBeGreaterThan(0);
    for (const o of admitted) {
      const stored = await sys.stores.tickets.get(o.admitted!.ticket.id);
      expect(stored?.budgetDay).toBe(budgetDay(sys.stores.clock.now()));
    }
  });
});

describe('a refusal spends nothing', () => {
  it('fast path at the limit: no ticket, no token, no in-flight, no count', async () => {
    // Prepare
    const agent = newAgent();
    const budget = { requestsPerDay: 2 };
    for (let i = 0; i < 2; i++)
      await admissionFor().admit(request(agent, budget, { callBudgetMs: 65_000 }), CONFIG);
    await sys.stores.bucket.refresh();
    const tat = sys.stores.bucket.state?.tat;
    const counts = await sys.stores.tickets.counts();
    let ids = 0;
    const admission = admissionFor({ newId: () => `refused-${agent}-${++ids}` });

    // Act
    const out = await admitRetrying(admission, request(agent, budget, { callBudgetMs: 65_000 }));

    // Assess
    expect(out.refused).toMatchObject({ status: 429, code: 'agent_budget_exceeded' });
    expect(out.refused?.message).toContain('2 of 2 requests');
    await sys.stores.bucket.refresh();
    expect(sys.stores.bucket.state?.tat).toBe(tat);
    expect(await sys.stores.tickets.counts()).toEqual(counts);
    expect(await sys.stores.tickets.get(`refused-${agent}-1`)).toBeUndefined();
    expect(await used(agent)).toEqual({ requests: 2, tokens: 0 });
  });
});

describe('Idempotency-Key', () => {
  it('a retry attaching to its own ticket is neither counted nor refused at the limit', async () => {
    const agent = newAgent();
    const budget = { requestsPerDay: 1 };
    const admission = admissionFor();
    const first = await admission.admit(request(agent, budget, { idempotencyKey: 'same' }), CONFIG);

    const again = await admitRetrying(admission, request(agent, budget, { idempotencyKey: 'same' }));
    const other = await admitRetrying(admission, request(agent, budget, { idempotencyKey: 'other' }));

    expect(again.admitted).toMatchObject({ attached: true, ticket: { id: first.ticket.id } });
    expect(other.refused).toMatchObject({ code: 'agent_budget_exceeded' });
    expect(await used(agent)).toEqual({ requests: 1, tokens: 0 });
  });
});

describe('tokens budget', () => {
  it('admits while under the limit, refuses once the answers reached it (the last answer overshoots)', async () => {
    // Prepare
    const agent = newAgent();
    const budget = { tokensPerDay: 100 };
    for (const tokens of [60, 70]) {
      const admission = admissionFor();
      const got = await admission.admit(request(agent, budget, { callBudgetMs: 65_000 }), CONFIG);
      expect(got.claimed).toBe(true);
      await admission.finish(got.ticket, 'completed', { upstreamStatus: 200, totalTokens: tokens });
    }
    // Token counts are written off the reply's path.
    await expect.poll(() => used(agent)).toEqual({ requests: 2, tokens: 130 });

    // Act
    const out = await admitRetrying(sys.admission, request(agent, budget));

    // Assess
    expect(out.refused).toMatchObject({ code: 'agent_budget_exceeded', param: 'budget_tokens_day' });
    expect(out.refused?.message).toContain('130 of 100 tokens');
    expect(await used(agent)).toEqual({ requests: 2, tokens: 130 });
  });
});

describe('the next UTC day', () => {
  it('starts at zero: refused just before midnight, admitted at midnight (fake clock on the real store)', async () => {
    // Prepare: an admission whose clock sits a millisecond before the next UTC midnight
    const agent = newAgent();
    const midnight = Math.ceil((Date.now() + 1) / DAY_MS) * DAY_MS;
    const clock = new FakeClock(midnight - 1);
    const admission = admissionFor({ clock });
    const budget = { requestsPerDay: 1 };
    const at = (now: number) => request(agent, budget, { deadline: now + 60_000 });
    expect((await admitRetrying(admission, at(clock.now()))).admitted).toBeDefined();
    const late = await admitRetrying(admission, at(clock.now()));
    expect(late.refused).toMatchObject({ code: 'agent_budget_exceeded', retryAfterMs: 1 });

    // Act
    clock.set(midnight);
    const next = await admitRetrying(admission, at(clock.now()));

    // Assess
    expect(next.admitted?.ticket.budgetDay).toBe(budgetDay(midnight));
    expect(await used(agent, midnight - 1)).toEqual({ requests: 1, tokens: 0 });
    expect(await used(agent, midnight)).toEqual({ requests: 1, tokens: 0 });
  });
});

describe('/admin/usage', () => {
  it("shows today's budgets: used, limits, what remains and the reset", async () => {
    // Prepare
    const agent = newAgent();
    const budget = { requestsPerDay: 5, tokensPerDay: 1000 };
    const admission = admissionFor();
    const got = await admission.admit(request(agent, budget, { callBudgetMs: 65_000 }), CONFIG);
    expect(got.claimed).toBe(true);
    await admission.finish(got.ticket, 'completed', { upstreamStatus: 200, totalTokens: 250 });
    await sys.admission.admit(request(agent, budget), CONFIG);
    await expect.poll(async () => (await used(agent)).tokens).toBe(250);
    const admin = new AdminService({ ...sys.stores, history: sys.stores.configStore });

    // Act
    const view = await admin.usage(1000);

    // Assess
    const now = sys.stores.clock.now();
    expect(view.budgets.find((b) => b.agent === agent)).toEqual({
      agent,
      day: budgetDay(now),
      requests: 2,
      tokens: 250,
      requestsLimit: 5,
      tokensLimit: 1000,
      requestsRemaining: 3,
      tokensRemaining: 750,
      resetsAt: Math.ceil((now + 1) / DAY_MS) * DAY_MS,
    });
    // Agents without a budget are never counted there.
    await sys.admission.admit(request(`${agent}-free`, {}), CONFIG);
    expect((await admin.usage(1000)).budgets.some((b) => b.agent === `${agent}-free`)).toBe(false);
  });
});

describe('budgets on the key record', () => {
  it('setBudget sets, leaves and clears (REMOVE) each field; an unknown key is a conflict', async () => {
    const keyHash = `hash-${newAgent()}`;
    await sys.stores.keys.put({ keyHash, agent: 'k', maxPriority: 'normal', enabled: true, createdAt: 1 });

    await sys.stores.keys.setBudget(keyHash, { budgetRequestsDay: 10, budgetTokensDay: 500 });
    expect(await sys.stores.keys.get(keyHash)).toMatchObject({ budgetRequestsDay: 10, budgetTokensDay: 500 });
    await sys.stores.keys.setBudget(keyHash, { budgetTokensDay: null });
    const after = await sys.stores.keys.get(keyHash);
    expect(after).toMatchObject({ budgetRequestsDay: 10 });
    expect(after).not.toHaveProperty('budgetTokensDay');

    await expect(sys.stores.keys.setBudget(`${keyHash}-none`, { budgetRequestsDay: 1 })).rejects.toThrow(
      /no such key/,
    );
  });
});
