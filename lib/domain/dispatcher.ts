// Domain use case: the singleton dispatcher — grants queued tickets in priority order under the bucket.
import type { TokenBucket } from './bucket.js';
import type { Clock } from './clock.js';
import type { GatewayConfig } from './config.js';
import type { ConfigService } from './config-service.js';
import { BufferedOutcomes, MessageDeletes } from './dispatch-backlog.js';
import { StoreUnavailableError } from './errors.js';
import { type ConsumeAttempt, deriveBucket, grantToCallMaxMs } from './gcra.js';
import type {
  GrantOutcome,
  LeaseStore,
  OutcomeStore,
  ReceivedMessage,
  TicketQueue,
  TicketStore,
} from './ports.js';
import { PRIORITIES, type Priority, priorityRank } from './priority.js';
import {
  chargePriority,
  type FairShareState,
  grantsInARow,
  initialFairShare,
  type PriorityWeights,
  parseWeights,
  pickPriority,
} from './priority-policy.js';
import {
  estimateGrantTimes,
  fitsDeadline,
  freshLoad,
  higherArrivalLoads,
  loadWithInherited,
  RESERVE_AHEAD_MS,
} from './queue-estimate.js';
import type { RetreatRecord } from './retreat.js';
import type { RetreatController } from './retreat-controller.js';
import type { TicketMessage } from './tickets.js';
import { type TokenNeed, tokenLimitOf, tokenNeed, tokensInWindow } from './token-window.js';
import { chooseLane, lanesFor, ticketUpstream, type UpstreamLane, upstreamConfig } from './upstream-lanes.js';
import { grantWindowMs } from './upstreams.js';

export interface DispatcherLog {
  info(message: string, extra?: Record<string, unknown>): void;
  warn(message: string, extra?: Record<string, unknown>): void;
  error(message: string, extra?: Record<string, unknown>): void;
}

export interface DispatcherDeps {
  tickets: TicketStore;
  queue: TicketQueue;
  lease: LeaseStore;
  bucket: TokenBucket;
  retreat: RetreatController;
  config: ConfigService;
  outcomes: OutcomeStore;
  clock: Clock;
  /** Wakes a successor when this run ends with work left (time up). */
  wakeSuccessor: () => Promise<void>;
  owner: string;
  log: DispatcherLog;
  /** The per-agent quota bucket of `agent` (a TokenBucket over its own item). */
  agentBucket: (agent: string) => { bucket: TokenBucket; key: string };
  /** After each retreat evaluation (metrics: effective rate, state). */
  onRetreat?: (record: RetreatRecord, stepped: boolean) => void;
  /**
   * Several limited upstreams: one lane each, the first one's bucket and retreat being `bucket` and `retreat`.
   * @default the first upstream alone
   */
  lanes?: readonly UpstreamLane[];
  /** Several upstreams: after each one's retreat evaluation (metrics with the upstream as a dimension). */
  onUpstreamRetreat?: (upstream: string, record: RetreatRecord, stepped: boolean) => void;
  /**
   * Upstreams with `tpm`, after each retreat evaluation (metrics): the tokens their grants hold in the current
   * window, from the bucket items just read. `upstream` is undefined when there is only one.
   */
  onTokens?: (upstream: string | undefined, inWindow: number, tpm: number) => void;
}

export interface DispatcherTimings {
  /** Lease lifetime; renewed every third of it. @default 15000 */
  leaseMs: number;
  /** Stop after the queues stayed empty this long. @default 3000 */
  idleStopMs: number;
  /** Long-poll wait per receive (s). @default 2 */
  pollWaitSeconds: number;
  /**
   * Messages buffered per priority (received 10 at a time, SQS's most): a batch grant takes up to MAX_BATCH of
   * them in one transaction. @default 20
   */
  bufferSize: number;
  /** A ticket is granted only if its deadline is further than this. @default 2000 */
  grantMarginMs: number;
  /** The ingress must claim a grant within this. @default 15000 */
  claimWindowMs: number;
  /** Sweep of unclaimed grants and dead calls, and admission reconcile. @default 5000 / 60000 */
  sweepEveryMs: number;
  reconcileEveryMs: number;
  /**
   * A grant may reserve a slot up to one token interval ahead, at most this far: the ingress, told the slot,
   * sleeps until it and calls, instead of polling for a grant it would see late. @default 2000
   */
  reserveAheadMs: number;
  /**
   * …and at least this far, whatever the interval: the waiting ingress reads its ticket about this often near
   * its turn, so it finds the reservation before its slot. @default RESERVE_AHEAD_MS
   */
  reserveAtLeastMs: number;
  /** Queued deletes and outcome counters are flushed at least this often. @default 1000 */
  flushEveryMs: number;
}

export const DEFAULT_TIMINGS: DispatcherTimings = {
  leaseMs: 15_000,
  idleStopMs: 3_000,
  pollWaitSeconds: 2,
  bufferSize: 20,
  grantMarginMs: 2_000,
  claimWindowMs: 15_000,
  sweepEveryMs: 5_000,
  reconcileEveryMs: 60_000,
  reserveAheadMs: 2_000,
  reserveAtLeastMs: RESERVE_AHEAD_MS,
  flushEveryMs: 1_000,
};

/** Most messages one receive returns (SQS's limit). */
const RECEIVE_MAX = 10;
/** Visibility a buffered message is given, and when it is extended. */
const VISIBILITY_S = 30;
const EXTEND_AFTER_MS = 20_000;
/** Longest sleep between two looks at the lease, retreat and arrivals. */
const MAX_NAP_MS = 1_000;
/** Burst of a per-agent quota bucket (as the main bucket: small, so the window limit holds). */
const AGENT_BURST = 2;
/** Pause before the next try when the state store failed after the SDK's retries. */
const STORE_RETRY_MS = 500;
/** A queued ticket this far past its deadline (and every possible wait) has no live request and no message. */
const ORPHAN_GRACE_MS = 10_000;
/** The sweep looks for such orphans at a run's first sweep and every this many sweeps after (30 s by default). */
export const ORPHAN_SWEEP_EVERY = 6;
/** Pause before trying again when max_inflight calls are running. */
const INFLIGHT_NAP_MS = 100;
/**
 * An upstream with `tpm` whose tokens held the last grant back is re-read at most this often: the answers' usage
 * corrections (written by the ingress) give tokens back that the dispatcher's copy does not show.
 */
