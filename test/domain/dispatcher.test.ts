// The dispatcher on in-memory stores and a fake clock: which tickets it grants, in which order, what it leaves.
import { describe, expect, it } from 'vitest';
import { MemoryBucketStore, MemoryConfigStore } from '../../lib/adapters/memory/stores.js';
import { MemoryTicketStore } from '../../lib/adapters/memory/tickets.js';
import { TokenBucket } from '../../lib/domain/bucket.js';
import { FakeClock } from '../../lib/domain/clock.js';
import { DEFAULT_CONFIG, type GatewayConfig } from '../../lib/domain/config.js';
import { ConfigService } from '../../lib/domain/config-service.js';
import { isFirstLook, ORPHAN_SWEEP_EVERY } from '../../lib/domain/dispatcher.js';
import type { Priority } from '../../lib/domain/priority.js';
import { messageFor } from '../../lib/domain/tickets.js';
import { memoryGateway } from '../support/memory-gateway.js';

const setup = async (config: Partial<GatewayConfig>) => {
  const clock = new FakeClock();
  const bucketStore = new MemoryBucketStore();
  const bucket = new TokenBucket(bucketStore, clock, { fraction: 0.5, forNormal: false });
  const configStore = new MemoryConfigStore();
  // The grant and the claim read the stored flag (never the cached config), as the DynamoDB store does.
  const tickets = new MemoryTicketStore(bucketStore, () => configStore.value?.config.paused === true);
  configStore.value = {
    config: { ...DEFAULT_CONFIG, ...config },
    version: 1,
    updatedAt: clock.now(),
    updatedBy: 'test',
  };
  const configService = new ConfigService(configStore, clock, { ...DEFAULT_CONFIG, ...config });
  const { queue, admission, dispatcher } = memoryGateway({ clock, tickets, bucket, config: configService });
  return {
    clock,
    tickets,
    queue,
    admission,
    dispatcher,
    configStore,
    bucketStore,
    config: await configService.config(),
  };
};

type Case = {
  name: string;
  config: Partial<GatewayConfig>;
  /** Admitted in this order, all before the run. */
  admitted: Priority[];
  /** Priorities in grant order. */
  granted: Priority[];
  left: { queued: number; inflight: number };
};

describe('Dispatcher.run', () => {
  it.each<Case>([
    {
      name: 'grants in priority order, FIFO within a priority',
      config: { lowPriorityTimeoutMs: 60_000 },
      admitted: ['low', 'normal', 'urgent', 'normal', 'high'],
      granted: ['urgent', 'high', 'normal', 'normal', 'low'],
      left: { queued: 0, inflight: 5 },
    },
    {
      name: 'paused: grants nothing, tickets keep waiting',
      config: { paused: true },
      admitted: ['urgent', 'normal'],
      granted: [],
      left: { queued: 2, inflight: 0 },
    },
    {
      name: 'max_inflight: grants only up to the cap',
      config: { maxInflight: 2 },
      admitted: ['normal', 'normal', 'normal'],
      granted: ['normal', 'normal'],
      left: { queued: 1, inflight: 2 },
    },
  ])('$name', async ({ config, admitted, granted, left }) => {
    const s = await setup(config);
    const ids: string[] = [];
    for (const priority of admitted) {
      const { ticket } = await s.admission.admit(
        { agent: 'a', priority, model: 'm', stream: false, deadline: s.clock.now() + 600_000 },
        s.config,
      );
      ids.push(ticket.id);
      s.clock.advance(1);
    }
    // Shorter than the claim window (15 s): no grant is swept as unclaimed during the run.
    await s.dispatcher.run(s.clock.now() + 10_000);
    const all = await Promise.all(ids.map((id) => s.tickets.get(id)));
    const order = all
      .filter((t) => t?.status === 'granted')
      .sort((a, b) => a!.grantedAt! - b!.grantedAt! || a!.enqueuedAt - b!.enqueuedAt)
      .map((t) => t!.priority);
    expect(order).toEqual(granted);
    expect(await s.tickets.counts()).toEqual(left);
  });
});

