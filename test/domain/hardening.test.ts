// Pure pieces of the security hardening (issue 13): forward_paths matching and parsing, per-upstream
// credential selection, redaction of upstream error text, the model length cap, retry-after caps in headers.
import { describe, expect, it } from 'vitest';
import { hashKey, KEY_CACHE_MS, KeyAuthenticator, UNKNOWN_KEY_CACHE_MS } from '../../lib/domain/auth.js';
import { FakeClock } from '../../lib/domain/clock.js';
import { applyConfigPatch, configFromEnv, DEFAULT_CONFIG } from '../../lib/domain/config.js';
import { RateLimitedError, UnavailableError } from '../../lib/domain/errors.js';
import { isForwardedPath } from '../../lib/domain/forward-paths.js';
import { KeyAdmin } from '../../lib/domain/key-admin.js';
import { LruCache } from '../../lib/domain/lru.js';
import type { AgentKey, KeyStore } from '../../lib/domain/ports.js';
import { agentSafeErrorText, redactKeyLike } from '../../lib/domain/redact.js';
import { errorReply } from '../../lib/http/reply.js';
import { parseModelRequest } from '../../lib/ingress/request.js';
import { upstreamCredentials } from '../../lib/runtime/credentials.js';
import { readRuntimeEnv } from '../../lib/runtime/env.js';
import { AdminService } from '../../lib/status/admin.js';

const BASE_ENV = {
  SLUICE_STATE_TABLE: 's',
  SLUICE_TICKETS_TABLE: 't',
  SLUICE_KEYS_TABLE: 'k',
  SLUICE_QUEUE_URGENT_URL: 'u',
  SLUICE_QUEUE_HIGH_URL: 'h',
  SLUICE_QUEUE_NORMAL_URL: 'n',
  SLUICE_QUEUE_LOW_URL: 'l',
};

describe('forward_paths', () => {
  it.each([
    ['/v1/chat/completions', true],
    ['/v1/chat/completions/', true],
    ['/v1/chat/completions?stream=1', true],
    ['/v1/completions', true],
    ['/v1/embeddings', true],
    ['/v1/models', true],
    ['/v1/models/meta/llama-3.1-8b-instruct', true],
    ['/v1/chat/completions/chatcmpl-1', false],
    ['/v1/files', false],
    ['/v1/files/file-1/content', false],
    ['/v1/batches', false],
    ['/v1/responses', false],
    ['/v1/modelsX', false],
    ['/v2/chat/completions', false],
  ])('default list: %s → %s', (path, forwarded) => {
    expect(isForwardedPath(path, DEFAULT_CONFIG.forwardPaths)).toBe(forwarded);
  });

  it('parses from env (comma-separated, /v1/ prefix optional) and from the admin API (array)', () => {
    expect(configFromEnv({ SLUICE_FORWARD_PATHS: 'chat/completions, /v1/responses' }).forwardPaths).toEqual([
      'chat/completions',
      'responses',
    ]);
    expect(applyConfigPatch(DEFAULT_CONFIG, { forward_paths: ['embeddings'] }).forwardPaths).toEqual([
      'embeddings',
    ]);
  });

  it.each([
    [['../admin']],
    [['files/../../x']],
    [['a b']],
    [[1]],
    [Array.from({ length: 33 }, (_, i) => `p${i}`)],
  ])('refuses %j', (value) => {
    expect(() => applyConfigPatch(DEFAULT_CONFIG, { forward_paths: value })).toThrow(/forward_paths/);
  });
});

describe('per-upstream credentials', () => {
  const limited = { name: 'limited', baseUrl: 'https://limited.example/v1', limited: true };
  const open = { name: 'open', baseUrl: 'https://open.example/v1', limited: false };

  it('an open upstream gets no credential by default, never the limited one', async () => {
    const env = readRuntimeEnv({
      ...BASE_ENV,
      UPSTREAM_API_KEY: 'nvapi-L',
      SLUICE_OPEN_UPSTREAM_URL: open.baseUrl,
    });
    const key = upstreamCredentials(env.upstreamCredentials);
    expect(await key(limited)).toBe('nvapi-L');
    expect(await key(open)).toBeUndefined();
  });

  it('an open upstream with its own key gets that key', async () => {
    const env = readRuntimeEnv({
      ...BASE_ENV,
      UPSTREAM_API_KEY: 'nvapi-L',
      SLUICE_OPEN_UPSTREAM_URL: open.baseUrl,
      OPEN_UPSTREAM_API_KEY: 'open-O',
    });
    const key = upstreamCredentials(env.upstreamCredentials);
    expect(await key(open)).toBe('open-O');
    expect(await key(limited)).toBe('nvapi-L');
  });

  it('a limited upstream without a key is not_configured (503)', async () => {
    const key = upstreamCredentials(new Map());
    await expect(key(limited)).rejects.toMatchObject({ status: 503, code: 'not_configured' });
  });
});