const TOKEN_REREAD_MS = 500;
/**
 * A message this far past its deadline has no waiting request: the ingress abandoned the ticket at the deadline
 * (or died, and the sweep's orphan pass ends it). Its message is only deleted, with no write to the ticket.
 */
const ABANDONED_AFTER_MS = 2_000;
/**
 * Most tickets granted in one transaction: each adds its ticket and at most one agent counter to the bucket,
 * counter and pause items, well within DynamoDB's 100 items per transaction.
 */
const MAX_BATCH = 20;
/**
 * Several upstreams: a priority's buffer holds at most this many times bufferSize per upstream (500 at the
 * defaults), so a backlog for an exhausted upstream (up to queue_max_size) does not hide another's tickets.
 * Each buffered message costs a visibility extension every 20 s.
 */
const MAX_BUFFER_PER_LANE = 50;

interface Buffered extends ReceivedMessage {
  /** Last receive or visibility extension. */
  receivedAt: number;
  /** When this message was first buffered (LOW's token timeout counts from here). */
  firstSeenAt: number;
  /** Judged hopeless or not at least once (the first look is stricter: FIRST_LOOK_SHARE). */
  looked?: boolean;
}

/**
 * Whether judging this buffered ticket is its first look (FIRST_LOOK_SHARE: it must fit in three quarters of the
 * time it can wait). Once per ticket: not when admission judged it already (TicketMessage.judged), nor for a
 * ticket requeued after a grant (attempt > 0) or a message delivered again (a previous run or an expired
 * visibility held it). Judged strictly again after a long wait, a ticket whose estimate had been near its deadline
 * was refused late, which is what the first look exists to avoid.
 */
export const isFirstLook = (m: {
  looked?: boolean;
  receiveCount: number;
  message: Pick<TicketMessage, 'attempt' | 'judged'>;
}): boolean => !m.looked && m.message.judged !== true && m.message.attempt === 0 && m.receiveCount <= 1;

export interface RunSummary {
  ran: boolean;
  granted: number;
  expired: number;
  rejected: number;
  skipped: number;
  swept: number;
  /** Grants that reserved a slot ahead of the write (startAt > the grant's write time). */
  reserved: number;
  stopReason: 'idle' | 'time' | 'lease_lost' | 'not_leader' | 'aborted';
}

/**
 * One dispatcher run (one Lambda invocation). Holds the lease while it runs; releases it only when no
 * doorbell rang since it last looked (else keeps going), so a wake-up is never lost.
 */
export class Dispatcher {
  private readonly t: DispatcherTimings;
  private readonly buffers = new Map<Priority, Buffered[]>(PRIORITIES.map((p) => [p, []]));
  private arrival: (() => void) | undefined;
  /** Recent latency of a batch grant's transaction (moving average), which its slot is planned ahead by. */
  private batchGrantMs = 0;
  /** Wakes the pollers waiting for room in a full buffer (a message was handled). */
  private room = new AbortController();
  private effectiveRpm = 0;
  private lastArrivalAt = 0;
  /** Weighted policy: the fair-queuing tags (kept across loops; a grant charges its priority). */
  private fairShare: FairShareState = initialFairShare();
  /**
   * Tickets seen by this dispatcher, by id: when they were admitted (`enqueuedAt`, so a backlog received late
   * still counts when it arrived, and duplicates and requeues count once) and their priority — the more important
   * load, for refusals. Trimmed to the last few minutes.
   */
  private arrivals = new Map<string, { at: number; priority: Priority }>();
  /**
   * Grants this dispatcher made (slot time, priority): what more important work actually took. Under strict order
   * and saturation that is every grant, while its measured arrivals can read a little under one per interval (a
   * backlog admitted before the run started, grants of the fast path): a less important ticket then looked
   * barely not starved, was kept, and refused much later. Trimmed like the arrivals.
   */
  private grantsMade: { at: number; priority: Priority }[] = [];
  private runStartedAt: number | undefined;
  /**
   * The load the previous run published, when still fresh at this run's start: judged by until this run has
   * observed enough arrivals of its own (a successor taking over is not blind for its first intervals).
   */
  private inheritedLoad: Record<Priority, number> | undefined;
  /** Deletes and counters off the grant's critical path (flushed in the background and before a run ends). */
  private readonly deletes: MessageDeletes;
  private readonly outcomes: BufferedOutcomes;
  private readonly lanes: readonly UpstreamLane[];
  /** Several upstreams: grants per lane in this run (a pool's members share the load). */
  private readonly laneGrants = new Map<string, number>();
  /** Several upstreams: lanes at max_inflight, until when they are passed over. */
  private readonly laneFullUntil = new Map<string, number>();
  /** Sweeps in this run (the orphan pass runs on some of them). */
  private sweeps = 0;

  constructor(
    private readonly d: DispatcherDeps,
    timings: Partial<DispatcherTimings> = {},
  ) {
    this.t = { ...DEFAULT_TIMINGS, ...timings };
    this.deletes = new MessageDeletes(d.queue, d.log);
    this.outcomes = new BufferedOutcomes(d.outcomes, d.log);
    this.lanes = d.lanes ?? [
      { name: 'limited', primary: true, bucket: d.bucket, retreat: d.retreat, outcomes: d.outcomes },
    ];
  }

  /** Calls the bookkeeping made (for the benchmark): delete batches and outcome slot writes. */
  get bookkeeping(): { deleteBatches: number; outcomeWrites: number } {
    return { deleteBatches: this.deletes.calls, outcomeWrites: this.outcomes.writes };
  }

