// Domain: the retreat state machine (seed ADR-009 and the probing policy), as a pure function of (record, outcome stats, now).
import type { GatewayConfig, RetreatPreset } from './config.js';
import { type CounterName, throttleRate, type WindowStats } from './outcomes.js';

export const RETREAT_STATES = ['normal', 'retreat', 'recover'] as const;
export type RetreatState = (typeof RETREAT_STATES)[number];

export interface RetreatTransition {
  at: number;
  from: RetreatState;
  to: RetreatState;
  rpm: number;
  /** 429 rate that triggered it (0–1). */
  rate: number;
  reason: string;
}

/** Counts already in one outcome slot when a step was taken (the probe preset judges only later ones). */
export interface OutcomeMark extends WindowStats {
  /** Start of the slot these counts belong to. */
  slot: number;
  granted: number;
}

/** Stored once per bucket; updated only with a version condition so two evaluators never both step. */
export interface RetreatRecord {
  state: RetreatState;
  effectiveRpm: number;
  baseRpm: number;
  /** When the current state was entered. */
  since: number;
  /** When the rate last changed (steps are counted from here). */
  lastStepAt: number;
  version: number;
  /** Latest first, at most MAX_TRANSITIONS. */
  transitions: RetreatTransition[];
  /** Outcomes of the current slot seen at the last step. */
  mark?: OutcomeMark;
  /** What the probe preset learned since it left base (absent at base). */
  probe?: ProbeState;
}

/** The probe preset's memory between evaluations. */
export interface ProbeState {
  /** The upstream's limit as estimated at the last cut: calls it accepted in a window, per minute. */
  limitRpm: number;
  /** The highest rate known to be quiet: a refused probe returns here. */
  quietRpm: number;
  /** Quiet time the next probe waits for (grows after a refused probe). */
  holdMs: number;
  /** The lowest rate refused since the cut: a one-call probe below it is skipped. */
  ceilingRpm?: number;
  /** The current probe: 0 holding, 1 one call more, 2 a first growth step, 3+ growing toward base. */
  step: number;
}

export const MAX_TRANSITIONS = 20;

export type RetreatParams = Pick<
  GatewayConfig,
  | 'retreatPreset'
  | 'retreatWindowMs'
  | 'retreatThreshold'
  | 'retreatAgainThreshold'
  | 'retreatFactor'
  | 'retreatFloorRpm'
  | 'recoverWindowMs'
  | 'recoverThreshold'
  | 'recoverStepRpm'
  | 'retreatStepIntervalMs'
  | 'retreatMinSample'
  | 'retreatProbeTarget'
  | 'retreatProbeGrowth'
  | 'retreatProbeHoldFactor'
  | 'upstreamWindowMs'
>;

/** Outcome stats the evaluator needs, all ending at `now`. */
export interface RetreatInputs {
  /** Over the last retreat window. */
  window: WindowStats;
  /** Over the last recover window. */
  recoverWindow: WindowStats;
  /** Since the last step, from the first slot wholly after it (sluice preset: the same 429s are not counted twice). */
  sinceStep: WindowStats;
  /** Exactly the outcomes since the last step (its mark subtracted), within the retreat window (probe preset). */
  sinceMark?: WindowStats;
  /**
   * Calls the upstream accepted (granted minus 429s) in about the last upstream window, as a rate per minute
   * (probe preset). Taken right after a 429 it is the upstream's window count, i.e. its limit.
   */
  acceptedRpm?: number;
  /** Grants per minute since the last step (probe preset: is the rate in use?). */
  grantedRpm?: number;
  /** The most grants per minute the bucket allows at the effective rate (gcra grantableRpm), when known. */
  grantableRpm?: number;
  /** Outcomes of the current slot seen by this evaluation: stored as the mark when it steps. */
  seen?: OutcomeMark;
  /**
   * What ran this evaluation: the dispatcher's timer, or an upstream outcome just recorded (the ingress).
   * The probe preset cuts only right after a 429, when the accepted count says where the limit is.
   * @default 'outcome'
   */
  trigger?: 'timer' | 'outcome';
}

/** probe: a cut takes at least this much off the rate (the 429s say the current rate is too high)… */
export const PROBE_MIN_CUT = 0.95;
/** …and at most this much: an estimate taken while the upstream still drains an old window can be far too low. */
export const PROBE_MAX_CUT = 0.5;
/** probe: a cut needs at least this many 429s since the last step; a lone one is arrival jitter, not a limit. */
export const PROBE_MIN_429S = 2;
/** probe: grow only while grants reach this share of the rate (a rate nobody uses proves nothing). */
export const PROBE_MIN_USE = 0.75;

