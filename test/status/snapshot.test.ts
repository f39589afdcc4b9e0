// Snapshot builder against DynamoDB Local and fauxqs: known state in, every figure of the snapshot checked.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DynamoBucketStore } from '../../lib/adapters/dynamo/bucket-store.js';
import { FakeClock } from '../../lib/domain/clock.js';
import type { OutcomeEvent } from '../../lib/domain/outcomes.js';
import type { Priority } from '../../lib/domain/priority.js';
import type { RetreatRecord } from '../../lib/domain/retreat.js';
import type { Ticket, TicketStatus } from '../../lib/domain/tickets.js';
import { makeClients } from '../../lib/runtime/clients.js';
import { readRuntimeEnv } from '../../lib/runtime/env.js';
import { Memo } from '../../lib/status/memo.js';
import { SnapshotBuilder, type SnapshotSources } from '../../lib/status/snapshot.js';
import { type GatewayStores, gatewayStores } from '../../local/gateway-stores.js';
import { type TestResources, testResources } from '../support/aws.js';
import { envFor } from '../support/stores.js';

/** 5 s into a 10-second slot, so "now" is never on a slot edge. */
const NOW = 1_800_000_005_000;
const MIN = 60_000;

let res: TestResources;
let stores: GatewayStores;
let clients: ReturnType<typeof makeClients>;
const clock = new FakeClock(NOW);

const ticket = (id: string, status: TicketStatus, priority: Priority = 'normal'): Ticket => ({
  id,
  agent: 'agent-a',
  priority,
  model: 'meta/llama-3.1-8b-instruct',
  stream: false,
  status,
  attempt: 0,
  enqueuedAt: NOW - 20_000,
  deadline: NOW + 200_000,
  ...(status === 'granted' || status === 'claimed' ? { grantedAt: NOW - 5_000, claimBy: NOW + 60_000 } : {}),
});

const sources = (overrides: Partial<SnapshotSources> = {}): SnapshotSources => ({
  bucket: { get: () => stores.bucket.refresh() },
  retreat: stores.retreatStore,
  tickets: stores.tickets,
  queue: stores.queue,
  lease: stores.lease,
  outcomes: stores.outcomes,
  config: stores.config,
  configHistory: stores.configStore,
  ingressMemoryMb: 512,
  clock,
  ...overrides,
});

const record = (at: number, event: OutcomeEvent) => stores.outcomes.record(at, event);

beforeAll(async () => {
  res = await testResources('status-snapshot');
  const env = readRuntimeEnv(envFor(res));
  clients = makeClients(env);
  stores = gatewayStores(env, clients, {}, clock);

  // Config: seeded, then one change a minute ago (two fields, recorded in the history).
  clock.set(NOW - MIN);
  await stores.config.seed();
  await stores.config.update({ queue_max_size: 50, low_priority_timeout_s: 5 }, 'tester');
  clock.set(NOW);

  // Outcomes: one slot outside the 10-minute window, two inside, and the current slot.
  await record(NOW - 11 * MIN, { counts: { granted: 100, ok: 100 } });
  await record(NOW - 9 * MIN, { counts: { granted: 3, ok: 2, throttled: 1 } });
  for (const ms of [300, 300, 4_000]) {
    await record(NOW - 9 * MIN, { counts: {}, latencies: [{ name: 'queueWait', priority: 'normal', ms }] });
  }
  await record(NOW - 30_000, {
    counts: { granted: 2, ok: 2, throttled: 1, refused: 1 },
    latencies: [
      { name: 'upstream', priority: 'high', ms: 800 },
      { name: 'queueWait', priority: 'urgent', ms: 40 },
    ],
  });
  await record(NOW - 30_000, { counts: {}, latencies: [{ name: 'upstream', priority: 'high', ms: 800 }] });
  await record(NOW, { counts: { abandoned: 1, expired: 1 } });

  // Bucket: 1500 ms interval, burst 2, half a token short of full (tat = now + 750).
  const bucketStore = new DynamoBucketStore(res.dynamo, res.names.stateTable, 'default');
  const empty = await bucketStore.ensure({ intervalMs: 1_500, burst: 2 });
  expect(await bucketStore.compareAndSet(empty, { ...empty, tat: NOW + 750 })).toBe(true);

  // Retreat: one step down 100 s ago.
  const retreat: RetreatRecord = {
    state: 'retreat',
    effectiveRpm: 30,
    baseRpm: 40,
    since: NOW - 100_000,
    lastStepAt: NOW - 100_000,
    version: 3,
    transitions: [{ at: NOW - 100_000, from: 'normal', to: 'retreat', rpm: 30, rate: 0.125, reason: 'test' }],
  };
  expect(await stores.retreatStore.put(retreat, undefined)).toBe(true);

  // Tickets: three queued (admission counter 3), one granted, one calling upstream.
  for (const id of ['q1', 'q2', 'q3'])
    await stores.tickets.create(ticket(id, 'queued'), { queueMaxSize: 50 });
  await stores.tickets.create(ticket('g1', 'granted'), { queueMaxSize: 50, bypassAdmission: true });
  await stores.tickets.create(ticket('c1', 'claimed', 'high'), { queueMaxSize: 50, bypassAdmission: true });

  // Queues: two urgent messages (one of them received, i.e. in flight) and one low.
  const message = (id: string, priority: Priority) => ({
    ticketId: id,
    attempt: 0,
    priority,
    agent: 'agent-a',
    enqueuedAt: NOW - 20_000,
    deadline: NOW + 200_000,
  });
  await stores.queue.send(message('u1', 'urgent'));
  await stores.queue.send(message('u2', 'urgent'));
  await stores.queue.send(message('l1', 'low'));
  expect(await stores.queue.receive('urgent', 1, 1)).toHaveLength(1);

  // The dispatcher holds the lease.
  expect((await stores.lease.acquire('dispatcher-run-1', NOW - 1_000, 15_000)).acquired).toBe(true);
});

