// Adapter tests: retreat, outcome, config, lease and key stores on DynamoDB Local; RetreatController racing itself.
import { randomUUID } from 'node:crypto';
import { DynamoDBClient, TransactWriteItemsCommand } from '@aws-sdk/client-dynamodb';
import { mockClient } from 'aws-sdk-client-mock';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DynamoBucketStore } from '../../lib/adapters/dynamo/bucket-store.js';
import { DynamoConfigStore } from '../../lib/adapters/dynamo/config-store.js';
import { DynamoKeyStore } from '../../lib/adapters/dynamo/key-store.js';
import { DynamoLeaseStore } from '../../lib/adapters/dynamo/lease-store.js';
import { DynamoOutcomeStore } from '../../lib/adapters/dynamo/outcome-store.js';
import { DynamoRetreatStore } from '../../lib/adapters/dynamo/retreat-store.js';
import { MemoryOutcomeStore } from '../../lib/adapters/memory/stores.js';
import { TokenBucket } from '../../lib/domain/bucket.js';
import { FakeClock } from '../../lib/domain/clock.js';
import { DEFAULT_CONFIG, type GatewayConfig } from '../../lib/domain/config.js';
import { type OutcomeEvent, percentiles, SLOT_MS, slotOf } from '../../lib/domain/outcomes.js';
import type { AgentKey, ConfigChange, VersionedConfig } from '../../lib/domain/ports.js';
import { initialRetreat, type RetreatRecord } from '../../lib/domain/retreat.js';
import { bucketParamsFor, RetreatController } from '../../lib/domain/retreat-controller.js';
import { type TestResources, testDynamoClient, testResources } from '../support/aws.js';

let res: TestResources;
/** A second client, as a second function instance would have. */
let other: DynamoDBClient;

beforeAll(async () => {
  res = await testResources('dynamo-state');
  other = testDynamoClient();
});

afterAll(() => {
  other?.destroy();
  res?.close();
});

/** Real epoch: DynamoDB Local runs TTL deletion, and items of FakeClock's default 2023 epoch expire at once. */
const realClock = () => new FakeClock(Date.now());
const unique = (name: string) => `${name}-${randomUUID()}`;

describe('DynamoRetreatStore', () => {
  it('creates once: a second create (expected version undefined) is refused', async () => {
    // Prepare
    const store = new DynamoRetreatStore(res.dynamo, res.names.stateTable, unique('retreat'));
    const record = initialRetreat(40, 1_000);

    // Act
    const first = await store.put(record, undefined);
    const second = await store.put({ ...record, effectiveRpm: 12 }, undefined);

    // Assess
    expect([first, second]).toEqual([true, false]);
    expect(await store.get()).toEqual(record);
  });

  it.each([1, 2, 3, 4, 5])(
    'two writers with the same expected version: exactly one wins (round %i)',
    async () => {
      // Prepare
      const key = unique('retreat');
      const mine = new DynamoRetreatStore(res.dynamo, res.names.stateTable, key);
      const theirs = new DynamoRetreatStore(other, res.names.stateTable, key);
      const base = initialRetreat(40, 1_000);
      await mine.put(base, undefined);
      const a: RetreatRecord = { ...base, state: 'retreat', effectiveRpm: 30, version: 1 };
      const b: RetreatRecord = { ...base, state: 'retreat', effectiveRpm: 22.5, version: 1 };

      // Act
      const wins = await Promise.all([mine.put(a, 0), theirs.put(b, 0)]);

      // Assess
      expect(wins.filter(Boolean)).toHaveLength(1);
      expect(await mine.get()).toEqual(wins[0] ? a : b);
    },
  );
});

