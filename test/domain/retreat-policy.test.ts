// The `probe` retreat policy as a pure function on a fake clock: table-driven steps, the outcome arithmetic the
// controller feeds it, and a whole 40 → 20 → 40 episode against a simulated sliding-window upstream.
import { describe, expect, it } from 'vitest';
import {
  MemoryBucketStore,
  MemoryOutcomeStore,
  MemoryRetreatStore,
} from '../../lib/adapters/memory/stores.js';
import { TokenBucket } from '../../lib/domain/bucket.js';
import { FakeClock } from '../../lib/domain/clock.js';
import { DEFAULT_CONFIG, type GatewayConfig } from '../../lib/domain/config.js';
import {
  emptySlot,
  SLOT_MS,
  type SlotCounters,
  slotOf,
  type WindowStats,
} from '../../lib/domain/outcomes.js';
import {
  evaluateRetreat,
  evaluatesOnOutcome,
  initialRetreat,
  type ProbeState,
  REFUSAL_STREAK_MS,
  type RetreatInputs,
  type RetreatRecord,
  refusalHoldMs,
} from '../../lib/domain/retreat.js';
import {
  acceptedRpmInWindow,
  bucketParamsFor,
  grantedRpmInWindow,
  grantedRpmSinceMark,
  RetreatController,
  statsSinceMark,
  useWindowMs,
} from '../../lib/domain/retreat-controller.js';

const cfg: GatewayConfig = { ...DEFAULT_CONFIG, retreatPreset: 'probe' };
const T0 = 1_000_000;
const stats = (total: number, throttled: number, capacity = 0): WindowStats => ({
  total,
  throttled,
  capacity,
});
const inputs = (since: WindowStats, extra: Partial<RetreatInputs> = {}): RetreatInputs => ({
  window: since,
  recoverWindow: since,
  sinceStep: since,
  sinceMark: since,
  ...extra,
});
const at = (
  state: RetreatRecord['state'],
  rpm: number,
  more: Partial<RetreatRecord> = {},
): RetreatRecord => ({
  ...initialRetreat(40, T0),
  state,
  effectiveRpm: rpm,
  ...more,
});
const probeState = (more: Partial<ProbeState> = {}): ProbeState => ({
  limitRpm: 20,
  quietRpm: 20,
  holdMs: 120_000,
  step: 0,
  ...more,
});

