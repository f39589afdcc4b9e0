// The grant's age is judged once more right before the upstream request leaves (memory fakes, fake clock): a claim
// write or a key lookup slower than the grant slack hands the claimed ticket back — no upstream call, the token
// refunded, queued again at its place — and "claimed means called" still holds for an Idempotency-Key retry.
import { describe, expect, it, vi } from 'vitest';
import { MemoryBucketStore, MemoryOutcomeStore } from '../../lib/adapters/memory/stores.js';
import { MemoryLeaseStore, MemoryTicketQueue, MemoryTicketStore } from '../../lib/adapters/memory/tickets.js';
import { Admission, idempotentRetry } from '../../lib/domain/admission.js';
import { TokenBucket } from '../../lib/domain/bucket.js';
import { FakeClock } from '../../lib/domain/clock.js';
import { DEFAULT_CONFIG } from '../../lib/domain/config.js';
import type { TicketPatch, TicketStatus } from '../../lib/domain/tickets.js';
import { isTerminal, type Ticket } from '../../lib/domain/tickets.js';
import type { UpstreamRequest } from '../../lib/domain/upstream-port.js';
import { UpstreamRelay } from '../../lib/ingress/upstream-relay.js';
import { requestContext } from '../support/request-context.js';

const WINDOW_MS = DEFAULT_CONFIG.upstreamWindowMs;
/** The default grant slack (1 s): a step longer than it makes any grant too old to call on. */
const SLOW_MS = DEFAULT_CONFIG.grantSlackMs + 200;

/** A ticket store whose claim write takes `claimMs` of (fake) time. */
class SlowClaimStore extends MemoryTicketStore {
  claimMs = 0;
  constructor(
    bucketStore: MemoryBucketStore,
    private readonly clock: FakeClock,
  ) {
    super(bucketStore);
  }
  override async transition(
    id: string,
    from: TicketStatus,
    to: TicketStatus,
    patch: TicketPatch,
    opts?: { attempt?: number; unlessPaused?: boolean },
  ) {
    const res = await super.transition(id, from, to, patch, opts);
    if (from === 'granted' && to === 'claimed') this.clock.advance(this.claimMs);
    return res;
  }
}