  /**
   * Runs until idle, out of time (`deadline`, epoch ms) or aborted.
   */
  async run(deadline: number, signal?: AbortSignal): Promise<RunSummary> {
    const { lease, clock, owner } = this.d;
    this.runStartedAt ??= clock.now();
    this.sweeps = 0;
    const summary: RunSummary = {
      ran: false,
      granted: 0,
      expired: 0,
      rejected: 0,
      skipped: 0,
      swept: 0,
      reserved: 0,
      stopReason: 'idle',
    };
    const got = await lease.acquire(owner, clock.now(), this.t.leaseMs);
    if (!got.acquired) return { ...summary, stopReason: 'not_leader' };
    summary.ran = true;
    await this.inheritLoad();
    let seenRings = got.state.rings;
    const stop = new AbortController();
    const onAbort = () => stop.abort();
    signal?.addEventListener('abort', onAbort, { once: true });
    const pollers = PRIORITIES.map((p) => this.poll(p, stop.signal));
    let leaseRenewedAt = clock.now();
    let lastSweep = 0;
    let lastReconcile = clock.now();
    let lastEval = 0;
    let lastFlush = clock.now();
    this.lastArrivalAt = clock.now();
    try {
      for (;;) {
        try {
          if (signal?.aborted) {
            summary.stopReason = 'aborted';
            break;
          }
          const now = clock.now();
          const config = await this.d.config.config();
          if (now - leaseRenewedAt >= this.t.leaseMs / 3) {
            if (!(await lease.renew(owner, now, this.t.leaseMs))) {
              summary.stopReason = 'lease_lost';
              break;
            }
            leaseRenewedAt = now;
          }
          if (now - lastEval >= config.retreatEvalIntervalMs) {
            this.d.bucket.setReserve({
              fraction: config.reserveFraction,
              forNormal: config.reserveForNormal,
            });
            // Re-read: refunds and holds by other functions move the bucket without telling us.
            await this.d.bucket.refresh();
            const { record, stepped } = await this.d.retreat.evaluate(config);
            this.effectiveRpm = record.effectiveRpm;
            this.d.onRetreat?.(record, stepped);
            if (this.lanes.length > 1) this.d.onUpstreamRetreat?.(this.lanes[0]!.name, record, stepped);
            await this.evaluateOtherLanes(config);
            this.publishLoad(now);
            if (this.d.onTokens) this.reportTokens(config, now);
            lastEval = now;
          }
          if (now - lastSweep >= this.t.sweepEveryMs) {
            summary.swept += await this.sweep(
              now,
              config,
              Math.max(config.maxWaitMs, config.streamMaxWaitMs),
            );
            lastSweep = now;
          }
          if (now - lastReconcile >= this.t.reconcileEveryMs) {
            await this.d.tickets.reconcileAdmission();
            lastReconcile = now;
          }
          if (now >= deadline) {
            summary.stopReason = 'time';
            break;
          }
          if (now - lastFlush >= this.t.flushEveryMs) {
            void this.deletes.flush();
            void this.outcomes.flush();
            lastFlush = now;
          }
          await this.extendBuffered(now);
          await this.purgeExpired(now, summary);
          // Several upstreams: tickets end at their deadline (the estimate below knows one bucket only), and
          // LOW's token timeout counts from when the dispatcher first held the ticket.
          if (!config.paused && this.lanes.length === 1) await this.refuseHopeless(now, config, summary);
          else if (!config.paused) await this.refuseTimedOutLow(now, config, summary);
          const head = this.head(config);
          if (!head) {
            if (now - this.lastArrivalAt < this.t.idleStopMs) {
              await this.waitForArrival(Math.min(250, this.t.idleStopMs));
              continue;
            }
            // Idle: give the lease up unless someone rang since we last looked.
            const state = await lease.get();
            if (state.rings !== seenRings) {
              seenRings = state.rings;
              this.lastArrivalAt = now;
              continue;
            }
            if (await lease.release(owner, seenRings)) {
              summary.stopReason = 'idle';
              break;
            }
            continue;
          }
          if (config.paused) {
            // Paused by an operator: tickets keep waiting (deadlines still expire them), nothing is granted.
            await this.waitForArrival(MAX_NAP_MS);
            continue;
          }
          if (this.lanes.length > 1) await this.serveLanes(head, config, summary);
          else await this.serve(head, config, summary);
        } catch (err) {
          if (!(err instanceof StoreUnavailableError)) throw err;
          // The store failed after the SDK's retries: nothing is granted until it answers again (fail closed;
          // every token is a conditional write there). A lease not renewed for its lifetime may be someone
          // else's by now: stop rather than compete.
          this.d.log.warn('store unavailable, pausing', { error: err.message });
          if (clock.now() - leaseRenewedAt >= this.t.leaseMs) {
            summary.stopReason = 'lease_lost';
            break;
          }
          await clock.sleep(STORE_RETRY_MS, stop.signal);
        }
      }
    } finally {
      stop.abort();
      signal?.removeEventListener('abort', onAbort);
      await Promise.allSettled(pollers);
      // Messages still buffered (including any the last polls brought) become visible again for the next run.
      await this.releaseBuffered();
      // Nothing of the bookkeeping is left behind: the handled messages' deletes and the counters go now.
      await Promise.allSettled([this.deletes.flush(), this.outcomes.flush()]);
    }
    try {
      if (summary.stopReason !== 'idle') {
        await this.handOver();
      } else if (await this.queuesHaveWork()) {
        // Checked after releasing: a message that arrived while we were stopping is not left waiting.
        await this.d.wakeSuccessor();
      }
    } catch (err) {
      // The lease then expires on its own and the schedule or the next doorbell starts a successor.
      if (!(err instanceof StoreUnavailableError)) throw err;
      this.d.log.warn('hand-over failed', { error: err.message });
    }
    return summary;
  }

  /** Long poll one queue into its buffer, forever (never short-poll). */
  private async poll(priority: Priority, signal: AbortSignal): Promise<void> {
    const buf = this.buffers.get(priority)!;
    while (!signal.aborted) {
      if (this.bufferFull(buf)) {
        // Until a message leaves a buffer (at most 100 ms): a fixed nap here held the next receive back by up to
        // 100 ms after every batch grant.
        await this.d.clock.sleep(100, AbortSignal.any([signal, this.room.signal]));
        continue;
      }
      try {
        // The long poll is never aborted: a receive cut short after SQS handed out messages would hide them for
        // the visibility timeout. Stopping waits for it instead (at most pollWaitSeconds).
        const got = await this.d.queue.receive(
          priority,
          this.lanes.length === 1
            ? Math.min(RECEIVE_MAX, this.t.bufferSize - buf.length)
            : Math.max(1, Math.min(RECEIVE_MAX, this.t.bufferSize * this.lanes.length - buf.length)),
          this.t.pollWaitSeconds,
        );
        const now = this.d.clock.now();
        // Duplicate deliveries are buffered too: the grant's condition refuses the copy, which is then deleted.
        for (const m of got) buf.push({ ...m, receivedAt: now, firstSeenAt: now });
        this.noteArrivals(got, now);
        if (got.length > 0) {
          this.lastArrivalAt = now;
          this.arrival?.();
        }
      } catch (err) {
        if (signal.aborted) return;
        this.d.log.warn('receive failed', { priority, error: (err as Error).message });
        await this.d.clock.sleep(500, signal);
      }
    }
  }