describe('RetreatController with real stores', () => {
  // The racing property is checked on the sluice preset, which steps on the timer (probe cuts only after a 429).
  const config: GatewayConfig = { ...DEFAULT_CONFIG, retreatPreset: 'sluice' };

  /** One evaluator: its own client, bucket view and stores, as a second dispatcher or status function would be. */
  const evaluator = (
    client: DynamoDBClient,
    keys: { bucket: string; outcomes: string },
    clock: FakeClock,
  ) => {
    const table = res.names.stateTable;
    const bucket = new TokenBucket(new DynamoBucketStore(client, table, keys.bucket), clock, {
      fraction: config.reserveFraction,
      forNormal: config.reserveForNormal,
    });
    const controller = new RetreatController({
      retreat: new DynamoRetreatStore(client, table, keys.bucket),
      outcomes: new DynamoOutcomeStore(client, table, keys.outcomes),
      bucket,
      clock,
    });
    return { controller, bucket };
  };

  it.each([1, 2, 3, 4, 5])('two evaluators racing apply exactly one step (run %i)', async () => {
    // Prepare: the record and bucket exist at base rate; then a 429 storm lands in the outcome counters.
    const keys = { bucket: unique('race'), outcomes: unique('outcomes') };
    const clock = realClock();
    const t0 = clock.now();
    const a = evaluator(res.dynamo, keys, clock);
    const b = evaluator(other, keys, clock);
    const start = await a.controller.evaluate(config);
    expect(start).toMatchObject({ stepped: false, record: { state: 'normal', version: 0 } });
    const outcomes = new DynamoOutcomeStore(res.dynamo, res.names.stateTable, keys.outcomes);
    await outcomes.record(t0 + 15_000, { counts: { ok: 10, throttled: 10 } });
    clock.set(t0 + 20_000);

    // Act
    const results = await Promise.all([a.controller.evaluate(config), b.controller.evaluate(config)]);

    // Assess
    const stored = await new DynamoRetreatStore(res.dynamo, res.names.stateTable, keys.bucket).get();
    expect(results.filter((r) => r.stepped)).toHaveLength(1);
    expect(stored).toMatchObject({ state: 'retreat', effectiveRpm: 30, version: 1 });
    expect(stored?.transitions).toHaveLength(1);
    for (const r of results) expect(r.record).toEqual(stored);
    const bucketState = await new DynamoBucketStore(res.dynamo, res.names.stateTable, keys.bucket).get();
    expect(bucketState).toMatchObject(bucketParamsFor(stored!, config));
  });
});

