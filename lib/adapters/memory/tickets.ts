// Adapter: in-memory tickets, queues and lease with the conditional semantics of the DynamoDB / SQS ones, so the
// Admission and Dispatcher use cases can be table-tested on a fake clock (the emulator tests stay).
import { type BudgetCharge, BudgetExhaustedError } from '../../domain/agent-budget.js';
import type { Clock } from '../../domain/clock.js';
import {
  AdmissionFullError,
  AgentQueueFullError,
  ConflictError,
  IdempotencyConflictError,
} from '../../domain/errors.js';
import { applyConsume, type ConsumeAttempt } from '../../domain/gcra.js';
import type {
  BatchGrant,
  BatchGrantOutcome,
  CreateTicketOptions,
  FastGrantOutcome,
  FastGrantRefusal,
  GrantOutcome,
  LeaseState,
  LeaseStore,
  QueuedByPriority,
  ReceivedMessage,
  TicketQueue,
  TicketStore,
} from '../../domain/ports.js';
import { PRIORITIES, type Priority, priorityRank } from '../../domain/priority.js';
import type { PublishedLoad } from '../../domain/queue-estimate.js';
import {
  canTransition,
  isTerminal,
  type Ticket,
  type TicketMessage,
  type TicketPatch,
  type TicketStatus,
} from '../../domain/tickets.js';
import { type MemoryBucketStore, MemoryBudgetStore } from './stores.js';

const running = (s: TicketStatus) => s === 'granted' || s === 'claimed';
const definedOnly = (patch: TicketPatch) =>
  Object.fromEntries(Object.entries(patch).filter(([, v]) => v !== undefined)) as TicketPatch;

/** Tickets, the admission / in-flight counters and the Idempotency-Key map, as one consistent store. */
export class MemoryTicketStore implements TicketStore {
  readonly tickets = new Map<string, Ticket>();
  readonly counters = { queued: 0, inflight: 0 };
  /** Queued tickets per agent (the per-agent cap's counters). */
  private readonly agentQueued = new Map<string, number>();
  /** Queued tickets per priority (the fast path's condition). */
  readonly priorityQueued: QueuedByPriority = { urgent: 0, high: 0, normal: 0, low: 0 };
  private readonly idem = new Map<string, { ticketId: string; until: number }>();

  /** In flight per upstream after the first (the first one's count is `counters.inflight`). */
  readonly upstreamInflight = new Map<string, number>();

  /**
   * @param bucket the shared bucket item the grant transaction spends from
   * @param isPaused the stored config's paused flag (grants and claims check it, as the DynamoDB store does)
   * @param budgets the agents' day counts a create or fast grant charges in the same (modelled) transaction
   * @param upstreamBucket the bucket item of each upstream after the first (several upstreams)
   */
  constructor(
    private readonly bucket: MemoryBucketStore,
    private readonly isPaused: () => boolean = () => false,
    readonly budgets: MemoryBudgetStore = new MemoryBudgetStore(),
    private readonly upstreamBucket: (upstream: string) => MemoryBucketStore = () => {
      throw new Error('one upstream only');
    },
  ) {}

  /** The bucket a ticket of `upstream` spends from. */
  private bucketOf(upstream: string | undefined): MemoryBucketStore {
    return upstream === undefined ? this.bucket : this.upstreamBucket(upstream);
  }

  private inflightOf(upstream: string | undefined): number {
    return upstream === undefined ? this.counters.inflight : (this.upstreamInflight.get(upstream) ?? 0);
  }

  private moveInflight(upstream: string | undefined, by: number): void {
    if (upstream === undefined) this.counters.inflight += by;
    else this.upstreamInflight.set(upstream, this.inflightOf(upstream) + by);
  }

