// Domain use case (ingress side): admit a request as a ticket, wait for its grant, claim it, record its end.
import {
  type AgentBudget,
  type BudgetCharge,
  BudgetExhaustedError,
  type BudgetUsage,
  budgetDay,
  budgetExceeded,
  checkBudget,
  hasBudget,
} from './agent-budget.js';
import type { TokenBucket } from './bucket.js';
import type { Clock } from './clock.js';
import { agentQueueCap, DEFAULT_CONFIG, type GatewayConfig } from './config.js';
import {
  AdmissionFullError,
  AgentQueueFullError,
  ConflictError,
  GatewayError,
  IdempotencyConflictError,
  RateLimitedError,
  StoreUnavailableError,
  UnavailableError,
} from './errors.js';
import { GRANT_TO_CALL_MAX_MS, grantToCallMaxMs } from './gcra.js';
import type {
  AgentUsageEvent,
  BudgetStore,
  LeaseStore,
  OutcomeStore,
  QueuedByPriority,
  TicketQueue,
  TicketStore,
  UsageStore,
} from './ports.js';
import { PRIORITIES, type Priority, priorityRank } from './priority.js';
import { type PriorityPolicy, parseWeights } from './priority-policy.js';
import {
  estimateWaitMs,
  FIRST_LOOK_SHARE,
  fitsDeadline,
  freshLoad,
  MIN_OBSERVED_INTERVALS,
  type PublishedLoad,
  RESERVE_AHEAD_MS,
} from './queue-estimate.js';
import { bucketParamsFor } from './retreat-controller.js';
import {
  isGrantStale,
  messageFor,
  SEND_SHARE,
  type Ticket,
  type TicketPatch,
  type TicketStatus,
  waitAfterLostClaim,
} from './tickets.js';
import { type TokenNeed, tokenNeed } from './token-window.js';
import { chooseLane, lanesFor, ticketUpstream, type UpstreamLane, upstreamConfig } from './upstream-lanes.js';

export interface AdmissionDeps {
  tickets: TicketStore;
  queue: TicketQueue;
  lease: LeaseStore;
  outcomes: OutcomeStore;
  /** Only the passthrough policy spends tokens here. */
  bucket: TokenBucket;
  /** Asynchronous invoke of the dispatcher; called when the doorbell finds no live lease. */
  wakeDispatcher: () => Promise<void>;
  clock: Clock;
  newId: () => string;
  /** Per-agent usage counters (optional: tests of the core leave it out). */
  usage?: UsageStore;
  /** Per-agent day counts of budgeted agents (answers' tokens are added here). */
  budgets?: Pick<BudgetStore, 'addTokens'>;
  /** Several limited upstreams: one lane each (the first one's bucket is `bucket`). */
  lanes?: readonly UpstreamLane[];
}

export interface AdmitRequest {
  agent: string;
  priority: Priority;
  model: string;
  stream: boolean;
  /** Latest time the agent can still use a grant (own wait cap and the function's time left). */
  deadline: number;
  quotaRpm?: number;
  quotaShare?: number;
  /** The key's daily budgets: counted in the ticket's own write, refused at the limit (see agent-budget.ts). */
  budget?: AgentBudget;
  /** The agent's Idempotency-Key header, if any. */
  idempotencyKey?: string;
  /** The limited upstreams that may serve it, when not only the first one. */
  pool?: string[];
  /** Its estimated tokens, when an upstream that may serve it has `tpm` (reserved by its grant there). */
  tokens?: number;
  /**
   * How long the upstream call may run once claimed: given, the request may take the fast path (granted and
   * claimed at admission when nothing more important waits).
   */
  callBudgetMs?: number;
}

/** What admission gave: a queued ticket, a passthrough grant, or (fast path) a ticket already claimed. */
export interface Admitted {
  ticket: Ticket;
  passthrough: boolean;
  attached?: boolean;
  /** Fast path: the ticket is `claimed`; call the upstream now. */
  claimed?: boolean;
  /**
   * Queued: the wait estimated at admission (fail-fast's estimate), from the ticket's enqueue time, which the wait
   * plans its reads by.
   */
  estimatedWaitMs?: number;
  /**
   * Queued on the counts alone (strict order, no load of more important work known yet: a dispatcher's first
   * seconds): the dispatcher judges the ticket again once it knows the load; the wait reads it then.
   */
  recheckAt?: number;
}

/** What waiting ended with. */
export type WaitResult =
  | { kind: 'granted'; ticket: Ticket }
  | {
      kind: 'refused';
      status: TicketStatus;
      ticket: Ticket | undefined;
      error: RateLimitedError | UnavailableError;
    };

export interface WaitHooks {
  signal?: AbortSignal;
  /**
   * The wait admission estimated for this ticket (from the per-priority counts it read for fail-fast), measured
   * from its enqueue time; unset, the wait reads the admission counter for an estimate.
   */
  estimatedWaitMs?: number;
  /**
   * Called between polls while queued (streaming heartbeats): at the start and after each read that found the
   * ticket still waiting, never after one that found it refused.
   */
  onWaiting?: (info: { position: number; etaMs: number }) => void;
  /**
   * A read of the ticket is due by then (a stream's first heartbeat, which commits its 200): a refusal the
   * dispatcher made meanwhile is answered as a plain 429 instead of an error event inside a committed stream.
   */
  readBy?: () => number | undefined;
  /** Longest pause between reads while the estimated grant is far (farPollMaxMs). @default FAR_POLL_MAX_MS */
  farPollMs?: number;
}

/** How fast grants come: the token interval (for the wait estimate) and the upstream limit window. */
export interface GrantPace {
  intervalMs: number;
  /** Bounds how late a grant may be called on, and within which a token can be given back. */
  windowMs: number;
  /** grant_slack_s: the longest grant → call delay the bucket allows for. @default GRANT_TO_CALL_MAX_MS */
  grantSlackMs?: number;
  /**
   * Several upstreams: the limit window of the upstream whose token a grant holds (its refund is bounded by it).
   * @default windowMs
   */
  windowOf?: (granted: Pick<Ticket, 'upstream'>) => number;
  /** Tokens per minute: a grant's need on its upstream (its reservation goes back with a refunded token). */
  tokensOf?: TokensOf;
}

/** A grant's token need on its upstream (undefined: the upstream has no `tpm`, or the ticket no estimate). */
export type TokensOf = (granted: Pick<Ticket, 'upstream' | 'tokens'>) => TokenNeed | undefined;

export interface UntilClaimedOptions extends WaitHooks {
  signal: AbortSignal;
  /** The ticket was granted at admission (passthrough): no wait, and the first grant is never judged stale. */
  passthrough: boolean;
  /**
   * The upstream limit window of the request's config (with several upstreams the shortest its pool has: the
   * waiting reads are paced by its slack).
   */
  windowMs: number;
  /** grant_slack_s of the request's config: an older grant is requeued with a refund, never called on. */
  grantSlackMs?: number;
  /**
   * Several upstreams: the limit window of the upstream whose token a grant holds, which judges the grant's age
   * (its slack is grant_slack_s capped at a tenth of it) and bounds its refund. @default windowMs
   */
  windowOf?: (granted: Pick<Ticket, 'upstream'>) => number;
  /** Tokens per minute: a grant's need on its upstream (its reservation goes back with a refunded token). */
  tokensOf?: TokensOf;
  /** How long the call may run once claimed; the dispatcher's sweep ends the ticket after that. */
  callBudgetMs: number;
  /** The current token interval, read before each wait. */
  intervalMs: () => Promise<number>;
  /** Called when a wait for a grant starts and when it ends (streaming heartbeats run in between). */
  onWaitStart?: () => void;
  /** See WaitHooks.readBy. */
  readBy?: () => number | undefined;
  /** Admitted.recheckAt: the first wait reads the ticket then too. */
  recheckAt?: number;
  onWaitEnd?: () => void;
}

/** What the way from admission to a claimed grant ended with. */
export type ClaimResult =
  | {
      kind: 'claimed';
      ticket: Ticket;
      /** Checked again right before the send (Admission.beforeSend); false for a passthrough grant. */
      judged: boolean;
      /** The ticket's claim time before this claim (an earlier attempt's call): what a hand-back restores. */
      calledAt?: number;
    }
  | { kind: 'refused'; error: GatewayError }
  /** The agent left after the claim; the ticket was ended as abandoned. */
  | { kind: 'gone' };