  /**
   * A priority's buffer is full when it holds bufferSize tickets for every upstream (one upstream: bufferSize
   * tickets): tickets bound for an exhausted upstream do not keep another's out of view. At most
   * MAX_BUFFER_PER_LANE × bufferSize per upstream in all.
   */
  private bufferFull(buf: readonly Buffered[]): boolean {
    if (this.lanes.length === 1) return buf.length >= this.t.bufferSize;
    if (buf.length >= this.t.bufferSize * this.lanes.length * MAX_BUFFER_PER_LANE) return true;
    return this.lanes.every(
      (lane) =>
        buf.filter((m) => lanesFor(m.message.pool, this.lanes).includes(lane)).length >= this.t.bufferSize,
    );
  }

  private waitForArrival(ms: number): Promise<void> {
    const ac = new AbortController();
    this.arrival = () => ac.abort();
    return this.d.clock.sleep(ms, ac.signal).finally(() => {
      this.arrival = undefined;
    });
  }

  /**
   * The ticket to serve next: the priority the policy picks among the non-empty buffers (strict: the highest;
   * weighted: start-time fair queuing), oldest original enqueue time first within it (requeued tickets keep their
   * place).
   */
  private head(config: Pick<GatewayConfig, 'priorityPolicy' | 'priorityWeights'>): Buffered | undefined {
    const pick = pickPriority(config.priorityPolicy, this.fairShare, this.nonEmpty());
    if (!pick) return undefined;
    this.fairShare = pick.state;
    const buf = this.buffers.get(pick.priority)!;
    buf.sort((a, b) => a.message.enqueuedAt - b.message.enqueuedAt);
    return buf[0];
  }

  private nonEmpty(): Set<Priority> {
    return new Set(PRIORITIES.filter((p) => this.buffers.get(p)!.length > 0));
  }

  /** A grant to `priority` moves its fair-queuing tag (read by the weighted policy only). */
  private charge(priority: Priority, config: Pick<GatewayConfig, 'priorityWeights'>): void {
    this.fairShare = chargePriority(this.fairShare, priority, weightsOf(config));
  }

  private drop(m: Buffered): void {
    const buf = this.buffers.get(m.message.priority)!;
    const i = buf.indexOf(m);
    if (i >= 0) buf.splice(i, 1);
    this.room.abort();
    this.room = new AbortController();
  }

  /** Handled: out of the buffer at once, its delete batched (a lost delete only brings it back as a skip). */
  private finishMessage(m: Buffered): void {
    this.drop(m);
    this.deletes.add(m.message.priority, m.receipt);
  }

  /**
   * Grant, reserve, refuse or wait for the head ticket. No read first: the message carries the deadline and
   * the grant transaction's condition (queued, same attempt, not paused) tells whether the ticket still wants a
   * token. When the bucket's next slot for it is near enough (one interval, within reserveAtLeastMs …
   * reserveAheadMs), the grant reserves that slot (`grantedAt` = the slot): the ingress, reading its ticket about
   * that often near its turn, finds it before the slot, sleeps until then and calls.
   */
  private async serve(m: Buffered, config: GatewayConfig, summary: RunSummary): Promise<void> {
    const { requestTimeoutMs } = config;
    const { tickets, bucket, clock } = this.d;
    const msg = m.message;
    if (!bucket.state) await bucket.refresh();
    await bucket.refreshIfTokenBound(TOKEN_REREAD_MS);
    // After the reads: a plan made at a later clock than `now` would look like a reservation ahead.
    const now = clock.now();
    // Tokens per minute (the upstream has `tpm`): the ticket's estimate is reserved in the grant's own write.
    const tokens = tokenNeed(config, undefined, msg.tokens);
    let plan = bucket.plan(msg.priority, tokens);
    // Priority inversion is bounded by this: a more important ticket arriving later waits behind the slots
    // already reserved.
    // The fixed horizon is for minute-long windows: on a shorter one (time-scaled runs) it shrinks with the
    // window, or reservations made at the old rate would outlast a retreat's cut by a large part of a window.
    const ahead = Math.max(
      Math.min(this.t.reserveAtLeastMs, config.upstreamWindowMs / 60),
      Math.min(this.t.reserveAheadMs, bucket.state?.intervalMs ?? 0),
    );
    if ('waitMs' in plan) {
      const slot = now + plan.waitMs;
      if (plan.waitMs <= ahead && msg.deadline > slot + this.t.grantMarginMs)
        plan = bucket.planAt(msg.priority, slot, tokens);
    }
    if ('waitMs' in plan && tokens && (await this.refuseForTokens(m, tokens, plan.waitMs, now, summary)))
      return;
    if ('waitMs' in plan) {
      // Sleep until the token can be reserved, waking for arrivals (a higher priority may come) and housekeeping.
      // A wait within the horizon is one for tokens per minute (the reservation above found no room): in full.
      const untilReservable = plan.waitMs > ahead ? plan.waitMs - ahead : plan.waitMs;
      await this.waitForArrival(Math.min(untilReservable, msg.deadline - now, MAX_NAP_MS));
      return;
    }
    const slot = plan.attempt.now;
    // A batch takes request tokens only: not on an upstream metered in tokens too. Tokens free now go to several
    // tickets at once; a reservation reserves the next slots up to the horizon for several (one write each way).
    const batchable = !hasQuota(msg) && !tokenLimitOf(config, undefined);
    if (batchable && (await this.serveMany(m, config, summary, now, now + ahead)) === 'served') return;
    const quota = await this.agentQuota(msg);
    if (quota && 'waitMs' in quota) {
      // The agent is over its own quota: refuse this ticket now instead of stalling everyone behind it.
      if (await this.end(msg, 'rejected', 'agent_quota', now, quota.waitMs)) summary.rejected++;
      this.finishMessage(m);
      return;
    }
    const res = await tickets.grant(
      { id: msg.ticketId, attempt: msg.attempt, agent: msg.agent, priority: msg.priority },
      plan.attempt,
      {
        // The reserved slot: the call starts then, the bucket logged it then, and a refund finds it by this.
        grantedAt: slot,
        claimBy: Math.min(slot + this.t.claimWindowMs, msg.deadline + requestTimeoutMs),
      },
      {
        maxInflight: config.maxInflight,
        ...(quota ? { agentQuota: { bucketKey: quota.key, attempt: quota.attempt } } : {}),
      },
    );
    if (res.kind === 'granted') {
      bucket.spent(plan.attempt);
      this.charge(msg.priority, config);
      this.noteGrant(slot, msg.priority);
      if (quota) quota.bucket.spent(quota.attempt);
      summary.granted++;
      if (slot > now) summary.reserved++;
      // The queue wait is recorded by the ingress for the grant it calls (a requeued ticket is granted twice).
      this.outcomes.record(now, { counts: { granted: 1 } });
      this.finishMessage(m);
    } else if (res.kind === 'bucket_conflict') {
      bucket.conflicted(res.current);
      if (!res.current) await bucket.refresh();
    } else if (res.kind === 'agent_quota') {
      quota?.bucket.conflicted(res.current);
    } else if (res.kind === 'inflight_full') {
      // max_inflight upstream calls are running: wait for one to finish (no token was spent).
      await this.waitForArrival(INFLIGHT_NAP_MS);
    } else {
      await this.notGranted(res, m, summary);
    }
  }