  async create(ticket: Ticket, opts: CreateTicketOptions): Promise<void> {
    if (this.tickets.has(ticket.id)) throw new ConflictError(`ticket ${ticket.id} exists`);
    if (opts.bypassAdmission) {
      if (ticket.status === 'granted' && opts.budget) {
        const refused = this.budgets.charge(opts.budget);
        if (refused) throw new BudgetExhaustedError(refused);
      }
      if (ticket.status === 'granted') this.counters.inflight++;
      this.tickets.set(ticket.id, { ...ticket });
      return;
    }
    // All conditions first, then all writes: one transaction. An Idempotency-Key's attach answers before the budget.
    const held = opts.idempotency && this.idem.get(opts.idempotency.key);
    const attach =
      !!opts.idempotency &&
      !(opts.idempotency.replaceTicketId
        ? held?.ticketId === opts.idempotency.replaceTicketId
        : !held || held.until < ticket.enqueuedAt);
    const overBudget = opts.budget && !attach ? this.budgets.refuses(opts.budget) : undefined;
    if (overBudget) throw new BudgetExhaustedError(overBudget);
    if (opts.replace) {
      const victim = this.tickets.get(opts.replace.id);
      if (victim?.status !== 'queued' || victim.attempt !== opts.replace.attempt)
        throw new ConflictError('ticket to drop is no longer queued');
    } else if (this.counters.queued >= opts.queueMaxSize) throw new AdmissionFullError(this.counters.queued);
    const victimAgent = opts.replace && this.tickets.get(opts.replace.id)?.agent;
    const agentCap = opts.maxQueuedPerAgent ?? 0;
    if (agentCap > 0 && victimAgent !== ticket.agent && this.queuedOf(ticket.agent) >= agentCap)
      throw new AgentQueueFullError(this.queuedOf(ticket.agent));
    const idem = opts.idempotency;
    if (idem) {
      const held = this.idem.get(idem.key);
      const free = idem.replaceTicketId
        ? held?.ticketId === idem.replaceTicketId
        : !held || held.until < ticket.enqueuedAt;
      if (!free) throw new IdempotencyConflictError(held?.ticketId);
      this.idem.set(idem.key, { ticketId: ticket.id, until: idem.untilMs });
    }
    if (opts.replace) {
      const victim = this.tickets.get(opts.replace.id)!;
      this.tickets.set(victim.id, {
        ...victim,
        status: 'dropped',
        reason: 'dropped_for_newer',
        finishedAt: ticket.enqueuedAt,
      });
      this.moveAgent(victim.agent, -1);
      this.priorityQueued[victim.priority]--;
    } else this.counters.queued++;
    this.moveAgent(ticket.agent, 1);
    this.priorityQueued[ticket.priority]++;
    if (opts.budget) this.budgets.charge(opts.budget);
    this.tickets.set(ticket.id, { ...ticket });
  }

  async get(id: string): Promise<Ticket | undefined> {
    const t = this.tickets.get(id);
    return t && { ...t };
  }

  async grant(
    ticket: Pick<Ticket, 'id' | 'attempt'>,
    attempt: ConsumeAttempt,
    patch: TicketPatch,
    opts: { maxInflight?: number } = {},
  ): Promise<GrantOutcome> {
    const current = this.tickets.get(ticket.id);
    const bucket = this.bucketOf(patch.upstream);
    const next = applyConsume(bucket.state, attempt);
    if (current?.status !== 'queued' || current.attempt !== ticket.attempt)
      return { kind: 'ticket_conflict', current: current && { ...current } };
    if (this.isPaused()) return { kind: 'paused' };
    if (opts.maxInflight && this.inflightOf(patch.upstream) >= opts.maxInflight)
      return { kind: 'inflight_full', inflight: this.inflightOf(patch.upstream) };
    if (next === undefined || !bucket.state)
      return { kind: 'bucket_conflict', current: bucket.state && { ...bucket.state } };
    bucket.state = next;
    this.tickets.set(ticket.id, { ...current, ...definedOnly(patch), status: 'granted' });
    this.counters.queued--;
    this.moveAgent(current.agent, -1);
    this.priorityQueued[current.priority]--;
    this.moveInflight(patch.upstream, 1);
    return { kind: 'granted' };
  }