describe('probe policy: cuts', () => {
  it.each([
    // name, effective rpm, accepted rpm, expected rpm
    ['to what the upstream accepted', 40, 30, 30],
    ['exactly to a halved limit', 40, 20, 20],
    ['at least 5 % off, even if the upstream accepted more', 40, 39.5, 38],
    ['at most half off (the estimate may be taken mid-drain)', 40, 5, 20],
    ['never below the floor', 8, 1, 5],
  ])('NORMAL → RETREAT %s', (_name, rpm, accepted, expected) => {
    const r = at('normal', rpm);
    const next = evaluateRetreat(r, inputs(stats(20, 10), { acceptedRpm: accepted }), T0 + 20_000, cfg);
    expect(next).toMatchObject({ state: 'retreat', effectiveRpm: expected });
    expect(next.probe).toEqual({
      limitRpm: accepted,
      quietRpm: expected,
      holdMs: cfg.recoverWindowMs,
      step: 0,
    });
    expect(next.transitions[0]).toMatchObject({ from: 'normal', to: 'retreat', rpm: expected });
  });

  it.each([
    ['429 rate below the threshold', stats(100, 4), T0 + 20_000],
    ['sample below the minimum', stats(5, 5), T0 + 20_000],
    ['within the step interval', stats(20, 10), T0 + 5_000],
    ['capacity errors only (worker concurrency, not the rate limit)', stats(20, 0, 15), T0 + 20_000],
    ['a lone 429 (arrival jitter, even at 5 % of a small sample)', stats(10, 1), T0 + 20_000],
  ])('stays NORMAL: %s', (_name, since, now) => {
    const r = at('normal', 40);
    expect(evaluateRetreat(r, inputs(since, { acceptedRpm: 20 }), now, cfg)).toBe(r);
  });

  it('cuts only right after a 429, never on the timer (the window may have room again by then)', () => {
    const r = at('normal', 40);
    const storm = stats(20, 10);
    expect(evaluateRetreat(r, inputs(storm, { acceptedRpm: 17, trigger: 'timer' }), T0 + 20_000, cfg)).toBe(
      r,
    );
    expect(
      evaluateRetreat(r, inputs(storm, { acceptedRpm: 20, trigger: 'outcome' }), T0 + 20_000, cfg),
    ).toMatchObject({ state: 'retreat', effectiveRpm: 20 });
  });

  it('judges only outcomes since the mark (the slot-aligned view may still hold the old 429s)', () => {
    const r = at('retreat', 20, { lastStepAt: T0 });
    const oldStorm = stats(30, 15);
    const quietSinceMark = stats(12, 0);
    const next = evaluateRetreat(
      r,
      {
        window: oldStorm,
        recoverWindow: oldStorm,
        sinceStep: oldStorm,
        sinceMark: quietSinceMark,
        acceptedRpm: 20,
      },
      T0 + 20_000,
      cfg,
    );
    expect(next).toBe(r);
  });

  it('cuts again while retreating if the 429s go on, once per step interval', () => {
    const r = at('retreat', 33, { lastStepAt: T0, probe: probeState({ quietRpm: 33 }) });
    expect(evaluateRetreat(r, inputs(stats(10, 5), { acceptedRpm: 26 }), T0 + 5_000, cfg)).toBe(r);
    expect(evaluateRetreat(r, inputs(stats(10, 5), { acceptedRpm: 26 }), T0 + 10_000, cfg)).toMatchObject({
      state: 'retreat',
      effectiveRpm: 26,
    });
  });
});