describe('DynamoOutcomeStore', () => {
  const upstreamHigh = (ms: number): OutcomeEvent => ({
    counts: { ok: 1 },
    latencies: [{ name: 'upstream', priority: 'high', ms }],
  });
  const events: [number, OutcomeEvent][] = [
    [0, { counts: { granted: 3, ok: 2, throttled: 1 } }],
    [1_000, { counts: { capacity: 1, upstreamError: 1 } }],
    [
      2_000,
      {
        counts: { granted: 1 },
        latencies: [
          { name: 'upstream', priority: 'high', ms: 40 },
          { name: 'queueWait', priority: 'low', ms: 400_000 },
        ],
      },
    ],
    [2_500, upstreamHigh(120)],
    [3_000, upstreamHigh(120)],
    [SLOT_MS + 5, { counts: { refused: 4, requeued: 1 } }],
    [SLOT_MS + 6, upstreamHigh(800)],
    [SLOT_MS + 7, upstreamHigh(3_000)],
    [3 * SLOT_MS, { counts: { dropped: 7 } }],
  ];

  it('records and reads back the same slots as the in-memory store (counters and histograms)', async () => {
    // Prepare
    const store = new DynamoOutcomeStore(res.dynamo, res.names.stateTable, unique('outcomes'));
    const memory = new MemoryOutcomeStore();
    const t0 = slotOf(Date.now());
    for (const [at, e] of events) {
      await store.record(t0 + at, e);
      await memory.record(t0 + at, e);
    }

    // Act
    const slots = await store.read(t0, t0 + 3 * SLOT_MS);

    // Assess
    expect(slots).toEqual(await memory.read(t0, t0 + 3 * SLOT_MS));
    expect(slots.map((s) => s.slot)).toEqual([t0, t0 + SLOT_MS, t0 + 3 * SLOT_MS]);
    expect(slots[0]?.counts).toMatchObject({
      granted: 4,
      ok: 4,
      throttled: 1,
      capacity: 1,
      upstreamError: 1,
    });
    expect(slots[1]?.counts).toMatchObject({ ok: 2, refused: 4, requeued: 1 });
    expect(slots[0]?.hist.upstream.high.reduce((a, b) => a + b, 0)).toBe(3);
  });

  it('sums the shards written by several containers into one slot, as one item would have held', async () => {
    // Prepare: three containers writing shards 0, 1 and 3 of the same slots.
    const partition = unique('outcomes');
    const containers = [0, 1, 3].map(
      (shard) => new DynamoOutcomeStore(res.dynamo, res.names.stateTable, partition, shard),
    );
    const memory = new MemoryOutcomeStore();
    const t0 = slotOf(Date.now());
    for (const [i, [at, e]] of events.entries()) {
      await containers[i % containers.length]!.record(t0 + at, e);
      await memory.record(t0 + at, e);
    }

    // Act: any container reads them all, with one Query.
    const slots = await containers[0]!.read(t0, t0 + 3 * SLOT_MS);

    // Assess
    expect(slots).toEqual(await memory.read(t0, t0 + 3 * SLOT_MS));
    expect(slots.map((s) => s.slot)).toEqual([t0, t0 + SLOT_MS, t0 + 3 * SLOT_MS]);
    expect(await containers[2]!.read(t0 + SLOT_MS, t0 + SLOT_MS)).toEqual(
      await memory.read(t0 + SLOT_MS, t0 + SLOT_MS),
    );
  });

  // Regression: one UpdateExpression may not name the same attribute twice, so the adapter merges per attribute.
  it('records an event carrying two latencies of the same histogram and priority', async () => {
    // Prepare
    const store = new DynamoOutcomeStore(res.dynamo, res.names.stateTable, unique('outcomes'));
    const t0 = slotOf(Date.now());
    const event: OutcomeEvent = {
      counts: { ok: 2 },
      latencies: [
        { name: 'upstream', priority: 'normal', ms: 40 },
        { name: 'upstream', priority: 'normal', ms: 3_000 },
      ],
    };

    // Act
    await store.record(t0, event);

    // Assess
    const [slot] = await store.read(t0, t0);
    expect(percentiles(slot ? [slot] : [], 'upstream').normal.count).toBe(2);
  });

  it.each([
    // from, to (offsets) → slots returned
    ['one slot', 0, SLOT_MS - 1, 1],
    ['two slots, edges inclusive', 0, SLOT_MS, 2],
    ['a range ending before the last slot', SLOT_MS, 3 * SLOT_MS - 1, 1],
    ['nothing before the first slot', -5 * SLOT_MS, -1, 0],
  ])('read(%s) returns the slots that start in the range', async (_name, from, to, count) => {
    // Prepare
    const store = new DynamoOutcomeStore(res.dynamo, res.names.stateTable, unique('outcomes'));
    const t0 = slotOf(Date.now());
    for (const [at, e] of events) await store.record(t0 + at, e);

    // Act
    const slots = await store.read(t0 + from, t0 + to);

    // Assess
    expect(slots).toHaveLength(count);
  });

  it('percentiles over the read slots use the histogram bucket bounds', async () => {
    // Prepare
    const store = new DynamoOutcomeStore(res.dynamo, res.names.stateTable, unique('outcomes'));
    const t0 = slotOf(Date.now());
    for (const [at, e] of events) await store.record(t0 + at, e);
    const slots = await store.read(t0, t0 + 3 * SLOT_MS);

    // Act
    const upstream = percentiles(slots, 'upstream');
    const queueWait = percentiles(slots, 'queueWait');

    // Assess: high upstream latencies 40, 120, 120, 800, 3000 → buckets ≤50, ≤250, ≤250, ≤1000, ≤5000.
    expect(upstream.high).toEqual({ count: 5, p: { p50: 250, p95: 5_000, p99: 5_000 } });
    expect(upstream.urgent).toEqual({ count: 0, p: { p50: null, p95: null, p99: null } });
    // Past the last bound: reported as the open bucket.
    expect(queueWait.low).toEqual({ count: 1, p: { p50: 900_000, p95: 900_000, p99: 900_000 } });
  });
});

