// Domain ports: the stores and queues the use cases need. Adapters (DynamoDB, SQS, memory) implement them.
import type { BudgetCharge, BudgetUsage } from './agent-budget.js';
import type { GatewayConfig } from './config.js';
import type { BucketParams, BucketState, ConsumeAttempt } from './gcra.js';
import type { OutcomeEvent, SlotCounters } from './outcomes.js';
import type { Priority } from './priority.js';
import type { PublishedLoad } from './queue-estimate.js';
import type { CachedAnswer } from './response-cache.js';
import type { RetreatRecord } from './retreat.js';
import type { Ticket, TicketMessage, TicketPatch, TicketStatus } from './tickets.js';
import type { TokenEntry, TokenLog, TokenReserve } from './token-window.js';

/** Result of a conditional consume: the new tat, or the state that made the condition fail. */
export type ConsumeOutcome = { ok: true; tat: number } | { ok: false; current: BucketState | undefined };

/** The GCRA bucket item. Every method is one conditional write (or one read). */
export interface BucketStore {
  get(): Promise<BucketState | undefined>;
  /** Creates the item with these params if it does not exist; returns what is stored. */
  ensure(params: BucketParams): Promise<BucketState>;
  consume(attempt: ConsumeAttempt): Promise<ConsumeOutcome>;
  /**
   * Writes `next` only if the item still holds `expected` (tat and params). Never changes the token log, unless
   * `tokens` is given: then the same write sets the token entries too, conditioned on their version as well (a
   * refund gives the request token and the token reservation back at once).
   */
  compareAndSet(expected: BucketState, next: BucketState, tokens?: TokenReserve): Promise<boolean>;
  /**
   * Sets the token entries (an upstream with `tpm`) only if their version is still `expectedVersion` (0: never
   * written); nothing else of the item changes.
   * @returns ok, or the token log that made the condition fail
   */
  writeTokens(
    expectedVersion: number,
    entries: readonly TokenEntry[],
  ): Promise<{ ok: true } | { ok: false; current: TokenLog | undefined }>;
}

/** Grant outcome: the ticket changed hands, or why not. */
export type GrantOutcome =
  | { kind: 'granted' }
  | { kind: 'bucket_conflict'; current: BucketState | undefined }
  | { kind: 'ticket_conflict'; current: Ticket | undefined }
  /** max_inflight reached: nothing written. */
  | { kind: 'inflight_full'; inflight: number }
  /** The agent's own quota bucket had no token: nothing written. */
  | { kind: 'agent_quota'; current: BucketState | undefined }
  /** The config item says paused (checked in the grant's own transaction, never a cached read): nothing written. */
  | { kind: 'paused' };

/** Batch grant outcome: as GrantOutcome, but a ticket conflict names the refused tickets (nothing written). */
export type BatchGrantOutcome =
  | Exclude<GrantOutcome, { kind: 'ticket_conflict' }>
  | { kind: 'ticket_conflict'; indexes: number[] };

/** One ticket of a batch grant, with its own patch (grantedAt, claimBy). */
export interface BatchGrant {
  id: string;
  attempt: number;
  agent: string;
  /** Its priority's queued counter moves with the grant. */
  priority: Priority;
  patch: TicketPatch;
}

/** Fast-path grant outcome: the ticket was written as claimed, or the condition that refused it. */
export type FastGrantOutcome =
  | { kind: 'granted' }
  | (FastGrantRefusal & {
      /**
       * What the refusal told of the queued counters it checked: the count of the ticket's priority and of each more
       * important one (0 for a check that held). Absent unless it told them all (a roomy grant checks none; a
       * transaction cancelled for anything but its conditions says nothing).
       */
      queuedSeen?: Partial<QueuedByPriority>;
      /**
       * The bucket as stored, when the refusal told it (its condition failed too: the attempt was planned from an
       * older state). Admission's estimate counts the slots reserved ahead by it.
       */
      bucketSeen?: BucketState;
    });