describe('upstream error text an agent sees', () => {
  it.each([
    'Authorization: Bearer abc.def-ghi',
    'key nvapi-AbCdEf0123456789xyz rejected',
    'sk-proj-abcdefghijklmnop0123',
    'role arn:aws:iam::123456789012:role/sluice-ingress',
    'AKIAIOSFODNN7EXAMPLE',
    'token 0123456789abcdef0123456789abcdef0123',
    'jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig',
  ])('redacts %s', (text) => {
    const out = redactKeyLike(text);
    expect(out).toContain('[redacted]');
    expect(out).not.toMatch(/abc\.def|nvapi-Ab|sk-proj-a|123456789012|AKIA|0123456789abcdef0123|eyJhbGci/);
  });

  it('keeps ordinary messages and trims long ones', () => {
    expect(redactKeyLike("Model 'meta/llama-3.1-8b-instruct' not found")).toBe(
      "Model 'meta/llama-3.1-8b-instruct' not found",
    );
    expect(agentSafeErrorText('x '.repeat(5_000)).length).toBeLessThanOrEqual(501);
  });
});

describe('bounded inputs and outputs', () => {
  it('model ids are capped at 256 characters', () => {
    const body = (model: string) => JSON.stringify({ model, messages: [] });
    expect(parseModelRequest('application/json', body('m'.repeat(256)), 1e6).model).toHaveLength(256);
    expect(() => parseModelRequest('application/json', body('m'.repeat(257)), 1e6)).toThrow(/256/);
  });

  it.each([
    new RateLimitedError('wait', 10 * 60_000, 'queue_wait_too_long'),
    new UnavailableError('later', 3_600_000, 'draining'),
  ])('retry-after-ms in headers is at most 60000 (%#)', (err) => {
    const reply = errorReply(err, {});
    expect(Number(reply.headers['retry-after-ms'])).toBe(60_000);
    expect(Number(reply.headers['retry-after'])).toBeLessThanOrEqual(60);
  });
});

/** A key store in memory: the key admin use case needs nothing more. */
const memoryKeys = (): KeyStore & { all: Map<string, AgentKey> } => {
  const all = new Map<string, AgentKey>();
  return {
    all,
    get: async (h) => all.get(h),
    put: async (k) => {
      all.set(k.keyHash, k);
    },
    list: async () => [...all.values()],
    setEnabled: async (h, enabled) => {
      const k = all.get(h);
      if (k) all.set(h, { ...k, enabled });
    },
    setExpiry: async (h, at) => {
      const k = all.get(h);
      if (k) all.set(h, { ...k, expiresAt: at });
    },
    setBudget: async () => {},
    touch: async () => true,
  };
};

describe('key administration', () => {
  let seed = 0;
  const random = (n: number) => new Uint8Array(n).map(() => (seed = (seed * 31 + 7) % 251));

  it('new keys default to max priority normal', async () => {
    const admin = new KeyAdmin(memoryKeys(), new FakeClock(0), random);
    expect((await admin.create('planner')).record.maxPriority).toBe('normal');
  });

  it('disable --key-id acts on that one key only; enable brings it back; rotate still works', async () => {
    const store = memoryKeys();
    const admin = new KeyAdmin(store, new FakeClock(0), random);
    const first = await admin.create('planner');
    const second = await admin.create('planner');
    const id = first.record.keyHash.slice(0, 12);
    expect((await admin.setEnabledById(id, false)).keyHash).toBe(first.record.keyHash);
    expect(store.all.get(first.record.keyHash)?.enabled).toBe(false);
    expect(store.all.get(second.record.keyHash)?.enabled).toBe(true);
    await admin.setEnabledById(id.toUpperCase(), true);
    expect(store.all.get(first.record.keyHash)?.enabled).toBe(true);
    const rotated = await admin.rotate('planner', 1_000);
    expect(rotated.expiring).toBe(2);
  });

  it.each([
    ['abc', /at least 6 hex/],
    ['zzzzzzzz', /at least 6 hex/],
    ['ffffffffffff', /no key with id/],
  ])('refuses key id %s', async (id, message) => {
    const admin = new KeyAdmin(memoryKeys(), new FakeClock(0), random);
    await admin.create('planner');
    await expect(admin.setEnabledById(id, false)).rejects.toThrow(message);
  });

  it('refuses an ambiguous prefix', async () => {
    const store = memoryKeys();
    const admin = new KeyAdmin(store, new FakeClock(0), random);
    await store.put({ keyHash: 'abcdef01', agent: 'a', maxPriority: 'low', enabled: true, createdAt: 0 });
    await store.put({ keyHash: 'abcdef02', agent: 'b', maxPriority: 'low', enabled: true, createdAt: 0 });
    await expect(admin.setEnabledById('abcdef', false)).rejects.toThrow(/2 keys match/);
  });
});

describe('/admin/usage', () => {
  it('lists each agent with queued tickets, most first', async () => {
    const admin = new AdminService({
      usage: { read: async () => [] },
      config: {} as never,
      history: {} as never,
      tickets: { admissionCount: async () => 5, agentQueuedCounts: async () => ({ a: 1, b: 4, c: 0 }) },
      retreat: {} as never,
      clock: new FakeClock(0),
    });
    expect((await admin.usage()).queued).toEqual([
      { agent: 'b', queued: 4 },
      { agent: 'a', queued: 1 },
    ]);
  });
});

