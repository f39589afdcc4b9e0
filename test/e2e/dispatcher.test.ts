// The dispatcher singleton on the real stores: one leader at a time, no double grant even without the lease,
// no lost wake-up, and messages with nothing to do are deleted.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DynamoLeaseStore } from '../../lib/adapters/dynamo/lease-store.js';
import type { LeaseStore, ReceivedMessage, TicketQueue } from '../../lib/domain/ports.js';
import { messageFor, type Ticket } from '../../lib/domain/tickets.js';
import { dispatcherFor, readTickets, storesFor } from '../support/stores.js';

const WINDOW_MS = 2_000;
const LIMIT = 20;

describe('dispatcher singleton', () => {
  let ctx: Awaited<ReturnType<typeof storesFor>>;
  beforeAll(async () => {
    ctx = await storesFor('dispatcher', {
      SLUICE_UPSTREAM_LIMIT: String(LIMIT),
      SLUICE_UPSTREAM_WINDOW_S: String(WINDOW_MS / 1000),
      SLUICE_BUCKET_BURST: '2',
    });
  });
  afterAll(() => ctx?.close());

  const admitMany = async (n: number): Promise<Ticket[]> => {
    const config = await ctx.stores.config.config();
    const out: Ticket[] = [];
    for (let i = 0; i < n; i++) {
      const { ticket } = await ctx.admission.admit(
        {
          agent: `a${i % 4}`,
          priority: 'normal',
          model: 'meta/x',
          stream: false,
          deadline: Date.now() + 120_000,
        },
        config,
      );
      out.push(ticket);
    }
    return out;
  };

  it('runs one leader at a time: a second run finds the lease taken', async () => {
    await admitMany(3);
    const [a, b] = await Promise.all([
      dispatcherFor(ctx.stores, { owner: 'one' }).run(Date.now() + 30_000),
      dispatcherFor(ctx.stores, { owner: 'two' }).run(Date.now() + 30_000),
    ]);
    expect([a.stopReason, b.stopReason].filter((r) => r === 'not_leader')).toHaveLength(1);
    expect(a.granted + b.granted).toBe(3);
  });

  it('never grants a ticket twice nor overspends the bucket, even if two run without a shared lease and every message reaches both', async () => {
    const tickets = await admitMany(30);
    // Misconfiguration: each dispatcher has its own lease item, so both run at once over the same queues.
    const leaseOf = (name: string): LeaseStore =>
      new DynamoLeaseStore(ctx.clients.dynamo, ctx.env.stateTable, name);
    // And SQS's at-least-once delivery at its worst: every message one dispatcher receives is delivered to the
    // other as well (visibility would otherwise hide it), so only the grant's own conditions stop a double grant.
    const copiesFor = { x: [] as ReceivedMessage[], y: [] as ReceivedMessage[] };
    let duplicates = 0;
    const duplicating = (self: 'x' | 'y', other: 'x' | 'y'): TicketQueue => ({
      send: (m) => ctx.stores.queue.send(m),
      delete: (p, r) => ctx.stores.queue.delete(p, r),
      deleteBatch: (p, r) => ctx.stores.queue.deleteBatch(p, r),
      extend: (p, r, sec) => ctx.stores.queue.extend(p, r, sec),
      depth: (p) => ctx.stores.queue.depth(p),
      receive: async (p, max, wait, signal) => {
        const mine = copiesFor[self].filter((m) => m.message.priority === p);
        if (mine.length > 0) {
          copiesFor[self] = copiesFor[self].filter((m) => m.message.priority !== p);
          duplicates += mine.length;
          return mine;
        }
        const got = await ctx.stores.queue.receive(p, max, wait, signal);
        copiesFor[other].push(...got);
        return got;
      },
    });
    const [a, b] = await Promise.all([
      dispatcherFor(ctx.stores, {
        owner: 'x',
        lease: leaseOf('rogue-x'),
        queue: duplicating('x', 'y'),
      }).run(Date.now() + 60_000),
      dispatcherFor(ctx.stores, {
        owner: 'y',
        lease: leaseOf('rogue-y'),
        queue: duplicating('y', 'x'),
      }).run(Date.now() + 60_000),
    ]);
    expect(a.ran && b.ran).toBe(true);
    expect(duplicates).toBeGreaterThanOrEqual(15);
    expect(a.granted + b.granted).toBe(30);
    const stored = await readTickets(
      ctx.stores.tickets,
      tickets.map((t) => t.id),
    );
    expect(stored.every((t) => t?.status === 'granted' && t.attempt === 0)).toBe(true);
    // The grant times of both dispatchers together respect the window limit of the shared bucket.
    const times = stored.map((t) => t!.grantedAt!).sort((x, y) => x - y);
    // Window-exact admission: the stated limit itself is the bound.
    const allowance = LIMIT;
    for (let i = 0; i < times.length; i++) {
      const inWindow = times.filter((t) => t > times[i]! - WINDOW_MS && t <= times[i]!).length;
      expect(inWindow).toBeLessThanOrEqual(allowance);
    }
    expect(await ctx.stores.tickets.admissionCount()).toBe(0);
  });

  it('wakes a successor when work arrived while it was stopping (no lost wake-up)', async () => {
    let wakes = 0;
    // The queue looks empty while the run works, then reports one visible message once it has stopped.
    let stopped = false;
    const queue: TicketQueue = {
      send: (m) => ctx.stores.queue.send(m),
      receive: (p, max, wait, signal) =>
        stopped ? Promise.resolve([]) : ctx.stores.queue.receive(p, max, wait, signal),
      delete: (p, r) => ctx.stores.queue.delete(p, r),
      deleteBatch: (p, r) => ctx.stores.queue.deleteBatch(p, r),
      extend: (p, r, s) => ctx.stores.queue.extend(p, r, s),
      depth: async () => (stopped ? { visible: 1, inFlight: 0 } : { visible: 0, inFlight: 0 }),
    };
    const release = ctx.stores.lease.release.bind(ctx.stores.lease);
    const lease: LeaseStore = {
      acquire: (o, n, t) => ctx.stores.lease.acquire(o, n, t),
      renew: (o, n, t) => ctx.stores.lease.renew(o, n, t),
      get: () => ctx.stores.lease.get(),
      ring: () => ctx.stores.lease.ring(),
      release: async (o, seen) => {
        const ok = await release(o, seen);
        if (ok) stopped = true;
        return ok;
      },
    };
    const summary = await dispatcherFor(ctx.stores, {
      owner: 'waker',
      queue,
      lease,
      wakeSuccessor: async () => {
        wakes++;
      },
    }).run(Date.now() + 30_000);
    expect(summary.stopReason).toBe('idle');
    expect(wakes).toBe(1);
  });

  it('keeps working when the doorbell rang after it last looked (release refused)', async () => {
    const owner = 'ringing';
    const got = await ctx.stores.lease.acquire(owner, Date.now(), 15_000);
    expect(got.acquired).toBe(true);
    await ctx.stores.lease.ring();
    expect(await ctx.stores.lease.release(owner, got.state.rings)).toBe(false);
    const now = await ctx.stores.lease.get();
    expect(await ctx.stores.lease.release(owner, now.rings)).toBe(true);
  });

  it('deletes messages whose ticket is terminal or missing, without spending a token', async () => {
    const [t] = await admitMany(1);
    await ctx.stores.tickets.transition(
      t!.id,
      'queued',
      'abandoned',
      { finishedAt: Date.now(), reason: 'test' },
      { attempt: 0 },
    );
    await ctx.stores.queue.send({
      ticketId: 'no-such-ticket',
      attempt: 0,
      priority: 'high',
      agent: 'ghost',
      enqueuedAt: Date.now(),
      deadline: Date.now() + 60_000,
    });
    const before = (await ctx.stores.bucket.refresh())?.tat;
    const summary = await dispatcherFor(ctx.stores, { owner: 'cleaner' }).run(Date.now() + 30_000);
    expect(summary.granted).toBe(0);
    expect(summary.skipped).toBe(2);
    expect((await ctx.stores.bucket.refresh())?.tat).toBe(before);
    const depths = await Promise.all(
      (['urgent', 'high', 'normal', 'low'] as const).map((p) => ctx.stores.queue.depth(p)),
    );
    expect(depths.every((d) => d.visible === 0 && d.inFlight === 0)).toBe(true);
  });
});