/** How long after its deadline (and call) an Idempotency-Key keeps pointing at its ticket. */
export const IDEMPOTENCY_WINDOW_MS = 10 * 60_000;

/**
 * What a request carrying an already-used Idempotency-Key gets. It attaches to a ticket still waiting for its
 * grant. A running one gives 409 (its answer streams to the first request). One whose upstream call happened
 * (completed, or failed/cut after its claim) gives 409 with the recorded outcome: answers are not stored (large,
 * possibly sensitive), and a second token is never spent for the same key. One that ended before any upstream
 * call (expired, refused, dropped, abandoned while queued) is replaced: the retry queues anew.
 */
export const idempotentRetry = (existing: Ticket | undefined): 'attach' | 'replace' | GatewayError => {
  if (!existing) return 'replace';
  if (existing.status === 'queued' || existing.status === 'granted') return 'attach';
  if (existing.status === 'claimed') {
    return new GatewayError(
      409,
      'invalid_request_error',
      'idempotency_key_in_use',
      'A request with this Idempotency-Key is running now; its answer goes to that request.',
      { retryAfterMs: 2_000 },
    );
  }
  if (existing.claimedAt === undefined) return 'replace';
  const when = new Date(existing.finishedAt ?? existing.claimedAt).toISOString();
  const outcome = `${existing.status}${existing.reason ? ` (${existing.reason})` : ''}, upstream status ${existing.upstreamStatus ?? 'none'}${existing.totalTokens !== undefined ? `, ${existing.totalTokens} tokens` : ''}`;
  return new GatewayError(
    409,
    'invalid_request_error',
    existing.status === 'completed' ? 'idempotent_request_completed' : 'idempotent_request_used',
    `A request with this Idempotency-Key already reached the upstream (${outcome}, at ${when}); answers are not stored and a key is never spent twice. Use a new key for a new request.`,
    { shouldRetry: false },
  );
};

/** A fallback value for a read that failed because the store is unavailable; other errors still throw. */
const unlessStoreDown =
  <T>(fallback: T) =>
  (err: unknown): T => {
    if (err instanceof StoreUnavailableError) return fallback;
    throw err;
  };

const noTokens: TokensOf = () => undefined;

/** What the fast grant's last refusal told of the queued counters (FastGrantOutcome.queuedSeen). */
interface FastRefusalSeen {
  queued?: Partial<QueuedByPriority>;
}

/** Shortest pause between two reads of a waiting ticket. */
export const POLL_MIN_MS = 25;
/**
 * Longest pause between two reads near (or past) the estimated grant: bounds how late after its grant a ticket
 * is seen, which must stay well below the grant slack (a grant older than 3/4 of it is requeued, not called): at
 * most half of that, leaving the other half for the grant's own write and the read. It is also at most the
 * dispatcher's reservation horizon (RESERVE_AHEAD_MS), so a ticket read this often near its turn sees its grant
 * before its slot and sleeps exactly until it.
 */
export const POLL_MAX_MS = 1_000;
const pollMaxMs = (windowMs: number, slackMs?: number) =>
  Math.max(POLL_MIN_MS, Math.min(POLL_MAX_MS, RESERVE_AHEAD_MS, (grantSlackOf(windowMs, slackMs) * 3) / 8));
/**
 * Longest pause while the estimated grant is far: a ticket the dispatcher refuses while it waits (its wait now
 * exceeds its deadline, LOW's token timeout, dropped from a full queue) is seen within this.
 */
export const FAR_POLL_MAX_MS = 5_000;

/**
 * Longest pause between reads while the estimated grant is far, for a policy. Under `weighted` a priority's grants
 * come as the backlogged priorities' shares allow, and the shares move whenever one of them runs dry for a moment:
 * a grant came up to half the estimated wait early, a far read up to FAR_POLL_MAX_MS later found it past its slack,
 * and the slot was lost to the requeue (the window log carries the delay on). Reading at most a reservation's lead
 * plus a near pause apart sees such a grant before it is stale. Strict order's estimate is its place in line.
 */
export const farPollMaxMs = (policy: PriorityPolicy, windowMs: number, slackMs?: number): number =>
  policy === 'weighted' ? RESERVE_AHEAD_MS + pollMaxMs(windowMs, slackMs) : FAR_POLL_MAX_MS;

/** How late after its slot a grant may still be called on: grant_slack_s, at most a tenth of the window. */
const grantSlackOf = (windowMs: number, slackMs = GRANT_TO_CALL_MAX_MS) =>
  grantToCallMaxMs(windowMs, slackMs);

/**
 * After the fast path was refused for anything but the bucket (something queued, max_inflight, paused), this
 * container queues requests of that priority and below without trying it for this long: a refused attempt costs
 * a transaction on the items the dispatcher's grants write, and under a backlog nearly every attempt is refused.
 * After a busy queue, roomy grants (see roomyKeep) are still tried, and the pause is shorter at high rates.
 */
export const FAST_PATH_BACKOFF_MS = 1_000;
/**
 * A roomy fast grant leaves this much of the burst free (half, and only for bursts of at least 4: a small burst
 * has no tokens to spare). Window-exact buckets (small limits) never grant roomy.
 */
export const roomyKeep = (burst: number): number => (burst >= 4 ? Math.ceil(burst / 2) : burst);
/** Tries of the fast grant when the bucket's condition refused it (each from the bucket as the refusal returned). */
export const FAST_PATH_BUCKET_TRIES = 3;
/**
 * A refused fast grant is tried again only while at least this share of this container's recent tries went
 * through: a try costs a transaction as large as the queue's create, and a request granted through the queue
 * costs about two transactions more than a fast grant, so a retry pays only above ~1/3. On a loaded emulator 86 %
 * of tries were refused (grants landing out of their planning order), 2 wasted transactions per request.
 */
export const FAST_PATH_RETRY_MIN_SUCCESS = 1 / 3;
/**
 * Below that share the first try does not pay either: only every this many requests try the fast path (keeping
 * the share current, so the fast path comes back once tries go through again); the others queue at once. Queued,
 * the dispatcher grants up to 20 per transaction.
 */
export const FAST_PATH_PROBE_EVERY = 4;

/**
 * A reserved slot's claim starts ahead of it by the claim's recent latency, at most this share of the grant slack
 * (250 ms at the default 1 s).
 */
export const CLAIM_LEAD_SHARE = 0.25;

/** A fast grant plans its slot ahead by at most this share of the grant slack (a store answering slowly). */
export const FAST_SLOT_LEAD_SHARE = 0.75;

/**
 * The longest a call may leave after the write that let it go: a fast grant's slot planned ahead
 * (FAST_SLOT_LEAD_SHARE), a claim started ahead of its reserved slot (CLAIM_LEAD_SHARE). `POST /admin/pause` answers
 * only after this much more, so no call let go before the pause's write reaches the upstream after its answer.
 */
export const callLeavesWithinMs = (config: Pick<GatewayConfig, 'grantSlackMs'>): number =>
  Math.ceil(config.grantSlackMs * Math.max(FAST_SLOT_LEAD_SHARE, CLAIM_LEAD_SHARE));

/** retry-after of a LOW request refused for its token timeout (as the dispatcher's refusal of a LOW ticket). */
export const LOW_TIMEOUT_RETRY_AFTER_MS = 5_000;

/** Time after which a grant must have been claimed (kept in step with the dispatcher's claim window). */
const CLAIM_MARGIN_MS = 5_000;

export class Admission {
  /**
   * Reads of waiting tickets, for the benchmark's calls-per-request figure; requests granted on the fast path,
   * and those that tried it and were queued instead.
   */
  readonly stats = { polls: 0, fastPath: 0, fastFallback: 0, staleAtSend: 0 };
  /** Until when this container skips the fast path, per priority (see FAST_PATH_BACKOFF_MS). */
  private readonly fastPathOffUntil: Record<Priority, number> = { urgent: 0, high: 0, normal: 0, low: 0 };
  /** Recent latency of the fast grant's transaction (moving average), which its slot is planned ahead by. */
  private fastGrantMs = 0;
  /** Share of recent fast-grant tries the bucket let through (moving average; see FAST_PATH_RETRY_MIN_SUCCESS). */
  private fastTryOk = 1;
  /** Requests seen while that share was low (every FAST_PATH_PROBE_EVERY-th tries). */
  private fastLowSeen = 0;
  /** …and until when it takes only roomy grants, the queue having been found busy (see FAST_PATH_BACKOFF_MS). */
  private readonly queueBusyUntil: Record<Priority, number> = { urgent: 0, high: 0, normal: 0, low: 0 };
  /** Recent latency of the claim's transaction (moving average): a reserved slot's claim starts that much early. */
  private claimMs = 0;
  private claims = 0;
  /** The dispatcher's published load as fail fast last read it (see queuedAsSeen). */
  private lastLoad: PublishedLoad | undefined;