describe('key cache', () => {
  const counting = () => {
    const store = memoryKeys();
    const reads = new Map<string, number>();
    const get = store.get;
    store.get = async (h) => {
      reads.set(h, (reads.get(h) ?? 0) + 1);
      return get(h);
    };
    return { store, reads };
  };
  const keyOf = (i: number) => `sk-sluice-${i.toString(36).padStart(43, 'x')}`;

  it('a flood of unknown keys never evicts a known one', async () => {
    const { store, reads } = counting();
    const clock = new FakeClock(0);
    const real = keyOf(0);
    await store.put({ keyHash: hashKey(real), agent: 'a', maxPriority: 'low', enabled: true, createdAt: 0 });
    const auth = new KeyAuthenticator(store, clock);
    await auth.authenticate(`Bearer ${real}`);
    for (let i = 1; i <= 12_000; i++) await auth.authenticate(`Bearer ${keyOf(i)}`).catch(() => undefined);
    await auth.authenticate(`Bearer ${real}`);
    expect(reads.get(hashKey(real))).toBe(1);
  });

  it('remembers an unknown key only briefly (a new key works within 2 s)', async () => {
    const { store, reads } = counting();
    const clock = new FakeClock(0);
    const auth = new KeyAuthenticator(store, clock);
    const fresh = keyOf(7);
    await expect(auth.authenticate(`Bearer ${fresh}`)).rejects.toThrow(/Unknown/);
    await expect(auth.authenticate(`Bearer ${fresh}`)).rejects.toThrow(/Unknown/);
    expect(reads.get(hashKey(fresh))).toBe(1);
    await store.put({ keyHash: hashKey(fresh), agent: 'a', maxPriority: 'low', enabled: true, createdAt: 0 });
    clock.advance(UNKNOWN_KEY_CACHE_MS);
    expect((await auth.authenticate(`Bearer ${fresh}`)).agent).toBe('a');
  });

  it('concurrent requests of one key on a cold cache share one read', async () => {
    const { store, reads } = counting();
    const clock = new FakeClock(0);
    const key = keyOf(5);
    await store.put({ keyHash: hashKey(key), agent: 'a', maxPriority: 'low', enabled: true, createdAt: 0 });
    const auth = new KeyAuthenticator(store, clock);
    const agents = await Promise.all(
      Array.from({ length: 5 }, async () => (await auth.authenticate(`Bearer ${key}`)).agent),
    );
    expect(agents).toEqual(['a', 'a', 'a', 'a', 'a']);
    expect(reads.get(hashKey(key))).toBe(1);
    // Past the cache's age the next request reads again.
    clock.advance(KEY_CACHE_MS);
    await auth.authenticate(`Bearer ${key}`);
    expect(reads.get(hashKey(key))).toBe(2);
  });

  it('keeps the most recently used known keys when full', async () => {
    const cache = new LruCache<number>(2);
    cache.set('a', 1);
    cache.set('b', 2);
    cache.get('a');
    cache.set('c', 3);
    expect([cache.get('a'), cache.get('b'), cache.get('c')]).toEqual([1, undefined, 3]);
  });

  it('re-reads a key in steady use in the background: no request waits for the read after the first', async () => {
    const { store, reads } = counting();
    const clock = new FakeClock(0);
    const key = keyOf(3);
    await store.put({ keyHash: hashKey(key), agent: 'a', maxPriority: 'low', enabled: true, createdAt: 0 });
    const auth = new KeyAuthenticator(store, clock);
    await auth.authenticate(`Bearer ${key}`);
    // Late in the cache's life: answered from the cache while one read runs behind it (held until released).
    let release: (() => void) | undefined;
    const counted = store.get;
    store.get = (h) => new Promise((resolve) => (release = () => resolve(counted(h))));
    clock.advance(KEY_CACHE_MS - 1_000);
    expect((await auth.authenticate(`Bearer ${key}`)).agent).toBe('a');
    expect((await auth.authenticate(`Bearer ${key}`)).agent).toBe('a');
    store.get = counted;
    release?.();
    await new Promise((r) => setImmediate(r));
    expect(reads.get(hashKey(key))).toBe(2);
    // Past the first read's age the refreshed entry serves: no read on the request's path.
    clock.advance(2_000);
    expect((await auth.authenticate(`Bearer ${key}`)).agent).toBe('a');
    expect(reads.get(hashKey(key))).toBe(2);
    // A key disabled meanwhile still stops working within the cache's age.
    await store.put({ keyHash: hashKey(key), agent: 'a', maxPriority: 'low', enabled: false, createdAt: 0 });
    clock.advance(KEY_CACHE_MS);
    await expect(auth.authenticate(`Bearer ${key}`)).rejects.toThrow(/disabled/);
  });
});
