// Domain tests: tokens per minute — the reservation planner, the usage correction, the bucket that carries both
// on a fake clock, and the upstream's own rate headers read as a hold.
import { describe, expect, it } from 'vitest';
import { MemoryBucketStore } from '../../lib/adapters/memory/stores.js';
import { TokenBucket } from '../../lib/domain/bucket.js';
import { FakeClock } from '../../lib/domain/clock.js';
import { configFromEnv } from '../../lib/domain/config.js';
import { deriveAdmission } from '../../lib/domain/gcra.js';
import { estimateRequestTokens, tokensToReserve } from '../../lib/domain/token-estimate.js';
import {
  planTokens,
  reconcileEntries,
  type TokenEntry,
  type TokenNeed,
  tokenLimitOf,
  tokenSlot,
  tokensInWindow,
} from '../../lib/domain/token-window.js';
import { parseResetDuration, upstreamHoldMs } from '../../lib/domain/upstream-rate-headers.js';

const W = 61_000; // a minute plus 1 s of grant → call slack
const need = (tokens: number, tpm = 1_000): TokenNeed => ({ tokens, tpm, windowMs: W });
const e = (at: number, tokens: number): TokenEntry => ({ at, tokens });

describe('tokenSlot: a grant is recorded at the end of its slot (a sixtieth of the window)', () => {
  it.each([
    [0, 60_000, 0],
    [1, 60_000, 1_000],
    [999, 60_000, 1_000],
    [1_000, 60_000, 1_000],
    [1_001, 6_000, 1_100],
  ])('at %i, window %i → %i', (at, windowMs, slot) => {
    expect(tokenSlot(at, windowMs)).toBe(slot);
  });
});

describe('planTokens (now, entries, need → the entries after the reservation, or the wait)', () => {
  // A 60 s window (slots of 1 s), 1000 tokens.
  const now = 100_000;
  const minute = (tokens: number): TokenNeed => ({ tokens, tpm: 1_000, windowMs: 60_000 });
  it.each<[string, TokenEntry[], number, TokenEntry[] | { waitMs: number }]>([
    ['an empty window takes it', [], 300, [e(100_000, 300)]],
    ['room left takes it', [e(60_000, 400)], 600, [e(60_000, 400), e(100_000, 600)]],
    ['the same slot adds up', [e(100_000, 100)], 50, [e(100_000, 150)]],
    ['entries a window old are dropped', [e(40_000, 900)], 900, [e(100_000, 900)]],
    // 400 + 500 counting, 200 more would be 1100: the 400 must leave (at 50 000 + 60 000).
    ['no room: until the oldest entries leave', [e(50_000, 400), e(90_000, 500)], 200, { waitMs: 10_000 }],
    // Even without the 400, 500 + 600 > 1000: both must leave; the later one leaves at 150 000.
    ['no room: as many leave as needed', [e(50_000, 400), e(90_000, 500)], 600, { waitMs: 50_000 }],
    // A guess above the whole window (the default completion) is reserved as the whole window: an empty one.
    ['a need above tpm counts as tpm', [], 5_000, [e(100_000, 1_000)]],
    ['… and waits for an empty window', [e(99_000, 1)], 5_000, { waitMs: 59_000 }],
  ])('%s', (_name, entries, tokens, expected) => {
    const plan = planTokens({ entries, version: 3 }, now, minute(tokens));
    if ('waitMs' in expected) expect(plan).toEqual(expected);
    else expect(plan).toEqual({ reserve: { expectedVersion: 3, newEntries: expected } });
  });

  it('never lets a window hold more than tpm: a random stream of grants, each planned on the last state', () => {
    // Prepare: pseudo-random sizes and gaps; grants happen as soon as planned (or after the wait).
    let seed = 7;
    const rand = () => {
      seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31;
      return seed / 2 ** 31;
    };
    let log = { entries: [] as readonly TokenEntry[], version: 0 };
    const taken: { at: number; tokens: number }[] = [];
    let t = 1_000_000;
    // Act
    for (let i = 0; i < 2_000; i++) {
      t += Math.floor(rand() * 2_000);
      const n = need(1 + Math.floor(rand() * 400));
      let plan = planTokens(log, t, n);
      if ('waitMs' in plan) {
        t += plan.waitMs;
        plan = planTokens(log, t, n);
      }
      if ('waitMs' in plan) throw new Error('waited and still no room');
      log = { entries: plan.reserve.newEntries, version: log.version + 1 };
      taken.push({ at: t, tokens: n.tokens });
    }
    // Assess: every window of W (opened at each grant) holds at most tpm; the log stays small.
    for (const start of taken)
      expect(
        taken.filter((g) => g.at >= start.at && g.at < start.at + W).reduce((s, g) => s + g.tokens, 0),
      ).toBeLessThanOrEqual(1_000);
    expect(log.entries.length).toBeLessThanOrEqual(62);
  });
});

