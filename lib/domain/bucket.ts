// Domain: the shared token bucket as its users see it — plan a conditional write from the last known state,
// learn the true state from a failed condition, never read first.
import type { Clock } from './clock.js';
import {
  afterAttempt,
  availableTokens,
  type BucketParams,
  type BucketState,
  type ConsumeAttempt,
  type ConsumePlan,
  holdTat,
  planConsume,
  planConsumeMany,
  planConsumeSpread,
  priorityBurst,
  refundLog,
  refundTat,
  rescaleTat,
  reservedTokens,
  sameParams,
} from './gcra.js';
import type { BucketStore } from './ports.js';
import type { Priority } from './priority.js';
import {
  planTokens,
  reconcileEntries,
  refundEntries,
  type TokenLimit,
  type TokenNeed,
} from './token-window.js';

export interface ReserveSettings {
  fraction: number;
  forNormal: boolean;
}

/** Counts for the benchmark: conditional writes tried and lost. */
export interface BucketStats {
  writes: number;
  conflicts: number;
}

/**
 * `next` as the successor of `expected`: a window-exact item moves one version further (its consumes are
 * compare-and-sets on the version); a plain GCRA item needs none (every write there is conditioned on tat).
 */
const successor = (expected: BucketState, next: BucketState): BucketState =>
  expected.window || next.window || expected.version !== undefined
    ? { ...next, version: (expected.version ?? 0) + 1 }
    : next;

export class TokenBucket {
  private known: BucketState | undefined;
  readonly stats: BucketStats = { writes: 0, conflicts: 0 };
  /** When the state was last read whole. */
  private readAt = Number.NEGATIVE_INFINITY;
  /**
   * The last plan waited for tokens (not for a request slot): usage corrections written by the ingress may have
   * made room that this copy does not show (see refreshIfTokenBound).
   */
  private tokenBound = false;

  constructor(
    private readonly store: BucketStore,
    private readonly clock: Clock,
    private reserve: ReserveSettings,
  ) {}

  setReserve(reserve: ReserveSettings): void {
    this.reserve = reserve;
  }

  /** Makes sure the item exists with `params`, rescaling the backlog if the params changed. */
  async configure(params: BucketParams): Promise<BucketState> {
    let state = this.known ?? (await this.store.ensure(params));
    for (let i = 0; i < 10; i++) {
      if (sameParams(state, params)) {
        this.known = state;
        return state;
      }
      const now = this.clock.now();
      const tat = rescaleTat(state.tat, now, state, params, state.holdUntil);
      // The log is kept across rate changes (grant times are facts the new limit is checked against); a bucket
      // leaving window-exact mode drops it.
      const { window: _window, log, ...rest } = state;
      const next = successor(state, {
        ...rest,
        ...params,
        ...(tat !== undefined ? { tat } : {}),
        ...(params.window && log?.length ? { log } : {}),
      });
      if (await this.store.compareAndSet(state, next)) {
        this.known = next;
        return next;
      }
      state = (await this.store.get()) ?? (await this.store.ensure(params));
    }
    throw new Error('bucket reconfiguration kept conflicting');
  }

  /** Last state learned from a write or a failed condition. */
  get state(): BucketState | undefined {
    return this.known;
  }

  observe(state: BucketState | undefined): void {
    if (state) this.known = state;
  }

  /** Writes the bucket with `params` only if it does not exist yet; learns the state either way. */
  async ensure(params: BucketParams): Promise<BucketState> {
    this.known = await this.store.ensure(params);
    return this.known;
  }

  async refresh(): Promise<BucketState | undefined> {
    this.readAt = this.clock.now();
    this.tokenBound = false;
    this.known = await this.store.get();
    return this.known;
  }

  /** The last plan waited for tokens per minute (room in the token window), not for a request slot. */
  get waitsForTokens(): boolean {
    return this.tokenBound;
  }

  /**
   * Re-reads the state when the last plan waited for tokens and the last read is `minAgeMs` old: the answers'
   * usage corrections (usually giving tokens back) are written by the ingress, not seen by this copy otherwise.
   */
  async refreshIfTokenBound(minAgeMs: number): Promise<void> {
    if (this.tokenBound && this.clock.now() - this.readAt >= minAgeMs) await this.refresh();
  }

  burstFor(priority: Priority): number {
    return priorityBurst(this.known?.burst ?? 1, priority, this.reserve);
  }

  /**
   * Which write to try now, or how long until a token is due. Requires a known state.
   * @param tokens an upstream with `tpm`: the grant's estimated tokens, reserved in the same write (or waited for)
   */
  plan(priority: Priority, tokens?: TokenNeed): ConsumePlan {
    if (!this.known) throw new Error('bucket state unknown: call configure() or refresh() first');
    return this.withTokens(planConsume(this.known, this.clock.now(), this.burstFor(priority)), tokens);
  }