  /** Buckets and retreat of the upstreams after the first, each under its own limits. */
  /**
   * Tokens per minute: the head waits for room in the token window that its entries give only after its deadline
   * (none leaves before): refused now, not at the deadline. Read once more first, for the answers' corrections.
   * @returns true when the ticket was ended
   */
  private async refuseForTokens(
    m: Buffered,
    tokens: TokenNeed,
    waitMs: number,
    now: number,
    summary: RunSummary,
  ): Promise<boolean> {
    const { bucket } = this.d;
    const msg = m.message;
    const late = (wait: number) => now + wait > msg.deadline - this.t.grantMarginMs;
    if (!bucket.waitsForTokens || !late(waitMs)) return false;
    await bucket.refresh();
    let again = bucket.plan(msg.priority, tokens);
    // A request slot first: the tokens are judged at that slot, as the grant would reserve them.
    if ('waitMs' in again && !bucket.waitsForTokens)
      again = bucket.planAt(msg.priority, now + again.waitMs, tokens);
    if (!('waitMs' in again) || !bucket.waitsForTokens || !late(again.waitMs)) return false;
    if (await this.end(msg, 'rejected', 'wait_exceeds_deadline', now, again.waitMs)) summary.rejected++;
    this.finishMessage(m);
    return true;
  }

  /** Tokens held in each tpm upstream's window, from the states the evaluation just read (no read here). */
  private reportTokens(config: GatewayConfig, now: number): void {
    for (const lane of this.lanes) {
      const limit = tokenLimitOf(config, ticketUpstream(lane));
      const state = lane.bucket.state;
      if (!limit || !state) continue;
      const inWindow = tokensInWindow(state.tokens?.entries ?? [], now, limit.windowMs);
      this.d.onTokens?.(this.lanes.length > 1 ? lane.name : undefined, inWindow, limit.tpm);
    }
  }

  private async evaluateOtherLanes(config: GatewayConfig): Promise<void> {
    for (const lane of this.lanes) {
      if (lane.primary) continue;
      lane.bucket.setReserve({ fraction: config.reserveFraction, forNormal: config.reserveForNormal });
      await lane.bucket.refresh();
      const { record, stepped } = await lane.retreat.evaluate(upstreamConfig(config, lane.name));
      this.d.onUpstreamRetreat?.(lane.name, record, stepped);
    }
  }

  /**
   * Several upstreams: the most important waiting ticket (in the policy's order) that one of its upstreams can
   * take now gets a token there; a ticket whose upstreams are all exhausted never holds up one bound elsewhere.
   * Within a pool the member with the most tokens left takes it. Tickets of one upstream keep their order:
   * a less important one only passes a blocked one through an upstream the blocked one cannot use now.
   */
  private async serveLanes(head: Buffered, config: GatewayConfig, summary: RunSummary): Promise<void> {
    const { tickets, clock } = this.d;
    const now = clock.now();
    for (const lane of this.lanes) {
      if (!lane.bucket.state) await lane.bucket.refresh();
      else await lane.bucket.refreshIfTokenBound(TOKEN_REREAD_MS);
    }
    const blocked = new Set([...this.laneFullUntil].filter(([, until]) => until > now).map(([name]) => name));
    const ordered = [...this.buffers.values()]
      .flat()
      .sort(
        (a, b) =>
          priorityRank(a.message.priority) - priorityRank(b.message.priority) ||
          a.message.enqueuedAt - b.message.enqueuedAt,
      );
    // The policy's pick goes first (weighted: its turn); the rest follow in strict order.
    ordered.unshift(head);
    let waitMs = MAX_NAP_MS;
    const seen = new Set<string>();
    for (const m of ordered) {
      const msg = m.message;
      if (seen.has(msg.ticketId)) continue;
      seen.add(msg.ticketId);
      const choice = chooseLane(
        lanesFor(msg.pool, this.lanes),
        msg.priority,
        this.laneGrants,
        blocked,
        (lane) => tokenNeed(config, ticketUpstream(lane), msg.tokens),
      );
      if (!choice) continue;
      if ('waitMs' in choice) {
        waitMs = Math.min(waitMs, choice.waitMs);
        // Tokens per minute: a smaller ticket behind must not take the room this one waits for (it would wait
        // for ever behind a stream of small ones); its upstreams metered in tokens are passed over this round.
        if (msg.tokens !== undefined)
          for (const lane of lanesFor(msg.pool, this.lanes))
            if (tokenLimitOf(config, ticketUpstream(lane))) blocked.add(lane.name);
        continue;
      }
      const { lane, attempt } = choice;
      const quota = await this.agentQuota(msg);
      if (quota && 'waitMs' in quota) {
        if (await this.end(msg, 'rejected', 'agent_quota', now, quota.waitMs)) summary.rejected++;
        this.finishMessage(m);
        return;
      }
      const upstream = ticketUpstream(lane);
      const res = await tickets.grant(
        { id: msg.ticketId, attempt: msg.attempt, agent: msg.agent, priority: msg.priority },
        attempt,
        {
          grantedAt: attempt.now,
          claimBy: Math.min(attempt.now + this.t.claimWindowMs, msg.deadline + config.requestTimeoutMs),
          ...(upstream !== undefined ? { upstream } : {}),
        },
        {
          maxInflight: upstreamConfig(config, lane.name).maxInflight,
          ...(quota ? { agentQuota: { bucketKey: quota.key, attempt: quota.attempt } } : {}),
        },
      );
      if (res.kind === 'granted') {
        lane.bucket.spent(attempt);
        this.laneGrants.set(lane.name, (this.laneGrants.get(lane.name) ?? 0) + 1);
        this.charge(msg.priority, config);
        this.noteGrant(attempt.now, msg.priority);
        if (quota) quota.bucket.spent(quota.attempt);
        summary.granted++;
        // The queue wait is recorded by the ingress for the grant it calls (as on one upstream).
        this.outcomes.record(now, { counts: { granted: 1 } });
        this.finishMessage(m);
      } else if (res.kind === 'bucket_conflict') {
        lane.bucket.conflicted(res.current);
        if (!res.current) await lane.bucket.refresh();
      } else if (res.kind === 'agent_quota') {
        quota?.bucket.conflicted(res.current);
      } else if (res.kind === 'inflight_full') {
        // That upstream runs max_inflight calls: its tickets wait, the others' go on.
        this.laneFullUntil.set(lane.name, now + INFLIGHT_NAP_MS);
        blocked.add(lane.name);
        continue;
      } else {
        await this.notGranted(res, m, summary);
      }
      return;
    }
    // Nothing any upstream can take now: sleep until the first token, waking for arrivals and housekeeping.
    await this.waitForArrival(Math.max(1, Math.min(waitMs, MAX_NAP_MS)));
  }