describe('DynamoConfigStore', () => {
  const at = Date.now();
  const v = (version: number, patch: Partial<GatewayConfig>, by = 'admin'): VersionedConfig => ({
    config: { ...DEFAULT_CONFIG, ...patch },
    version,
    updatedAt: at + version,
    updatedBy: by,
  });
  const change = (field: string, from: unknown, to: unknown, dt: number, by = 'admin'): ConfigChange => ({
    at: at + dt,
    by,
    field,
    from,
    to,
  });

  it('put creates, updates under the expected version with its history, and refuses a wrong version', async () => {
    // Prepare: the config record is one per state table; only this describe writes it.
    const store = new DynamoConfigStore(res.dynamo, res.names.stateTable);
    const v1 = v(1, {});
    const v2 = v(2, { upstreamLimit: 30, queueFullPolicy: 'drop_lowest' });
    const changes = [
      change('upstream_limit', 40, 30, 10),
      change('queue_full_policy', 'reject', 'drop_lowest', 10),
      change('status_public', false, true, 20),
    ];

    // Act
    const created = await store.put(v1, undefined, []);
    const updated = await store.put(v2, 1, changes);
    // A next version nobody wrote yet, so its request token is fresh (see the BUG tests below).
    const wrongVersion = await store.put(v(9, { upstreamLimit: 7 }), 1, [
      change('upstream_limit', 40, 7, 30),
    ]);

    // Assess
    expect([created, updated, wrongVersion]).toEqual([true, true, false]);
    expect(await store.get()).toEqual(v2);
    const history = await store.history(10);
    expect(history).toHaveLength(3);
    expect(history[0]).toEqual(changes[2]);
    expect(history.slice(1)).toEqual(expect.arrayContaining([changes[0], changes[1]]));
    expect(await store.history(1)).toEqual([changes[2]]);
  });

  it('an SDK retry of the same put (same request token) succeeds without writing twice', async () => {
    // Prepare
    const store = new DynamoConfigStore(res.dynamo, res.names.stateTable);
    const current = (await store.get())!;
    const next = v(current.version + 1, { maxRequeues: 3 });
    const changes = [change('max_requeues', 2, 3, 100)];

    // Act
    const results = [
      await store.put(next, current.version, changes),
      await store.put(next, current.version, changes),
    ];

    // Assess
    expect(results).toEqual([true, true]);
    expect(await store.get()).toEqual(next);
    expect((await store.history(100)).filter((c) => c.field === 'max_requeues')).toHaveLength(1);
  });

  // A loser of a race (same next version, other request) must not reuse the winner's token: within 10 minutes AWS
  // would answer IdempotentParameterMismatchException instead of cancelling on the version condition. DynamoDB
  // Local detects such a mismatch only for some requests, so the tokens are checked at the SDK boundary.
  it.each([
    ['two cold starts seed version 1 at different times', undefined, 1],
    ['two admins write version 3 from version 2', 2, 3],
  ])('%s: different requests carry different ClientRequestTokens', async (_name, expected, version) => {
    // Prepare
    const client = new DynamoDBClient({
      region: 'us-east-1',
      credentials: { accessKeyId: 'x', secretAccessKey: 'x' },
    });
    const ddb = mockClient(client);
    ddb.on(TransactWriteItemsCommand).resolves({});
    const store = new DynamoConfigStore(client, 'state');
    const request = (by: string, dt: number): VersionedConfig => ({
      ...v(version, {}, by),
      updatedAt: at + dt,
    });

    // Act
    await store.put(request('function-a', 1), expected, []);
    await store.put(request('function-b', 2), expected, []);

    // Assess
    const tokens = ddb.commandCalls(TransactWriteItemsCommand).map((c) => c.args[0].input.ClientRequestToken);
    ddb.restore();
    client.destroy();
    expect(tokens).toHaveLength(2);
    expect(tokens[0]).not.toBe(tokens[1]);
  });
});