  constructor(private readonly d: AdmissionDeps) {}

  /** The bucket a granted ticket's token came from (its upstream's; the first upstream's when it names none). */
  private bucketOf(ticket: Pick<Ticket, 'upstream'>): TokenBucket {
    if (ticket.upstream === undefined) return this.d.bucket;
    return this.d.lanes?.find((l) => l.name === ticket.upstream)?.bucket ?? this.d.bucket;
  }

  /**
   * Grants the request at once when it can (the fast path); otherwise refuses it when its estimated wait
   * exceeds its own, or creates the ticket (counted for admission in the same transaction), applies the
   * queue-full policy, sends the queue message and rings the doorbell.
   * @throws RateLimitedError (429 `queue_wait_exceeded`) when the estimated wait exceeds the request's.
   * @throws UnavailableError (503) when the queue is full under `reject` or nothing lower can be dropped.
   */
  async admit(req: AdmitRequest, config: GatewayConfig): Promise<Admitted> {
    const now = this.d.clock.now();
    const budget: BudgetCharge | undefined = hasBudget(req.budget)
      ? { agent: req.agent, day: budgetDay(now), limits: req.budget }
      : undefined;
    let ticket: Ticket = {
      id: this.d.newId(),
      agent: req.agent,
      priority: req.priority,
      model: req.model,
      stream: req.stream,
      status: 'queued',
      attempt: 0,
      enqueuedAt: now,
      deadline: req.deadline,
      ...(req.quotaRpm !== undefined ? { quotaRpm: req.quotaRpm } : {}),
      ...(req.quotaShare !== undefined ? { quotaShare: req.quotaShare } : {}),
      ...(req.idempotencyKey ? { idempotencyKey: req.idempotencyKey } : {}),
      ...(budget ? { budgetDay: budget.day } : {}),
      ...(req.pool ? { pool: req.pool } : {}),
      ...(req.tokens !== undefined ? { tokens: req.tokens } : {}),
    };
    const idem = req.idempotencyKey
      ? {
          key: `${req.agent}#${req.idempotencyKey}`,
          untilMs: req.deadline + config.requestTimeoutMs + IDEMPOTENCY_WINDOW_MS,
        }
      : undefined;
    // Requests carrying a quota go through the queue: the agent's quota bucket is written by the dispatcher's
    // grant. An Idempotency-Key's mapping is written by the fast grant itself while the key is free.
    const unquoted = req.quotaRpm === undefined && req.quotaShare === undefined;
    const plain = !req.idempotencyKey && unquoted;
    // What a refused fast grant told of the queued counters (fail fast judges by them without a read).
    const seen: FastRefusalSeen = {};
    if (unquoted && req.callBudgetMs !== undefined) {
      const fast = await this.fastGrant(ticket, config, req.callBudgetMs, seen, budget, idem);
      if (fast === 'unknown') {
        // With an Idempotency-Key the mapping may have been written too: a ticket claimed under it must be called
        // ("claimed means called"), so it is looked up (a failing read refuses the request, 503) and, if there, used.
        const written = idem ? await this.d.tickets.get(ticket.id) : undefined;
        if (written?.status === 'claimed') return { ticket: written, passthrough: false, claimed: true };
        ticket = { ...ticket, id: this.d.newId() };
      } else if (fast) return { ticket: fast, passthrough: false, claimed: true };
    }
    let estimatedWaitMs: number | undefined;
    let recheckAt: number | undefined;
    if (plain) {
      const judged = await this.hopeless(ticket, config, seen.queued);
      if (judged instanceof RateLimitedError) throw judged;
      estimatedWaitMs = judged?.waitMs;
      recheckAt = judged?.recheckAt;
    }
    let replaceTicketId: string | undefined;
    for (let i = 0; i < 3; i++) {
      try {
        await this.d.tickets.create(ticket, {
          queueMaxSize: config.queueMaxSize,
          maxQueuedPerAgent: agentQueueCap(config),
          ...(idem ? { idempotency: { ...idem, ...(replaceTicketId ? { replaceTicketId } : {}) } } : {}),
          ...(budget ? { budget } : {}),
        });
        // Weighted: admission's look was the ticket's first. Strict: the dispatcher's hold looks first again, with
        // the load it measures now (fresher than the published one): a ticket kept there on an older reading was
        // refused later, after a long wait (the 1x bench: HIGH tickets 20–67 s in).
        await this.enqueue(ticket, config.priorityPolicy === 'weighted' && estimatedWaitMs !== undefined);
        return {
          ticket,
          passthrough: false,
          ...(estimatedWaitMs !== undefined ? { estimatedWaitMs } : {}),
          ...(recheckAt !== undefined ? { recheckAt } : {}),
        };
      } catch (err) {
        if (err instanceof BudgetExhaustedError) throw await this.overBudget(ticket, budget, err.used);
        if (err instanceof AdmissionFullError) return this.whenFull(ticket, config, budget);
        if (err instanceof AgentQueueFullError) throw await this.agentFull(ticket, config);
        if (!(err instanceof IdempotencyConflictError)) throw err;
        const existing = err.ticketId ? await this.d.tickets.get(err.ticketId) : undefined;
        const decision = idempotentRetry(existing);
        if (decision === 'attach') return { ticket: existing!, passthrough: false, attached: true };
        if (decision instanceof GatewayError) throw decision;
        // The earlier request ended without an answer: this one takes the key over.
        replaceTicketId = err.ticketId;
      }
    }
    throw new UnavailableError('Idempotency-Key kept changing hands; retry.', 1_000, 'idempotency_conflict');
  }

  /**
   * Fast path: nothing waits at this priority or above and a token is free by the last known bucket state, so
   * one transaction spends the token and writes the ticket as claimed (conditioned on the per-priority queued
   * counters, max_inflight and the stored `paused` flag). Any refused condition sends it to the queue.
   * @returns the claimed ticket, undefined to queue it, or 'unknown' when the store failed (queue it under a new
   *   id: should the transaction have gone through after all, the claim sweep ends that ticket)
   */
  private async fastGrant(
    ticket: Ticket,
    config: GatewayConfig,
    callBudgetMs: number,
    seen: FastRefusalSeen,
    budget?: BudgetCharge,
    idempotency?: { key: string; untilMs: number },
  ): Promise<Ticket | undefined | 'unknown'> {
    if (config.paused) return undefined;
    if (this.fastTryOk < FAST_PATH_RETRY_MIN_SUCCESS && ++this.fastLowSeen % FAST_PATH_PROBE_EVERY !== 0)
      return undefined;
    // A refused bucket condition returns the bucket as stored: planned again from it, the grant usually goes
    // through (concurrent requests of one container plan from the same last known state; the first to find the
    // bucket idle wins, the others then find it busy). Queueing it instead would hold every later request of
    // its priority on the queue's path until the queue drains.
    for (let tries = 1; ; tries++) {
      const res = await this.tryFastGrant(ticket, config, callBudgetMs, seen, budget, idempotency);
      if (res === 'no_token') {
        // Not tried at all, or refused once already (then it counts as a fallback).
        if (tries > 1) this.stats.fastFallback++;
        return undefined;
      }
      if (res !== 'bucket_conflict') return res;
      if (tries >= FAST_PATH_BUCKET_TRIES || this.fastTryOk < FAST_PATH_RETRY_MIN_SUCCESS) {
        this.stats.fastFallback++;
        return undefined;
      }
    }
  }

