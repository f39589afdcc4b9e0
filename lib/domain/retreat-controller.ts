// Domain use case: evaluate retreat from the outcome counters and steer the bucket's rate accordingly.
import type { TokenBucket } from './bucket.js';
import type { Clock } from './clock.js';
import type { GatewayConfig } from './config.js';
import { type BucketParams, deriveAdmission, grantableRpm, grantToCallMaxMs } from './gcra.js';
import {
  type OutcomeEvent,
  SLOT_MS,
  type SlotCounters,
  slotOf,
  type WindowStats,
  windowStats,
} from './outcomes.js';
import type { OutcomeStore, RetreatStore } from './ports.js';
import {
  baseRpmOf,
  evaluateRetreat,
  evaluatesOnOutcome,
  initialRetreat,
  type OutcomeMark,
  REFUSAL_STREAK_MS,
  type RetreatRecord,
  type RetreatState,
  rebaseRetreat,
  refusalHoldMs,
  resetRetreat,
} from './retreat.js';

/**
 * Bucket parameters for the effective rate: the window limit shrinks with the rate, the burst with it
 * (window-exact for limits up to LOG_MAX_ENTRIES, plain GCRA above).
 * The probe preset paces strictly (burst 1) while below base: its rate sits at the upstream's limit, where a
 * refilled burst would be the call too many.
 */
export const bucketParamsFor = (
  record: Pick<RetreatRecord, 'effectiveRpm'> & { state?: RetreatState },
  config: Pick<GatewayConfig, 'upstreamWindowMs' | 'retreatPreset' | 'bucketBurst'> &
    Partial<Pick<GatewayConfig, 'grantSlackMs'>>,
): BucketParams =>
  deriveAdmission(
    (record.effectiveRpm * config.upstreamWindowMs) / 60_000,
    config.upstreamWindowMs,
    config.retreatPreset === 'probe' && record.state !== undefined && record.state !== 'normal'
      ? 1
      : config.bucketBurst,
    // Calls start up to this long after their grants: the limit must hold for windows of calls too.
    grantToCallMaxMs(config.upstreamWindowMs, config.grantSlackMs),
  );

/** Upstream answers in one slot (what a mark subtracts). */
const slotStats = (s: SlotCounters): WindowStats => ({
  total: s.counts.ok + s.counts.throttled + s.counts.capacity + s.counts.upstreamError,
  throttled: s.counts.throttled,
  capacity: s.counts.capacity,
});

/**
 * Upstream answers since `mark` (exactly: the marked slot's earlier counts are subtracted), but none before
 * `fromSlot`. Without a mark, everything from `fromSlot` on.
 */
export const statsSinceMark = (
  slots: readonly SlotCounters[],
  mark: OutcomeMark | undefined,
  fromSlot: number,
): WindowStats => {
  const out: WindowStats = { total: 0, throttled: 0, capacity: 0 };
  const start = Math.max(fromSlot, mark?.slot ?? fromSlot);
  for (const s of slots) {
    if (s.slot < start) continue;
    const st = slotStats(s);
    const minus = mark && s.slot === mark.slot ? mark : undefined;
    out.total += Math.max(0, st.total - (minus?.total ?? 0));
    out.throttled += Math.max(0, st.throttled - (minus?.throttled ?? 0));
    out.capacity += Math.max(0, st.capacity - (minus?.capacity ?? 0));
  }
  return out;
};

/** Grants per minute since the last step (exactly, from its mark); undefined without a mark. */
export const grantedRpmSinceMark = (
  slots: readonly SlotCounters[],
  mark: OutcomeMark | undefined,
  lastStepAt: number,
  now: number,
): number | undefined => {
  if (!mark || now <= lastStepAt) return undefined;
  let granted = 0;
  for (const s of slots) {
    if (s.slot < mark.slot) continue;
    granted += s.counts.granted - (s.slot === mark.slot ? mark.granted : 0);
  }
  return (Math.max(0, granted) * 60_000) / (now - lastStepAt);
};

/**
 * Grants per minute over the fixed recent window (now − windowMs, now] (probe preset: is the rate in use?).
 * A fixed window, not "since the last step": after a quiet spell of minutes, an average since the step stays
 * below the use threshold long after the fleet came back, and RECOVER never grows again.
 * The slot the window starts in counts pro rata.
 */
export const grantedRpmInWindow = (slots: readonly SlotCounters[], windowMs: number, now: number): number => {
  const from = now - windowMs;
  let granted = 0;
  for (const s of slots) {
    if (s.slot + SLOT_MS <= from || s.slot > now) continue;
    const share = s.slot < from ? (s.slot + SLOT_MS - from) / SLOT_MS : 1;
    granted += share * s.counts.granted;
  }
  return (granted * 60_000) / windowMs;
};

/** The recent window RECOVER measures use over: half an upstream window, at least one step interval. */
export const useWindowMs = (config: Pick<GatewayConfig, 'upstreamWindowMs' | 'retreatStepIntervalMs'>) =>
  Math.max(config.retreatStepIntervalMs, config.upstreamWindowMs / 2, SLOT_MS);

/**
 * Calls the upstream accepted (grants minus 429s, counted when granted, so a long generation does not delay
 * them) in the window (now − windowMs, now], per minute. The slot the window starts in counts pro rata.
 */
