// Adapter tests: the response cache store on DynamoDB Local and its memory fake — the same table of conditional
// claims, round trips, size limit, release and purge for both.
import { randomBytes, randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  DynamoResponseCacheStore,
  MAX_STORED_BODY_BYTES,
} from '../../lib/adapters/dynamo/response-cache-store.js';
import { MemoryResponseCache } from '../../lib/adapters/memory/response-cache.js';
import type { CacheEntry, ResponseCacheStore } from '../../lib/domain/ports.js';
import { type TestResources, testResources } from '../support/aws.js';

let res: TestResources;
beforeAll(async () => {
  res = await testResources('cache-store');
});
afterAll(() => res?.close());

// Real epoch: DynamoDB Local runs TTL deletion.
const NOW = Date.now();
const answer = (body: string, expiresAt: number) => ({ body, storedAt: NOW - 1_000, expiresAt, tokens: 7 });

type Setup = (store: ResponseCacheStore, key: string) => Promise<void>;
const stores: [string, () => ResponseCacheStore][] = [
  ['memory', () => new MemoryResponseCache(MAX_STORED_BODY_BYTES)],
  ['dynamo', () => new DynamoResponseCacheStore(res.dynamo, res.names.cacheTable)],
];

describe.each(stores)('%s response cache store', (_name, make) => {
  const key = () => `deployment#${randomUUID()}`;

  it.each<[string, Setup, true | CacheEntry['kind']]>([
    ['nothing stored', async () => {}, true],
    ['a live answer', async (s, k) => void (await s.put(k, answer('{}', NOW + 60_000))), 'answer'],
    [
      'an expired answer (TTL deletes late)',
      async (s, k) => void (await s.put(k, answer('{}', NOW - 1))),
      true,
    ],
    [
      'another request’s live mark',
      async (s, k) => void (await s.claim(k, 'other', NOW + 60_000, NOW, 2)),
      'pending',
    ],
    [
      'another request’s expired mark',
      async (s, k) => void (await s.claim(k, 'other', NOW - 1, NOW - 10, 2)),
      true,
    ],
    ['its own mark', async (s, k) => void (await s.claim(k, 'me', NOW + 60_000, NOW, 2)), true],
    [
      'a released mark',
      async (s, k) => {
        await s.claim(k, 'other', NOW + 60_000, NOW, 2);
        await s.release(k, 'other', NOW);
      },
      true,
    ],
  ])('claim over %s', async (_case, setup, expected) => {
    const store = make();
    const k = key();
    await setup(store, k);
    const got = await store.claim(k, 'me', NOW + 30_000, NOW, 2);
    if (expected === true) {
      expect(got).toBe(true);
      expect(await store.get(k)).toEqual({ kind: 'pending', owner: 'me', until: NOW + 30_000, rank: 2 });
    } else expect(got === true ? 'claimed' : got?.kind).toBe(expected);
  });

  it('stores an answer over its mark and reads it back whole', async () => {
    const store = make();
    const k = key();
    await store.claim(k, 'me', NOW + 30_000, NOW, 2);
    const body = JSON.stringify({
      object: 'chat.completion',
      choices: [{ message: { content: 'é✓'.repeat(5_000) } }],
    });
    expect(await store.put(k, answer(body, NOW + 60_000))).toBe('stored');
    expect(await store.get(k)).toEqual({ kind: 'answer', ...answer(body, NOW + 60_000) });
  });

  it('refuses an answer over the item limit and leaves the entry as it was', async () => {
    const store = make();
    const k = key();
    await store.claim(k, 'me', NOW + 30_000, NOW, 2);
    // Random bytes do not compress: over the limit after gzip too.
    const big = randomBytes(MAX_STORED_BODY_BYTES).toString('base64');
    expect(await store.put(k, answer(big, NOW + 60_000))).toBe('too_large');
    expect((await store.get(k))?.kind).toBe('pending');
  });

  it('releases only its own mark', async () => {
    const store = make();
    const k = key();
    await store.claim(k, 'other', NOW + 60_000, NOW, 2);
    await store.release(k, 'me', NOW);
    expect(await store.claim(k, 'me', NOW + 60_000, NOW, 2)).toMatchObject({
      kind: 'pending',
      owner: 'other',
    });
  });

  it('purge deletes every entry', async () => {
    const store = make();
    const keys = Array.from({ length: 30 }, key);
    for (const k of keys) await store.put(k, answer('{}', NOW + 60_000));
    expect(await store.purge()).toBeGreaterThanOrEqual(30);
    for (const k of keys.slice(0, 5)) expect(await store.get(k)).toBeUndefined();
  });
});