describe('batched grants on the real stores (plain GCRA above the window log)', () => {
  // 300 per 2 s: above LOG_MAX_ENTRIES, so the bucket is plain GCRA and the dispatcher grants in batches.
  const BIG_LIMIT = 300;
  let ctx: Awaited<ReturnType<typeof storesFor>>;
  beforeAll(async () => {
    ctx = await storesFor('dispatcher-batch', {
      SLUICE_UPSTREAM_LIMIT: String(BIG_LIMIT),
      SLUICE_UPSTREAM_WINDOW_S: String(WINDOW_MS / 1000),
      SLUICE_BUCKET_BURST: '20',
      SLUICE_QUEUE_MAX: '2000',
    });
  });
  afterAll(() => ctx?.close());

  it('never more than the limit in any window, never granted twice (two dispatchers, duplicate messages), every ticket granted once, counters agree', async () => {
    const config = await ctx.stores.config.config();
    const tickets: Ticket[] = [];
    await Promise.all(
      Array.from({ length: 8 }, async (_, w) => {
        for (let i = 0; i < 60; i++) {
          const { ticket } = await ctx.admission.admit(
            {
              agent: `b${(w * 60 + i) % 7}`,
              priority: 'normal',
              model: 'meta/x',
              stream: false,
              deadline: Date.now() + 120_000,
            },
            config,
          );
          tickets.push(ticket);
          // Every tenth ticket is delivered twice.
          if (i % 10 === 0) await ctx.stores.queue.send(messageFor(ticket));
        }
      }),
    );
    const leaseOf = (name: string): LeaseStore =>
      new DynamoLeaseStore(ctx.clients.dynamo, ctx.env.stateTable, name);
    const [a, b] = await Promise.all([
      dispatcherFor(ctx.stores, { owner: 'bx', lease: leaseOf('batch-x') }).run(Date.now() + 90_000),
      dispatcherFor(ctx.stores, { owner: 'by', lease: leaseOf('batch-y') }).run(Date.now() + 90_000),
    ]);
    expect(a.granted + b.granted).toBe(tickets.length);
    const stored = await readTickets(
      ctx.stores.tickets,
      tickets.map((t) => t.id),
    );
    expect(stored.every((t) => t?.status === 'granted' && t.attempt === 0)).toBe(true);
    const times = stored.map((t) => t!.grantedAt!).sort((x, y) => x - y);
    let most = 0;
    for (let i = 0, j = 0; i < times.length; i++) {
      while (times[j]! <= times[i]! - WINDOW_MS) j++;
      most = Math.max(most, i - j + 1);
    }
    expect(most).toBeLessThanOrEqual(BIG_LIMIT);
    expect(await ctx.stores.tickets.counts()).toEqual({ queued: 0, inflight: tickets.length });
    expect(Object.values(await ctx.stores.tickets.agentQueuedCounts()).every((n) => n === 0)).toBe(true);
  }, 180_000);
});