describe('reconcileEntries (the answer used more or fewer tokens than estimated)', () => {
  const now = 100_000;
  const entries = [e(60_000, 400), e(99_000, 700)];
  it.each<[string, number, number, number, TokenEntry[] | undefined]>([
    ['fewer: the slot gives the difference back', 98_500, 500, 120, [e(60_000, 400), e(99_000, 320)]],
    ['more: the slot counts the difference', 98_500, 500, 650, [e(60_000, 400), e(99_000, 850)]],
    ['equal: nothing to write', 98_500, 500, 500, undefined],
    ['a slot that left the window: nothing to write', 30_000, 500, 100, undefined],
    ['never below zero (the slot goes)', 98_500, 900, 100, [e(60_000, 400)]],
  ])('%s', (_name, grantedAt, estimate, actual, expected) => {
    expect(reconcileEntries(entries, now, grantedAt, estimate, actual, 60_000)).toEqual(expected);
  });
});

describe('tokenLimitOf / tokensToReserve: which upstreams meter tokens, and what a request reserves', () => {
  const config = configFromEnv({
    SLUICE_UPSTREAMS: JSON.stringify([
      { name: 'nv', limit: 40, window_s: 60 },
      { name: 'oai', limit: 500, window_s: 60, tpm: 30_000, models: ['gpt-'] },
    ]),
    SLUICE_TPM_DEFAULT_MAX_TOKENS: '256',
  });
  const def = (name: string) => ({ name, baseUrl: 'x', limited: true });

  it('an upstream without tpm has no token limit; one with it counts over tpm_window_s plus the grant slack', () => {
    expect(tokenLimitOf(config, undefined)).toBeUndefined();
    expect(tokenLimitOf(config, 'oai')).toEqual({ tpm: 30_000, windowMs: 61_000 });
  });

  it.each([
    ['no upstream with tpm: nothing reserved', ['nv'], { max_tokens: 10 }, undefined],
    ['max_tokens stated', ['oai'], { max_tokens: 10 }, 'stated'],
    ['no max_tokens: the configured default', ['oai'], {}, 'default'],
    ['a pool with one tpm member reserves', ['nv', 'oai'], { max_completion_tokens: 5 }, 'stated'],
  ])('%s', (_name, pool, extra, kind) => {
    const json = { model: 'm', messages: [{ role: 'user', content: 'hello there' }], ...extra };
    const raw = JSON.stringify(json);
    const got = tokensToReserve(config, pool.map(def), { raw, json });
    if (kind === undefined) expect(got).toBeUndefined();
    else expect(got).toBe(estimateRequestTokens(raw, json, kind === 'default' ? 256 : 0));
  });
});

