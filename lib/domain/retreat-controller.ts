// Domain use case: evaluate retreat from the outcome counters and steer the bucket's rate accordingly.
import type { TokenBucket } from './bucket.js';
import type { Clock } from './clock.js';
import type { GatewayConfig } from './config.js';
import { type BucketParams, deriveBucket } from './gcra.js';
import { SLOT_MS, windowStats } from './outcomes.js';
import type { OutcomeStore, RetreatStore } from './ports.js';
import {
  baseRpmOf,
  evaluateRetreat,
  initialRetreat,
  type RetreatRecord,
  rebaseRetreat,
  resetRetreat,
} from './retreat.js';

/** Bucket parameters for the effective rate: the window limit shrinks with the rate, the burst with it. */
export const bucketParamsFor = (
  record: Pick<RetreatRecord, 'effectiveRpm'>,
  config: GatewayConfig,
): BucketParams =>
  deriveBucket(
    (record.effectiveRpm * config.upstreamWindowMs) / 60_000,
    config.upstreamWindowMs,
    config.bucketBurst,
  );

export interface RetreatControllerDeps {
  retreat: RetreatStore;
  outcomes: OutcomeStore;
  bucket: TokenBucket;
  clock: Clock;
}

export class RetreatController {
  constructor(private readonly deps: RetreatControllerDeps) {}

  /** The stored record, created at base rate (or rebased after a config change) when needed. */
  async load(config: GatewayConfig): Promise<RetreatRecord> {
    const { retreat, clock } = this.deps;
    for (let i = 0; i < 5; i++) {
      const stored = await retreat.get();
      const base = baseRpmOf(config);
      if (!stored) {
        const fresh = initialRetreat(base, clock.now());
        if (await retreat.put(fresh, undefined)) return fresh;
        continue;
      }
      const rebased = rebaseRetreat(stored, base);
      if (rebased === stored || (await retreat.put(rebased, stored.version))) return rebased;
    }
    throw new Error('retreat record kept conflicting');
  }

  /**
   * One evaluation: at most one step, written only if nobody else stepped meanwhile (version condition),
   * then the bucket follows the effective rate (backlog rescaled, no burst released).
   */
  async evaluate(config: GatewayConfig): Promise<{ record: RetreatRecord; stepped: boolean }> {
    const { retreat, outcomes, bucket, clock } = this.deps;
    const record = await this.load(config);
    const now = clock.now();
    const span = Math.max(config.retreatWindowMs, config.recoverWindowMs);
    const slots = await outcomes.read(now - span - SLOT_MS, now);
    // "Since the last step" starts at the first slot wholly after it, so 429s that caused it are not recounted.
    const stepSlotEnd = Math.ceil((record.lastStepAt + 1) / SLOT_MS) * SLOT_MS;
    const next = evaluateRetreat(
      record,
      {
        window: windowStats(slots, now - config.retreatWindowMs, now + SLOT_MS),
        recoverWindow: windowStats(slots, now - config.recoverWindowMs, now + SLOT_MS),
        sinceStep: windowStats(slots, stepSlotEnd, now + SLOT_MS),
      },
      now,
      config,
    );
    const stepped = next !== record && (await retreat.put(next, record.version));
    // Lost the race: another evaluator stepped; follow what it wrote, never our stale view.
    const current = stepped ? next : next === record ? record : await this.load(config);
    await bucket.configure(bucketParamsFor(current, config));
    return { record: current, stepped };
  }

  /** Operator reset to base rate (seed `reset_to_base`). */
  async reset(config: GatewayConfig, by: string): Promise<RetreatRecord> {
    const { retreat, bucket, clock } = this.deps;
    for (let i = 0; i < 5; i++) {
      const record = await this.load(config);
      const next = resetRetreat(record, clock.now(), `reset by ${by}`);
      if (await retreat.put(next, record.version)) {
        await bucket.configure(bucketParamsFor(next, config));
        return next;
      }
    }
    throw new Error('retreat reset kept conflicting');
  }
}