  private async tryFastGrant(
    ticket: Ticket,
    config: GatewayConfig,
    callBudgetMs: number,
    seen: FastRefusalSeen,
    budget?: BudgetCharge,
    idempotency?: { key: string; untilMs: number },
  ): Promise<Ticket | undefined | 'unknown' | 'bucket_conflict' | 'no_token'> {
    const { clock } = this.d;
    let bucket = this.d.bucket;
    let upstream: string | undefined;
    let maxInflight = config.maxInflight;
    let plan: ReturnType<TokenBucket['plan']>;
    // Roomy: the bucket keeps half its burst after this token, so nobody waiting could get it now; the queued
    // counters are not checked (a dispatcher behind its queue keeps no request off the fast path while the limit
    // is far). Otherwise only when nothing waits at this priority or above.
    let roomy = false;
    if (clock.now() < this.fastPathOffUntil[ticket.priority]) return undefined;
    const backedOff = clock.now() < this.queueBusyUntil[ticket.priority];
    if (ticket.pool && this.d.lanes) {
      if (backedOff) return undefined;
      // Several upstreams: a member of the ticket's pool with a token now.
      const lanes = lanesFor(ticket.pool, this.d.lanes);
      for (const lane of lanes) if (!lane.bucket.state) await lane.bucket.refresh();
      const choice = chooseLane(lanes, ticket.priority, new Map(), undefined, (lane) =>
        tokenNeed(config, ticketUpstream(lane), ticket.tokens),
      );
      if (!choice || 'waitMs' in choice) return 'no_token';
      bucket = choice.lane.bucket;
      upstream = ticketUpstream(choice.lane);
      maxInflight = upstreamConfig(config, choice.lane.name).maxInflight;
      plan = { attempt: choice.attempt };
    } else {
      // Read once per container; afterwards every write (or refused condition) tells the state. A bucket not
      // written yet (a fresh deployment, before the dispatcher's first run) is created at the configured rate, as
      // the dispatcher would: otherwise the first requests all queue.
      if (!bucket.state) await bucket.refresh();
      if (!bucket.state)
        await bucket.ensure(
          bucketParamsFor(
            { effectiveRpm: (config.upstreamLimit * 60_000) / config.upstreamWindowMs },
            config,
          ),
        );
      if (!bucket.state) return 'no_token';
      // The slot is planned ahead by the part of the transaction's recent latency past a quarter of the slack (at
      // most 3/4 of it): a store answering slowly (a loaded emulator) would otherwise return grants already too old
      // to call on. At usual latencies (well under a quarter of the slack) nothing changes.
      const slack = grantToCallMaxMs(config.upstreamWindowMs, config.grantSlackMs);
      // Whole milliseconds (rounded up): a bucket's tat stays exact on the store (TIME_STEPS_PER_MS in gcra.ts).
      const slotAt =
        clock.now() +
        Math.ceil(Math.min(slack * FAST_SLOT_LEAD_SHARE, Math.max(0, this.fastGrantMs - slack / 4)));
      const need = tokenNeed(config, undefined, ticket.tokens);
      const keeping = bucket.planKeeping(ticket.priority, roomyKeep(bucket.state.burst), slotAt, need);
      roomy = 'attempt' in keeping;
      if (!roomy && backedOff) return undefined;
      plan = roomy ? keeping : bucket.planAt(ticket.priority, slotAt, need);
    }
    if ('waitMs' in plan) return 'no_token';
    const now = clock.now();
    const claimed: Ticket = {
      ...ticket,
      ...(upstream !== undefined ? { upstream } : {}),
      status: 'claimed',
      // The bucket logs the grant at the attempt's time: a refund finds it by this.
      grantedAt: plan.attempt.now,
      claimedAt: now,
      claimBy: now + callBudgetMs,
    };
    let res: Awaited<ReturnType<TicketStore['fastGrant']>>;
    const sentAt = clock.now();
    try {
      res = await this.d.tickets.fastGrant(claimed, plan.attempt, {
        maxInflight,
        ...(budget ? { budget } : {}),
        ...(idempotency ? { idempotency } : {}),
        ...(roomy ? { ignoreQueued: true } : {}),
      });
    } catch (err) {
      // Contention on the counter item or a hiccup: the queue is the way that copes with it.
      this.fastGrantMs = 0.8 * this.fastGrantMs + 0.2 * (clock.now() - sentAt);
      if (!(err instanceof StoreUnavailableError)) throw err;
      this.stats.fastFallback++;
      return 'unknown';
    }
    this.fastGrantMs = 0.8 * this.fastGrantMs + 0.2 * (clock.now() - sentAt);
    if (res.kind === 'granted' || res.kind === 'bucket_conflict')
      this.fastTryOk = 0.9 * this.fastTryOk + (res.kind === 'granted' ? 0.1 : 0);
    if (res.kind === 'granted') {
      bucket.spent(plan.attempt);
      this.stats.fastPath++;
      // A slot planned ahead is the call's: never before it.
      const early = plan.attempt.now - clock.now();
      if (early > 0) await clock.sleep(early);
      return claimed;
    }
    seen.queued = res.queuedSeen;
    // The bucket as stored (its condition failed too): fail fast's estimate then counts the slots reserved ahead.
    if (res.bucketSeen) bucket.observe(res.bucketSeen);
    if (res.kind === 'budget_exceeded') throw await this.overBudget(ticket, budget, res.used);
    // The key is held: the queue's create settles it (attach, 409 or take-over); nothing to back off from.
    if (res.kind === 'idempotency_held') return undefined;
    if (res.kind === 'bucket_conflict') {
      bucket.conflicted(res.current);
      return 'bucket_conflict';
    } else {
      // What refused it holds for this priority and every less important one too. A busy queue holds about as
      // long as the tickets ahead take to be granted (at a high rate a few ms each): backing off a whole second
      // there would queue every request of that second and keep the queue from ever draining.
      const offMs =
        res.kind === 'queue_busy' && res.queued !== undefined
          ? Math.min(FAST_PATH_BACKOFF_MS, res.queued * (bucket.state?.intervalMs ?? FAST_PATH_BACKOFF_MS))
          : FAST_PATH_BACKOFF_MS;
      const until = res.kind === 'queue_busy' ? this.queueBusyUntil : this.fastPathOffUntil;
      for (const p of PRIORITIES)
        if (priorityRank(p) >= priorityRank(ticket.priority)) until[p] = Math.max(until[p], now + offMs);
    }
    this.stats.fastFallback++;
    return undefined;
  }