  /**
   * A plan that leaves at least `keep` of this priority's burst free after the token is taken, or a wait (also
   * when the bucket is window-exact or its burst has no such room): a grant made while the bucket holds
   * plenty takes nothing anyone waiting could get now.
   */
  planKeeping(priority: Priority, keep: number, at = this.clock.now(), tokens?: TokenNeed): ConsumePlan {
    if (!this.known) throw new Error('bucket state unknown: call configure() or refresh() first');
    const burst = this.burstFor(priority) - keep;
    if (this.known.window || burst < 1) return { waitMs: this.known.intervalMs };
    return this.withTokens(planConsume(this.known, Math.max(at, this.clock.now()), burst), tokens);
  }

  /**
   * The write that reserves the slot at `at` (≥ now): a grant whose call may start only then. The log and the
   * spacing are judged at `at`, so a reservation holds every window exactly as a grant made at `at` would.
   */
  planAt(priority: Priority, at: number, tokens?: TokenNeed): ConsumePlan {
    if (!this.known) throw new Error('bucket state unknown: call configure() or refresh() first');
    return this.withTokens(
      planConsume(this.known, Math.max(at, this.clock.now()), this.burstFor(priority)),
      tokens,
    );
  }

  /** A request plan with the token reservation added to its write, or the wait until the tokens fit. */
  private withTokens(plan: ConsumePlan, need: TokenNeed | undefined): ConsumePlan {
    if (!need) return plan;
    if ('waitMs' in plan) {
      // A wait for a request slot: the tokens were not judged.
      this.tokenBound = false;
      return plan;
    }
    const tokens = planTokens(this.known?.tokens, plan.attempt.now, need);
    this.tokenBound = 'waitMs' in tokens;
    if ('waitMs' in tokens)
      return { waitMs: Math.max(1, tokens.waitMs + (plan.attempt.now - this.clock.now())) };
    return { attempt: { ...plan.attempt, tokens: tokens.reserve } };
  }

  /**
   * Corrects the reservation of the grant made at `grantedAt` from `estimate` to the tokens its answer used
   * (one conditional write on the token log alone; none when they are equal or the grant left the window).
   */
  async reconcileTokens(
    grantedAt: number,
    estimate: number,
    actual: number,
    limit: TokenLimit,
  ): Promise<void> {
    // What the grant reserved: its estimate, at most the whole window (planTokens).
    const reserved = Math.min(Math.max(0, Math.ceil(estimate)), limit.tpm);
    if (Math.ceil(actual) === reserved) return;
    // Read first: this copy rarely holds the grant's own slot yet (the dispatcher wrote it).
    await this.refresh();
    for (let i = 0; i < 10; i++) {
      const log = this.known?.tokens;
      if (!log) return;
      const entries = reconcileEntries(
        log.entries,
        this.clock.now(),
        grantedAt,
        reserved,
        actual,
        limit.windowMs,
      );
      if (!entries) return;
      const res = await this.store.writeTokens(log.version, entries);
      if (res.ok) {
        if (this.known) this.known = { ...this.known, tokens: { entries, version: log.version + 1 } };
        return;
      }
      if (!res.current) return;
      if (this.known) this.known = { ...this.known, tokens: res.current };
    }
  }

  /**
   * One write taking up to `max` tokens now for a batch of grants (plain GCRA only; see planConsumeMany).
   * `priorities`: the batch's priorities — the smallest burst among them bounds it, so reserves hold.
   */
  planMany(
    priorities: readonly Priority[],
    max: number,
    at = this.clock.now(),
  ): { attempt: ConsumeAttempt; count: number } | undefined {
    if (!this.known) return undefined;
    const burst = Math.min(...priorities.map((p) => this.burstFor(p)));
    return planConsumeMany(this.known, Math.max(at, this.clock.now()), burst, max);
  }

  /**
   * Reservations of up to `max` consecutive slots from `at` to `until` in one write (see planConsumeSpread), at the
   * burst of the least important of `priorities`; undefined when the bucket is window-exact, idle or fits fewer
   * than two.
   */
  planSpread(
    priorities: readonly Priority[],
    max: number,
    at: number,
    until: number,
  ): { attempt: ConsumeAttempt; slots: number[] } | undefined {
    if (!this.known) return undefined;
    const burst = Math.min(...priorities.map((p) => this.burstFor(p)));
    return planConsumeSpread(this.known, Math.max(at, this.clock.now()), burst, max, until);
  }