const admitAll = async (s: Awaited<ReturnType<typeof setup>>, priorities: Priority[], waitMs = 600_000) => {
  const ids: string[] = [];
  for (const priority of priorities) {
    const { ticket } = await s.admission.admit(
      { agent: 'a', priority, model: 'm', stream: false, deadline: s.clock.now() + waitMs },
      s.config,
    );
    ids.push(ticket.id);
    s.clock.advance(1);
  }
  return ids;
};

describe('Dispatcher: reservations, hopeless tickets, expired messages', () => {
  it('reserves the next slot (grantedAt ahead of the write) instead of sleeping until it; spacing and window hold', async () => {
    // 40 per 60 s, burst 2: after the burst every slot is 1.5 s apart; the grant is written up to one interval early.
    const s = await setup({});
    const ids = await admitAll(s, Array(8).fill('normal'));
    const summary = await s.dispatcher.run(s.clock.now() + 10_000);
    const granted = (await Promise.all(ids.map((id) => s.tickets.get(id))))
      .filter((t) => t?.status === 'granted')
      .map((t) => t!.grantedAt!)
      .sort((a, b) => a - b);
    expect(granted.length).toBeGreaterThanOrEqual(4);
    expect(summary.reserved).toBeGreaterThanOrEqual(1);
    const interval = s.bucketStore.state!.intervalMs;
    // Burst 2: any three consecutive grants span at least one interval; the log holds every one of them.
    for (let i = 2; i < granted.length; i++)
      expect(granted[i]! - granted[i - 2]!).toBeGreaterThanOrEqual(interval);
    expect(s.bucketStore.state!.log).toEqual(expect.arrayContaining(granted));
  });

  it.each<{
    name: string;
    config: Partial<GatewayConfig>;
    admitted: Priority[];
    waitMs: number;
    refused: number;
    reason: string;
  }>([
    {
      // 4 per 60 s: one grant per 15 s. With a 40 s deadline the 4th ticket onward (≥ 45 s) can never be served,
      // and at its first look a ticket must fit in three quarters of it (30 s): the 3rd goes too.
      name: 'tickets whose estimated wait exceeds their deadline are refused at once, not at the deadline',
      config: { upstreamLimit: 4 },
      admitted: Array(6).fill('normal'),
      waitMs: 40_000,
      refused: 4,
      reason: 'wait_exceeds_deadline',
    },
    {
      // 40 per 60 s, burst 2: the 7th and 8th LOW ticket are due 7.5 s and 9 s out, past the 6 s LOW timeout.
      name: "LOW's token timeout applies to every LOW ticket, not only the head",
      config: {},
      admitted: Array(8).fill('low'),
      waitMs: 600_000,
      refused: 2,
      reason: 'low_priority_timeout',
    },
    {
      // The same LOW tickets under weighted shares: LOW waits for its share (a 1.5 × 8 s wait fits the deadline).
      name: 'under weighted priority LOW has a share: no LOW timeout',
      config: { priorityPolicy: 'weighted' },
      admitted: Array(8).fill('low'),
      waitMs: 600_000,
      refused: 0,
      reason: 'low_priority_timeout',
    },
  ])('$name', async ({ config, admitted, waitMs, refused, reason }) => {
    const s = await setup(config);
    const ids = await admitAll(s, admitted, waitMs);
    const started = s.clock.now();
    await s.dispatcher.run(started + 1_000);
    const all = await Promise.all(ids.map((id) => s.tickets.get(id)));
    const rejected = all.filter((t) => t?.status === 'rejected');
    expect(rejected.map((t) => t!.reason)).toEqual(Array(refused).fill(reason));
    // The newest ones (last in line) are refused, and well before any deadline.
    expect(rejected.map((t) => t!.id)).toEqual(ids.slice(ids.length - refused));
    for (const t of rejected) expect(t!.finishedAt! - started).toBeLessThan(5_000);
    expect(rejected.every((t) => (t!.retryAfterMs ?? 0) > 0)).toBe(true);
    expect((await s.tickets.counts()).queued).toBe(all.filter((t) => t?.status === 'queued').length);
  });

  it.each<{ name: string; bucketKnown: boolean; policy: 'strict' | 'weighted'; refused: number }>([
    // 4 per 60 s, burst 1: a grant every 15 s; 40 s deadlines. Unjudged at admission (no bucket yet), the
    // dispatcher's look is the first: a ticket must fit in three quarters of its 40 s, so the 3rd (30 s) goes.
    {
      name: 'not judged at admission: the dispatcher gives the first look',
      bucketKnown: false,
      policy: 'strict',
      refused: 2,
    },
    // Strict order: admission judged them (the 3rd fits its 30 s, the 4th is refused at once), and the
    // dispatcher's hold looks first again with the load it measures then (here with its grant margin: the 3rd goes).
    {
      name: 'judged at admission (strict): the dispatcher looks first again',
      bucketKnown: true,
      policy: 'strict',
      refused: 1,
    },
    // Weighted shares: admission's look was the first; the dispatcher's hold is a later look and keeps the 3rd —
    // judged strictly a second time (with its grant margin) it was refused seconds later.
    {
      name: 'judged at admission (weighted): kept by the dispatcher',
      bucketKnown: true,
      policy: 'weighted',
      refused: 0,
    },
  ])('a ticket has one first look: $name', async ({ bucketKnown, policy, refused }) => {
    const s = await setup({ upstreamLimit: 4, priorityPolicy: policy });
    // A run with nothing queued writes the bucket: admission then knows the interval.
    if (bucketKnown) {
      await s.dispatcher.run(s.clock.now() + 10);
      // Under strict order the load of more important work is known (published by an earlier run: none).
      s.tickets.load = { at: s.clock.now(), higher: { urgent: 0, high: 0, normal: 0, low: 0 } };
    }
    const admitted: string[] = [];
    const refusedAtAdmission: string[] = [];
    for (let i = 0; i < 4; i++) {
      try {
        admitted.push(...(await admitAll(s, ['normal'], 40_000)));
      } catch (err) {
        refusedAtAdmission.push((err as Error).message);
      }
    }
    expect(refusedAtAdmission.length).toBe(bucketKnown ? 1 : 0);
    await s.dispatcher.run(s.clock.now() + 1_000);
    const all = await Promise.all(admitted.map((id) => s.tickets.get(id)));
    expect(all.filter((t) => t?.status === 'rejected').length).toBe(refused);
    // What the dispatcher keeps it can serve: the 3rd ticket's grant (30 s out) is before its deadline.
    expect(all.filter((t) => t?.status !== 'rejected').length).toBe(admitted.length - refused);
  });

  it('a ticket requeued after a grant or delivered again is not judged as a first look again', () => {
    const m = (o: { looked?: boolean; judged?: true; attempt?: number; receiveCount?: number }) => ({
      ...(o.looked ? { looked: o.looked } : {}),
      receiveCount: o.receiveCount ?? 1,
      message: { attempt: o.attempt ?? 0, ...(o.judged ? { judged: o.judged } : {}) },
    });
    expect(isFirstLook(m({}))).toBe(true);
    expect(isFirstLook(m({ looked: true }))).toBe(false);
    expect(isFirstLook(m({ judged: true }))).toBe(false);
    expect(isFirstLook(m({ attempt: 1 }))).toBe(false);
    expect(isFirstLook(m({ receiveCount: 2 }))).toBe(false);
  });

  it('publishes the load of more important work it measured, for admission to judge requests by', async () => {
    const s = await setup({});
    // The dispatcher starts looking; then urgent tickets arrive one per token interval for 12 s.
    await s.dispatcher.run(s.clock.now() + 10);
    expect(s.tickets.load).toBeUndefined();
    for (let i = 0; i < 8; i++) {
      await admitAll(s, ['urgent']);
      s.clock.advance(1_499);
    }
    await s.dispatcher.run(s.clock.now() + 6_000);
    const published = s.tickets.load!;
    expect(published.at).toBeGreaterThan(s.clock.now() - 6_000);
    // Nothing is more important than urgent; every other priority sees the same urgent load (8 over 8–12 intervals).
    expect(published.higher.urgent).toBe(0);
    expect(published.higher.high).toBeGreaterThan(0.5);
    expect(published.higher.low).toBe(published.higher.high);
  });

  it('a message long past its deadline is only deleted: no write to its (abandoned) ticket', async () => {
    const s = await setup({});
    const [id] = await admitAll(s, ['normal'], 1_000);
    const before = await s.tickets.get(id!);
    s.clock.advance(10_000);
    await s.dispatcher.run(s.clock.now() + 1_000);
    expect(await s.tickets.get(id!)).toEqual(before);
    expect((await s.queue.depth('normal')).visible + (await s.queue.depth('normal')).inFlight).toBe(0);
  });

  it('a grant made before a pause is not claimed after it: requeued at its place, token refunded', async () => {
    const s = await setup({});
    const [id] = await admitAll(s, ['normal']);
    await s.dispatcher.run(s.clock.now() + 500);
    const granted = await s.tickets.get(id!);
    expect(granted?.status).toBe('granted');
    s.configStore.value = {
      ...s.configStore.value!,
      config: { ...s.configStore.value!.config, paused: true },
    };
    expect(await s.admission.claim(granted!, s.clock.now() + 60_000)).toBe('paused');
    const signal = new AbortController().signal;
    const res = await s.admission.untilClaimed(granted!, {
      signal,
      passthrough: false,
      windowMs: 60_000,
      callBudgetMs: 60_000,
      intervalMs: async () => 1_500,
    });
    // Still paused: it waited (queued again) until its deadline instead of reaching the upstream.
    expect(res.kind).toBe('refused');
    const after = await s.tickets.get(id!);
    expect(after?.claimedAt).toBeUndefined();
    expect(after?.attempt).toBe(1);
    expect(s.bucketStore.state!.log ?? []).not.toContain(granted!.grantedAt);
  });
});