const setup = () => {
  const clock = new FakeClock();
  const bucketStore = new MemoryBucketStore();
  const tickets = new SlowClaimStore(bucketStore, clock);
  const queue = new MemoryTicketQueue(clock);
  const outcomes = new MemoryOutcomeStore();
  const bucket = new TokenBucket(bucketStore, clock, { fraction: 0.5, forNormal: false });
  const refunds = vi.spyOn(bucket, 'refund').mockResolvedValue(undefined as never);
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
  });
  const upstreamCalls: UpstreamRequest[] = [];
  let keyMs = 0;
  const relay = new UpstreamRelay({
    upstream: {
      call: async (req) => {
        upstreamCalls.push(req);
        return {
          status: 200,
          headers: new Headers({ 'content-type': 'application/json' }),
          body: new Response('{"choices":[],"usage":{"total_tokens":3}}').body,
        };
      },
    },
    upstreamKey: async () => {
      clock.advance(keyMs);
      return 'nvapi-test';
    },
    admission,
    outcomes,
    bucket,
    clock,
    telemetry: { upstream: () => {} },
    log: { warn: () => {}, error: () => {} },
  });
  /** What the grant transaction does to a queued ticket (the token itself is not modelled here). */
  const grant = (id: string) => {
    const t = tickets.tickets.get(id)!;
    tickets.tickets.set(id, { ...t, status: 'granted', grantedAt: clock.now() });
    tickets.counters.queued--;
    tickets.priorityQueued[t.priority]--;
    tickets.counters.inflight++;
  };
  const admit = async (idempotencyKey?: string) =>
    admission.admit(
      {
        agent: 'a',
        priority: 'normal',
        model: 'm',
        stream: false,
        deadline: clock.now() + 60_000,
        ...(idempotencyKey ? { idempotencyKey } : {}),
      },
      DEFAULT_CONFIG,
    );
  const untilClaimed = (ticket: Ticket) =>
    admission.untilClaimed(ticket, {
      signal: new AbortController().signal,
      passthrough: false,
      windowMs: WINDOW_MS,
      callBudgetMs: 65_000,
      intervalMs: async () => 1_500,
    });
  const context = () =>
    requestContext({
      req: { body: null, remainingMs: 300_000 },
      upstream: { name: 'nvidia', baseUrl: 'http://upstream.test/v1', limited: true },
      upstreamBody: '{"model":"m"}',
    });
  /** Grants, claims and calls as the ingress does, until a call leaves (a hand-back waits for the next grant). */
  const serve = async (first: Ticket) => {
    let ticket = first;
    const ctx = context();
    for (let round = 0; round < 5; round++) {
      grant(ticket.id);
      const res = await untilClaimed((await tickets.get(ticket.id))!);
      if (res.kind !== 'claimed') throw new Error(`not claimed: ${res.kind}`);
      const sendCheck = res.calledAt !== undefined ? { calledAt: res.calledAt } : {};
      const called = await relay.callAndRelay(ctx, res.ticket, {}, { sendCheck });
      if (typeof called !== 'object') return { rounds: round + 1, reply: await ctx.channel.reply };
      ticket = called.requeued;
      // Only the first try is slow.
      tickets.claimMs = 0;
      keyMs = 0;
    }
    throw new Error('never called');
  };
  return {
    clock,
    tickets,
    queue,
    outcomes,
    refunds,
    upstreamCalls,
    admit,
    untilClaimed,
    grant,
    serve,
    relay,
    context,
    slowKey: (ms: number) => {
      keyMs = ms;
    },
  };
};