describe('TokenBucket with tpm: the reservation rides on the request write, the correction on its own', () => {
  const setup = async () => {
    const clock = new FakeClock(1_000_000_000_000);
    const store = new MemoryBucketStore();
    const bucket = new TokenBucket(store, clock, { fraction: 0.5, forNormal: false });
    await bucket.configure(deriveAdmission(1_000, 60_000, 10, 1_000));
    return { clock, store, bucket };
  };

  it('reserves with the grant, waits when the window is full, takes again after the usage correction', async () => {
    // Prepare
    const { clock, store, bucket } = await setup();
    const tpm = need(300, 600);

    // Act + Assess: two estimates of 300 fill the window; the third waits for the first to leave.
    for (let i = 0; i < 2; i++) {
      const plan = bucket.plan('normal', tpm);
      if ('waitMs' in plan) throw new Error('expected a grant');
      expect((await store.consume(plan.attempt)).ok).toBe(true);
      bucket.spent(plan.attempt);
      clock.advance(10);
    }
    expect(tokensInWindow(store.state?.tokens?.entries ?? [], clock.now(), W)).toBe(600);
    expect(bucket.plan('normal', tpm)).toEqual({ waitMs: expect.any(Number) });

    // The first answer used 100 (another container writes the correction): the waiting copy re-reads and takes.
    const ingress = new TokenBucket(store, clock, { fraction: 0.5, forNormal: false });
    await ingress.reconcileTokens(1_000_000_000_000, 300, 100, tpm);
    expect(tokensInWindow(store.state?.tokens?.entries ?? [], clock.now(), W)).toBe(400);
    await bucket.refreshIfTokenBound(0);
    const plan = bucket.plan('normal', need(200, 600));
    expect('attempt' in plan).toBe(true);
  });

  it("a grant planned on a stale token log fails its condition and learns the log (another writer's correction)", async () => {
    const { clock, store, bucket } = await setup();
    await bucket.refresh();
    const plan = bucket.plan('normal', need(300));
    if ('waitMs' in plan) throw new Error('expected a grant');
    // Another container reserved meanwhile (version 1).
    expect(await store.writeTokens(0, [{ at: tokenSlot(clock.now(), W), tokens: 900 }])).toEqual({
      ok: true,
    });
    const res = await store.consume(plan.attempt);
    expect(res).toEqual({ ok: false, current: expect.objectContaining({ tokens: expect.anything() }) });
    if (!res.ok) bucket.conflicted(res.current);
    expect(bucket.plan('normal', need(300))).toEqual({ waitMs: expect.any(Number) });
  });

  it('a reservation ahead (planAt) is judged at its slot and its wait counted from now', async () => {
    // Prepare: 900 of 1000 reserved now; 200 more fit once they leave (the window of 61 s after their slot).
    const { clock, bucket } = await setup();
    const full = bucket.plan('normal', need(900));
    if ('waitMs' in full) throw new Error('expected a grant');
    bucket.spent(full.attempt);
    const leaves = tokenSlot(clock.now(), W) + W;

    // Act + Assess: a slot 2 s ahead still waits until they leave, counted from now; one past it reserves.
    expect(bucket.planAt('normal', clock.now() + 2_000, need(200))).toEqual({ waitMs: leaves - clock.now() });
    const later = bucket.planAt('normal', leaves, need(200));
    expect('attempt' in later && later.attempt.tokens?.newEntries).toEqual([
      { at: tokenSlot(leaves, W), tokens: 200 },
    ]);
  });

  it('refunds, holds and reconfigurations never touch the token log', async () => {
    const { clock, store, bucket } = await setup();
    const plan = bucket.plan('normal', need(300));
    if ('waitMs' in plan) throw new Error('expected a grant');
    await store.consume(plan.attempt);
    const tokens = store.state?.tokens;
    await bucket.hold(clock.now() + 5_000);
    await bucket.refund(clock.now(), 60_000);
    await bucket.configure(deriveAdmission(500, 60_000, 10, 1_000));
    expect(store.state?.tokens).toEqual(tokens);
  });
});

describe('parseResetDuration (x-ratelimit-reset-*)', () => {
  it.each<[string | null, number | undefined]>([
    ['6m0s', 360_000],
    ['1.5s', 1_500],
    ['20ms', 20],
    ['1h2m3s', 3_723_000],
    ['2m30.5s', 150_500],
    ['7', 7_000],
    ['0s', 0],
    ['soon', undefined],
    ['5x', undefined],
    ['', undefined],
    [null, undefined],
  ])('%s → %s ms', (text, ms) => {
    expect(parseResetDuration(text)).toBe(ms);
  });
});

describe('upstreamHoldMs: what the answer headers ask (remaining 0 → until the reset; Retry-After)', () => {
  const now = Date.parse('2026-12-01T12:00:00Z');
  it.each<[string, Record<string, string>, number | undefined]>([
    ['none of them (NVIDIA)', {}, undefined],
    ['retry-after seconds', { 'retry-after': '20' }, 20_000],
    ['retry-after-ms wins over retry-after', { 'retry-after-ms': '1500', 'retry-after': '2' }, 1_500],
    ['retry-after as a date', { 'retry-after': 'Tue, 01 Dec 2026 12:00:30 GMT' }, 30_000],
    [
      'requests left: no hold',
      { 'x-ratelimit-remaining-requests': '3', 'x-ratelimit-reset-requests': '6m0s' },
      undefined,
    ],
    [
      'no request left: until its reset',
      { 'x-ratelimit-remaining-requests': '0', 'x-ratelimit-reset-requests': '1.5s' },
      1_500,
    ],
    [
      'no token left: until its reset',
      { 'x-ratelimit-remaining-tokens': '0', 'x-ratelimit-reset-tokens': '20ms' },
      20,
    ],
    [
      'the longest of several',
      {
        'retry-after': '1',
        'x-ratelimit-remaining-tokens': '0',
        'x-ratelimit-reset-tokens': '6m0s',
        'x-ratelimit-remaining-requests': '0',
        'x-ratelimit-reset-requests': '2s',
      },
      360_000,
    ],
    ['remaining 0 with no reset: nothing to go by', { 'x-ratelimit-remaining-tokens': '0' }, undefined],
  ])('%s', (_name, headers, ms) => {
    expect(upstreamHoldMs((name) => headers[name], now)).toBe(ms);
  });
});