  /**
   * Fail fast: the refusal a request gets now when its estimated queue wait exceeds the time it can wait (what is
   * queued at its priority and above, the effective interval, the tokens free now and, under strict order, the
   * load of more important work the dispatcher measured and published — read with the counters, so a request is
   * judged as the dispatcher will judge its ticket; after a refused fast grant, the counts its refusal told and the
   * load as last read, see queuedAsSeen) or, LOW under strict order, its token timeout; else the
   * estimate (the waiting ingress plans its reads by it). A store hiccup or an unknown bucket skips the check
   * (undefined: the deadline still bounds the wait).
   */
  private async hopeless(
    ticket: Ticket,
    config: GatewayConfig,
    seen?: Partial<QueuedByPriority>,
  ): Promise<RateLimitedError | { waitMs?: number; recheckAt?: number } | undefined> {
    const { bucket, clock } = this.d;
    const interval = bucket.state?.intervalMs;
    // Several upstreams: the estimate knows one bucket; the deadline bounds the wait.
    if (ticket.pool) return undefined;
    if (interval === undefined) {
      // No bucket yet (the dispatcher's first run writes it): not judged now, judged by the dispatcher soon.
      if (config.priorityPolicy !== 'strict' || ticket.priority === 'urgent') return undefined;
      const configured = bucketParamsFor(
        { effectiveRpm: (config.upstreamLimit * 60_000) / config.upstreamWindowMs },
        config,
      ).intervalMs;
      return { recheckAt: clock.now() + (MIN_OBSERVED_INTERVALS + 1) * configured };
    }
    const read = this.queuedAsSeen(ticket, config, seen) ?? (await this.readQueued());
    if (!read) return undefined;
    const now = clock.now();
    const higherLoads = freshLoad(read.load, now, config.retreatEvalIntervalMs);
    const estimateMs = estimateWaitMs({
      priority: ticket.priority,
      queued: read.queued,
      intervalMs: interval,
      availableNow: bucket.available(ticket.priority),
      policy: config.priorityPolicy,
      weights: parseWeights(config.priorityWeights) ?? parseWeights('1:1:1:1')!,
      ...(higherLoads ? { higherLoads } : {}),
    });
    const canWaitMs = ticket.deadline - now;
    // LOW's token timeout (strict order), judged as the dispatcher judges a ticket's first look.
    const lowTimedOut =
      config.priorityPolicy === 'strict' &&
      ticket.priority === 'low' &&
      !fitsDeadline({
        at: now + estimateMs,
        now,
        deadline: now + config.lowPriorityTimeoutMs,
        firstLook: true,
      });
    if (
      !lowTimedOut &&
      fitsDeadline({ at: now + estimateMs, now, deadline: ticket.deadline, firstLook: true })
    ) {
      // For planning the wait's reads: the estimate allows one interval for the first token, but slots already
      // reserved ahead (granted tickets, no longer queued) push it further; the bucket as last known says how far.
      const next = bucket.plan(ticket.priority);
      // The wait plans from the ticket's enqueue time, which the fast grant's refused tries and this read came after
      // (seconds, when a burst of them meets a slow store: the path bench at load 5–8). Counted from now, the
      // estimate had often passed when the wait began, and it read every near pause from its first moment.
      const waitMs =
        now - ticket.enqueuedAt + estimateMs + ('waitMs' in next ? Math.max(0, next.waitMs - interval) : 0);
      // Judged without the load of more important work (strict order): the dispatcher knows it within
      // MIN_OBSERVED_INTERVALS of its start, at the latest that long after this ticket's doorbell.
      const provisional = config.priorityPolicy === 'strict' && !higherLoads && ticket.priority !== 'urgent';
      return provisional ? { waitMs, recheckAt: now + (MIN_OBSERVED_INTERVALS + 1) * interval } : { waitMs };
    }
    await this.d.outcomes.record(now, { counts: { refused: 1 } }).catch(() => undefined);
    void this.use(ticket.agent, { requests: 1, refused: 1, throttled: 1 });
    const s = (ms: number) => Math.ceil(ms / 1000);
    if (lowTimedOut) {
      // As the dispatcher's refusal of a LOW ticket past its timeout says it.
      return new RateLimitedError(
        `Low-priority request refused: estimated queue wait ${Number.isFinite(estimateMs) ? `${s(estimateMs)} s` : 'unbounded (more important requests take every slot)'} exceeds low_priority_timeout (${s(config.lowPriorityTimeoutMs)} s).`,
        LOW_TIMEOUT_RETRY_AFTER_MS,
        'low_priority_timeout',
      );
    }
    return new RateLimitedError(
      Number.isFinite(estimateMs)
        ? `Estimated queue wait ${s(estimateMs)} s exceeds this request's maximum wait (${s(canWaitMs)} s, of which a first estimate may take ${Math.floor((canWaitMs * FIRST_LOOK_SHARE) / 1000)} s): refused now rather than at its deadline; retry after the indicated time.`
        : `More important requests take every slot now (this priority would wait without end): refused now rather than at its deadline (${s(canWaitMs)} s); retry after the indicated time.`,
      // A starved priority: the estimate is unbounded; come back after a window.
      Number.isFinite(estimateMs) ? estimateMs : config.upstreamWindowMs,
      'queue_wait_exceeded',
    );
  }

  /**
   * Fail fast's input without a read, under strict order, when the fast grant's refusal told the counts of the
   * request's priority and every more important one (all that strict order's estimate counts): those, and the
   * dispatcher's load as this container last read it while no newer one is due (it publishes one per retreat
   * evaluation, retreat_eval_s apart; only a new dispatcher run may publish sooner, and it starts from the load it
   * inherits). Weighted shares need every priority's count, and an unknown load may be published any moment: read.
   */
  private queuedAsSeen(
    ticket: Ticket,
    config: GatewayConfig,
    seen: Partial<QueuedByPriority> | undefined,
  ): { queued: QueuedByPriority; load: PublishedLoad } | undefined {
    const load = this.lastLoad;
    if (config.priorityPolicy !== 'strict' || !seen || !load) return undefined;
    if (this.d.clock.now() >= load.at + config.retreatEvalIntervalMs) return undefined;
    const counted = PRIORITIES.filter((p) => priorityRank(p) <= priorityRank(ticket.priority));
    if (counted.some((p) => seen[p] === undefined)) return undefined;
    return { queued: { urgent: 0, high: 0, normal: 0, low: 0, ...seen }, load };
  }

  /** The queued counters and the published load (one Query); undefined when the store is down. */
  private async readQueued(): Promise<{ queued: QueuedByPriority; load?: PublishedLoad } | undefined> {
    const read = await this.d.tickets.queuedWithLoad().catch(unlessStoreDown(undefined));
    if (read) this.lastLoad = read.load;
    return read;
  }

  /** One agent may not hold more than its share of the queue: 429, never an eviction of others' tickets. */
  private async agentFull(ticket: Ticket, config: GatewayConfig): Promise<GatewayError> {
    await this.d.outcomes.record(this.d.clock.now(), { counts: { refused: 1 } });
    void this.use(ticket.agent, { requests: 1, refused: 1 });
    return new RateLimitedError(
      `This key already has ${agentQueueCap(config)} requests waiting (max_queued_per_agent); retry when some finish.`,
      Math.min(60_000, Math.max(1_000, config.upstreamWindowMs / 4)),
      'agent_queue_full',
    );
  }

  /**
   * 429 `agent_budget_exceeded` for a charge the day item refused (nothing was written): counted as a refusal
   * like the other admission refusals.
   */
  private async overBudget(
    ticket: Ticket,
    budget: BudgetCharge | undefined,
    used: BudgetUsage,
  ): Promise<GatewayError> {
    const now = this.d.clock.now();
    await this.d.outcomes.record(now, { counts: { refused: 1 } }).catch(() => undefined);
    this.use(ticket.agent, { requests: 1, refused: 1, throttled: 1 });
    const verdict = checkBudget(budget?.limits ?? {}, used);
    // The store refused, so a limit was reached at that moment; should the figures not show it, name the requests.
    const limit = budget?.limits.requestsPerDay ?? budget?.limits.tokensPerDay ?? 0;
    return budgetExceeded(
      verdict.ok ? { ok: false, which: 'requests', used: used.requests, limit } : verdict,
      now,
    );
  }

  private async whenFull(
    ticket: Ticket,
    config: GatewayConfig,
    budget?: BudgetCharge,
  ): Promise<{ ticket: Ticket; passthrough: boolean }> {
    const full = () =>
      new UnavailableError(
        `Queue full (${config.queueMaxSize} waiting); retry later.`,
        Math.min(60_000, Math.max(1_000, config.upstreamWindowMs / 4)),
        'queue_full',
      );
    if (config.queueFullPolicy === 'reject') {
      await this.d.outcomes.record(this.d.clock.now(), { counts: { refused: 1 } });
      void this.use(ticket.agent, { requests: 1, refused: 1 });
      throw full();
    }
    if (config.queueFullPolicy === 'drop_lowest') {
      // Drop the oldest ticket of the lowest priority present, if it matters less than (or as much as) this one.
      for (const p of ['low', 'normal', 'high', 'urgent'] as const) {
        if (priorityRank(p) < priorityRank(ticket.priority)) break;
        const victim = await this.d.tickets.oldestQueued(p);
        if (!victim) continue;
        try {
          await this.d.tickets.create(ticket, {
            queueMaxSize: config.queueMaxSize,
            maxQueuedPerAgent: agentQueueCap(config),
            replace: victim,
            ...(budget ? { budget } : {}),
          });
          await this.d.outcomes.record(this.d.clock.now(), { counts: { dropped: 1 } });
          await this.enqueue(ticket);
          return { ticket, passthrough: false };
        } catch (err) {
          if (err instanceof ConflictError) continue;
          if (err instanceof BudgetExhaustedError) throw await this.overBudget(ticket, budget, err.used);
          if (err instanceof AgentQueueFullError) throw await this.agentFull(ticket, config);
          throw err;
        }
      }
      await this.d.outcomes.record(this.d.clock.now(), { counts: { refused: 1 } });
      void this.use(ticket.agent, { requests: 1, refused: 1 });
      throw full();
    }
    // passthrough: not queued, but it still takes a token (the upstream limit holds whatever the policy).
    const got = await this.d.bucket.tryConsume(
      ticket.priority,
      undefined,
      tokenNeed(config, undefined, ticket.tokens),
    );
    const now = this.d.clock.now();
    if (!got.granted) {
      await this.d.tickets.create(
        { ...ticket, status: 'rejected', finishedAt: now, reason: 'queue_full_no_token' },
        {
          queueMaxSize: config.queueMaxSize,
          bypassAdmission: true,
        },
      );
      await this.d.outcomes.record(now, { counts: { refused: 1 } });
      void this.use(ticket.agent, { requests: 1, refused: 1, throttled: 1 });
      throw new RateLimitedError('Queue full and no token free for passthrough; retry later.', got.waitMs);
    }
    const granted: Ticket = {
      ...ticket,
      status: 'granted',
      grantedAt: now,
      claimBy: now + CLAIM_MARGIN_MS,
      reason: 'passthrough',
    };
    try {
      await this.d.tickets.create(granted, {
        queueMaxSize: config.queueMaxSize,
        bypassAdmission: true,
        ...(budget ? { budget } : {}),
      });
    } catch (err) {
      if (!(err instanceof BudgetExhaustedError)) throw err;
      // The budget ran out since the first write: the token goes back, the refusal spends nothing.
      await this.d.bucket.refund(now, config.upstreamWindowMs, tokenNeed(config, undefined, ticket.tokens));
      throw await this.overBudget(ticket, budget, err.used);
    }
    await this.d.outcomes.record(now, { counts: { granted: 1 } });
    return { ticket: granted, passthrough: true };
  }