/** probe: 429s this recent make a refusal streak (see refusalHoldMs). */
export const REFUSAL_STREAK_MS = 20_000;

/**
 * probe: how long the bucket holds after a 429, so that while the upstream refuses, one probe at a time goes
 * out rather than a full rate of calls. Under an unknown sliding window the upstream accepts again only when
 * enough old calls have left it: the first probe follows one token interval later, and each further 429 of
 * the streak doubles the gap (at most a quarter window), so a drop costs a handful of 429s, not a window's worth.
 * @param streak 429s in the last REFUSAL_STREAK_MS, this one included
 * @param intervalMs the bucket's token interval at the effective rate
 */
export const refusalHoldMs = (streak: number, intervalMs: number, windowMs: number): number =>
  Math.min(windowMs / 4, intervalMs * 2 ** Math.max(0, Math.min(streak - 1, 10)));

export const baseRpmOf = (c: Pick<GatewayConfig, 'upstreamLimit' | 'upstreamWindowMs'>): number =>
  (c.upstreamLimit * 60_000) / c.upstreamWindowMs;

export const initialRetreat = (baseRpm: number, now: number): RetreatRecord => ({
  state: 'normal',
  effectiveRpm: baseRpm,
  baseRpm,
  since: now,
  lastStepAt: now,
  version: 0,
  transitions: [],
});

/** Back to base (seed `reset_to_base`), e.g. by an operator. */
export const resetRetreat = (r: RetreatRecord, now: number, reason = 'manual reset'): RetreatRecord =>
  r.state === 'normal' && r.effectiveRpm === r.baseRpm ? r : move(r, 'normal', r.baseRpm, now, 0, reason);

/** A new base rate (config change): the effective rate keeps its ratio to base, never above it. */
export const rebaseRetreat = (r: RetreatRecord, baseRpm: number): RetreatRecord => {
  if (r.baseRpm === baseRpm) return r;
  const effectiveRpm = r.state === 'normal' ? baseRpm : Math.min(baseRpm, r.effectiveRpm);
  return { ...r, baseRpm, effectiveRpm, version: r.version + 1 };
};

/**
 * Whether an upstream outcome should be judged at once, besides the dispatcher's timer: the seed evaluated
 * after every upstream response (its steps follow traffic); the probe preset reacts to a 429 before the
 * next grant; the sluice preset waits for the timer.
 */
export const evaluatesOnOutcome = (
  preset: RetreatPreset,
  counts: Partial<Record<CounterName, number>>,
): boolean => {
  if (preset === 'seed') {
    return !!(counts.ok || counts.throttled || counts.capacity || counts.upstreamError);
  }
  return preset === 'probe' && !!counts.throttled;
};

/**
 * One evaluation.
 * - `sluice`: the seed's thresholds, but at most one step per `retreatStepIntervalMs`, judging only outcomes
 *   since the last step (at least `retreatMinSample` of them); capacity errors are not read as rate limits.
 * - `seed`: the seed's judgement (whole sliding window, any sample, capacity counted as 429, no step interval);
 *   run after every upstream response, as the seed did.
 * - `probe`: see {@link evaluateProbe}.
 * @returns the same object when nothing changes.
 */
export const evaluateRetreat = (
  r: RetreatRecord,
  inputs: RetreatInputs,
  now: number,
  p: RetreatParams,
): RetreatRecord =>
  (p.retreatPreset === 'probe' ? evaluateProbe : evaluateStepwiseRetreat)(r, inputs, now, p);