describe('probe policy: hold and probe', () => {
  const holding = (probe: Partial<ProbeState> = {}) =>
    at('retreat', 20, { lastStepAt: T0, since: T0, probe: probeState(probe) });

  it.each([
    ['before the hold time', {}, stats(30, 0), T0 + 119_000, 'retreat', 20, 0],
    ['not quiet enough (≥ 2 % since the cut)', {}, stats(30, 1), T0 + 130_000, 'retreat', 20, 0],
    ['quiet for the hold time: one call a window more', {}, stats(30, 0), T0 + 120_000, 'recover', 21, 1],
    [
      'one more call was refused before: straight to +20 %',
      { ceilingRpm: 21 },
      stats(30, 0),
      T0 + 120_000,
      'recover',
      24,
      2,
    ],
    ['the hold grows after refusals', { holdMs: 180_000 }, stats(30, 0), T0 + 170_000, 'retreat', 20, 0],
  ])('RETREAT %s', (_name, probe, since, now, state, rpm, step) => {
    const next = evaluateRetreat(holding(probe), inputs(since, { acceptedRpm: 20 }), now, cfg);
    expect(next).toMatchObject({ state, effectiveRpm: rpm });
    expect(next.probe).toMatchObject({ step, quietRpm: 20 });
  });

  const probing = (step: number, rpm: number, quietRpm = 20) =>
    at('recover', rpm, { since: T0 - 100_000, lastStepAt: T0, probe: probeState({ step, quietRpm }) });

  it.each([
    // name, stage, rpm, elapsed since the step, granted rpm, expected rpm, stage after, quiet rpm after
    ['stage 1 is held for a whole upstream window', 1, 21, 59_000, 20, 21, 1, 20],
    ['stage 1 quiet for a window: the new quiet rate, then +20 %', 1, 21, 60_000, 20, 25.2, 2, 21],
    ['stage 2 is held for half a window', 2, 25.2, 29_000, 24, 25.2, 2, 21],
    ['stage 2 quiet for half a window: the limit moved, keep growing', 2, 25.2, 30_000, 24, 30.24, 3, 21],
    ['later stages follow the step interval', 3, 30.24, 10_000, 28, 36.288, 4, 21],
    ['no step while the rate is unused (an unused rate proves nothing)', 3, 30.24, 10_000, 15, 30.24, 3, 21],
    // The bucket can grant only 24 a minute at this rate (a short window's log of whole calls): 18 is 75 % of that.
    [
      'in use against what the bucket can grant, not the nominal rate',
      3,
      30.24,
      10_000,
      18,
      36.288,
      4,
      21,
      24,
    ],
  ])(
    'RECOVER %s',
    (_name, stage, rpm, elapsed, grantedRpm, expected, after, quiet, grantableRpm?: number) => {
      const next = evaluateRetreat(
        probing(stage, rpm, stage === 1 ? 20 : 21),
        inputs(stats(20, 0), { acceptedRpm: 22, grantedRpm, ...(grantableRpm ? { grantableRpm } : {}) }),
        T0 + elapsed,
        cfg,
      );
      expect(next.state).toBe('recover');
      expect(next.effectiveRpm).toBeCloseTo(expected, 6);
      expect(next.probe).toMatchObject({ step: after, quietRpm: quiet });
    },
  );

  it.each([
    // name, stage, rpm, quiet rpm, accepted rpm (noisy), expected rpm, ceiling after
    ['stage 1: back to the quiet rate; one more call is now known to be too many', 1, 21, 20, 22, 20, 21],
    ['stage 2: back to the quiet rate, whatever the noisy estimate says', 2, 25.2, 21, 23.5, 21, 25.2],
    ['stage 3: to what the upstream accepted (the limit rose part way)', 3, 30.24, 21, 27, 27, 30.24],
    ['stage 3: but never below the quiet rate', 3, 30.24, 21, 17, 21, 30.24],
  ])('one 429 ends the probe at once — %s', (_name, stage, rpm, quiet, accepted, expected, ceiling) => {
    const next = evaluateRetreat(
      probing(stage, rpm, quiet),
      inputs(stats(3, 1), { acceptedRpm: accepted }),
      T0 + 1_000,
      cfg,
    );
    expect(next).toMatchObject({ state: 'retreat', effectiveRpm: expected });
    // The hold doubles after a refused probe, up to retreatProbeHoldFactor recover windows.
    expect(next.probe).toMatchObject({
      step: 0,
      quietRpm: expected,
      ceilingRpm: ceiling,
      holdMs: cfg.recoverWindowMs * cfg.retreatProbeHoldFactor,
    });
  });

  it('a new cut forgets the ceiling (the limit moved)', () => {
    const r = holding({ ceilingRpm: 21 });
    const next = evaluateRetreat(r, inputs(stats(20, 6), { acceptedRpm: 12 }), T0 + 20_000, cfg);
    expect(next).toMatchObject({ state: 'retreat', effectiveRpm: 12 });
    expect(next.probe).not.toHaveProperty('ceilingRpm');
  });

  it('reaching base returns to NORMAL and forgets what it learned', () => {
    const next = evaluateRetreat(
      probing(4, 36, 21),
      inputs(stats(10, 0), { grantedRpm: 34 }),
      T0 + 10_000,
      cfg,
    );
    expect(next).toMatchObject({ state: 'normal', effectiveRpm: 40 });
    expect(next).not.toHaveProperty('probe');
  });

  it('stores the outcomes it has seen as the mark of the step', () => {
    const seen = { slot: slotOf(T0), total: 7, throttled: 3, capacity: 0, granted: 9 };
    const next = evaluateRetreat(
      at('normal', 40),
      inputs(stats(20, 10), { acceptedRpm: 30, seen }),
      T0 + 20_000,
      cfg,
    );
    expect(next.mark).toEqual(seen);
  });
});

describe('evaluatesOnOutcome', () => {
  it.each([
    ['seed', { ok: 1 }, true],
    ['seed', { throttled: 1 }, true],
    ['seed', { upstreamError: 1 }, true],
    ['seed', { granted: 1 }, false],
    ['probe', { throttled: 1 }, true],
    ['probe', { ok: 1 }, false],
    ['probe', { capacity: 1 }, false],
    ['sluice', { throttled: 1 }, false],
  ] as const)('%s after %o → %s', (preset, counts, expected) => {
    expect(evaluatesOnOutcome(preset, counts)).toBe(expected);
  });
});