describe('DynamoLeaseStore', () => {
  const ttl = 10_000;
  const t0 = 5_000_000;

  it('acquire: free, held by another, already ours, expired', async () => {
    // Prepare
    const lease = new DynamoLeaseStore(res.dynamo, res.names.stateTable, unique('lease'));

    // Act
    const steps = [
      await lease.acquire('a', t0, ttl),
      await lease.acquire('b', t0 + 1, ttl),
      await lease.acquire('a', t0 + 2, ttl),
      await lease.acquire('b', t0 + 2 + ttl - 1, ttl),
      await lease.acquire('b', t0 + 2 + ttl + 1, ttl),
    ];

    // Assess (the lease may carry more, e.g. acquiredAt; these fields decide who works)
    const seen = steps.map(({ acquired, state }) => ({
      acquired,
      owner: state.owner,
      expiresAt: state.expiresAt,
      rings: state.rings,
    }));
    expect(seen).toEqual([
      { acquired: true, owner: 'a', expiresAt: t0 + ttl, rings: 0 },
      { acquired: false, owner: 'a', expiresAt: t0 + ttl, rings: 0 },
      { acquired: true, owner: 'a', expiresAt: t0 + 2 + ttl, rings: 0 },
      { acquired: false, owner: 'a', expiresAt: t0 + 2 + ttl, rings: 0 },
      { acquired: true, owner: 'b', expiresAt: t0 + 2 + 2 * ttl + 1, rings: 0 },
    ]);
  });

  it('renew only by the owner', async () => {
    // Prepare
    const lease = new DynamoLeaseStore(res.dynamo, res.names.stateTable, unique('lease'));
    await lease.acquire('a', t0, ttl);

    // Act
    const mine = await lease.renew('a', t0 + 5_000, ttl);
    const theirs = await lease.renew('b', t0 + 5_000, ttl);

    // Assess
    expect([mine, theirs]).toEqual([true, false]);
    expect(await lease.get()).toMatchObject({ owner: 'a', expiresAt: t0 + 5_000 + ttl, rings: 0 });
  });

  it('release only if no ring arrived since the owner looked (no lost wake-up)', async () => {
    // Prepare
    const name = unique('lease');
    const lease = new DynamoLeaseStore(res.dynamo, res.names.stateTable, name);
    const { state } = await lease.acquire('a', t0, ttl);
    const seen = state.rings;
    // An ingress (another client) rings the doorbell after the dispatcher last looked.
    const rung = await new DynamoLeaseStore(other, res.names.stateTable, name).ring();

    // Act
    const staleRelease = await lease.release('a', seen);
    const notOwner = await lease.release('b', rung.rings);
    const release = await lease.release('a', rung.rings);

    // Assess
    expect(rung).toMatchObject({ owner: 'a', expiresAt: t0 + ttl, rings: seen + 1 });
    expect([staleRelease, notOwner, release]).toEqual([false, false, true]);
    const after = await lease.get();
    expect(after.rings).toBe(seen + 1);
    expect(after.owner).toBeUndefined();
    expect(after.expiresAt).toBeUndefined();
    expect((await lease.acquire('b', t0 + 1, ttl)).acquired).toBe(true);
  });

  it('ring on a lease nobody holds counts and reports no owner', async () => {
    // Prepare
    const lease = new DynamoLeaseStore(res.dynamo, res.names.stateTable, unique('lease'));

    // Act
    const rings = [await lease.ring(), await lease.ring(), await lease.ring()];

    // Assess
    expect(rings.map((r) => r.rings)).toEqual([1, 2, 3]);
    expect(rings[2]?.owner).toBeUndefined();
  });
});

describe('DynamoKeyStore', () => {
  const key = (agent: string, createdAt: number, extra: Partial<AgentKey> = {}): AgentKey => ({
    keyHash: randomUUID().replaceAll('-', ''),
    agent,
    maxPriority: 'high',
    enabled: true,
    createdAt,
    ...extra,
  });

  it('put, get, list (by agent, then age) and setEnabled', async () => {
    // Prepare
    const keys = new DynamoKeyStore(res.dynamo, res.names.keysTable);
    const rows = [key('zeta', 1), key('alpha', 5), key('alpha', 2, { expiresAt: Date.now() + 86_400_000 })];

    // Act
    for (const k of rows) await keys.put(k);
    await keys.setEnabled(rows[0]!.keyHash, false);

    // Assess
    expect(await keys.get(rows[1]!.keyHash)).toEqual(rows[1]);
    expect(await keys.get('no-such-hash')).toBeUndefined();
    const hashes = new Set(rows.map((k) => k.keyHash));
    const listed = (await keys.list()).filter((k) => hashes.has(k.keyHash));
    expect(listed).toEqual([rows[2], rows[1], { ...rows[0], enabled: false }]);
  });

  it.each([
    ['put of an existing hash', (k: DynamoKeyStore, h: string) => k.put({ ...key('x', 1), keyHash: h })],
    ['setEnabled of an unknown hash', (k: DynamoKeyStore) => k.setEnabled('unknown-hash', true)],
  ])('%s is refused and changes nothing', async (_name, act) => {
    // Prepare
    const keys = new DynamoKeyStore(res.dynamo, res.names.keysTable);
    const existing = key('owner', 1);
    await keys.put(existing);

    // Act
    const err = await act(keys, existing.keyHash).then(
      () => undefined,
      (e: unknown) => e,
    );

    // Assess
    expect(err).toBeInstanceOf(Error);
    expect(await keys.get(existing.keyHash)).toEqual(existing);
    expect(await keys.get('unknown-hash')).toBeUndefined();
  });
});