  /**
   * Several tickets in one transaction when the bucket has tokens for them now (plain GCRA: one write takes k
   * tokens, exactly as k grants in a row would): the head and those next in the policy's order (strict: the
   * global order; weighted: the head's priority, as many as its share gives in a row), up to the first one with a
   * quota of its own. Past the tokens free now the same write reserves the next slots, one interval apart up to
   * `reserveUntil` (the reservation horizon), one ticket each: a dispatcher granting one reservation per
   * transaction falls behind a fast bucket on a slow store, and its late grants are seen after their slot.
   * @returns 'single' when no batch applies (the caller grants the head alone)
   */
  private async serveMany(
    head: Buffered,
    config: GatewayConfig,
    summary: RunSummary,
    now: number,
    reserveUntil: number,
  ): Promise<'served' | 'single'> {
    const { bucket, tickets } = this.d;
    const priority = head.message.priority;
    const pool =
      config.priorityPolicy === 'strict'
        ? [...this.buffers.values()].flat()
        : [...this.buffers.get(priority)!];
    pool.sort(
      (a, b) =>
        priorityRank(a.message.priority) - priorityRank(b.message.priority) ||
        a.message.enqueuedAt - b.message.enqueuedAt,
    );
    const limit = Math.min(
      config.priorityPolicy === 'strict'
        ? MAX_BATCH
        : Math.max(1, grantsInARow(this.fairShare, priority, this.nonEmpty(), weightsOf(config), MAX_BATCH)),
      // All of a batch must fit under max_inflight.
      config.maxInflight > 0 ? config.maxInflight : MAX_BATCH,
    );
    const batch: Buffered[] = [head];
    const seen = new Set([head.message.ticketId]);
    for (const m of pool) {
      if (batch.length >= limit) break;
      if (seen.has(m.message.ticketId)) continue;
      if (hasQuota(m.message)) break;
      if (m.message.deadline <= reserveUntil + this.t.grantMarginMs) continue;
      seen.add(m.message.ticketId);
      batch.push(m);
    }
    if (batch.length < 2) return 'single';
    // The slot is planned ahead by the transaction's recent latency (at most 3/4 of the slack): a store answering
    // slowly would otherwise write grants already too old to call on when their waiters see them, and requeue them.
    // Whole milliseconds (rounded up): a bucket's tat stays exact on the store (TIME_STEPS_PER_MS in gcra.ts).
    const at =
      now +
      Math.ceil(
        Math.min((grantToCallMaxMs(config.upstreamWindowMs, config.grantSlackMs) * 3) / 4, this.batchGrantMs),
      );
    // The horizon counts from when the write lands, as the slot does.
    const many = bucket.planSpread(
      batch.map((m) => m.message.priority),
      batch.length,
      at,
      reserveUntil + (at - now),
    );
    if (!many) return 'single';
    const chosen = batch.slice(0, many.slots.length);
    const sentAt = this.d.clock.now();
    const res = await tickets.grantBatch(
      chosen.map((m, i) => ({
        id: m.message.ticketId,
        attempt: m.message.attempt,
        agent: m.message.agent,
        priority: m.message.priority,
        patch: {
          grantedAt: many.slots[i]!,
          claimBy: Math.min(
            many.slots[i]! + this.t.claimWindowMs,
            m.message.deadline + config.requestTimeoutMs,
          ),
        },
      })),
      many.attempt,
      { maxInflight: config.maxInflight },
    );
    this.batchGrantMs = 0.8 * this.batchGrantMs + 0.2 * (this.d.clock.now() - sentAt);
    if (res.kind === 'granted') {
      bucket.spent(many.attempt);
      for (const [i, m] of chosen.entries()) {
        const slot = many.slots[i]!;
        this.charge(m.message.priority, config);
        this.noteGrant(slot, m.message.priority);
        summary.granted++;
        if (slot > now) summary.reserved++;
        this.outcomes.record(now, { counts: { granted: 1 } });
        this.finishMessage(m);
      }
    } else if (res.kind === 'ticket_conflict') {
      // Those tickets moved on (duplicates, ended, requeued): their messages go; the rest is tried again.
      for (const i of res.indexes) {
        const m = chosen[i];
        if (!m) continue;
        summary.skipped++;
        this.finishMessage(m);
      }
    } else if (res.kind === 'bucket_conflict') {
      bucket.conflicted(res.current);
      if (!res.current) await bucket.refresh();
    } else if (res.kind === 'paused') {
      this.d.config.invalidate();
      await this.waitForArrival(INFLIGHT_NAP_MS);
    } else {
      // In flight has no room for all of them: the head alone may still fit.
      return 'single';
    }
    return 'served';
  }

  /**
   * Buffered tickets whose deadline came (any priority, paused or not) are ended without waiting to be the head.
   * One whose deadline passed long ago was abandoned by its ingress: its message is only deleted (batched), with
   * no write to the ticket.
   */
  private async purgeExpired(now: number, summary: RunSummary): Promise<void> {
    for (const m of [...this.buffers.values()].flat()) {
      if (m.message.deadline > now + this.t.grantMarginMs) continue;
      if (m.message.deadline > now - ABANDONED_AFTER_MS) {
        if (await this.end(m.message, 'expired', 'deadline', now)) summary.expired++;
      }
      this.finishMessage(m);
    }
  }