  async grantBatch(
    batch: readonly BatchGrant[],
    attempt: ConsumeAttempt,
    opts: { maxInflight?: number } = {},
  ): Promise<BatchGrantOutcome> {
    // All conditions first, then all writes: one transaction.
    const indexes = batch
      .map((t, i) => ({ t, i, current: this.tickets.get(t.id) }))
      .filter(({ t, current }) => current?.status !== 'queued' || current.attempt !== t.attempt)
      .map(({ i }) => i);
    if (indexes.length) return { kind: 'ticket_conflict', indexes };
    if (this.isPaused()) return { kind: 'paused' };
    if (opts.maxInflight && this.counters.inflight + batch.length > opts.maxInflight)
      return { kind: 'inflight_full', inflight: this.counters.inflight };
    const next = applyConsume(this.bucket.state, attempt);
    if (next === undefined || !this.bucket.state)
      return { kind: 'bucket_conflict', current: this.bucket.state && { ...this.bucket.state } };
    this.bucket.state = next;
    for (const t of batch) {
      const current = this.tickets.get(t.id)!;
      this.tickets.set(t.id, { ...current, ...definedOnly(t.patch), status: 'granted' });
      this.counters.queued--;
      this.moveAgent(current.agent, -1);
      this.priorityQueued[current.priority]--;
      this.counters.inflight++;
    }
    return { kind: 'granted' };
  }

  async fastGrant(
    ticket: Ticket,
    attempt: ConsumeAttempt,
    opts: {
      maxInflight: number;
      budget?: BudgetCharge;
      idempotency?: { key: string; untilMs: number };
      ignoreQueued?: boolean;
    },
  ): Promise<FastGrantOutcome> {
    if (this.tickets.has(ticket.id)) throw new ConflictError(`ticket ${ticket.id} exists`);
    const bucket = this.bucketOf(ticket.upstream);
    const next = applyConsume(bucket.state, attempt);
    const checked = PRIORITIES.filter((p) => priorityRank(p) <= priorityRank(ticket.priority));
    // As DynamoDB's cancellation reasons tell them: every queued check's count, a refusal for any condition.
    const seen = Object.fromEntries(checked.map((p) => [p, Math.max(0, this.priorityQueued[p])]));
    // …and the bucket as stored when the attempt's condition fails too.
    const refused = (r: FastGrantRefusal): FastGrantOutcome => ({
      ...r,
      ...(opts.ignoreQueued ? {} : { queuedSeen: seen }),
      ...(next?.tat === undefined && bucket.state && r.kind !== 'bucket_conflict'
        ? { bucketSeen: { ...bucket.state } }
        : {}),
    });
    const held = opts.idempotency && this.idem.get(opts.idempotency.key);
    if (held && held.until >= ticket.enqueuedAt) return refused({ kind: 'idempotency_held' });
    const overBudget = opts.budget && this.budgets.refuses(opts.budget);
    if (overBudget) return refused({ kind: 'budget_exceeded', used: overBudget });
    if (this.isPaused()) return refused({ kind: 'paused' });
    const ahead = checked.reduce((sum, p) => sum + Math.max(0, this.priorityQueued[p]), 0);
    if (ahead > 0 && !opts.ignoreQueued) return refused({ kind: 'queue_busy', queued: ahead });
    if (opts.maxInflight > 0 && this.inflightOf(ticket.upstream) >= opts.maxInflight)
      return refused({ kind: 'inflight_full' });
    if (next?.tat === undefined)
      return refused({ kind: 'bucket_conflict', current: bucket.state && { ...bucket.state } });
    // The whole successor state: a window-exact bucket logs the grant too.
    bucket.state = next;
    if (opts.budget) this.budgets.charge(opts.budget);
    if (opts.idempotency)
      this.idem.set(opts.idempotency.key, { ticketId: ticket.id, until: opts.idempotency.untilMs });
    this.tickets.set(ticket.id, { ...ticket });
    this.moveInflight(ticket.upstream, 1);
    return { kind: 'granted' };
  }

  async queuedByPriority(): Promise<QueuedByPriority> {
    return { ...this.priorityQueued };
  }

  /** The dispatcher's last published load (publishLoad). */
  load: PublishedLoad | undefined;

  async queuedWithLoad(): Promise<{ queued: QueuedByPriority; load?: PublishedLoad }> {
    return { queued: { ...this.priorityQueued }, ...(this.load ? { load: structuredClone(this.load) } : {}) };
  }

  async publishLoad(load: PublishedLoad): Promise<void> {
    this.load = structuredClone(load);
  }