/** Why a fast grant was refused. */
export type FastGrantRefusal =
  | { kind: 'bucket_conflict'; current: BucketState | undefined }
  /**
   * Something waits at this priority or above (the dispatcher serves it first): `queued`, how many, when the
   * refusal told.
   */
  | { kind: 'queue_busy'; queued?: number }
  | { kind: 'inflight_full' }
  /** An operator paused the gateway. */
  | { kind: 'paused' }
  /** The agent's daily budget refused the charge (what its day item held). */
  | { kind: 'budget_exceeded'; used: BudgetUsage }
  /** The Idempotency-Key points at a live ticket (or one to replace): the queue path settles it. */
  | { kind: 'idempotency_held' };

/** Queued tickets per priority, as the per-priority counters hold them. */
export type QueuedByPriority = Record<Priority, number>;

export interface CreateTicketOptions {
  queueMaxSize: number;
  /** Queued tickets one agent may have (its counter moves in the same transaction); 0 or unset = no cap. */
  maxQueuedPerAgent?: number;
  /** drop_lowest: this queued ticket is dropped in the same transaction (admission count unchanged). */
  replace?: Pick<Ticket, 'id' | 'attempt'> & { agent?: string; priority?: Priority };
  /** passthrough: the ticket skips the admission counter (it does not wait in the queue). */
  bypassAdmission?: boolean;
  /**
   * Idempotency-Key (`agent#key`): mapped to this ticket until `untilMs`; `replaceTicketId` takes over a key
   * whose earlier ticket ended without an answer.
   * @throws IdempotencyConflictError when the key maps to another live ticket
   */
  idempotency?: { key: string; untilMs: number; replaceTicketId?: string };
  /**
   * The agent's daily budget: one request counted on its day item in the same transaction, refused (nothing
   * written) when a limit is reached.
   * @throws BudgetExhaustedError with what the day item held
   */
  budget?: BudgetCharge;
}