  private noteArrivals(got: readonly ReceivedMessage[], now: number): void {
    for (const m of got)
      if (!this.arrivals.has(m.message.ticketId))
        this.arrivals.set(m.message.ticketId, { at: m.message.enqueuedAt, priority: m.message.priority });
    if (this.arrivals.size < 2_000) return;
    for (const [id, a] of this.arrivals) if (a.at < now - 10 * 60_000) this.arrivals.delete(id);
  }

  /**
   * The load of more important work on each priority as this dispatcher measured it (higherArrivalLoads), or the
   * previous run's until this one has observed enough; undefined when neither is known.
   */
  private higherLoads(now: number): Record<Priority, number> | undefined {
    const intervalMs = this.d.bucket.state?.intervalMs;
    if (intervalMs === undefined) return undefined;
    const since = this.runStartedAt ?? now;
    const arrived = higherArrivalLoads({ arrivals: [...this.arrivals.values()], now, since, intervalMs });
    // Grants say "load" only for a priority with a ticket waiting that arrived during this run (its agents keep
    // coming): grants that only drain a backlog queued before the run are not arrivals, and reading them as load
    // refused less important tickets that the backlog's end would have served within seconds.
    const sustained = new Set(
      [...this.buffers.entries()]
        .filter(([, buf]) => buf.some((m) => m.message.enqueuedAt >= since))
        .map(([p]) => p),
    );
    const taken = higherArrivalLoads({
      arrivals: this.grantsMade.filter((g) => sustained.has(g.priority)),
      now,
      since,
      intervalMs,
    });
    if (!arrived || !taken) return this.inheritedLoad;
    // The larger of what more important work asked for and what it took.
    const measured = Object.fromEntries(PRIORITIES.map((p) => [p, Math.max(arrived[p], taken[p])])) as Record<
      Priority,
      number
    >;
    return loadWithInherited({ measured, inherited: this.inheritedLoad, now, since, intervalMs });
  }

  private noteGrant(at: number, priority: Priority): void {
    this.grantsMade.push({ at, priority });
    if (this.grantsMade.length < 2_000) return;
    this.grantsMade = this.grantsMade.filter((g) => g.at >= at - 10 * 60_000).slice(-1_000);
  }

  /**
   * Publishes the measured load for admission's fail fast (one plain write per retreat evaluation, off the grant
   * path: a failed write only leaves admission an older load, which it stops trusting after a while).
   */
  private publishLoad(now: number): void {
    const higher = this.higherLoads(now);
    if (!higher) return;
    void this.d.tickets.publishLoad({ at: now, higher }).catch((err: unknown) => {
      this.d.log.warn('load not published', { error: (err as Error).message });
    });
  }

  /** Reads the load the previous run published (one read per run); a store hiccup leaves it unknown. */
  private async inheritLoad(): Promise<void> {
    try {
      const config = await this.d.config.config();
      const { load } = await this.d.tickets.queuedWithLoad();
      this.inheritedLoad = freshLoad(load, this.d.clock.now(), config.retreatEvalIntervalMs);
    } catch (err) {
      if (!(err instanceof StoreUnavailableError)) throw err;
    }
  }

  /**
   * Refuses every buffered ticket that cannot be served in time: its estimated grant time (its place among the
   * waiting ones at the current pace and, under strict order, what more important work has been taking of the
   * recent grants) lies past its deadline, or — LOW — further than low_priority_timeout from when it was first
   * seen. Known as soon as a rate cut or more important arrivals make it so, not at the deadline: a priority
   * starved by more important work is refused when its ticket is first seen.
   */
  private async refuseHopeless(now: number, config: GatewayConfig, summary: RunSummary): Promise<void> {
    const { bucket } = this.d;
    const state = bucket.state;
    if (!state) return;
    const all = [...this.buffers.values()].flat();
    if (all.length === 0) return;
    const first = bucket.plan('urgent');
    const weights = weightsOf(config);
    const loads = this.higherLoads(now);
    // Under strict order a first look waits for a known load: judged without it, a less important ticket is kept
    // as if nothing more important would come, and refused later, after a long wait.
    const judged = loads !== undefined || config.priorityPolicy !== 'strict';
    const due = estimateGrantTimes(
      all.map((m) => ({ ...m.message, firstLook: isFirstLook(m) })),
      config.priorityPolicy,
      weights,
      {
        now,
        intervalMs: state.intervalMs,
        headWaitMs: 'waitMs' in first ? first.waitMs : 0,
        available: bucket.available('urgent'),
      },
      loads,
    );
    for (const [i, m] of all.entries()) {
      const at = due[i] ?? now;
      const msg = m.message;
      const reason =
        // Strict order only: under `weighted` LOW has an assured share and waits for it like the others.
        config.priorityPolicy === 'strict' &&
        msg.priority === 'low' &&
        at - m.firstSeenAt > config.lowPriorityTimeoutMs
          ? 'low_priority_timeout'
          : !fitsDeadline({
                at,
                now,
                deadline: msg.deadline,
                firstLook: isFirstLook(m),
                marginMs: this.t.grantMarginMs,
              })
            ? 'wait_exceeds_deadline'
            : undefined;
      if (judged) m.looked = true;
      if (!reason) continue;
      // A starved ticket has no grant time: the agent is told to come back after a window.
      const retryAfterMs = Number.isFinite(at) ? at - now : config.upstreamWindowMs;
      if (await this.end(msg, 'rejected', reason, now, retryAfterMs)) summary.rejected++;
      this.finishMessage(m);
    }
  }

  /**
   * Several upstreams, strict order: a LOW ticket still waiting low_priority_timeout after the dispatcher first
   * held it is refused, as the seed's token timeout did (there is no one-bucket estimate to refuse it earlier).
   */
  private async refuseTimedOutLow(now: number, config: GatewayConfig, summary: RunSummary): Promise<void> {
    if (config.priorityPolicy !== 'strict') return;
    for (const m of [...(this.buffers.get('low') ?? [])]) {
      if (now - m.firstSeenAt <= config.lowPriorityTimeoutMs) continue;
      if (await this.end(m.message, 'rejected', 'low_priority_timeout', now, config.upstreamWindowMs)) {
        summary.rejected++;
      }
      this.finishMessage(m);
    }
  }

