// Admission on in-memory stores and a fake clock: from an admitted ticket to a claimed grant (untilClaimed).
import { describe, expect, it } from 'vitest';
import { MemoryBucketStore, MemoryOutcomeStore } from '../../lib/adapters/memory/stores.js';
import { MemoryLeaseStore, MemoryTicketQueue, MemoryTicketStore } from '../../lib/adapters/memory/tickets.js';
import { Admission, type ClaimResult } from '../../lib/domain/admission.js';
import { TokenBucket } from '../../lib/domain/bucket.js';
import { FakeClock } from '../../lib/domain/clock.js';
import { DEFAULT_CONFIG } from '../../lib/domain/config.js';
import type { Ticket } from '../../lib/domain/tickets.js';

const WINDOW_MS = 60_000;

/** A fake clock that runs `onSleep` at each sleep (the dispatcher acting while the ingress waits). */
class StepClock extends FakeClock {
  onSleep: () => void = () => {};
  override async sleep(ms: number): Promise<void> {
    await super.sleep(ms);
    this.onSleep();
  }
}

const setup = () => {
  const clock = new StepClock();
  const bucketStore = new MemoryBucketStore();
  const tickets = new MemoryTicketStore(bucketStore);
  const queue = new MemoryTicketQueue(clock);
  const admission = new Admission({
    tickets,
    queue,
    lease: new MemoryLeaseStore(clock),
    outcomes: new MemoryOutcomeStore(),
    bucket: new TokenBucket(bucketStore, clock, { fraction: 0.5, forNormal: false }),
    wakeDispatcher: async () => {},
    clock,
    newId: (() => {
      let n = 0;
      return () => `t${++n}`;
    })(),
  });
  /** What the grant transaction does to a queued ticket (the token itself is not modelled here). */
  const grant = (id: string, grantedAt = clock.now()) => {
    const t = tickets.tickets.get(id)!;
    if (t.status !== 'queued') return;
    tickets.tickets.set(id, { ...t, status: 'granted', grantedAt });
    tickets.counters.queued--;
    tickets.counters.inflight++;
  };
  return { clock, tickets, queue, admission, grant };
};
type Setup = ReturnType<typeof setup>;

const admit = async (s: Setup, idempotencyKey?: string) =>
  (
    await s.admission.admit(
      {
        agent: 'a',
        priority: 'normal',
        model: 'm',
        stream: false,
        deadline: s.clock.now() + 10_000,
        ...(idempotencyKey ? { idempotencyKey } : {}),
      },
      DEFAULT_CONFIG,
    )
  ).ticket;

const untilClaimed = (s: Setup, ticket: Ticket, over: { passthrough?: boolean; signal?: AbortSignal } = {}) =>
  s.admission.untilClaimed(ticket, {
    signal: over.signal ?? new AbortController().signal,
    passthrough: over.passthrough ?? false,
    windowMs: WINDOW_MS,
    callBudgetMs: 65_000,
    intervalMs: async () => 1_500,
  });

type Case = {
  name: string;
  /** Runs at each sleep of the waiting request, with the ticket id; the nth sleep is `n` (from 1). */
  act: (s: Setup, id: string, n: number) => void;
  passthrough?: boolean;
  aborted?: boolean;
  want: { kind: ClaimResult['kind']; code?: string; status: Ticket['status']; attempt: number };
  counts: { queued: number; inflight: number };
};