export const acceptedRpmInWindow = (
  slots: readonly SlotCounters[],
  windowMs: number,
  now: number,
): number => {
  const from = now - windowMs;
  let accepted = 0;
  for (const s of slots) {
    if (s.slot + SLOT_MS <= from || s.slot > now) continue;
    const share = s.slot < from ? (s.slot + SLOT_MS - from) / SLOT_MS : 1;
    accepted += share * (s.counts.granted - s.counts.throttled - s.counts.capacity);
  }
  return (Math.max(0, accepted) * 60_000) / windowMs;
};

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
   * @param trigger the dispatcher's timer, or an upstream outcome the ingress just recorded
   */
  async evaluate(
    config: GatewayConfig,
    trigger: 'timer' | 'outcome' = 'timer',
  ): Promise<{ record: RetreatRecord; stepped: boolean }> {
    const { retreat, outcomes, bucket, clock } = this.deps;
    const record = await this.load(config);
    const now = clock.now();
    const span = Math.max(config.retreatWindowMs, config.recoverWindowMs, config.upstreamWindowMs);
    const slots = await outcomes.read(now - span - SLOT_MS, now);
    // "Since the last step" starts at the first slot wholly after it, so 429s that caused it are not recounted.
    const stepSlotEnd = Math.ceil((record.lastStepAt + 1) / SLOT_MS) * SLOT_MS;
    const current = slots.find((s) => s.slot === slotOf(now));
    const next = evaluateRetreat(
      record,
      {
        window: windowStats(slots, now - config.retreatWindowMs, now + SLOT_MS),
        recoverWindow: windowStats(slots, now - config.recoverWindowMs, now + SLOT_MS),
        sinceStep: windowStats(slots, stepSlotEnd, now + SLOT_MS),
        sinceMark: statsSinceMark(slots, record.mark, slotOf(now - config.retreatWindowMs)),
        acceptedRpm: acceptedRpmInWindow(slots, config.upstreamWindowMs, now),
        // Over a fixed recent window, but never before the step: use at the old rate says nothing of the new.
        grantedRpm: grantedRpmInWindow(
          slots,
          Math.max(1_000, Math.min(useWindowMs(config), now - record.lastStepAt)),
          now,
        ),
        grantableRpm: grantableRpm(bucketParamsFor(record, config)),
        seen: {
          slot: slotOf(now),
          ...(current ? slotStats(current) : { total: 0, throttled: 0, capacity: 0 }),
          granted: current?.counts.granted ?? 0,
        },
        trigger,
      },
      now,
      config,
    );
    const stepped = next !== record && (await retreat.put(next, record.version));
    // Lost the race: another evaluator stepped; follow what it wrote, never our stale view.
    const latest = stepped ? next : next === record ? record : await this.load(config);
    const params = bucketParamsFor(latest, config);
    await bucket.configure(params);
    if (trigger === 'outcome' && config.retreatPreset === 'probe' && (current?.counts.throttled ?? 0) > 0) {
      // Refused: one probe at a time until the upstream accepts again (NVIDIA sends no Retry-After).
      const streak = windowStats(slots, now - REFUSAL_STREAK_MS, now + SLOT_MS).throttled;
      await bucket.hold(now + refusalHoldMs(streak, params.intervalMs, config.upstreamWindowMs));
    }
    return { record: latest, stepped };
  }

  /**
   * After a config change: the record rebased to the new base (a changed limit or window) and the bucket at its
   * rate now, not at the dispatcher's next evaluation: while traffic takes the fast path the dispatcher may not
   * run for a minute, and the bucket would grant at the old rate meanwhile (over a lowered limit).
   */
  async follow(config: GatewayConfig): Promise<RetreatRecord> {
    const record = await this.load(config);
    await this.deps.bucket.configure(bucketParamsFor(record, config));
    return record;
  }

  /** Operator reset to base rate (seed `reset_to_base`). */
  async reset(config: GatewayConfig, by: string): Promise<RetreatRecord> {
    const { retreat, bucket, clock } = this.deps;
    for (let i = 0; i < 5; i++) {
      const record = await this.load(config);
      const next = resetRetreat(record, clock.now(), `reset by ${by}`);
      // Already at base: nothing to record.
      if (next === record) return record;
      if (await retreat.put(next, record.version)) {
        await bucket.configure(bucketParamsFor(next, config));
        return next;
      }
    }
    throw new Error('retreat reset kept conflicting');
  }
}

/**
 * The ingress's outcome store: records as usual, then evaluates retreat at once when the preset asks for it
 * (seed: after every upstream response; probe: after a 429). Evaluations of one container run one after
 * another, so each response of the seed preset is judged on its own, as the seed did.
 */
export class OutcomeTriggeredRetreat implements OutcomeStore {
  private queue: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly inner: OutcomeStore,
    private readonly controller: Pick<RetreatController, 'evaluate'>,
    private readonly config: () => Promise<GatewayConfig>,
    private readonly onError: (err: Error) => void = () => {},
  ) {}

  async record(now: number, event: OutcomeEvent): Promise<void> {
    await this.inner.record(now, event);
    try {
      const config = await this.config();
      if (!evaluatesOnOutcome(config.retreatPreset, event.counts)) return;
      const run = this.queue.then(() => this.controller.evaluate(config, 'outcome'));
      this.queue = run.catch(() => undefined);
      await run;
    } catch (err) {
      // The outcome is recorded; the dispatcher's timer evaluates again within seconds.
      this.onError(err as Error);
    }
  }

  read(fromMs: number, toMs: number): Promise<SlotCounters[]> {
    return this.inner.read(fromMs, toMs);
  }
}