/** Tickets plus the admission counter they move. */
export interface TicketStore {
  /**
   * Creates a queued ticket and counts it, in one transaction.
   * @throws AdmissionFullError when the counter is at `queueMaxSize` (nothing written).
   * @throws AgentQueueFullError when the agent's counter is at `maxQueuedPerAgent` (nothing written).
   * @throws ConflictError when `replace` is no longer queued.
   */
  create(ticket: Ticket, opts: CreateTicketOptions): Promise<void>;
  get(id: string): Promise<Ticket | undefined>;
  /**
   * Atomically consumes a token and flips `queued → granted` (attempt must match); the admission counter drops
   * and the in-flight counter rises (refused at `maxInflight`), unless the stored config says paused. The token
   * and the in-flight count are `patch.upstream`'s (absent: the first upstream's, under the single-upstream keys).
   * Idempotent under SDK retries (client request token).
   */
  grant(
    ticket: Pick<Ticket, 'id' | 'attempt'> & { agent?: string; priority?: Priority },
    attempt: ConsumeAttempt,
    patch: TicketPatch,
    opts?: { maxInflight?: number; agentQuota?: { bucketKey: string; attempt: ConsumeAttempt } },
  ): Promise<GrantOutcome>;
  /**
   * grant() for several tickets in one transaction: one bucket write taking `tickets.length` tokens, every
   * ticket `queued → granted`, the counters moved by the total (in-flight capped so all fit under `maxInflight`),
   * the stored paused flag checked. All or nothing.
   */
  grantBatch(
    tickets: readonly BatchGrant[],
    attempt: ConsumeAttempt,
    opts?: { maxInflight?: number },
  ): Promise<BatchGrantOutcome>;
  /**
   * Conditional move `from → to` (and attempt, when given); only moves in TRANSITIONS, and never
   * `queued → granted` (that spends a token: grant() only). Leaving `queued` decrements the counter;
   * entering `queued` (requeue) increments it and bumps the attempt.
   * `known`: the caller's current copy, so the store need not read the ticket back after a transaction.
   * `unlessPaused`: the move also requires the stored config not to say paused (the claim: pause is exact).
   * `usage`: the agent's usage to count with the move; a store that keeps the usage counters counts it in the same
   * write (`usageCounted`: one call for both), else the caller records it.
   * @returns the updated ticket, or `{ conflict }` with the current one (`paused` when only the pause refused).
   */
  transition(
    id: string,
    from: TicketStatus,
    to: TicketStatus,
    patch: TicketPatch,
    opts?: {
      attempt?: number;
      known?: Ticket;
      unlessPaused?: boolean;
      usage?: { agent: string; event: AgentUsageEvent };
    },
  ): Promise<{ ticket: Ticket; usageCounted?: true } | { conflict: Ticket | undefined; paused?: true }>;
  /**
   * `claimed → queued` made by the claimer alone, when its upstream call never left (the grant grew older than
   * the slack between the claim and the send). Conditioned on the attempt and on the claimer's own `claimedAt`;
   * `claimedAt` goes back to `calledAt` (the call of an earlier attempt that did reach the upstream; undefined:
   * removed) and `claimBy` is removed, so "claimed means called" stays true for every other reader
   * (Idempotency-Key, the claim sweep). Counters move as for any requeue (attempt + 1).
   * @returns the requeued ticket, or `{ conflict }` with the current one (not claimed by this claimer any more)
   */
  unclaim(
    claimed: Ticket,
    calledAt: number | undefined,
    reason: string,
  ): Promise<{ ticket: Ticket } | { conflict: Ticket | undefined }>;
  /**
   * Fast path: in one transaction, spends a token (`attempt`), writes the new ticket as already `claimed` and
   * counts it in flight — only if nothing is queued at its priority or above, in-flight is below `maxInflight`
   * (0 = no cap) and the stored config is not paused. With `idempotency`, the key → ticket mapping is written in
   * the same transaction, only while the key is free (as create's: unused or past its `until`). Nothing is
   * written otherwise.
   */
  fastGrant(
    ticket: Ticket,
    attempt: ConsumeAttempt,
    /** The token and the in-flight count are `ticket.upstream`'s (absent: the first upstream's). */
    opts: {
      maxInflight: number;
      budget?: BudgetCharge;
      idempotency?: { key: string; untilMs: number };
      /**
       * The attempt leaves plenty of the burst free (Admission's roomy grant): the queued counters are not
       * checked, as the token taken is one nobody waiting could get now.
       */
      ignoreQueued?: boolean;
    },
  ): Promise<FastGrantOutcome>;
  /** Queued tickets per priority (the counters moved with every ticket entering or leaving `queued`). */
  queuedByPriority(): Promise<QueuedByPriority>;
  /**
   * queuedByPriority() and, in the same read, the dispatcher's last published load (fail fast at admission).
   */
  queuedWithLoad(): Promise<{ queued: QueuedByPriority; load?: PublishedLoad }>;
  /**
   * The dispatcher's measured load of more important work, for admission: one plain write now and then, on an
   * item of its own beside the per-priority counters (no ticket transaction touches it).
   */
  publishLoad(load: PublishedLoad): Promise<void>;
  /** Oldest queued ticket of a priority (drop_lowest picks its victim here). */
  oldestQueued(priority: Priority): Promise<Ticket | undefined>;
  /** Tickets in a phase whose phase time is before `before` (granted: claimBy; queued: enqueuedAt). */
  listPhase(
    phase: 'granted' | 'claimed' | `queued#${Priority}`,
    before: number,
    limit: number,
  ): Promise<Ticket[]>;
  /** Current value of the admission counter. */
  admissionCount(): Promise<number>;
  /** Queued tickets per agent as the per-agent counters hold them (agents with none may be absent). */
  agentQueuedCounts(): Promise<Record<string, number>>;
  /** Queued (admission) and in-flight (granted or claimed) counters. */
  counts(): Promise<{ queued: number; inflight: number }>;
  /**
   * Sets the counters (global, per agent, per priority) to the true numbers of queued and running tickets
   * (drift repair); returns queued.
   */
  reconcileAdmission(): Promise<number>;
}

