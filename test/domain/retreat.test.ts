import { describe, expect, it } from 'vitest';
import {
  MemoryBucketStore,
  MemoryOutcomeStore,
  MemoryRetreatStore,
} from '../../lib/adapters/memory/stores.js';
import { TokenBucket } from '../../lib/domain/bucket.js';
import { FakeClock } from '../../lib/domain/clock.js';
import { DEFAULT_CONFIG, type GatewayConfig } from '../../lib/domain/config.js';
import type { WindowStats } from '../../lib/domain/outcomes.js';
import {
  evaluateRetreat,
  initialRetreat,
  type RetreatInputs,
  type RetreatRecord,
  resetRetreat,
} from '../../lib/domain/retreat.js';
import { bucketParamsFor, RetreatController } from '../../lib/domain/retreat-controller.js';

const stats = (total: number, throttled: number, capacity = 0): WindowStats => ({
  total,
  throttled,
  capacity,
});
const same = (s: WindowStats): RetreatInputs => ({ window: s, recoverWindow: s, sinceStep: s });
// These tables describe the ADR-009 machine with time-paced steps (the sluice preset), not the default preset.
const cfg: GatewayConfig = { ...DEFAULT_CONFIG, retreatPreset: 'sluice' };

describe('evaluateRetreat (sluice preset)', () => {
  const t0 = 1_000_000;

  it('NORMAL → RETREAT at ≥ 5 % 429s with ×0.75', () => {
    const next = evaluateRetreat(initialRetreat(40, t0), same(stats(20, 1)), t0 + 20_000, cfg);
    expect(next.state).toBe('retreat');
    expect(next.effectiveRpm).toBe(30);
    expect(next.transitions[0]).toMatchObject({ from: 'normal', to: 'retreat', rpm: 30 });
  });

  it('stays NORMAL below the threshold or below the minimum sample', () => {
    const r = initialRetreat(40, t0);
    expect(evaluateRetreat(r, same(stats(100, 4)), t0 + 20_000, cfg)).toBe(r);
    expect(evaluateRetreat(r, same(stats(3, 3)), t0 + 20_000, cfg)).toBe(r);
  });

  it('steps at most once per step interval, judging only outcomes since the last step', () => {
    let r = evaluateRetreat(initialRetreat(40, t0), same(stats(20, 10)), t0 + 20_000, cfg);
    expect(r.effectiveRpm).toBe(30);
    // 5 s later, still storming: too soon for another step.
    expect(evaluateRetreat(r, same(stats(20, 10)), t0 + 25_000, cfg)).toBe(r);
    // 10 s later but no outcomes since the step: the old 429s are not counted again.
    const quiet: RetreatInputs = {
      window: stats(20, 10),
      recoverWindow: stats(20, 10),
      sinceStep: stats(0, 0),
    };
    expect(evaluateRetreat(r, quiet, t0 + 30_000, cfg)).toBe(r);
    // Fresh 429s since the step (≥ 10 %) → another cut.
    r = evaluateRetreat(r, { ...quiet, sinceStep: stats(10, 2) }, t0 + 30_000, cfg);
    expect(r.effectiveRpm).toBe(22.5);
  });

  it('never goes below the floor', () => {
    let r: RetreatRecord = { ...initialRetreat(40, t0), state: 'retreat', effectiveRpm: 6 };
    r = evaluateRetreat(r, same(stats(20, 20)), t0 + 20_000, cfg);
    expect(r.effectiveRpm).toBe(5);
    expect(evaluateRetreat(r, same(stats(20, 20)), t0 + 40_000, cfg)).toBe(r);
  });

  it('sustained low 429 rate → RECOVER (+2 rpm per step) → NORMAL at base', () => {
    let r = evaluateRetreat(initialRetreat(40, t0), same(stats(20, 10)), t0 + 10_000, cfg);
    expect(r.state).toBe('retreat');
    // Quiet, but not yet for the recover window.
    expect(evaluateRetreat(r, same(stats(20, 0)), t0 + 60_000, cfg)).toBe(r);
    let now = t0 + 10_000 + cfg.recoverWindowMs;
    r = evaluateRetreat(r, same(stats(20, 0)), now, cfg);
    expect(r).toMatchObject({ state: 'recover', effectiveRpm: 32 });
    const seen: number[] = [];
    while (r.state === 'recover') {
      now += cfg.retreatStepIntervalMs;
      r = evaluateRetreat(r, same(stats(20, 0)), now, cfg);
      seen.push(r.effectiveRpm);
    }
    expect(seen).toEqual([34, 36, 38, 40]);
    expect(r.state).toBe('normal');
  });

  it('429s during recovery → RETREAT again', () => {
    const r = { ...initialRetreat(40, t0), state: 'recover' as const, effectiveRpm: 32 };
    const next = evaluateRetreat(r, same(stats(20, 2)), t0 + 20_000, cfg);
    expect(next).toMatchObject({ state: 'retreat', effectiveRpm: 24 });
  });

  it('manual reset returns to base', () => {
    const r = { ...initialRetreat(40, t0), state: 'retreat' as const, effectiveRpm: 10 };
    expect(resetRetreat(r, t0 + 1)).toMatchObject({ state: 'normal', effectiveRpm: 40 });
  });
});

describe('evaluateRetreat (seed preset: steps follow traffic)', () => {
  const seed: GatewayConfig = { ...cfg, retreatPreset: 'seed' };
  it('cuts on every evaluation while ≥ 10 %, down to the floor in about 8 responses', () => {
    let r = initialRetreat(40, 0);
    let steps = 0;
    for (let i = 1; i <= 20 && r.effectiveRpm > 5; i++) {
      r = evaluateRetreat(r, same(stats(10, 5)), i, seed);
      steps++;
    }
    expect(r.effectiveRpm).toBe(5);
    expect(steps).toBeLessThanOrEqual(8);
  });
});

describe('RetreatController', () => {
  it('two evaluators racing apply one step, not two', async () => {
    const clock = new FakeClock(1_000_000);
    const outcomes = new MemoryOutcomeStore();
    const retreat = new MemoryRetreatStore();
    const store = new MemoryBucketStore();
    const mk = () =>
      new RetreatController({
        retreat,
        outcomes,
        bucket: new TokenBucket(store, clock, { fraction: 0.5, forNormal: false }),
        clock,
      });
    const [a, b] = [mk(), mk()];
    await a.load(cfg);
    clock.advance(20_000);
    await outcomes.record(clock.now(), { counts: { ok: 10, throttled: 10 } });
    clock.advance(11_000);
    const results = await Promise.all([a.evaluate(cfg), b.evaluate(cfg)]);
    expect(results.filter((r) => r.stepped)).toHaveLength(1);
    expect(retreat.record).toMatchObject({ state: 'retreat', effectiveRpm: 30, version: 1 });
    expect(store.state).toMatchObject(bucketParamsFor({ effectiveRpm: 30 }, cfg));
  });
});