afterAll(() => {
  clients?.dynamo.destroy();
  clients?.sqs.destroy();
  clients?.lambda.destroy();
  res?.close();
});

describe('SnapshotBuilder', () => {
  it('reports every part of the gateway from the stores', async () => {
    const s = await new SnapshotBuilder(sources()).build();

    expect(s.at).toBe(NOW);
    expect(s.configVersion).toBe(2);
    expect(s.bucket).toEqual({
      rpm: 40,
      intervalMs: 1_500,
      burst: 2,
      tokens: 1,
      level: 1.5,
      // LOW may not spend the reserved half of the burst: the one token left is not its to take.
      tokensByPriority: { urgent: 1, high: 1, normal: 1, low: 0 },
      holdUntil: null,
      configured: true,
      // Not metered in tokens: no token figures.
      tokensPerMinute: null,
    });
    expect(s.retreat).toMatchObject({
      state: 'retreat',
      effectiveRpm: 30,
      baseRpm: 40,
      since: NOW - 100_000,
      windowMs: 60_000,
      // Retreat window [now − 60 s, now]: the slot 30 s ago (2 ok + 1 throttled) and the current one.
      window: { total: 3, throttled: 1, capacity: 0 },
      throttleRate: 0.3333,
    });
    expect(s.retreat.transitions).toEqual([
      { at: NOW - 100_000, from: 'normal', to: 'retreat', rpm: 30, rate: 0.125, reason: 'test' },
    ]);
    expect(s.queue).toEqual({
      total: 3,
      maxSize: 50,
      policy: 'reject',
      order: { policy: 'strict', weights: '8:4:2:1' },
      byPriority: {
        urgent: { waiting: 1, buffered: 1 },
        high: { waiting: 0, buffered: 0 },
        normal: { waiting: 0, buffered: 0 },
        low: { waiting: 1, buffered: 0 },
      },
      // The in-flight counter moves with grants; this state was written directly, one granted ticket counted.
      inFlight: { granted: 1, calling: 1, capped: false, counter: 1, max: 0 },
    });
    expect(s.dispatcher).toEqual({
      state: 'running',
      expiresAt: NOW + 14_000,
      observedSince: NOW,
      since: expect.any(Number),
    });
    expect(s.limits).toMatchObject({ upstreamLimit: 40, queueMaxSize: 50, lowPriorityTimeoutMs: 5_000 });
  });

  it('counts throughput per 10-second slot over exactly the last 10 minutes', async () => {
    const s = await new SnapshotBuilder(sources()).build();
    const { t, series, totals, slotMs } = s.throughput;
    expect(slotMs).toBe(10_000);
    expect(t).toHaveLength(60);
    expect(t.at(-1)).toBe(NOW - 5_000);
    expect(t[0]).toBe(NOW - 5_000 - 59 * 10_000);
    const at = (ms: number) => t.indexOf(Math.floor(ms / 10_000) * 10_000);
    expect(series.granted[at(NOW - 9 * MIN)]).toBe(3);
    expect(series.throttled[at(NOW - 30_000)]).toBe(1);
    expect(series.abandoned.at(-1)).toBe(1);
    // The slot 11 minutes ago (100 grants) is outside the window.
    expect(totals).toMatchObject({
      granted: 5,
      ok: 4,
      throttled: 2,
      refused: 1,
      abandoned: 1,
      expired: 1,
      dropped: 0,
      requests: 5 + 1 + 1 + 1,
    });
  });

  it('gives queue-wait and upstream percentiles per priority from the slot histograms', async () => {
    const s = await new SnapshotBuilder(sources()).build();
    // Bucket upper bounds: 300 ms → ≤ 500, 4 s → ≤ 5000, 40 ms → ≤ 50, 800 ms → ≤ 1000.
    expect(s.latency.queueWait.normal).toEqual({ count: 3, p50: 500, p95: 5_000, p99: 5_000 });
    expect(s.latency.queueWait.urgent).toEqual({ count: 1, p50: 50, p95: 50, p99: 50 });
    expect(s.latency.queueWait.low).toEqual({ count: 0, p50: null, p95: null, p99: null });
    expect(s.latency.upstream.high).toEqual({ count: 2, p50: 1_000, p95: 1_000, p99: 1_000 });
  });

  it('lists recent config changes in external names and units', async () => {
    const s = await new SnapshotBuilder(sources()).build();
    expect(s.configChanges).toEqual(
      expect.arrayContaining([
        { at: NOW - MIN, by: 'tester', field: 'queue_max_size', from: 500, to: 50 },
        { at: NOW - MIN, by: 'tester', field: 'low_priority_timeout_s', from: 6, to: 5 },
      ]),
    );
    expect(s.configChanges).toHaveLength(2);
    // Nothing secret in it: no tokens, no keys, no upstream URL.
    expect(JSON.stringify(s)).not.toMatch(/nvapi|sk-sluice|https?:/i);
  });

  it('reads settled slots once and only the newest ones afterwards, without losing late counts', async () => {
    const reads: [number, number][] = [];
    const builder = new SnapshotBuilder(
      sources({
        outcomes: {
          read: (from, to) => {
            reads.push([from, to]);
            return stores.outcomes.read(from, to);
          },
        },
      }),
    );
    await builder.build();
    expect(reads[0]?.[0]).toBeLessThanOrEqual(NOW - 10 * MIN);
    clock.advance(1_000);
    await record(clock.now(), { counts: { granted: 1 } });
    const second = await builder.build();
    // Second build: only slots that may still change (the last ~25 s) are read again.
    expect(reads[1]?.[0]).toBeGreaterThanOrEqual(NOW - 30_000);
    expect(second.throughput.totals.granted).toBe(6);
    expect(second.latency.queueWait.normal.count).toBe(3);
    clock.set(NOW);
  });

  it("an upstream with tpm: the tokens its grants hold in the window, from the bucket item it read (no other read), and the first upstream's row gets that item", async () => {
    const versioned = await stores.config.current();
    const config = { ...versioned.config, upstreamTpm: 2_000 };
    const stored = await stores.bucket.refresh();
    let reads = 0;
    let firstBucket: unknown;
    const s = await new SnapshotBuilder(
      sources({
        config: { current: async () => ({ ...versioned, config }) },
        bucket: {
          get: async () => {
            reads++;
            // Two grants' reservations in the window, one that has left it.
            return {
              ...stored!,
              tokens: {
                entries: [
                  { at: NOW - 90_000, tokens: 700 },
                  { at: NOW - 5_000, tokens: 300 },
                  { at: NOW, tokens: 450 },
                ],
                version: 4,
              },
            };
          },
        },
        upstreams: async (_config, first) => {
          firstBucket = first;
          return [];
        },
      }),
    ).build();
    expect(s.bucket.tokensPerMinute).toEqual({ tpm: 2_000, inWindow: 750 });
    expect(reads).toBe(1);
    expect(firstBucket).toMatchObject({ tokens: { version: 4 } });
  });

  it('shows an upstream hold and an idle dispatcher', async () => {
    const bucketStore = new DynamoBucketStore(res.dynamo, res.names.stateTable, 'default');
    const before = await bucketStore.get();
    expect(before).toBeDefined();
    const holdUntil = NOW + 20_000;
    expect(await bucketStore.compareAndSet(before!, { ...before!, tat: holdUntil + 1_500, holdUntil })).toBe(
      true,
    );
    const builder = new SnapshotBuilder(sources());
    const held = await builder.build();
    expect(held.bucket).toMatchObject({ tokens: 0, level: 0, holdUntil });
    expect(held.dispatcher.state).toBe('running');

    expect(await stores.lease.release('dispatcher-run-1', (await stores.lease.get()).rings)).toBe(true);
    clock.advance(2_000);
    const idle = await builder.build();
    expect(idle.dispatcher).toMatchObject({ state: 'idle', expiresAt: null, observedSince: NOW + 2_000 });
    clock.set(NOW);
  });

  it('is built at most once per second however many readers ask at once', async () => {
    let builds = 0;
    const builder = new SnapshotBuilder(sources());
    const memo = new Memo(
      async () => {
        builds++;
        return builder.build();
      },
      clock,
      1_000,
    );
    const first = await Promise.all(Array.from({ length: 8 }, () => memo.get()));
    expect(builds).toBe(1);
    expect(new Set(first).size).toBe(1);
    clock.advance(999);
    await memo.get();
    expect(builds).toBe(1);
    clock.advance(1);
    await memo.get();
    expect(builds).toBe(2);
    clock.set(NOW);
  });
});