describe("Dispatcher: a successor's first seconds", () => {
  it.each([
    // The predecessor published urgent's load on HIGH as 0.8 of the rate; the successor's first 7.5 s see a burst of
    // 8 urgent arrivals (1.6 of the rate over that span). Read alone the burst starves HIGH, and the two HIGH
    // tickets the predecessor had kept were refused; read as the window's observed part they are kept.
    { name: "with the predecessor's load: the HIGH tickets are kept", inherited: true, rejected: 0 },
    {
      name: 'a fresh deployment (nothing published): the burst alone judges them',
      inherited: false,
      rejected: 2,
    },
  ])('$name', async ({ inherited, rejected }) => {
    // Prepare
    const s = await setup({ priorityPolicy: 'strict' });
    const t0 = s.clock.now();
    if (inherited)
      await s.tickets.publishLoad({ at: t0, higher: { urgent: 0, high: 0.8, normal: 0.85, low: 0.9 } });
    const high = [];
    for (let i = 0; i < 2; i++) {
      const { ticket } = await s.admission.admit(
        { agent: 'h', priority: 'high', model: 'm', stream: false, deadline: t0 + 240_000 },
        s.config,
      );
      high.push(ticket.id);
    }
    // Urgent requests that arrive during the run's first 7 s (admitted ahead on the fake clock).
    for (let i = 0; i < 8; i++) {
      s.clock.set(t0 + 500 + i * 800);
      await s.admission.admit(
        { agent: `u${i}`, priority: 'urgent', model: 'm', stream: false, deadline: t0 + 240_000 },
        s.config,
      );
    }
    s.clock.set(t0);

    // Act: shorter than the claim window, so no grant is swept as unclaimed
    await s.dispatcher.run(t0 + 12_000);

    // Assess
    const ended = await Promise.all(high.map((id) => s.tickets.get(id)));
    expect(ended.filter((t) => t?.status === 'rejected')).toHaveLength(rejected);
  });
});