/** Fixed-factor steps down and up (the seed's ADR-009 machine): `seed` preset, and its time-paced variant `sluice`. */
const evaluateStepwiseRetreat = (
  r: RetreatRecord,
  inputs: RetreatInputs,
  now: number,
  p: RetreatParams,
): RetreatRecord => {
  const seed = p.retreatPreset === 'seed';
  const judged = seed ? inputs.window : inputs.sinceStep;
  const enough = judged.total >= (seed ? 1 : p.retreatMinSample);
  const rate = throttleRate(judged, seed);
  const canStep = now - r.lastStepAt >= (seed ? 0 : p.retreatStepIntervalMs);
  const cut = () => Math.max(p.retreatFloorRpm, r.effectiveRpm * p.retreatFactor);
  const step = (to: RetreatState, rpm: number, rate: number, reason: string) =>
    move(r, to, rpm, now, rate, reason, inputs.seen);

  switch (r.state) {
    case 'normal':
      if (enough && canStep && rate >= p.retreatThreshold) {
        return step('retreat', cut(), rate, `429 rate ${pct(rate)} ≥ ${pct(p.retreatThreshold)}`);
      }
      return r;
    case 'retreat': {
      if (enough && canStep && rate >= p.retreatAgainThreshold && r.effectiveRpm > p.retreatFloorRpm) {
        return step('retreat', cut(), rate, `still ${pct(rate)} ≥ ${pct(p.retreatAgainThreshold)}`);
      }
      const quiet = throttleRate(inputs.recoverWindow, seed);
      // The seed measures quiet time from entering RETREAT; we measure it from the last cut.
      const quietSince = seed ? r.since : r.lastStepAt;
      if (quiet < p.recoverThreshold && now - quietSince >= p.recoverWindowMs) {
        const rpm = Math.min(r.baseRpm, r.effectiveRpm + p.recoverStepRpm);
        return step(rpm >= r.baseRpm ? 'normal' : 'recover', rpm, quiet, `quiet ${pct(quiet)}`);
      }
      return r;
    }
    case 'recover': {
      const recent = throttleRate(seed ? inputs.window : inputs.sinceStep, seed);
      if (enough && recent >= p.retreatThreshold) {
        return step('retreat', cut(), recent, `429 rate ${pct(recent)} during recovery`);
      }
      if (r.effectiveRpm >= r.baseRpm) return step('normal', r.baseRpm, recent, 'back at base');
      if (!canStep) return r;
      const rpm = Math.min(r.baseRpm, r.effectiveRpm + p.recoverStepRpm);
      return step(rpm >= r.baseRpm ? 'normal' : 'recover', rpm, recent, `+${p.recoverStepRpm} rpm`);
    }
  }
};

/**
 * The `probe` preset: cut to what the upstream was seen to accept, hold there, probe upward now and then.
 * - Cut (right after a 429; 429 rate since the last step ≥ `retreatThreshold`, at least two 429s, enough
 *   sample, step interval passed): to the accepted rate × `retreatProbeTarget`, taking at least 5 % and at
 *   most half off. Under a sliding-window limit the upstream refuses a call exactly when its window holds
 *   `limit` calls, so the calls accepted in the last window, counted at a 429, are the hidden limit: the rate
 *   lands there (from above while old calls still drain) instead of a blind ×0.75 below it. Below base the
 *   bucket paces strictly (burst 1), so the rate can sit at the limit with one call of slack.
 * - Hold: no probe until the rate has been quiet (429 rate since the last step < `recoverThreshold`) for the
 *   hold time: `recoverWindowMs`, doubled after a refused probe up to `retreatProbeHoldFactor` recover windows,
 *   so probing a still-tight upstream costs about one 429 per hold.
 * - Probe (RECOVER), in stages. 1: one call a window more, held for a whole upstream window (only a full
 *   window shows the limit); quiet, it becomes the quiet rate — this corrects an estimate a call too low — and
 *   is skipped once refused. 2: `retreatProbeGrowth` more, held half a window: refused unless the limit has
 *   moved. 3+: the same growth each step interval up to base. Steps need the rate in use (grants ≥ 75 % of
 *   it; an unused rate proves nothing). A single 429 ends a probe at once: back to the quiet rate, or — from
 *   stage 3, where the limit evidently moved — to what the upstream accepted, if higher.
 * Capacity errors (worker concurrency) are never read as rate limits.
 */