export interface OutcomeStore {
  record(now: number, event: OutcomeEvent): Promise<void>;
  /** Slots with start in [fromSlot, toSlot]. Missing slots are absent. */
  read(fromMs: number, toMs: number): Promise<SlotCounters[]>;
}

export interface RetreatStore {
  get(): Promise<RetreatRecord | undefined>;
  /** Writes `next` only if the stored version is `expectedVersion` (undefined = must not exist). */
  put(next: RetreatRecord, expectedVersion: number | undefined): Promise<boolean>;
}

export interface ConfigChange {
  at: number;
  by: string;
  field: string;
  from: unknown;
  to: unknown;
}

export interface VersionedConfig {
  config: GatewayConfig;
  version: number;
  updatedAt: number;
  updatedBy: string;
}

export interface ConfigStore {
  get(): Promise<VersionedConfig | undefined>;
  /** Writes if the version still matches (undefined = create); records the changes in the history. */
  put(next: VersionedConfig, expectedVersion: number | undefined, changes: ConfigChange[]): Promise<boolean>;
  history(limit: number): Promise<ConfigChange[]>;
}

/** One agent's share of a finished request (queueMs only when it was granted). */
export interface AgentUsageEvent {
  requests?: number;
  tokens?: number;
  /** 429s the agent received (upstream after requeues, its quota, the low-priority timeout). */
  throttled?: number;
  refused?: number;
  queueMs?: number;
}

export interface AgentUsage {
  agent: string;
  requests: number;
  tokens: number;
  throttled: number;
  refused: number;
  avgQueueMs: number;
}

/** Per-agent usage counters with bounded cost (per slot, TTL; never metric dimensions). */
export interface UsageStore {
  record(agent: string, now: number, event: AgentUsageEvent): Promise<void>;
  read(now: number, span: 'hour' | 'day'): Promise<AgentUsage[]>;
}

/** Per-agent per-UTC-day counts for budgets (one item per agent and day, written only for agents with a budget). */
export interface BudgetStore {
  /** Adds an answer's tokens to the agent's day (the day it was admitted on). */
  addTokens(agent: string, day: string, tokens: number): Promise<void>;
  /** What one agent used on `day` (zeros when nothing was counted). */
  used(agent: string, day: string): Promise<BudgetUsage>;
  /** Every agent counted on `day`, with the limits in force at its last admitted request. */
  day(day: string): Promise<BudgetDayRow[]>;
}

export interface BudgetDayRow extends BudgetUsage {
  agent: string;
  requestsLimit?: number;
  tokensLimit?: number;
}

export interface AgentKey {
  keyHash: string;
  agent: string;
  maxPriority: Priority;
  enabled: boolean;
  createdAt: number;
  /** Rotation: the old key stops working after this time. */
  expiresAt?: number;
  /** Requests per minute this agent may get at most. */
  quotaRpm?: number;
  /** Share (0–1] of the effective rate this agent may use at most. */
  quotaShare?: number;
  /** Last successful authentication (updated at most hourly). */
  lastUsedAt?: number;
  /** Daily budgets (UTC day, shared by the agent's keys): requests admitted and answer tokens. */
  budgetRequestsDay?: number;
  budgetTokensDay?: number;
  /** This agent's response cache default TTL (s), over the config's `cache_ttl_s`; 0 = off for this agent. */
  cacheTtlS?: number;
}