describe('Admission.untilClaimed', () => {
  it.each<Case>([
    {
      name: 'granted while waiting: claimed',
      act: (s, id, n) => n === 2 && s.grant(id),
      want: { kind: 'claimed', status: 'claimed', attempt: 0 },
      counts: { queued: 0, inflight: 1 },
    },
    {
      name: 'no grant before its deadline: refused, ticket abandoned',
      act: () => {},
      want: { kind: 'refused', code: 'queue_wait_exceeded', status: 'abandoned', attempt: 0 },
      counts: { queued: 0, inflight: 0 },
    },
    {
      name: 'a grant seen too late: requeued at its place, then claimed on the next grant',
      // Granted 2 s before it is seen: over 0.75 × grantToCallMaxMs (1.5 s for a 60 s window).
      act: (s, id, n) => s.grant(id, n === 1 ? s.clock.now() - 2_000 : s.clock.now()),
      want: { kind: 'claimed', status: 'claimed', attempt: 1 },
      counts: { queued: 0, inflight: 1 },
    },
    {
      name: 'another request with the same key claimed it first: refused with 409',
      act: (s, id) => {
        s.grant(id);
        s.tickets.tickets.set(id, { ...s.tickets.tickets.get(id)!, status: 'claimed' });
      },
      want: { kind: 'refused', code: 'idempotency_key_in_use', status: 'claimed', attempt: 0 },
      counts: { queued: 0, inflight: 1 },
    },
    {
      name: 'the agent left after a passthrough grant was claimed: gone, ticket abandoned',
      act: () => {},
      passthrough: true,
      aborted: true,
      want: { kind: 'gone', status: 'abandoned', attempt: 0 },
      counts: { queued: 0, inflight: 0 },
    },
  ])('$name', async ({ act, passthrough, aborted, want, counts }) => {
    const s = setup();
    const ticket = await admit(s);
    let sleeps = 0;
    s.clock.onSleep = () => act(s, ticket.id, ++sleeps);
    if (passthrough) s.grant(ticket.id);
    const abort = new AbortController();
    if (aborted) abort.abort();
    const res = await untilClaimed(s, (await s.tickets.get(ticket.id))!, {
      ...(passthrough ? { passthrough } : {}),
      signal: abort.signal,
    });
    expect(res.kind).toBe(want.kind);
    if (want.code) expect(res.kind === 'refused' && res.error.code).toBe(want.code);
    expect(await s.tickets.get(ticket.id)).toMatchObject({ status: want.status, attempt: want.attempt });
    expect(await s.tickets.counts()).toEqual(counts);
  });

  it("a stream's first heartbeat waits for a read at its time: a refusal made before it is seen first (a plain 429, no committed 200)", async () => {
    // Prepare: a request estimated 100 s out (far reads, 5 s apart), refused by the dispatcher 11 s in; its first
    // heartbeat is due at 12.5 s.
    const s = setup();
    const ticket = await s.admission.admit(
      { agent: 'a', priority: 'normal', model: 'm', stream: true, deadline: s.clock.now() + 540_000 },
      DEFAULT_CONFIG,
    );
    const t0 = s.clock.now();
    const reads: number[] = [];
    const get = s.tickets.get.bind(s.tickets);
    s.tickets.get = (id: string) => {
      reads.push(s.clock.now() - t0);
      return get(id);
    };
    s.clock.onSleep = () => {
      if (s.clock.now() - t0 < 11_000) return;
      const t = s.tickets.tickets.get(ticket.ticket.id)!;
      if (t.status !== 'queued') return;
      s.tickets.tickets.set(t.id, {
        ...t,
        status: 'rejected',
        reason: 'wait_exceeds_deadline',
        retryAfterMs: 60_000,
      });
    };
    const waitingAt: number[] = [];

    // Act
    const res = await s.admission.untilClaimed(ticket.ticket, {
      signal: new AbortController().signal,
      passthrough: false,
      windowMs: WINDOW_MS,
      callBudgetMs: 65_000,
      intervalMs: async () => 1_500,
      estimatedWaitMs: 100_000,
      onWaiting: () => waitingAt.push(s.clock.now() - t0),
      readBy: () => t0 + 12_500,
    });

    // Assess: a read at 12.5 s found the refusal; nothing was told "still waiting" at or after it.
    expect(reads).toContain(12_500);
    expect(res.kind === 'refused' && res.error.code).toBe('queue_wait_exceeded');
    expect(waitingAt.every((at) => at < 12_500)).toBe(true);
  });

  it('admits a retry with the same Idempotency-Key onto the waiting ticket (one ticket, one queue message)', async () => {
    const s = setup();
    const first = await admit(s, 'k1');
    const again = await s.admission.admit(
      {
        agent: 'a',
        priority: 'normal',
        model: 'm',
        stream: false,
        deadline: s.clock.now() + 10_000,
        idempotencyKey: 'k1',
      },
      DEFAULT_CONFIG,
    );
    expect(again).toMatchObject({ attached: true, ticket: { id: first.id } });
    expect(await s.queue.depth('normal')).toEqual({ visible: 1, inFlight: 0 });
    expect(await s.tickets.counts()).toEqual({ queued: 1, inflight: 0 });
  });

  it('refuses a full queue under the reject policy, writing nothing', async () => {
    const s = setup();
    // The agent may fill the queue (its own cap would answer first otherwise).
    const config = { ...DEFAULT_CONFIG, queueMaxSize: 2, maxQueuedPerAgent: 2 };
    const req = {
      agent: 'a',
      priority: 'normal' as const,
      model: 'm',
      stream: false,
      deadline: s.clock.now() + 1,
    };
    // Three agents, so the per-agent cap (a quarter of the queue) is not what refuses.
    await s.admission.admit(req, config);
    await s.admission.admit({ ...req, agent: 'b' }, config);
    await expect(s.admission.admit({ ...req, agent: 'c' }, config)).rejects.toMatchObject({
      status: 503,
      code: 'queue_full',
    });
    expect(s.tickets.tickets.size).toBe(2);
  });
});