describe('outcome arithmetic fed to the policy', () => {
  const slot = (start: number, counts: Partial<SlotCounters['counts']>): SlotCounters => {
    const s = emptySlot(start);
    Object.assign(s.counts, counts);
    return s;
  };
  const s0 = 100 * SLOT_MS;
  const slots = [
    slot(s0, { ok: 10, throttled: 2, granted: 12 }),
    slot(s0 + SLOT_MS, { ok: 5, throttled: 4, capacity: 1, granted: 10 }),
    slot(s0 + 2 * SLOT_MS, { ok: 3, granted: 3 }),
  ];
  const mark = { slot: s0 + SLOT_MS, total: 4, throttled: 3, capacity: 0, granted: 6 };

  it.each([
    ['everything from the window start without a mark', undefined, s0, stats(25, 6, 1)],
    ['the marked slot minus its mark, then later slots', mark, s0, stats(9, 1, 1)],
    [
      'nothing before the window start even with an older mark',
      { ...mark, slot: s0 - SLOT_MS },
      s0 + SLOT_MS,
      stats(13, 4, 1),
    ],
  ])('statsSinceMark: %s', (_name, m, from, expected) => {
    expect(statsSinceMark(slots, m, from)).toEqual(expected);
  });

  it.each([
    // (12 − 2) + (10 − 4 − 1) + 3 = 18 calls in the last 30 s → 36 rpm.
    ['whole slots', 30_000, s0 + 30_000, 36],
    // Half of the first slot (5) + 5 + 3 = 13 calls in the last 25 s → 31.2 rpm.
    ['the first slot pro rata', 25_000, s0 + 30_000, 31.2],
  ])('acceptedRpmInWindow counts grants minus 429s: %s', (_name, windowMs, now, rpm) => {
    expect(acceptedRpmInWindow(slots, windowMs, now)).toBeCloseTo(rpm, 6);
  });

  it('grantedRpmSinceMark uses the mark exactly', () => {
    // (10 − 6) + 3 = 7 grants in the 15 s since the step → 28 rpm.
    expect(grantedRpmSinceMark(slots, mark, s0 + 15_000, s0 + 30_000)).toBeCloseTo(28, 6);
    expect(grantedRpmSinceMark(slots, undefined, s0, s0 + 30_000)).toBeUndefined();
  });

  it('bucketParamsFor paces strictly (burst 1) below base for the probe preset only', () => {
    expect(bucketParamsFor({ effectiveRpm: 20, state: 'retreat' }, cfg).burst).toBe(1);
    expect(bucketParamsFor({ effectiveRpm: 40, state: 'normal' }, cfg).burst).toBe(2);
    expect(
      bucketParamsFor({ effectiveRpm: 20, state: 'retreat' }, { ...cfg, retreatPreset: 'sluice' }).burst,
    ).toBe(2);
  });
});

/**
 * A fake-time episode: saturated demand through a bucket paced at (rate − 1) per minute, an upstream with a
 * sliding-window limit of 40 → 20 → 40, answers 2 s after acceptance, outcomes counted per 10 s slot as the
 * stores do, the policy evaluated every 5 s and after every 429 (as the dispatcher and ingress do).
 */