describe('Dispatcher: several grants per transaction', () => {
  it.each<{ name: string; config: Partial<GatewayConfig>; admitted: Priority[]; duplicates: number }>([
    {
      name: 'plain GCRA with tokens free: one write grants many, in priority order',
      config: { upstreamLimit: 12_000, bucketBurst: 10 },
      admitted: ['normal', 'low', 'urgent', 'normal', 'high', 'normal', 'normal', 'urgent'],
      duplicates: 0,
    },
    {
      name: 'duplicate deliveries: each ticket granted once, the copies skipped',
      config: { upstreamLimit: 12_000, bucketBurst: 10 },
      admitted: ['normal', 'normal', 'normal', 'normal', 'normal', 'normal'],
      duplicates: 3,
    },
  ])('$name', async ({ config, admitted, duplicates }) => {
    const s = await setup({ lowPriorityTimeoutMs: 60_000, ...config });
    const writes = { single: 0, batch: 0, batched: 0 };
    const grant = s.tickets.grant.bind(s.tickets);
    const grantBatch = s.tickets.grantBatch.bind(s.tickets);
    s.tickets.grant = (...a) => {
      writes.single++;
      return grant(...a);
    };
    s.tickets.grantBatch = async (batch, attempt, opts) => {
      const res = await grantBatch(batch, attempt, opts);
      writes.batch++;
      if (res.kind === 'granted') writes.batched += batch.length;
      return res;
    };
    const ids = await admitAll(s, admitted);
    // A duplicate delivery is a second message for the same ticket and attempt.
    for (const id of ids.slice(0, duplicates)) {
      const t = (await s.tickets.get(id))!;
      await s.queue.send(messageFor(t));
    }
    const summary = await s.dispatcher.run(s.clock.now() + 5_000);
    const all = (await Promise.all(ids.map((id) => s.tickets.get(id)))).map((t) => t!);
    expect(all.every((t) => t.status === 'granted')).toBe(true);
    expect(summary.granted).toBe(admitted.length);
    expect(writes.batched).toBeGreaterThanOrEqual(2);
    expect(writes.batch + writes.single).toBeLessThan(admitted.length);
    expect(await s.tickets.counts()).toEqual({ queued: 0, inflight: admitted.length });
    // Priority order holds across batches: no ticket granted before a more important one.
    const order = [...all].sort((a, b) => a.grantedAt! - b.grantedAt!);
    for (let i = 1; i < order.length; i++) {
      if (order[i]!.grantedAt === order[i - 1]!.grantedAt) continue;
      expect(PRIORITY_RANK[order[i]!.priority]).toBeGreaterThanOrEqual(PRIORITY_RANK[order[i - 1]!.priority]);
    }
    // The bucket moved by exactly one interval per grant (the burst and spacing hold as for single grants).
    const state = s.bucketStore.state!;
    expect(state.window).toBeUndefined();
    expect(state.tat! - Math.min(...all.map((t) => t.grantedAt!))).toBe(admitted.length * state.intervalMs);
  });
});