  async transition(
    id: string,
    from: TicketStatus,
    to: TicketStatus,
    patch: TicketPatch,
    // `usage` is not kept here (no usage counters): the caller records it.
    opts: Parameters<TicketStore['transition']>[4] = {},
  ): Promise<{ ticket: Ticket } | { conflict: Ticket | undefined; paused?: true }> {
    const current = this.tickets.get(id);
    if (
      !canTransition(from, to) ||
      (from === 'queued' && to === 'granted') ||
      current?.status !== from ||
      (opts.attempt !== undefined && current.attempt !== opts.attempt)
    )
      return { conflict: current && { ...current } };
    if (opts.unlessPaused && this.isPaused()) return { conflict: { ...current }, paused: true };
    const next: Ticket = {
      ...current,
      ...definedOnly(patch),
      status: to,
      attempt: to === 'queued' ? current.attempt + 1 : current.attempt,
    };
    this.tickets.set(id, next);
    if (from === 'queued' && to !== 'queued') {
      this.counters.queued--;
      this.moveAgent(current.agent, -1);
      this.priorityQueued[current.priority]--;
    }
    if (to === 'queued' && from !== 'queued') {
      this.counters.queued++;
      this.moveAgent(current.agent, 1);
      this.priorityQueued[current.priority]++;
    }
    if (running(from) && !running(to)) this.moveInflight(current.upstream, -1);
    // A requeued ticket may go to another pool member next time.
    if (to === 'queued') delete next.upstream;
    return { ticket: { ...next } };
  }

  async unclaim(
    claimed: Ticket,
    calledAt: number | undefined,
    reason: string,
  ): Promise<{ ticket: Ticket } | { conflict: Ticket | undefined }> {
    const current = this.tickets.get(claimed.id);
    if (
      current?.status !== 'claimed' ||
      current.attempt !== claimed.attempt ||
      current.claimedAt !== claimed.claimedAt
    )
      return { conflict: current && { ...current } };
    const { claimedAt: _mine, claimBy: _by, ...rest } = current;
    const next: Ticket = {
      ...rest,
      ...(calledAt !== undefined ? { claimedAt: calledAt } : {}),
      status: 'queued',
      attempt: current.attempt + 1,
      reason,
    };
    this.tickets.set(claimed.id, next);
    this.counters.queued++;
    this.moveAgent(current.agent, 1);
    this.priorityQueued[current.priority]++;
    this.counters.inflight--;
    return { ticket: { ...next } };
  }

  async oldestQueued(priority: Priority): Promise<Ticket | undefined> {
    const [t] = await this.listPhase(`queued#${priority}`, Number.MAX_SAFE_INTEGER, 1);
    return t;
  }

  async listPhase(phase: string, before: number, limit: number): Promise<Ticket[]> {
    const phaseOf = (t: Ticket) =>
      t.status === 'queued'
        ? { phase: `queued#${t.priority}`, at: t.enqueuedAt }
        : running(t.status)
          ? { phase: t.status, at: t.claimBy ?? t.grantedAt ?? t.enqueuedAt }
          : undefined;
    return [...this.tickets.values()]
      .map((t) => ({ t, p: phaseOf(t) }))
      .filter(({ t, p }) => p?.phase === phase && p.at < before && !isTerminal(t.status))
      .sort((a, b) => a.p!.at - b.p!.at)
      .slice(0, limit)
      .map(({ t }) => ({ ...t }));
  }

  async admissionCount(): Promise<number> {
    return this.counters.queued;
  }

  async agentQueuedCounts(): Promise<Record<string, number>> {
    return Object.fromEntries(this.agentQueued);
  }

  private queuedOf(agent: string): number {
    return this.agentQueued.get(agent) ?? 0;
  }

  private moveAgent(agent: string, by: number): void {
    const next = this.queuedOf(agent) + by;
    if (next > 0) this.agentQueued.set(agent, next);
    else this.agentQueued.delete(agent);
  }

  async counts(): Promise<{ queued: number; inflight: number }> {
    return { ...this.counters };
  }

  async reconcileAdmission(): Promise<number> {
    const all = [...this.tickets.values()];
    this.counters.queued = all.filter((t) => t.status === 'queued').length;
    this.counters.inflight = all.filter((t) => running(t.status) && t.upstream === undefined).length;
    this.upstreamInflight.clear();
    for (const t of all) if (running(t.status) && t.upstream !== undefined) this.moveInflight(t.upstream, 1);
    this.agentQueued.clear();
    for (const p of PRIORITIES) this.priorityQueued[p] = 0;
    for (const t of all) {
      if (t.status !== 'queued') continue;
      this.moveAgent(t.agent, 1);
      this.priorityQueued[t.priority]++;
    }
    return this.counters.queued;
  }
}