  /** Queue message + doorbell (first enqueue and every requeue). */
  /** @param judged fail fast judged its wait at admission (TicketMessage.judged) */
  private async enqueue(ticket: Ticket, judged = false): Promise<void> {
    try {
      await this.d.queue.send({ ...messageFor(ticket), ...(judged ? { judged: true as const } : {}) });
    } catch {
      // Without a message nobody would ever grant it: end it now rather than let it wait in vain.
      await this.end(ticket, 'queued', 'failed', 'enqueue_failed');
      throw new UnavailableError('Could not queue the request; retry shortly.', 1_000, 'queue_unavailable');
    }
    await this.ringQuietly();
  }

  /**
   * The doorbell is best effort: the message is already queued, so a lost ring only delays the grant until the
   * dispatcher's schedule wakes it. Failing the request here would leave a queued ticket nobody waits for.
   */
  private async ringQuietly(): Promise<void> {
    try {
      await this.ring();
    } catch {
      await this.d.wakeDispatcher().catch(() => undefined);
    }
  }

  /** `ADD rings 1` on the lease; no live lease → wake the dispatcher (asynchronous invoke). */
  async ring(): Promise<void> {
    const lease = await this.d.lease.ring();
    const live = lease.owner !== undefined && (lease.expiresAt ?? 0) > this.d.clock.now();
    if (!live) await this.d.wakeDispatcher();
  }

  /**
   * Waits for the ticket to leave `queued` with as few consistent reads as the estimate allows: far from its
   * estimated grant it reads at half the remaining time (at most FAR_POLL_MAX_MS apart); it aims one read just
   * before the estimated slot, where the dispatcher's reservation (made up to RESERVE_AHEAD_MS ahead) is already
   * visible, then sleeps exactly until the slot; past the estimate it reads every pollMaxMs. Abandons it at its
   * deadline or on `signal`.
   * @param pace current token interval (for the estimate) and limit window
   */
  async wait(ticket: Ticket, pace: GrantPace, hooks: WaitHooks = {}): Promise<WaitResult> {
    const { intervalMs, windowMs, grantSlackMs } = pace;
    const windowOf = pace.windowOf ?? (() => windowMs);
    const tokensOf = pace.tokensOf ?? noTokens;
    const { clock, tickets } = this.d;
    const etaAt =
      (this.d.lanes?.length ?? 0) > 1
        ? // Several upstreams: the estimate knows one bucket and counts every upstream's queue, so a grant may come
          // long before it; a far read (up to FAR_POLL_MAX_MS) would find it past its slack. Read as if due.
          clock.now()
        : hooks.estimatedWaitMs !== undefined
          ? // Admission estimated this wait from the per-priority counts a moment ago: no read for it.
            ticket.enqueuedAt + hooks.estimatedWaitMs
          : clock.now() + (await this.aheadOf(ticket)) * intervalMs;
    const nearPause = pollMaxMs(windowMs, grantSlackMs);
    // The read most likely to find the reservation shortly before its slot (and to absorb an estimate that is off
    // by less than half a pause either way).
    const aimAt = etaAt - nearPause / 2;
    let overdue = 0;
    for (;;) {
      const now = clock.now();
      if (hooks.signal?.aborted) return this.giveUp(ticket, 'client_disconnected', windowOf, tokensOf);
      if (now >= ticket.deadline) return this.giveUp(ticket, 'wait_exceeded', windowOf, tokensOf);
      const untilAim = aimAt - now;
      const pause =
        untilAim > 2 * nearPause
          ? // Far: halving costs a read or two for a late estimate and still sees an early grant within the slack.
            Math.min(hooks.farPollMs ?? FAR_POLL_MAX_MS, untilAim / 2)
          : untilAim >= POLL_MIN_MS
            ? untilAim
            : // Past the aim: the grant is late (the dispatcher behind, more important arrivals): every nearPause,
              // within which a reservation is still seen before its slot and a late grant well inside the slack.
              // A wait that starts past its estimate (a token was free) reads sooner once.
              overdue === 0
              ? nearPause / 4
              : nearPause;
      const remaining = Math.max(0, etaAt - now);
      hooks.onWaiting?.({ position: Math.ceil(remaining / intervalMs), etaMs: remaining });
      const readBy = hooks.readBy?.();
      const untilReadBy = readBy !== undefined && readBy > now ? readBy - now : Number.POSITIVE_INFINITY;
      await clock.sleep(Math.max(0, Math.min(pause, untilReadBy, ticket.deadline - now)), hooks.signal);
      if (hooks.signal?.aborted) continue;
      this.stats.polls++;
      const current = await tickets.get(ticket.id).catch(unlessStoreDown(null));
      if (current === null) continue;
      if (!current) return this.refused(ticket, 'failed', undefined);
      // A later attempt counts too: another waiter on the same ticket (Idempotency-Key) may have requeued it.
      if (current.status === 'granted' && current.attempt >= ticket.attempt)
        return this.untilSlot(current, windowOf(current), tokensOf(current), hooks.signal, grantSlackMs);
      if (current.status !== 'queued') return this.refused(ticket, current.status, current);
      if (clock.now() >= aimAt) overdue++;
    }
  }

  /** Tickets probably granted before this one, from the admission counter (one read; 0 if it fails). */
  private async aheadOf(ticket: Ticket): Promise<number> {
    // A requeued ticket keeps its enqueue time: the dispatcher takes it before all that arrived after it (counted
    // here), usually at the next token. Read as due, or a far read finds that grant past its slack, again and again.
    if (ticket.attempt > 0) return 0;
    // A store hiccup only blurs the estimate or delays a read: the ticket is still queued, keep waiting for it.
    const queued = await this.d.tickets.admissionCount().catch(unlessStoreDown(0));
    // URGENT and HIGH overtake most of the queue: the count says little about them, read as if due.
    return ticket.priority === 'urgent' || ticket.priority === 'high' ? 0 : Math.max(0, queued - 1);
  }

  /**
   * A grant reserving a later slot (`grantedAt` ahead of now): sleep until it, less the claim's recent latency
   * (claimLeadMs), then it is the caller's to claim, so the claim's write is done by the slot and the call leaves
   * at the slot itself (untilClaimed never sends before it). No read in between: the slot is the dispatcher's
   * promise. A client gone meanwhile gives it back.
   */
  private async untilSlot(
    granted: Ticket,
    windowMs: number,
    tokens: TokenNeed | undefined,
    signal?: AbortSignal,
    slackMs?: number,
  ): Promise<WaitResult> {
    const wait = (granted.grantedAt ?? 0) - this.claimLeadMs(windowMs, slackMs) - this.d.clock.now();
    if (wait > 0) await this.d.clock.sleep(wait, signal);
    if (signal?.aborted) {
      await this.abandonGrant(granted, 'client_disconnected', windowMs, tokens);
      return this.refused(granted, 'abandoned', undefined);
    }
    return { kind: 'granted', ticket: granted };
  }

  /**
   * How long before a reserved slot its claim starts: the claim's recent latency, at most CLAIM_LEAD_SHARE of the
   * grant slack. A claim made before `POST /admin/pause` returned still calls at its slot, so this also bounds how
   * late after a pause such a call may leave.
   */
  claimLeadMs(windowMs: number, slackMs?: number): number {
    return Math.min(this.claimMs, grantSlackOf(windowMs, slackMs) * CLAIM_LEAD_SHARE);
  }