describe('a grant older than the slack at the moment of sending is handed back, never called on', () => {
  it.each([
    { name: 'the claim write takes longer than the slack', slowClaim: SLOW_MS, slowKey: 0 },
    { name: 'the key lookup takes longer than the slack', slowClaim: 0, slowKey: SLOW_MS },
    { name: 'claim and key lookup together pass the send share', slowClaim: 500, slowKey: 400 },
  ])(
    '$name: no call with the old grant, token refunded, one call with the next, one terminal state',
    async (c) => {
      const s = setup();
      const { ticket } = await s.admit();
      s.tickets.claimMs = c.slowClaim;
      s.slowKey(c.slowKey);

      const { rounds, reply } = await s.serve(ticket);

      // The stale grant never reached the upstream; the next grant did, once.
      expect(rounds).toBe(2);
      expect(s.upstreamCalls).toHaveLength(1);
      expect(reply.status).toBe(200);
      // The first grant's token went back (by its grant time, so the window log frees that very entry).
      expect(s.refunds).toHaveBeenCalledTimes(1);
      // One terminal state; the ticket's attempts: the hand-back was a requeue (attempt 1 called).
      const stored = (await s.tickets.get(ticket.id))!;
      expect(stored).toMatchObject({ status: 'completed', attempt: 1 });
      expect(isTerminal(stored.status)).toBe(true);
      expect(await s.tickets.counts()).toEqual({ queued: 0, inflight: 0 });
      // Queue messages: the admission's and the hand-back's (attempt 1, at its original place).
      const messages = await s.queue.receive('normal', 10);
      expect(messages.map((m) => m.message.attempt)).toEqual([0, 1]);
      expect(messages.map((m) => m.message.enqueuedAt)).toEqual([ticket.enqueuedAt, ticket.enqueuedAt]);
    },
  );

  it("on an upstream with tpm the hand-back gives the grant's token reservation back too (its need on that upstream)", async () => {
    const s = setup();
    const { ticket } = await s.admit();
    // The ticket's estimate, as admission records it for an upstream with tpm.
    s.tickets.tickets.set(ticket.id, { ...s.tickets.tickets.get(ticket.id)!, tokens: 300 });
    s.grant(ticket.id);
    s.tickets.claimMs = SLOW_MS;
    const res = await s.untilClaimed((await s.tickets.get(ticket.id))!);
    if (res.kind !== 'claimed') throw new Error(`not claimed: ${res.kind}`);
    const ctx = { ...s.context(), config: { ...DEFAULT_CONFIG, upstreamTpm: 1_000 } };
    const called = await s.relay.callAndRelay(ctx, res.ticket, {}, { sendCheck: {} });
    expect(typeof called).toBe('object');
    expect(s.upstreamCalls).toHaveLength(0);
    expect(s.refunds).toHaveBeenCalledWith(
      res.ticket.grantedAt,
      WINDOW_MS,
      expect.objectContaining({ tokens: 300, tpm: 1_000 }),
    );
  });

  it('a grant within the slack is called on at once (no hand-back, no refund)', async () => {
    const s = setup();
    const { ticket } = await s.admit();
    s.tickets.claimMs = 300;
    s.slowKey(300);
    const { rounds } = await s.serve(ticket);
    expect(rounds).toBe(1);
    expect(s.upstreamCalls).toHaveLength(1);
    expect(s.refunds).not.toHaveBeenCalled();
  });

  it('Idempotency-Key: 409 while claimed; after the hand-back a retry attaches, and a ticket that then ends unused is replaced (never called)', async () => {
    const s = setup();
    const { ticket } = await s.admit('key-1');
    s.grant(ticket.id);
    s.tickets.claimMs = SLOW_MS;
    const res = await s.untilClaimed((await s.tickets.get(ticket.id))!);
    if (res.kind !== 'claimed') throw new Error('not claimed');
    await expect(s.admit('key-1')).rejects.toMatchObject({ code: 'idempotency_key_in_use' });

    const called = await s.relay.callAndRelay(s.context(), res.ticket, {}, { sendCheck: {} });

    expect(typeof called).toBe('object');
    expect(s.upstreamCalls).toHaveLength(0);
    const handedBack = (await s.tickets.get(ticket.id))!;
    expect(handedBack).toMatchObject({ status: 'queued', attempt: 1 });
    expect(handedBack.claimedAt).toBeUndefined();
    expect(handedBack.claimBy).toBeUndefined();
    // A retry with the same key waits on the same ticket.
    const retry = await s.admit('key-1');
    expect(retry).toMatchObject({ attached: true, ticket: { id: ticket.id, status: 'queued' } });
    // Should it now end without a call, the key is free again: nothing reached the upstream.
    await s.tickets.transition(ticket.id, 'queued', 'expired', { finishedAt: s.clock.now() }, { attempt: 1 });
    expect(idempotentRetry(await s.tickets.get(ticket.id))).toBe('replace');
  });

  it('only the claimer hands back: a ticket no longer claimed under its claim time is not requeued, nor called', async () => {
    const s = setup();
    const { ticket } = await s.admit();
    s.grant(ticket.id);
    s.tickets.claimMs = SLOW_MS;
    const res = await s.untilClaimed((await s.tickets.get(ticket.id))!);
    if (res.kind !== 'claimed') throw new Error('not claimed');
    // Meanwhile the claim sweep ended it (as if its claimBy had passed).
    await s.tickets.transition(ticket.id, 'claimed', 'failed', { reason: 'claim_expired' }, { attempt: 0 });

    const ctx = s.context();
    const called = await s.relay.callAndRelay(ctx, res.ticket, {}, { sendCheck: {} });

    expect(called).toBe('done');
    expect(s.upstreamCalls).toHaveLength(0);
    expect(s.refunds).not.toHaveBeenCalled();
    expect(await s.tickets.get(ticket.id)).toMatchObject({ status: 'failed', attempt: 0 });
    expect((await ctx.channel.reply).status).toBe(503);
  });
});