export const evaluateProbe = (
  r: RetreatRecord,
  inputs: RetreatInputs,
  now: number,
  p: RetreatParams,
): RetreatRecord => {
  const since = inputs.sinceMark ?? inputs.sinceStep;
  const rate = throttleRate(since);
  const enough = since.total >= p.retreatMinSample;
  const canStep = now - r.lastStepAt >= p.retreatStepIntervalMs;
  const canCut =
    enough &&
    canStep &&
    rate >= p.retreatThreshold &&
    since.throttled >= PROBE_MIN_429S &&
    inputs.trigger !== 'timer';
  const accepted = inputs.acceptedRpm ?? r.effectiveRpm * (1 - rate);
  const probe: ProbeState = r.probe ?? {
    limitRpm: r.effectiveRpm,
    quietRpm: r.effectiveRpm,
    holdMs: p.recoverWindowMs,
    step: r.state === 'recover' ? 3 : 0,
  };
  /** One more call per upstream window, in rpm. */
  const callRpm = 60_000 / p.upstreamWindowMs;
  const grow = (rpm: number) => rpm * (1 + p.retreatProbeGrowth);
  const estimate = () =>
    Math.min(
      r.effectiveRpm * PROBE_MIN_CUT,
      Math.max(r.effectiveRpm * PROBE_MAX_CUT, accepted * p.retreatProbeTarget),
    );
  const retreat = (target: number, reason: string, next: Partial<ProbeState>): RetreatRecord => {
    const rpm = Math.max(p.retreatFloorRpm, target);
    const moved = move(
      r,
      'retreat',
      rpm,
      now,
      rate,
      `${reason}; upstream accepted ${accepted.toFixed(1)} rpm`,
      inputs.seen,
    );
    return {
      ...moved,
      probe: { limitRpm: accepted, holdMs: p.recoverWindowMs, ...next, quietRpm: rpm, step: 0 },
    };
  };
  const step = (rpm: number, n: number, reason: string, quietRpm = probe.quietRpm): RetreatRecord => {
    const capped = Math.min(r.baseRpm, rpm);
    const moved = move(r, capped >= r.baseRpm ? 'normal' : 'recover', capped, now, rate, reason, inputs.seen);
    return moved.state === 'normal' ? moved : { ...moved, probe: { ...probe, quietRpm, step: n } };
  };

  switch (r.state) {
    case 'normal':
      if (canCut) return retreat(estimate(), `429 rate ${pct(rate)} ≥ ${pct(p.retreatThreshold)}`, {});
      return r;
    case 'retreat': {
      if (canCut && r.effectiveRpm > p.retreatFloorRpm) {
        return retreat(estimate(), `still ${pct(rate)} ≥ ${pct(p.retreatThreshold)}`, {
          holdMs: probe.holdMs,
        });
      }
      if (now - r.lastStepAt < probe.holdMs || rate >= p.recoverThreshold) return r;
      const reason = `quiet ${pct(rate)} for ${Math.round(probe.holdMs / 1000)} s: probe`;
      const fine = r.effectiveRpm + callRpm;
      return fine < (probe.ceilingRpm ?? Number.POSITIVE_INFINITY)
        ? step(fine, 1, reason)
        : step(grow(r.effectiveRpm), 2, reason);
    }
    case 'recover': {
      if (since.throttled > 0) {
        const refused = { holdMs: Math.min(p.recoverWindowMs * p.retreatProbeHoldFactor, probe.holdMs * 2) };
        return probe.step <= 2
          ? retreat(probe.quietRpm, `probe refused (${since.throttled} × 429)`, {
              ...refused,
              limitRpm: probe.limitRpm,
              ceilingRpm: Math.min(probe.ceilingRpm ?? Number.POSITIVE_INFINITY, r.effectiveRpm),
            })
          : retreat(Math.max(probe.quietRpm, estimate()), `probe refused (${since.throttled} × 429)`, {
              ...refused,
              ceilingRpm: r.effectiveRpm,
            });
      }
      const wait =
        probe.step === 1
          ? p.upstreamWindowMs
          : probe.step === 2
            ? p.upstreamWindowMs / 2
            : p.retreatStepIntervalMs;
      if (now - r.lastStepAt < wait) return r;
      // In use: grants reach 75 % of what the bucket can grant at this rate (on a short window its log's integer
      // limit may hold that well below the nominal rate; 75 % of the nominal then stalled RECOVER for good).
      const grantable = Math.min(r.effectiveRpm, inputs.grantableRpm ?? r.effectiveRpm);
      if ((inputs.grantedRpm ?? r.effectiveRpm) < PROBE_MIN_USE * grantable) return r;
      const reason = `no 429 at ${r.effectiveRpm.toFixed(1)} rpm: probe`;
      // A quiet one-call probe is the new quiet rate; later steps are not (they were held too briefly).
      return probe.step === 1
        ? step(grow(r.effectiveRpm), 2, reason, r.effectiveRpm)
        : step(grow(r.effectiveRpm), probe.step + 1, reason);
    }
  }
};

const pct = (x: number) => `${(x * 100).toFixed(1)}%`;

const move = (
  r: RetreatRecord,
  to: RetreatState,
  rpm: number,
  now: number,
  rate: number,
  reason: string,
  mark?: OutcomeMark,
): RetreatRecord => {
  const t: RetreatTransition = { at: now, from: r.state, to, rpm, rate, reason };
  // Back at base, what the probe preset learned about the limit no longer holds.
  const { mark: _mark, probe, ...rest } = r;
  return {
    ...rest,
    state: to,
    effectiveRpm: rpm,
    since: to === r.state ? r.since : now,
    lastStepAt: now,
    version: r.version + 1,
    transitions: [t, ...r.transitions].slice(0, MAX_TRANSITIONS),
    ...(probe && to !== 'normal' ? { probe } : {}),
    ...(mark ? { mark } : {}),
  };
};
