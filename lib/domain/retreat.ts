// Domain: the retreat state machine (seed ADR-009), as a pure function of (record, outcome stats, now).
import type { GatewayConfig } from './config.js';
import { throttleRate, type WindowStats } from './outcomes.js';

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
>;

/** Outcome stats the evaluator needs, all ending at `now`. */
export interface RetreatInputs {
  /** Over the last retreat window. */
  window: WindowStats;
  /** Over the last recover window. */
  recoverWindow: WindowStats;
  /** Since the last step (sluice preset judges only these, so the same 429s are not counted twice). */
  sinceStep: WindowStats;
}

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
  move(r, 'normal', r.baseRpm, now, 0, reason);

/** A new base rate (config change): the effective rate keeps its ratio to base, never above it. */
export const rebaseRetreat = (r: RetreatRecord, baseRpm: number): RetreatRecord => {
  if (r.baseRpm === baseRpm) return r;
  const effectiveRpm = r.state === 'normal' ? baseRpm : Math.min(baseRpm, r.effectiveRpm);
  return { ...r, baseRpm, effectiveRpm, version: r.version + 1 };
};

/**
 * One evaluation. Differences from the seed (which ran this after every upstream response, so its steps
 * followed traffic): at most one step per `retreatStepIntervalMs`; the sluice preset judges only outcomes
 * since the last step and needs `retreatMinSample` of them; capacity errors are not read as rate limits.
 * The `seed` preset keeps the seed's judgement (whole sliding window, any sample, capacity counted as 429).
 * @returns the same object when nothing changes.
 */
export const evaluateRetreat = (
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

  switch (r.state) {
    case 'normal':
      if (enough && canStep && rate >= p.retreatThreshold) {
        return move(r, 'retreat', cut(), now, rate, `429 rate ${pct(rate)} ≥ ${pct(p.retreatThreshold)}`);
      }
      return r;
    case 'retreat': {
      if (enough && canStep && rate >= p.retreatAgainThreshold && r.effectiveRpm > p.retreatFloorRpm) {
        return move(r, 'retreat', cut(), now, rate, `still ${pct(rate)} ≥ ${pct(p.retreatAgainThreshold)}`);
      }
      const quiet = throttleRate(inputs.recoverWindow, seed);
      // The seed measures quiet time from entering RETREAT; we measure it from the last cut.
      const quietSince = seed ? r.since : r.lastStepAt;
      if (quiet < p.recoverThreshold && now - quietSince >= p.recoverWindowMs) {
        const rpm = Math.min(r.baseRpm, r.effectiveRpm + p.recoverStepRpm);
        return move(r, rpm >= r.baseRpm ? 'normal' : 'recover', rpm, now, quiet, `quiet ${pct(quiet)}`);
      }
      return r;
    }
    case 'recover': {
      const recent = throttleRate(seed ? inputs.window : inputs.sinceStep, seed);
      if (enough && recent >= p.retreatThreshold) {
        return move(r, 'retreat', cut(), now, recent, `429 rate ${pct(recent)} during recovery`);
      }
      if (r.effectiveRpm >= r.baseRpm) return move(r, 'normal', r.baseRpm, now, recent, 'back at base');
      if (!canStep) return r;
      const rpm = Math.min(r.baseRpm, r.effectiveRpm + p.recoverStepRpm);
      return move(r, rpm >= r.baseRpm ? 'normal' : 'recover', rpm, now, recent, `+${p.recoverStepRpm} rpm`);
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
): RetreatRecord => {
  const t: RetreatTransition = { at: now, from: r.state, to, rpm, rate, reason };
  return {
    ...r,
    state: to,
    effectiveRpm: rpm,
    since: to === r.state ? r.since : now,
    lastStepAt: now,
    version: r.version + 1,
    transitions: [t, ...r.transitions].slice(0, MAX_TRANSITIONS),
  };
};