describe('Dispatcher: reservations several per transaction', () => {
  it('past the tokens free now, the same write reserves the next slots up to the horizon, one ticket each', async () => {
    // Prepare: 600 per 60 s (plain GCRA, a slot every 100 ms, burst 2); 30 tickets wait. Each grant write is kept.
    const s = await setup({ upstreamLimit: 600, lowPriorityTimeoutMs: 60_000 });
    const writes: { at: number; ids: string[] }[] = [];
    const grant = s.tickets.grant.bind(s.tickets);
    const grantBatch = s.tickets.grantBatch.bind(s.tickets);
    s.tickets.grant = (ticket, ...a) => {
      writes.push({ at: s.clock.now(), ids: [ticket.id] });
      return grant(ticket, ...a);
    };
    s.tickets.grantBatch = (batch, ...a) => {
      writes.push({ at: s.clock.now(), ids: batch.map((t) => t.id) });
      return grantBatch(batch, ...a);
    };
    const ids = await admitAll(s, Array(30).fill('normal'), 60_000);

    // Act
    await s.dispatcher.run(s.clock.now() + 500);

    // Assess: the first write takes the burst and reserves the slots after it up to 1 s ahead (before: the two
    // free tokens alone, then one reservation per write).
    const first = writes[0]!;
    expect(first.ids).toEqual(ids.slice(0, first.ids.length));
    const slots = await Promise.all(first.ids.map(async (id) => (await s.tickets.get(id))!.grantedAt!));
    const interval = s.bucketStore.state!.intervalMs;
    expect(slots.length).toBeGreaterThanOrEqual(8);
    expect(slots[1]).toBe(slots[0]);
    for (let i = 2; i < slots.length; i++) expect(slots[i]! - slots[i - 1]!).toBe(interval);
    expect(slots.at(-1)! - first.at).toBeLessThanOrEqual(1_000);
    // The bucket moved one interval per grant.
    const granted = writes.flatMap((w) => w.ids).length;
    expect(s.bucketStore.state!.tat! - slots[0]!).toBe(granted * interval);
  });
});