  private async giveUp(
    ticket: Ticket,
    reason: string,
    windowOf: (granted: Pick<Ticket, 'upstream'>) => number,
    tokensOf: TokensOf,
  ): Promise<WaitResult> {
    const to = 'abandoned';
    if (reason === 'client_disconnected' && ticket.idempotencyKey) {
      // A retry with the same key may attach to it: leave it queued (its deadline, or the claim sweep with a
      // refund, ends it if nobody comes back).
      return {
        kind: 'refused',
        status: 'queued',
        ticket,
        error: new UnavailableError('Client disconnected.', 0, 'client_disconnected'),
      };
    }
    const res = await this.d.tickets.transition(
      ticket.id,
      'queued',
      to,
      { finishedAt: this.d.clock.now(), reason },
      { attempt: ticket.attempt, known: ticket },
    );
    if ('ticket' in res) {
      await this.d.outcomes.record(this.d.clock.now(), { counts: { abandoned: 1 } });
      return this.refused(ticket, to, res.ticket);
    }
    // It moved meanwhile: granted just in time is still a grant.
    const current = res.conflict;
    if (current?.status === 'granted' && current.attempt >= ticket.attempt) {
      if (reason === 'client_disconnected') {
        await this.abandonGrant(current, reason, windowOf(current), tokensOf(current));
        return this.refused(ticket, 'abandoned', current);
      }
      return this.untilSlot(current, windowOf(current), tokensOf(current));
    }
    return this.refused(ticket, current?.status ?? 'failed', current);
  }

  /** Usage bookkeeping must never fail a request (awaited where the invocation must outlast it). */
  private use(agent: string, e: AgentUsageEvent): Promise<void> {
    return this.d.usage?.record(agent, this.d.clock.now(), e).catch(() => undefined) ?? Promise.resolve();
  }

  private refused(ticket: Ticket, status: TicketStatus, current: Ticket | undefined): WaitResult {
    const result = this.refusal(ticket, status, current);
    void this.use(ticket.agent, { requests: 1, refused: 1, throttled: result.error.status === 429 ? 1 : 0 });
    return result;
  }

  private refusal(
    ticket: Ticket,
    status: TicketStatus,
    current: Ticket | undefined,
  ): Extract<WaitResult, { kind: 'refused' }> {
    const retryAfterMs = 30_000;
    // Only a request sharing its ticket (Idempotency-Key) sees it claimed or already called on: it gets the 409
    // that says so (`completed` included, when the other request finished before this one looked again).
    const retry = current ? idempotentRetry(current) : undefined;
    const error =
      retry instanceof GatewayError
        ? retry
        : status === 'dropped'
          ? new UnavailableError(
              'Request dropped from a full queue for a more important one; retry later.',
              retryAfterMs,
              'queue_full',
            )
          : status === 'rejected' && current?.reason === 'agent_quota'
            ? new RateLimitedError(
                'This agent is over its own request quota; retry after the indicated time.',
                current.retryAfterMs ?? 10_000,
                'agent_quota_exceeded',
              )
            : status === 'rejected' && current?.reason === 'wait_exceeds_deadline'
              ? new RateLimitedError(
                  `Request refused while queued: its estimated wait (${Math.round((current.retryAfterMs ?? 0) / 1000)} s) now exceeds its deadline (rate cut or more important requests ahead); retry later.`,
                  current.retryAfterMs ?? retryAfterMs,
                  'queue_wait_exceeded',
                )
              : status === 'rejected' && current?.reason === 'low_priority_timeout'
                ? new RateLimitedError(
                    'Low-priority request refused: no slot within low_priority_timeout.',
                    LOW_TIMEOUT_RETRY_AFTER_MS,
                    'low_priority_timeout',
                  )
                : status === 'abandoned' || status === 'expired'
                  ? new RateLimitedError(
                      `Request waited in the queue until its deadline (${Math.round((ticket.deadline - ticket.enqueuedAt) / 1000)} s) without a slot; retry later.`,
                      retryAfterMs,
                      'queue_wait_exceeded',
                    )
                  : new UnavailableError(
                      `Request ended as ${status}${current?.reason ? ` (${current.reason})` : ''}.`,
                      1_000,
                      'ticket_failed',
                    );
    return { kind: 'refused', status, ticket: current, error };
  }

  /**
   * `granted → claimed`: the ingress is starting the upstream call. After this the dispatcher's sweep
   * ends the ticket only once `mustFinishBy` has passed.
   */
  async claim(
    ticket: Ticket,
    mustFinishBy: number,
    unlessPaused = true,
  ): Promise<Ticket | 'paused' | undefined> {
    // Conditioned on the stored config as well: after `POST /admin/pause` returns, no grant is claimed (and so
    // none reaches the upstream), even one made just before. A passthrough grant (queue full) is the admission's
    // own and keeps its documented behaviour: it ignores pause.
    const sentAt = this.d.clock.now();
    // The granted ticket as read is passed on: the claimed one is built from it, with no read after the write.
    const res = await this.d.tickets.transition(
      ticket.id,
      'granted',
      'claimed',
      { claimedAt: sentAt, claimBy: mustFinishBy },
      { attempt: ticket.attempt, unlessPaused, known: ticket },
    );
    const took = this.d.clock.now() - sentAt;
    this.claimMs = this.claims++ === 0 ? took : 0.8 * this.claimMs + 0.2 * took;
    if ('ticket' in res) return res.ticket;
    return res.paused ? 'paused' : undefined;
  }

  /** The ticket as stored now (consistent read). */
  lookup(id: string): Promise<Ticket | undefined> {
    return this.d.tickets.get(id);
  }

  /**
   * A grant the agent will not use (gone before the call): end it and give the token back.
   * @param windowMs the upstream limit window (a token is given back only within it)
   * @param tokens an upstream with `tpm`: the grant's need there (its reservation goes back too)
   */
  async abandonGrant(
    ticket: Ticket,
    reason: string,
    windowMs = DEFAULT_CONFIG.upstreamWindowMs,
    tokens?: TokenNeed,
  ): Promise<void> {
    const res = await this.d.tickets.transition(
      ticket.id,
      'granted',
      'abandoned',
      { finishedAt: this.d.clock.now(), reason },
      { attempt: ticket.attempt, known: ticket },
    );
    if ('ticket' in res) {
      await this.bucketOf(ticket).refund(ticket.grantedAt ?? this.d.clock.now(), windowMs, tokens);
      await this.d.outcomes.record(this.d.clock.now(), { counts: { abandoned: 1 } });
    }
  }

  /**
   * Upstream said 429 / capacity before any byte reached the agent: requeue at the same priority with the
   * original enqueue time (a new message, attempt + 1).
   * @returns the requeued ticket, or undefined when it could not be requeued.
   */
  async requeue(ticket: Ticket, reason: string): Promise<Ticket | undefined> {
    const res = await this.d.tickets.transition(
      ticket.id,
      'claimed',
      'queued',
      { reason },
      { attempt: ticket.attempt, known: ticket },
    );
    if (!('ticket' in res)) return undefined;
    await this.d.outcomes.record(this.d.clock.now(), { counts: { requeued: 1 } });
    await this.enqueue(res.ticket);
    return res.ticket;
  }

  /** True when a grant is too old to call on (see isGrantStale). */
  isStale(
    ticket: Ticket,
    windowMs = DEFAULT_CONFIG.upstreamWindowMs,
    slackMs?: number,
    share?: number,
  ): boolean {
    return isGrantStale(ticket, this.d.clock.now(), windowMs, slackMs, share);
  }

  /**
   * A grant seen too late (a slow poll, a store hiccup): `granted → queued` at its original place (attempt + 1)
   * and its token given back, instead of a call that could push a window of calls over the limit.
   * @returns the requeued ticket, or undefined when it moved meanwhile.
   */
  async requeueStale(
    ticket: Ticket,
    windowMs = DEFAULT_CONFIG.upstreamWindowMs,
    reason = 'grant_stale',
    tokens?: TokenNeed,
  ): Promise<Ticket | undefined> {
    const res = await this.d.tickets.transition(
      ticket.id,
      'granted',
      'queued',
      { reason },
      { attempt: ticket.attempt, known: ticket },
    );
    if (!('ticket' in res)) return undefined;
    await this.bucketOf(ticket).refund(ticket.grantedAt ?? this.d.clock.now(), windowMs, tokens);
    await this.d.outcomes.record(this.d.clock.now(), { counts: { requeued: 1 } });
    await this.enqueue(res.ticket);
    return res.ticket;
  }