const episode = (dropAt: number, liftAt: number, endAt: number) => {
  const limitAt = (t: number) => (t >= dropAt && t < liftAt ? 20 : 40);
  const slots = new Map<number, SlotCounters>();
  const count = (t: number, c: Partial<SlotCounters['counts']>) => {
    const s = slots.get(slotOf(t)) ?? emptySlot(slotOf(t));
    for (const [k, v] of Object.entries(c)) s.counts[k as keyof SlotCounters['counts']] += v as number;
    slots.set(s.slot, s);
  };
  const accepted: number[] = [];
  const pendingOk: number[] = [];
  let r = initialRetreat(40, 0);
  const trace: [number, number][] = [];
  const refusedAt: number[] = [];
  const evaluate = (now: number, trigger: 'timer' | 'outcome') => {
    const read = [...slots.values()]
      .filter((s) => s.slot >= slotOf(now - 130_000))
      .sort((a, b) => a.slot - b.slot);
    const current = slots.get(slotOf(now));
    const windowFrom = slotOf(now - cfg.retreatWindowMs);
    r = evaluateRetreat(
      r,
      {
        window: statsSinceMark(read, undefined, windowFrom),
        recoverWindow: statsSinceMark(read, undefined, slotOf(now - cfg.recoverWindowMs)),
        sinceStep: statsSinceMark(
          read,
          undefined,
          Math.max(windowFrom, Math.ceil((r.lastStepAt + 1) / SLOT_MS) * SLOT_MS),
        ),
        sinceMark: statsSinceMark(read, r.mark, windowFrom),
        acceptedRpm: acceptedRpmInWindow(read, cfg.upstreamWindowMs, now),
        grantedRpm: grantedRpmInWindow(
          read,
          Math.max(1_000, Math.min(useWindowMs(cfg), now - r.lastStepAt)),
          now,
        ),
        seen: {
          slot: slotOf(now),
          total: current ? current.counts.ok + current.counts.throttled : 0,
          throttled: current?.counts.throttled ?? 0,
          capacity: 0,
          granted: current?.counts.granted ?? 0,
        },
        trigger,
      },
      now,
      cfg,
    );
  };
  let nextGrant = 0;
  let nextEval = 0;
  for (let now = 0; now < endAt; now += 100) {
    while (pendingOk.length && (pendingOk[0] as number) <= now) count(pendingOk.shift() as number, { ok: 1 });
    if (now >= nextEval) {
      evaluate(now, 'timer');
      nextEval = now + cfg.retreatEvalIntervalMs;
      trace.push([now, r.effectiveRpm]);
    }
    if (now < nextGrant) continue;
    const interval = 60_000 / Math.max(1, r.effectiveRpm - (r.state === 'normal' ? 2 : 1));
    nextGrant = now + interval;
    count(now, { granted: 1 });
    const inWindow = accepted.filter((a) => a > now - 60_000).length;
    if (inWindow < limitAt(now)) {
      accepted.push(now);
      pendingOk.push(now + 2_000);
    } else {
      count(now, { throttled: 1 });
      refusedAt.push(now);
      evaluate(now, 'outcome');
      // The controller's refusal hold: one probe at a time while the upstream refuses.
      const streak = refusedAt.filter((t) => t > now - REFUSAL_STREAK_MS).length;
      nextGrant = Math.max(nextGrant, now + refusalHoldMs(streak, 60_000 / r.effectiveRpm, 60_000));
    }
  }
  return { trace, refusedAt, accepted, final: r };
};

describe('probe policy over a 40 → 20 → 40 episode (fake time, sliding-window upstream)', () => {
  const MIN = 60_000;
  const drop = 2 * MIN;
  const lift = 12 * MIN;
  const run = episode(drop, lift, 20 * MIN);
  const between = (from: number, to: number) =>
    run.trace.filter(([t]) => t >= from && t < to).map(([, v]) => v);

  it('settles at the limit within two minutes and holds it within ±15 %', () => {
    const steady = between(drop + 2 * MIN, lift);
    expect(Math.min(...steady)).toBeGreaterThanOrEqual(19);
    // A probe reaches at most two stages above the quiet rate: one call, then +20 %.
    expect(Math.max(...steady)).toBeLessThanOrEqual(26);
    const mean = steady.reduce((a, b) => a + b, 0) / steady.length;
    expect((Math.max(...steady) - Math.min(...steady)) / 2 / mean).toBeLessThanOrEqual(0.15);
  });

  it('during the drop, one probe at a time while refused: about half the 429s of a full rate of calls', () => {
    // Without the refusal hold the bucket kept sending at ~36 rpm into a full window: 20 429s here.
    const first = run.refusedAt.filter((t) => t >= drop && t < drop + 2 * MIN).length;
    expect(first).toBeLessThanOrEqual(10);
  });

  it('keeps the constrained 429 rate under 2 % and goodput ≥ 90 % of the limit', () => {
    const from = drop + 2 * MIN;
    const refused = run.refusedAt.filter((t) => t >= from && t < lift).length;
    const ok = run.accepted.filter((t) => t >= from && t < lift).length;
    expect(refused / (refused + ok)).toBeLessThanOrEqual(0.02);
    expect(ok / ((lift - from) / MIN)).toBeGreaterThanOrEqual(18);
  });

  it('is back at ≥ 90 % of base within 3 minutes of the lift', () => {
    const back = run.trace.find(([t, v]) => t >= lift && v >= 36);
    expect(back).toBeDefined();
    expect((back?.[0] ?? Number.POSITIVE_INFINITY) - lift).toBeLessThanOrEqual(3 * MIN);
    expect(run.final).toMatchObject({ state: 'normal', effectiveRpm: 40 });
  });
});

