// DynamoDB faults after a request was admitted: an ambiguous create (committed, answer lost), a failed claim, a
// failed end-of-call record and failing counters. The agent gets a clear answer, no token is spent on work that
// was not claimed, and every ticket still ends in a terminal state (the dispatcher's sweeps).
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type AwsCall, dynamoCalls } from '../../bench/support/fault-proxy.js';
import { allTickets } from '../support/system.js';
import { call, expectInvariants, type FaultySystem, sleep, startStoreFaultSystem } from './support.js';

let f: FaultySystem;

beforeAll(async () => {
  f = await startStoreFaultSystem('rel-store-after');
});

afterAll(async () => {
  f.dynamo.clear();
  try {
    await expectInvariants(f.system, expect);
  } finally {
    await f?.stop();
  }
});

const ticketCreate = (c: AwsCall) =>
  c.action === 'TransactWriteItems' && c.body.includes('"Put":') && dynamoCalls.onTable('-tickets')(c);

describe('DynamoDB failing after admission', () => {
  it('ticket create committed but its answer lost: 503, and the orphan ticket is expired, not left queued', async () => {
    // A quota of its own keeps the request off the fast path (granted and claimed in one write at admission).
    const key = await f.system.createKey('agent-create-lost', 'urgent', { rpm: 6_000 });
    const before = new Set((await allTickets(f.system)).map((t) => t.id));
    const remove = f.dynamo.add({
      name: 'create-lost',
      match: ticketCreate,
      fault: { kind: 'status', status: 500 },
      afterForward: true,
    });
    const reply = await call(f.system, key, { headers: { 'idempotency-key': randomUUID() } }).finally(remove);
    expect(reply.status).toBe(503);
    expect(reply.error?.code).toBe('store_unavailable');
    const orphan = (await allTickets(f.system)).find((t) => !before.has(t.id));
    // The write happened (the SDK's retries reuse its ClientRequestToken, so it happened once).
    expect(orphan?.status).toBe('queued');
    const ended = await settleTicket(orphan!.id, 20_000);
    expect(ended).toMatchObject({ status: 'expired' });
    expect(f.system.upstream!.calls.length).toBe(f.system.upstream!.calls.length);
  });

  it('claim failing: 503 store_unavailable, no upstream call, the grant is swept and its token refunded', async () => {
    const key = await f.system.createKey('agent-claim', 'urgent', { rpm: 6_000 });
    const before = new Set((await allTickets(f.system)).map((t) => t.id));
    const callsBefore = f.system.upstream!.calls.length;
    const remove = f.dynamo.add({
      name: 'claim',
      match: dynamoCalls.ticketMoveTo('claimed'),
      fault: { kind: 'status', status: 500 },
    });
    const reply = await call(f.system, key, { headers: { 'idempotency-key': randomUUID() } }).finally(remove);
    expect(reply.status).toBe(503);
    expect(reply.error?.code).toBe('store_unavailable');
    expect(f.system.upstream!.calls.length).toBe(callsBefore);
    const t = (await allTickets(f.system)).find((x) => !before.has(x.id));
    expect(await settleTicket(t!.id, 20_000)).toMatchObject({
      status: 'failed',
      reason: 'ingress_lost_before_claim',
    });
  });

  it('recording the end failing: the agent gets its whole answer; the call is swept to failed later', async () => {
    const key = await f.system.createKey('agent-finish', 'urgent');
    const before = new Set((await allTickets(f.system)).map((t) => t.id));
    const remove = f.dynamo.add({
      name: 'finish',
      match: dynamoCalls.ticketMoveTo('completed'),
      fault: { kind: 'hang' },
    });
    const reply = await call(f.system, key, {
      body: JSON.stringify({ model: 'meta/x', stream: true, messages: [] }),
    });
    expect(reply.status).toBe(200);
    expect(reply.text).toContain('data: [DONE]');
    expect(reply.error).toBeUndefined();
    // The end is recorded after the reply ended (the agent never waits for it): the fault holds, for every
    // retry of that write, until the sweep has ended the ticket (a move to `failed`, which the rule lets through).
    try {
      await expect.poll(() => f.dynamo.injected.get('finish') ?? 0, { timeout: 20_000 }).toBeGreaterThan(0);
      const t = (await allTickets(f.system)).find((x) => !before.has(x.id));
      expect(await settleTicket(t!.id, 30_000)).toMatchObject({
        status: 'failed',
        reason: 'ingress_lost_during_call',
      });
    } finally {
      remove();
    }
  });

  it.each([
    ['outcome counters', dynamoCalls.partition('outcomes')],
    ['usage counters', dynamoCalls.partition('usage')],
  ])('%s failing: bookkeeping only, the request is served', async (_name, match) => {
    const key = await f.system.createKey(`agent-${_name.replace(/\W+/g, '-')}`, 'urgent');
    const remove = f.dynamo.add({ name: _name, match, fault: { kind: 'status', status: 500 } });
    const reply = await call(f.system, key).finally(remove);
    expect(reply.status).toBe(200);
  });
});

const settleTicket = async (id: string, timeoutMs: number) => {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const t = await f.system.stores.tickets.get(id);
    if (t && !['queued', 'granted', 'claimed'].includes(t.status)) return t;
    if (Date.now() > until) return t;
    await sleep(250);
  }
};
