// Per-agent queue cap (issue 13.3): the agent's queued counter moves in the same transaction as the global one —
// refused at the cap with nothing written, decremented exactly once by every way out of `queued`, repaired by
// the reconciliation — and admission answers 429 `agent_queue_full` without evicting anyone under drop_lowest.
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DynamoBucketStore } from '../../lib/adapters/dynamo/bucket-store.js';
import { DynamoTicketStore } from '../../lib/adapters/dynamo/ticket-store.js';
import { TokenBucket } from '../../lib/domain/bucket.js';
import { FakeClock } from '../../lib/domain/clock.js';
import { agentQueueCap, DEFAULT_CONFIG, type GatewayConfig } from '../../lib/domain/config.js';
import { AgentQueueFullError, RateLimitedError } from '../../lib/domain/errors.js';
import type { Ticket } from '../../lib/domain/tickets.js';
import { type TestResources, testResources } from '../support/aws.js';
import { storesFor } from '../support/stores.js';

let res: TestResources;
let tickets: DynamoTicketStore;
let grantStore: DynamoTicketStore;
let bucket: TokenBucket;
const clock = new FakeClock(Date.now());
const BIG = 1_000_000;

beforeAll(async () => {
  res = await testResources('agent-queue');
  const bucketKey = `agentq-${randomUUID()}`;
  tickets = new DynamoTicketStore(res.dynamo, {
    ticketsTable: res.names.ticketsTable,
    stateTable: res.names.stateTable,
    bucketKey,
  });
  grantStore = tickets;
  bucket = new TokenBucket(new DynamoBucketStore(res.dynamo, res.names.stateTable, bucketKey), clock, {
    fraction: 0,
    forNormal: false,
  });
  await bucket.configure({ intervalMs: 10, burst: 5 });
});

afterAll(() => res?.close());

const newTicket = (agent: string, overrides: Partial<Ticket> = {}): Ticket => ({
  id: `tk-${randomUUID()}`,
  agent,
  priority: 'normal',
  model: 'nvidia/llama',
  stream: false,
  status: 'queued',
  attempt: 0,
  enqueuedAt: clock.now(),
  deadline: clock.now() + 60_000,
  ...overrides,
});

const queuedOf = async (agent: string) => (await tickets.agentQueuedCounts())[agent] ?? 0;

describe('the per-agent counter', () => {
  it('refuses the ticket past the cap (nothing written) while another agent still gets in', async () => {
    const [a, b] = [`a-${randomUUID()}`, `b-${randomUUID()}`];
    for (let i = 0; i < 3; i++)
      await tickets.create(newTicket(a), { queueMaxSize: BIG, maxQueuedPerAgent: 3 });
    const before = await tickets.admissionCount();
    const over = newTicket(a);

    const err = await tickets
      .create(over, { queueMaxSize: BIG, maxQueuedPerAgent: 3 })
      .catch((e: unknown) => e);

    expect(err).toBeInstanceOf(AgentQueueFullError);
    expect((err as AgentQueueFullError).count).toBe(3);
    expect(await tickets.get(over.id)).toBeUndefined();
    expect(await tickets.admissionCount()).toBe(before);
    expect(await queuedOf(a)).toBe(3);
    await tickets.create(newTicket(b), { queueMaxSize: BIG, maxQueuedPerAgent: 3 });
    expect(await queuedOf(b)).toBe(1);
  });

  it('every way out of queued decrements exactly once; a requeue counts again', async () => {
    const a = `a-${randomUUID()}`;
    const created = Array.from({ length: 4 }, () => newTicket(a));
    for (const t of created) await tickets.create(t, { queueMaxSize: BIG, maxQueuedPerAgent: 10 });
    expect(await queuedOf(a)).toBe(4);
    const [expired, abandoned, granted, victim] = created as [Ticket, Ticket, Ticket, Ticket];

    // queued → expired, twice: the second move conflicts and must not decrement again.
    const end = { finishedAt: clock.now(), reason: 'deadline' };
    expect('ticket' in (await tickets.transition(expired.id, 'queued', 'expired', end))).toBe(true);
    expect('conflict' in (await tickets.transition(expired.id, 'queued', 'expired', end))).toBe(true);
    expect(await queuedOf(a)).toBe(3);
    // queued → abandoned with the caller's copy.
    await tickets.transition(abandoned.id, 'queued', 'abandoned', end, { known: abandoned });
    expect(await queuedOf(a)).toBe(2);
    // queued → granted (the dispatcher does not say the agent: the store finds it).
    await bucket.refresh();
    const plan = bucket.plan('urgent');
    if (!('attempt' in plan)) throw new Error(`no token: wait ${plan.waitMs}`);
    const out = await grantStore.grant({ id: granted.id, attempt: 0 }, plan.attempt, {
      grantedAt: clock.now(),
      claimBy: clock.now() + 10_000,
    });
    expect(out.kind).toBe('granted');
    expect(await queuedOf(a)).toBe(1);
    // granted → queued (requeue after a stale grant): counted again.
    await tickets.transition(granted.id, 'granted', 'queued', { reason: 'requeue' });
    expect(await queuedOf(a)).toBe(2);
    // drop_lowest: another agent's ticket replaces one of a's — a's count drops, b's rises.
    const b = `b-${randomUUID()}`;
    await tickets.create(newTicket(b), { queueMaxSize: BIG, maxQueuedPerAgent: 10, replace: victim });
    expect(await queuedOf(a)).toBe(1);
    expect(await queuedOf(b)).toBe(1);
  });

  it('reconciliation sets each agent counter to its queued tickets', async () => {
    const a = `a-${randomUUID()}`;
    await tickets.create(newTicket(a), { queueMaxSize: BIG, maxQueuedPerAgent: 10 });
    const { UpdateItemCommand } = await import('@aws-sdk/client-dynamodb');
    const { stateKey } = await import('../../lib/adapters/dynamo/common.js');
    await res.dynamo.send(
      new UpdateItemCommand({
        TableName: res.names.stateTable,
        Key: stateKey('agentq', a),
        UpdateExpression: 'SET queued = :q',
        ExpressionAttributeValues: { ':q': { N: '7' } },
      }),
    );
    await tickets.reconcileAdmission();
    expect(await queuedOf(a)).toBe(1);
  });
});

describe('admission', () => {
  it.each(['reject', 'drop_lowest'] as const)(
    'answers 429 agent_queue_full with a retry, and evicts nobody (%s)',
    async (policy) => {
      const { stores, admission, close } = await storesFor(`agentq-adm-${policy}`);
      try {
        const config: GatewayConfig = { ...DEFAULT_CONFIG, queueMaxSize: 4, queueFullPolicy: policy };
        expect(agentQueueCap(config)).toBe(1);
        const req = (agent: string) => ({
          agent,
          priority: 'normal' as const,
          model: 'm',
          stream: false,
          deadline: Date.now() + 60_000,
        });
        const other = await admission.admit(req('other'), config);
        await admission.admit(req('greedy'), config);
        const err = await admission.admit(req('greedy'), config).catch((e: unknown) => e);
        expect(err).toBeInstanceOf(RateLimitedError);
        expect((err as RateLimitedError).code).toBe('agent_queue_full');
        expect((err as RateLimitedError).retryAfterMs).toBeGreaterThan(0);
        expect((await stores.tickets.get(other.ticket.id))?.status).toBe('queued');
        expect(await stores.tickets.agentQueuedCounts()).toEqual({ other: 1, greedy: 1 });
      } finally {
        close();
      }
    },
  );
});