  /** A grant refused because the config says paused, or because the ticket has moved on (its message is done). */
  private async notGranted(
    res: Extract<GrantOutcome, { kind: 'paused' | 'ticket_conflict' }>,
    m: Buffered,
    summary: RunSummary,
  ): Promise<void> {
    if (res.kind === 'paused') {
      // Paused since the config was last read: read it again (fresh) and wait like any paused run.
      this.d.config.invalidate();
      await this.waitForArrival(INFLIGHT_NAP_MS);
      return;
    }
    // Abandoned, expired, granted already (duplicate delivery), requeued under a newer attempt, or missing.
    if (!res.current) this.d.log.warn('message for a missing ticket', { ticketId: m.message.ticketId });
    summary.skipped++;
    this.finishMessage(m);
  }

  /** Ends a still-queued ticket without a token; false if it had moved on. */
  private async end(
    msg: TicketMessage,
    to: 'expired' | 'rejected',
    reason: string,
    now: number,
    retryAfterMs?: number,
  ): Promise<boolean> {
    const res = await this.d.tickets.transition(
      msg.ticketId,
      'queued',
      to,
      {
        finishedAt: now,
        reason,
        ...(retryAfterMs !== undefined ? { retryAfterMs: Math.ceil(retryAfterMs) } : {}),
      },
      { attempt: msg.attempt },
    );
    if (!('ticket' in res)) return false;
    this.outcomes.record(now, { counts: to === 'expired' ? { expired: 1 } : { refused: 1 } });
    return true;
  }

  /**
   * The agent's quota write for this grant, or how long the agent must wait; undefined when it has no quota.
   * Its limit is the lower of quota_rpm and quota_share × the effective rate; window-safe like the main bucket.
   */
  private async agentQuota(
    msg: TicketMessage,
  ): Promise<{ bucket: TokenBucket; key: string; attempt: ConsumeAttempt } | { waitMs: number } | undefined> {
    const limits = [
      msg.quotaRpm,
      msg.quotaShare !== undefined && this.effectiveRpm > 0 ? msg.quotaShare * this.effectiveRpm : undefined,
    ].filter((x): x is number => x !== undefined && x > 0);
    if (limits.length === 0) return undefined;
    const { bucket, key } = this.d.agentBucket(msg.agent);
    await bucket.configure(deriveBucket(Math.min(...limits), 60_000, AGENT_BURST));
    const plan = bucket.plan('urgent');
    return 'waitMs' in plan ? { waitMs: plan.waitMs } : { bucket, key, attempt: plan.attempt };
  }

  /** Grants nobody claimed (ingress lost) and calls nobody finished are ended; unclaimed tokens come back. */
  private async sweep(now: number, config: GatewayConfig, maxWaitMs: number): Promise<number> {
    const { tickets, bucket } = this.d;
    const { outcomes } = this;
    let swept = 0;
    // Queued tickets without a message (the create's answer was lost and the agent told to retry, the message
    // went to the DLQ) would wait forever: once no request can still be waiting for them, they expire here. No
    // grant waits for them and they are rare: four Queries at a run's first sweep and every ORPHAN_SWEEP_EVERY-th
    // after it, not at every sweep.
    const orphans = this.sweeps++ % ORPHAN_SWEEP_EVERY === 0;
    for (const p of orphans ? PRIORITIES : []) {
      for (const t of await tickets.listPhase(`queued#${p}`, now - maxWaitMs - ORPHAN_GRACE_MS, 25)) {
        if (t.deadline > now - ORPHAN_GRACE_MS) continue;
        const res = await tickets.transition(
          t.id,
          'queued',
          'expired',
          { finishedAt: now, reason: 'deadline_no_message' },
          { attempt: t.attempt },
        );
        if ('ticket' in res) {
          swept++;
          outcomes.record(now, { counts: { expired: 1 } });
        }
      }
    }
    for (const t of await tickets.listPhase('granted', now, 25)) {
      const res = await tickets.transition(t.id, 'granted', 'failed', {
        finishedAt: now,
        reason: 'ingress_lost_before_claim',
      });
      if ('ticket' in res) {
        swept++;
        const lane = t.upstream === undefined ? undefined : this.lanes.find((l) => l.name === t.upstream);
        // Within its own upstream's window only: another upstream's may be much shorter than the first one's.
        // An upstream with `tpm`: the grant's token reservation goes back in the same write.
        await (lane?.bucket ?? bucket).refund(
          t.grantedAt ?? now,
          grantWindowMs(config, t.upstream),
          tokenNeed(config, t.upstream, t.tokens),
        );
        outcomes.record(now, { counts: { abandoned: 1 } });
      }
    }
    for (const t of await tickets.listPhase('claimed', now, 25)) {
      const res = await tickets.transition(t.id, 'claimed', 'failed', {
        finishedAt: now,
        reason: 'ingress_lost_during_call',
      });
      if ('ticket' in res) swept++;
    }
    return swept;
  }

  private async extendBuffered(now: number): Promise<void> {
    for (const buf of this.buffers.values()) {
      for (const m of buf) {
        if (now - m.receivedAt < EXTEND_AFTER_MS) continue;
        try {
          await this.d.queue.extend(m.message.priority, m.receipt, VISIBILITY_S);
          m.receivedAt = now;
        } catch {
          // Visibility lapsed: SQS will deliver it again and the copy is handled then.
          this.drop(m);
        }
      }
    }
  }

  private async releaseBuffered(): Promise<void> {
    const all = [...this.buffers.values()].flat();
    await Promise.allSettled(all.map((m) => this.d.queue.extend(m.message.priority, m.receipt, 0)));
    for (const buf of this.buffers.values()) buf.length = 0;
  }

  private async queuesHaveWork(): Promise<boolean> {
    const depths = await Promise.all(
      PRIORITIES.map((p) => this.d.queue.depth(p).catch(() => ({ visible: 1, inFlight: 0 }))),
    );
    return depths.some((d) => d.visible > 0);
  }

  /** Out of time with work left: free the lease at once and wake a successor. */
  private async handOver(): Promise<void> {
    const state = await this.d.lease.get();
    if (state.owner === this.d.owner) await this.d.lease.release(this.d.owner, state.rings);
    if (await this.queuesHaveWork()) await this.d.wakeSuccessor();
  }
}

/** The configured weights (validated at load; equal weights if they ever fail to parse). */
const weightsOf = (config: Pick<GatewayConfig, 'priorityWeights'>): PriorityWeights =>
  parseWeights(config.priorityWeights) ?? parseWeights('1:1:1:1')!;

/** A ticket whose agent has a quota of its own goes through the single grant (its quota bucket is in it). */
const hasQuota = (m: TicketMessage): boolean => m.quotaRpm !== undefined || m.quotaShare !== undefined;