describe('Dispatcher sweeps', () => {
  it('looks for queued orphans (four Queries) at a run’s first sweep and every sixth after, not at every sweep', async () => {
    // Prepare: paused, so the run keeps going (and sweeping every 5 s) with tickets waiting.
    const s = await setup({ paused: true });
    const phases: string[] = [];
    const listPhase = s.tickets.listPhase.bind(s.tickets);
    s.tickets.listPhase = (phase, ...a) => {
      phases.push(phase);
      return listPhase(phase, ...a);
    };
    await admitAll(s, ['normal']);

    // Act
    await s.dispatcher.run(s.clock.now() + 60_000);

    // Assess: every sweep looks at unclaimed grants and unfinished calls; orphans once per ORPHAN_SWEEP_EVERY.
    const sweeps = phases.filter((p) => p === 'granted').length;
    expect(sweeps).toBeGreaterThanOrEqual(7);
    expect(phases.filter((p) => p.startsWith('queued#'))).toHaveLength(
      4 * Math.ceil(sweeps / ORPHAN_SWEEP_EVERY),
    );
    expect(phases.slice(0, 4)).toEqual(['queued#urgent', 'queued#high', 'queued#normal', 'queued#low']);
  });
});

const PRIORITY_RANK: Record<Priority, number> = { urgent: 0, high: 1, normal: 2, low: 3 };

describe('Dispatcher on a slow store', () => {
  it('plans a batch’s slot ahead by the grant transaction’s recent latency: grants are not already stale when written', async () => {
    // Prepare: 12,000 rpm (2,000 per 10 s: 1 s of grant slack, a grant older than 750 ms when claimed is requeued);
    // each batch grant answers 800 ms after it was sent.
    const s = await setup({ upstreamLimit: 2_000, upstreamWindowMs: 10_000, bucketBurst: 20 });
    const committed = new Map<string, number>();
    const grantBatch = s.tickets.grantBatch.bind(s.tickets);
    s.tickets.grantBatch = async (...args) => {
      const res = await grantBatch(...args);
      s.clock.advance(800);
      for (const t of args[0]) committed.set(t.id, s.clock.now());
      return res;
    };
    const ids = await admitAll(s, Array(100).fill('normal'), 60_000);

    // Act
    await s.dispatcher.run(s.clock.now() + 14_000);

    // Assess: batches after the first few are written at most ~half the slack after their slot (not 800 ms)
    const ages = (await Promise.all(ids.map((id) => s.tickets.get(id))))
      .filter((t) => t?.status === 'granted' && committed.has(t.id))
      .sort((a, b) => a!.grantedAt! - b!.grantedAt!)
      .map((t) => committed.get(t!.id)! - t!.grantedAt!);
    expect(ages.length).toBeGreaterThanOrEqual(80);
    expect(ages[0]).toBeGreaterThanOrEqual(800);
    for (const age of ages.slice(60)) expect(age).toBeLessThanOrEqual(500);
  });
});

describe('Dispatcher batches', () => {
  it('a batch grant takes a full 20 tickets from a backlog (the buffer holds a whole batch)', async () => {
    // Prepare: 12,000 rpm with a burst of 20; 40 tickets wait
    const s = await setup({ upstreamLimit: 2_000, upstreamWindowMs: 10_000, bucketBurst: 20 });
    const sizes: number[] = [];
    const grantBatch = s.tickets.grantBatch.bind(s.tickets);
    s.tickets.grantBatch = async (...args) => {
      sizes.push(args[0].length);
      return grantBatch(...args);
    };
    await admitAll(s, Array(40).fill('normal'), 60_000);

    // Act
    await s.dispatcher.run(s.clock.now() + 2_000);

    // Assess
    expect(sizes[0]).toBe(20);
  });
});