describe('probe RECOVER after a quiet spell (issue 11.4: use over a fixed recent window)', () => {
  it('grows again once the rate is in use, however long the quiet spell before', async () => {
    // Prepare: RECOVER at 24 rpm since a step 5 minutes ago; nobody used it for 4 minutes, then the fleet came
    // back and used the whole rate for the last minute.
    const clock = new FakeClock(T0 + 5 * 60_000);
    const outcomes = new MemoryOutcomeStore();
    const retreat = new MemoryRetreatStore();
    const bucket = new TokenBucket(new MemoryBucketStore(), clock, { fraction: 0.5, forNormal: false });
    const stepAt = T0;
    retreat.record = {
      ...at('recover', 24, { since: stepAt, lastStepAt: stepAt, version: 3 }),
      mark: { slot: slotOf(stepAt), total: 0, throttled: 0, capacity: 0, granted: 0 },
      probe: probeState({ step: 3, quietRpm: 20 }),
    };
    for (let t = T0 + 4 * 60_000; t < clock.now(); t += 2_500) {
      await outcomes.record(t, { counts: { granted: 1, ok: 1 } });
    }
    const controller = new RetreatController({ retreat, outcomes, bucket, clock });

    // Act
    const { record, stepped } = await controller.evaluate(cfg);

    // Assess: 24 rpm in use over the last half window → the next probe step (not stuck at 24 until a 429).
    expect(stepped).toBe(true);
    expect(record).toMatchObject({ state: 'recover' });
    expect(record.effectiveRpm).toBeGreaterThan(24);
  });
});

describe('probe: refusal hold (issue 11.4: one probe at a time while refused)', () => {
  it.each([
    // 429s in the streak, token interval → hold
    [1, 1_500, 1_500],
    [2, 1_500, 3_000],
    [4, 1_500, 12_000],
    [9, 1_500, 15_000],
  ])('streak %i at interval %i ms → hold %i ms', (streak, interval, hold) => {
    expect(refusalHoldMs(streak, interval, 60_000)).toBe(hold);
  });

  it('a 429 just recorded holds the bucket; a timer evaluation does not', async () => {
    // Prepare
    const clock = new FakeClock(T0);
    const outcomes = new MemoryOutcomeStore();
    const bucket = new TokenBucket(new MemoryBucketStore(), clock, { fraction: 0.5, forNormal: false });
    const controller = new RetreatController({ retreat: new MemoryRetreatStore(), outcomes, bucket, clock });
    await controller.evaluate(cfg, 'timer');
    await outcomes.record(clock.now(), { counts: { granted: 1, throttled: 1 } });

    // Act + Assess
    await controller.evaluate(cfg, 'timer');
    expect(bucket.available('urgent')).toBeGreaterThan(0);
    await controller.evaluate(cfg, 'outcome');
    expect(bucket.available('urgent')).toBe(0);
    clock.advance(bucket.state!.intervalMs);
    expect(bucket.available('urgent')).toBe(1);
  });
});
