// Domain tests: v2 config rules — waits that fit API Gateway's idle cut, the priority policy fields, the slack.
import { describe, expect, it } from 'vitest';
import { FakeClock } from '../../lib/domain/clock.js';
import {
  API_GATEWAY_IDLE_MS,
  applyConfigPatch,
  configFromEnv,
  DEFAULT_CONFIG,
  nonStreamingWaitCapMs,
  validateConfig,
} from '../../lib/domain/config.js';
import { CONFIG_CACHE_MS, ConfigService } from '../../lib/domain/config-service.js';
import { ValidationError } from '../../lib/domain/errors.js';
import type { VersionedConfig } from '../../lib/domain/ports.js';

describe('a non-streaming wait plus the upstream call fits under the 5-minute idle cut', () => {
  it('the defaults fit', () => {
    expect(validateConfig({ ...DEFAULT_CONFIG })).toBeTruthy();
    expect(DEFAULT_CONFIG.maxWaitMs + DEFAULT_CONFIG.requestTimeoutMs).toBeLessThan(API_GATEWAY_IDLE_MS);
  });

  it.each([
    // max_wait_s, request_timeout_s → accepted?
    [170, 120, true],
    [175, 120, true],
    [176, 120, false],
    [240, 120, false],
    [60, 235, true],
    [60, 240, false],
  ])('max_wait_s %i + request_timeout_s %i → valid: %s', (wait, timeout, ok) => {
    const patch = () => applyConfigPatch(DEFAULT_CONFIG, { max_wait_s: wait, request_timeout_s: timeout });
    if (ok) expect(patch().maxWaitMs).toBe(wait * 1000);
    else expect(patch).toThrow(/must not exceed 295/);
  });

  it('is checked at start too (env)', () => {
    expect(() => configFromEnv({ SLUICE_MAX_WAIT_S: '240' })).toThrow(ValidationError);
  });

  it.each([
    // max wait, request timeout → cap on a non-streaming wait
    [170_000, 120_000, 170_000],
    [240_000, 120_000, 175_000],
    [240_000, 299_000, 0],
  ])('cap(max wait %i, timeout %i) = %i', (maxWaitMs, requestTimeoutMs, cap) => {
    expect(nonStreamingWaitCapMs({ maxWaitMs, requestTimeoutMs })).toBe(cap);
  });
});

describe('priority policy fields', () => {
  it('defaults to strict with weights 8:4:2:1', () => {
    expect(DEFAULT_CONFIG).toMatchObject({ priorityPolicy: 'strict', priorityWeights: '8:4:2:1' });
  });

  it.each([
    [{ priority_policy: 'weighted', priority_weights: '4:3:2:1' }, 'weighted', '4:3:2:1'],
    [{ priority_weights: [16, 8, 4, 1] }, 'strict', '16:8:4:1'],
    [{ priority_weights: ' 2 : 2 : 1 : 1 ' }, 'strict', '2:2:1:1'],
  ])('PATCH %o', (patch, policy, weights) => {
    expect(applyConfigPatch(DEFAULT_CONFIG, patch)).toMatchObject({
      priorityPolicy: policy,
      priorityWeights: weights,
    });
  });

  it.each([
    [{ priority_policy: 'fair' }, /must be one of strict, weighted/],
    [{ priority_weights: '8:4:2' }, /must be four integers/],
    [{ priority_weights: '8:4:0:1' }, /must be four integers/],
  ])('refuses %o', (patch, message) => {
    expect(() => applyConfigPatch(DEFAULT_CONFIG, patch)).toThrow(message);
  });

  it('env: SLUICE_PRIORITY_POLICY and SLUICE_PRIORITY_WEIGHTS', () => {
    expect(
      configFromEnv({ SLUICE_PRIORITY_POLICY: 'weighted', SLUICE_PRIORITY_WEIGHTS: '3:2:1:1' }),
    ).toMatchObject({ priorityPolicy: 'weighted', priorityWeights: '3:2:1:1' });
  });
});

describe('grant slack', () => {
  it('defaults to 1 s and is a config value (env in seconds)', () => {
    expect(DEFAULT_CONFIG.grantSlackMs).toBe(1_000);
    expect(configFromEnv({ SLUICE_GRANT_SLACK_S: '1.5' }).grantSlackMs).toBe(1_500);
    // Below the ingress's own staleness bound it would be unsafe until the ingress reads it (phase 2).
    expect(() => configFromEnv({ SLUICE_GRANT_SLACK_S: '0.5' })).toThrow(/between 1 and 60/);
  });
});

describe('config cache', () => {
  /** A config store counting its reads; `hold` makes the next reads wait until released. */
  const countingStore = (paused = false) => {
    let stored: VersionedConfig = {
      config: { ...DEFAULT_CONFIG, paused },
      version: 1,
      updatedAt: 0,
      updatedBy: 't',
    };
    const held: (() => void)[] = [];
    const store = {
      reads: 0,
      hold: false,
      release: () => {
        for (const r of held.splice(0)) r();
      },
      set: (config: VersionedConfig['config']) => {
        stored = { ...stored, config, version: stored.version + 1 };
      },
      get: async () => {
        store.reads++;
        if (store.hold) await new Promise<void>((r) => held.push(r));
        return stored;
      },
      put: async () => true,
      history: async () => [],
    };
    return store;
  };

  it('requests in steady use never wait for a read after the first, and see a change within the cache age', async () => {
    const store = countingStore();
    const clock = new FakeClock(0);
    const config = new ConfigService(store, clock, DEFAULT_CONFIG);
    await config.config();
    expect(store.reads).toBe(1);
    // Late in the cache's life: answered from the cache while one read runs behind it.
    store.hold = true;
    clock.advance(CONFIG_CACHE_MS - 400);
    store.set({ ...DEFAULT_CONFIG, paused: true });
    expect((await config.config()).paused).toBe(false);
    expect((await config.config()).paused).toBe(false);
    expect(store.reads).toBe(2);
    store.hold = false;
    store.release();
    await new Promise((r) => setImmediate(r));
    // Past the first read's age: the refreshed value, no read on the request's path.
    clock.advance(800);
    expect((await config.config()).paused).toBe(true);
    expect(store.reads).toBe(2);
  });

  it('an invalidation wins over a background read started before it', async () => {
    const store = countingStore();
    const clock = new FakeClock(0);
    const config = new ConfigService(store, clock, DEFAULT_CONFIG);
    await config.config();
    store.hold = true;
    clock.advance(CONFIG_CACHE_MS - 100);
    await config.config();
    config.invalidate();
    store.hold = false;
    store.set({ ...DEFAULT_CONFIG, paused: true });
    const fresh = config.config();
    store.release();
    expect((await fresh).paused).toBe(true);
    await new Promise((r) => setImmediate(r));
    expect((await config.config()).paused).toBe(true);
  });

  it('an update wins over a background read that started while its write was on the way', async () => {
    const store = countingStore();
    const clock = new FakeClock(0);
    const config = new ConfigService(store, clock, DEFAULT_CONFIG);
    let writing: (() => void) | undefined;
    store.put = async () => {
      // The write is slow: meanwhile a request late in the cache's life starts a refresh that reads the old value.
      await new Promise<void>((r) => {
        writing = r;
      });
      return true;
    };
    const update = config.update({ paused: true }, 'admin');
    while (!writing) await new Promise((r) => setImmediate(r));
    clock.advance(CONFIG_CACHE_MS - 100);
    store.hold = true;
    await config.config();
    writing();
    await update;
    store.release();
    await new Promise((r) => setImmediate(r));
    expect((await config.config()).paused).toBe(true);
  });
});