  /** Record a successful write of `attempt` (`tat` when the store returned it). */
  spent(attempt: ConsumeAttempt, tat?: number): void {
    this.stats.writes++;
    // A busy write added one interval to the stored tat; if another writer moved it, the next condition fails and tells.
    this.known = afterAttempt(this.known, attempt, tat);
  }

  /** Record a lost condition and the state that made it fail. */
  conflicted(current: BucketState | undefined): void {
    this.stats.writes++;
    this.stats.conflicts++;
    if (current) this.known = current;
  }

  /**
   * Takes one token with plain conditional writes (no ticket): for the passthrough policy.
   * @returns granted, or the wait until a token is due.
   */
  async tryConsume(
    priority: Priority,
    maxWrites = 5,
    tokens?: TokenNeed,
  ): Promise<{ granted: true } | { granted: false; waitMs: number }> {
    if (!this.known) await this.refresh();
    for (let i = 0; i < maxWrites; i++) {
      if (!this.known) throw new Error('bucket not configured');
      const plan = this.plan(priority, tokens);
      if ('waitMs' in plan) return { granted: false, waitMs: plan.waitMs };
      const res = await this.store.consume(plan.attempt);
      if (res.ok) {
        this.spent(plan.attempt, res.tat);
        return { granted: true };
      }
      this.conflicted(res.current);
      if (!res.current) await this.refresh();
    }
    return { granted: false, waitMs: this.known?.intervalMs ?? 1000 };
  }

  /**
   * Blocks all grants until `until` (upstream Retry-After); the bucket is empty, not full, when it ends.
   * Reads first: the cached state may lag other writers, and a skipped hold would let a burst through.
   */
  async hold(until: number): Promise<void> {
    for (let i = 0; i < 10; i++) {
      const state = await this.refresh();
      if (!state) return;
      const tat = holdTat(until, state);
      if (state.tat !== undefined && state.tat >= tat) return;
      const next = successor(state, { ...state, tat, holdUntil: until });
      if (await this.store.compareAndSet(state, next)) {
        this.known = next;
        return;
      }
    }
  }

  /**
   * Gives one token back for a grant that never reached the upstream. Only within the limit window of the
   * grant: a token returned later would add a call to a window that never counted the refunded grant.
   * @param grantedAt when the refunded grant was made
   * @param windowMs the upstream limit window
   * @param tokens an upstream with `tpm`: the grant's need there — its reservation leaves the token log in the same
   *   write (a call never made uses no tokens). None on an upstream without `tpm`: nothing more is read or written.
   */
  async refund(grantedAt: number, windowMs: number, tokens?: TokenNeed): Promise<void> {
    const requestDue = this.clock.now() - grantedAt < windowMs;
    const tokensDue = tokens !== undefined && this.clock.now() - grantedAt < tokens.windowMs;
    if (!requestDue && !tokensDue) return;
    for (let i = 0; i < 10; i++) {
      // Read first: a cached "full" may be stale while others spent the burst.
      const state = await this.refresh();
      if (!state) return;
      const tat = requestDue ? refundTat(state.tat, this.clock.now(), state, state.holdUntil) : state.tat;
      // Window-exact: the refunded grant also leaves the log, so the window has room for the call it never made.
      const log = requestDue ? refundLog(state.log, grantedAt) : state.log;
      const entries =
        tokensDue && state.tokens
          ? refundEntries(state.tokens.entries, this.clock.now(), grantedAt, tokens)
          : undefined;
      const reserve =
        entries && state.tokens ? { expectedVersion: state.tokens.version, newEntries: entries } : undefined;
      if (tat === state.tat && log === state.log) {
        if (!reserve) return;
        // Only the reservation to give back (the request token already back, or its window over).
        const res = await this.store.writeTokens(reserve.expectedVersion, reserve.newEntries);
        if (res.ok) {
          this.known = { ...state, tokens: reservedTokens(reserve) };
          return;
        }
        continue;
      }
      const { log: _before, ...rest } = state;
      const next = successor(state, {
        ...rest,
        ...(tat !== undefined ? { tat } : {}),
        // An empty log is no log (the store keeps no empty blob).
        ...(log?.length ? { log } : {}),
      });
      if (await this.store.compareAndSet(state, next, reserve)) {
        this.known = reserve ? { ...next, tokens: reservedTokens(reserve) } : next;
        return;
      }
    }
  }

  /** Tokens `priority` could take now, from the last known state. */
  available(priority: Priority): number {
    return this.known ? availableTokens(this.known, this.clock.now(), this.burstFor(priority)) : 0;
  }
}