/** The four priority queues: FIFO per priority, messages invisible while received until deleted or timed out. */
export class MemoryTicketQueue implements TicketQueue {
  private readonly queues = new Map<
    Priority,
    { message: TicketMessage; receipt: string; visibleAt: number; receiveCount: number }[]
  >(PRIORITIES.map((p) => [p, []]));
  private receipts = 0;

  /** @param visibilityMs how long a received message stays invisible @default 30000 */
  constructor(
    private readonly clock: Clock,
    private readonly visibilityMs = 30_000,
  ) {}

  async send(message: TicketMessage): Promise<void> {
    this.queues.get(message.priority)!.push({ message, receipt: '', visibleAt: 0, receiveCount: 0 });
  }

  /**
   * Returns what is visible now. An empty poll yields one real timer tick instead of a long poll (a fake
   * clock does not move while it waits), so a poller never spins on microtasks alone.
   */
  async receive(priority: Priority, max: number): Promise<ReceivedMessage[]> {
    const got = this.take(priority, max);
    if (got.length > 0) return got;
    await new Promise((r) => setTimeout(r, 1));
    return this.take(priority, max);
  }

  private take(priority: Priority, max: number): ReceivedMessage[] {
    const now = this.clock.now();
    const out: ReceivedMessage[] = [];
    for (const m of this.queues.get(priority)!) {
      if (out.length >= max) break;
      if (m.visibleAt > now) continue;
      m.receipt = `r${++this.receipts}`;
      m.visibleAt = now + this.visibilityMs;
      m.receiveCount++;
      out.push({ message: m.message, receipt: m.receipt, receiveCount: m.receiveCount });
    }
    return out;
  }

  async delete(priority: Priority, receipt: string): Promise<void> {
    const q = this.queues.get(priority)!;
    const i = q.findIndex((m) => m.receipt === receipt);
    if (i >= 0) q.splice(i, 1);
  }

  async deleteBatch(priority: Priority, receipts: readonly string[]): Promise<string[]> {
    for (const r of receipts) await this.delete(priority, r);
    return [];
  }

  async extend(priority: Priority, receipt: string, seconds: number): Promise<void> {
    const m = this.queues.get(priority)!.find((x) => x.receipt === receipt);
    if (m) m.visibleAt = this.clock.now() + seconds * 1000;
  }

  async depth(priority: Priority): Promise<{ visible: number; inFlight: number }> {
    const now = this.clock.now();
    const q = this.queues.get(priority)!;
    const inFlight = q.filter((m) => m.visibleAt > now).length;
    return { visible: q.length - inFlight, inFlight };
  }
}

/** The dispatcher's lease and doorbell. */
export class MemoryLeaseStore implements LeaseStore {
  state: LeaseState = { rings: 0 };

  constructor(private readonly clock: Clock) {}

  async acquire(
    owner: string,
    now: number,
    ttlMs: number,
  ): Promise<{ acquired: boolean; state: LeaseState }> {
    const s = this.state;
    if (s.owner && s.owner !== owner && (s.expiresAt ?? 0) > now) return { acquired: false, state: { ...s } };
    this.state = {
      ...s,
      owner,
      expiresAt: now + ttlMs,
      ...(s.owner === owner && (s.expiresAt ?? 0) > now ? {} : { acquiredAt: now }),
    };
    return { acquired: true, state: { ...this.state } };
  }

  async renew(owner: string, now: number, ttlMs: number): Promise<boolean> {
    if (this.state.owner !== owner) return false;
    this.state = { ...this.state, expiresAt: now + ttlMs };
    return true;
  }

  async release(owner: string, seenRings: number): Promise<boolean> {
    if (this.state.owner !== owner || this.state.rings !== seenRings) return false;
    const { owner: _owner, expiresAt: _expiresAt, ...rest } = this.state;
    this.state = { ...rest, releasedAt: this.clock.now() };
    return true;
  }

  async ring(): Promise<LeaseState> {
    this.state = { ...this.state, rings: this.state.rings + 1 };
    return { ...this.state };
  }

  async get(): Promise<LeaseState> {
    return { ...this.state };
  }
}