  /**
   * From an admitted ticket to a claimed grant: waits for the grant, requeues one seen too late, and settles a
   * claim lost to another request with the same Idempotency-Key (waits again, or refuses with its 409).
   */
  async untilClaimed(first: Ticket, o: UntilClaimedOptions): Promise<ClaimResult> {
    let ticket = first;
    let granted = o.passthrough ? first : undefined;
    const windowOf = o.windowOf ?? (() => o.windowMs);
    const tokensOf = o.tokensOf ?? noTokens;
    for (;;) {
      if (!granted) {
        o.onWaitStart?.();
        const pace = {
          intervalMs: await o.intervalMs(),
          windowMs: o.windowMs,
          ...(o.grantSlackMs !== undefined ? { grantSlackMs: o.grantSlackMs } : {}),
          windowOf,
          tokensOf,
        };
        const res = await this.wait(ticket, pace, {
          signal: o.signal,
          ...(o.onWaiting ? { onWaiting: o.onWaiting } : {}),
          readBy: () => this.readBy(o, ticket === first),
          ...(o.farPollMs !== undefined ? { farPollMs: o.farPollMs } : {}),
          // Admission's estimate holds for the first wait only (a requeued ticket reads the counter anew).
          ...(ticket === first && o.estimatedWaitMs !== undefined
            ? { estimatedWaitMs: o.estimatedWaitMs }
            : {}),
        });
        o.onWaitEnd?.();
        if (res.kind === 'refused') return { kind: 'refused', error: res.error };
        granted = res.ticket;
      }
      const judged = !(o.passthrough && granted === first);
      // Judged by its own upstream's window (and so slack): another upstream's may be much shorter.
      const grantWindow = windowOf(granted);
      if (judged && this.isStale(granted, grantWindow, o.grantSlackMs)) {
        // Seen too late to call on without risking the window limit: back to the queue at its place.
        const requeued = await this.requeueStale(granted, grantWindow, 'grant_stale', tokensOf(granted));
        if (requeued) {
          ticket = requeued;
          granted = undefined;
          continue;
        }
      }
      const claimed = await this.claim(granted, this.d.clock.now() + o.callBudgetMs, judged);
      if (claimed === 'paused') {
        // Paused since the grant: the slot goes back and the ticket waits (at its place) for the resume.
        const requeued = await this.requeueStale(granted, grantWindow, 'paused', tokensOf(granted));
        if (requeued) {
          ticket = requeued;
          granted = undefined;
          continue;
        }
        const current = await this.lookup(granted.id);
        const next = waitAfterLostClaim(granted, current);
        if (!next) return { kind: 'refused', error: this.grantLost() };
        ticket = next;
        granted = next.status === 'granted' ? next : undefined;
        continue;
      }
      if (!claimed) {
        const current = await this.lookup(granted.id);
        const next = waitAfterLostClaim(granted, current);
        if (next) {
          ticket = next;
          granted = next.status === 'granted' ? next : undefined;
          continue;
        }
        return {
          kind: 'refused',
          error:
            current?.status === 'claimed' || current?.status === 'completed'
              ? (idempotentRetry(current) as GatewayError)
              : this.grantLost(),
        };
      }
      // Claimed ahead of its reserved slot (see untilSlot): the call never leaves before the slot, which the
      // bucket logged the grant at.
      const early = (claimed.grantedAt ?? 0) - this.d.clock.now();
      if (early > 0) await this.d.clock.sleep(early, o.signal);
      if (o.signal.aborted) {
        await this.finish(claimed, 'abandoned', { reason: 'client_disconnected' });
        return { kind: 'gone' };
      }
      return {
        kind: 'claimed',
        ticket: claimed,
        judged,
        ...(granted.claimedAt !== undefined ? { calledAt: granted.claimedAt } : {}),
      };
    }
  }

  /** When the wait must read its ticket next: the caller's (a stream's first heartbeat), admission's recheck. */
  private readBy(o: UntilClaimedOptions, firstWait: boolean): number | undefined {
    const caller = o.readBy?.();
    const recheck =
      firstWait && o.recheckAt !== undefined && o.recheckAt > this.d.clock.now() ? o.recheckAt : undefined;
    if (caller === undefined) return recheck;
    return recheck === undefined ? caller : Math.min(caller, recheck);
  }

  /**
   * The last check before a claimed grant's request leaves (after the claim, the reply headers and the key
   * lookup): a grant older than SEND_SHARE of the slack is handed back instead of called on — `claimed → queued`
   * by this claimer only (TicketStore.unclaim restores the claim time of any earlier call, so "claimed means
   * called" holds for everyone else), its token refunded and its queue message sent again (its place kept).
   * @param o.grantUncounted a fast-path grant whose `granted` count is still to be recorded (it is, with the requeue)
   * @returns 'send'; the requeued ticket to wait on; or 'lost' when the ticket is no longer this claimer's
   */
  async beforeSend(
    claimed: Ticket,
    o: {
      windowMs: number;
      grantSlackMs?: number;
      calledAt?: number;
      grantUncounted?: boolean;
      /** An upstream with `tpm`: the grant's need there (its reservation goes back with the token). */
      tokens?: TokenNeed;
    },
  ): Promise<'send' | Ticket | 'lost'> {
    if (!this.isStale(claimed, o.windowMs, o.grantSlackMs, SEND_SHARE)) return 'send';
    const res = await this.d.tickets.unclaim(claimed, o.calledAt, 'grant_stale_at_send');
    if (!('ticket' in res)) return 'lost';
    this.stats.staleAtSend++;
    // The message first (without it nobody grants the ticket again); the refund and the count are best effort.
    await this.enqueue(res.ticket);
    await this.bucketOf(claimed)
      .refund(claimed.grantedAt ?? this.d.clock.now(), o.windowMs, o.tokens)
      .catch(unlessStoreDown(undefined));
    await this.d.outcomes
      .record(this.d.clock.now(), { counts: { requeued: 1, ...(o.grantUncounted ? { granted: 1 } : {}) } })
      .catch(() => undefined);
    return res.ticket;
  }

  private grantLost(): GatewayError {
    return new UnavailableError('The grant expired before it could be used; retry.', 1_000, 'grant_lost');
  }

  /** Records the end of a claimed ticket (and the agent's usage, in the same write where the store can). */
  async finish(ticket: Ticket, to: 'completed' | 'failed' | 'abandoned', patch: TicketPatch): Promise<void> {
    const throttled = /^upstream_(throttled|capacity)$/.test(patch.reason ?? '') ? 1 : 0;
    const usage: AgentUsageEvent = {
      requests: 1,
      ...(patch.totalTokens !== undefined ? { tokens: patch.totalTokens } : {}),
      throttled,
      ...(ticket.grantedAt !== undefined ? { queueMs: ticket.grantedAt - ticket.enqueuedAt } : {}),
    };
    const rider = this.d.usage ? { usage: { agent: ticket.agent, event: usage } } : undefined;
    let usageCounted = false;
    try {
      let moved: Awaited<ReturnType<Admission['end']>>;
      try {
        moved = await this.end(ticket, 'claimed', to, patch.reason ?? to, patch, rider);
      } catch (err) {
        // A busy usage item must not keep the ticket from ending: once more without it (its usage written apart).
        if (!rider || !(err instanceof StoreUnavailableError)) throw err;
        moved = await this.end(ticket, 'claimed', to, patch.reason ?? to, patch);
      }
      usageCounted = 'usageCounted' in moved && moved.usageCounted === true;
    } catch (err) {
      // The answer went (or goes) to the agent regardless; the claim sweep ends the ticket after its claimBy.
      if (!(err instanceof StoreUnavailableError)) throw err;
      return;
    }
    // Written after the reply ended, before the invocation returns (the agent does not wait for it).
    const budgetTokens =
      ticket.budgetDay !== undefined && patch.totalTokens
        ? this.d.budgets?.addTokens(ticket.agent, ticket.budgetDay, patch.totalTokens).catch(() => undefined)
        : undefined;
    await Promise.all([budgetTokens, usageCounted ? undefined : this.use(ticket.agent, usage)]);
  }

  private async end(
    ticket: Ticket,
    from: TicketStatus,
    to: TicketStatus,
    reason: string,
    patch: TicketPatch = {},
    opts: { usage?: { agent: string; event: AgentUsageEvent } } = {},
  ) {
    return await this.d.tickets.transition(
      ticket.id,
      from,
      to,
      { ...patch, reason, finishedAt: this.d.clock.now() },
      { attempt: ticket.attempt, known: ticket, ...opts },
    );
  }
}