export interface KeyStore {
  get(keyHash: string): Promise<AgentKey | undefined>;
  put(key: AgentKey): Promise<void>;
  list(): Promise<AgentKey[]>;
  setEnabled(keyHash: string, enabled: boolean): Promise<void>;
  /** Sets (a number) or clears (null) a key's daily budgets; fields left out stay as they are. */
  setBudget(
    keyHash: string,
    budget: { budgetRequestsDay?: number | null; budgetTokensDay?: number | null },
  ): Promise<void>;
  /** Ends a key's validity at `at` (rotation overlap). */
  setExpiry(keyHash: string, at: number): Promise<void>;
  /** Records use, at most once per `everyMs` (a conditional write; false when skipped). */
  touch(keyHash: string, now: number, everyMs: number): Promise<boolean>;
}

export interface LeaseState {
  owner?: string;
  expiresAt?: number;
  rings: number;
  /** When the current (or last) owner took the lease, and when it was last released. */
  acquiredAt?: number;
  releasedAt?: number;
}

/** The dispatcher singleton's lease and doorbell. */
export interface LeaseStore {
  /** Takes the lease if free, expired or already ours. */
  acquire(owner: string, now: number, ttlMs: number): Promise<{ acquired: boolean; state: LeaseState }>;
  renew(owner: string, now: number, ttlMs: number): Promise<boolean>;
  /** Gives the lease up only if no ring arrived since `seenRings`; false = someone rang, keep working. */
  release(owner: string, seenRings: number): Promise<boolean>;
  /** Rings the doorbell; returns the lease after the ring (live if owned and not expired at `now`). */
  ring(): Promise<LeaseState>;
  get(): Promise<LeaseState>;
}

export interface ReceivedMessage {
  message: TicketMessage;
  receipt: string;
  receiveCount: number;
}

/** The four priority queues. */
export interface TicketQueue {
  send(message: TicketMessage): Promise<void>;
  /** Long poll (never short-poll: a short poll samples only some SQS servers). */
  receive(
    priority: Priority,
    max: number,
    waitSeconds: number,
    signal?: AbortSignal,
  ): Promise<ReceivedMessage[]>;
  delete(priority: Priority, receipt: string): Promise<void>;
  /**
   * Deletes up to 10 messages of one priority in one call (DeleteMessageBatch).
   * @returns the receipts that were not deleted (to retry; a message never deleted only comes back)
   */
  deleteBatch(priority: Priority, receipts: readonly string[]): Promise<string[]>;
  extend(priority: Priority, receipt: string, seconds: number): Promise<void>;
  depth(priority: Priority): Promise<{ visible: number; inFlight: number }>;
}

/** Asynchronous invoke of the dispatcher (the doorbell's second half). */
export interface DispatcherInvoker {
  wake(): Promise<void>;
}

/** A cache entry as stored: an answer, or a pending mark held by the request that is fetching it. */
export type CacheEntry =
  | ({ kind: 'answer' } & CachedAnswer)
  /** `rank`: the holder's priority rank (0 = urgent); a more important request does not wait behind it. */
  | { kind: 'pending'; owner: string; until: number; rank: number };

/**
 * The response cache (lib/domain/response-cache.ts). Keys already carry their scope. Expired entries may still be
 * stored (TTL deletes late): readers judge `expiresAt` / `until` themselves.
 */
export interface ResponseCacheStore {
  get(key: string): Promise<CacheEntry | undefined>;
  /**
   * Marks the key pending for `owner` until `until`, only when it holds nothing live (no answer before its
   * expiry, no other owner's mark before its `until`). The Idempotency-Key mapping's conditional put, for answers.
   * @returns true when this owner holds the mark; otherwise the entry that refused it
   */
  claim(
    key: string,
    owner: string,
    until: number,
    now: number,
    rank: number,
  ): Promise<true | CacheEntry | undefined>;
  /**
   * Stores an answer (replacing any mark).
   * @returns 'too_large' (nothing written) when it does not fit the store's item limit
   */
  put(key: string, answer: CachedAnswer): Promise<'stored' | 'too_large'>;
  /** Ends `owner`'s pending mark (the call gave no answer to store) so waiters stop waiting. */
  release(key: string, owner: string, now: number): Promise<void>;
  /** Deletes every entry; returns how many. */
  purge(): Promise<number>;
}
