// Adapter: tickets table plus the admission counter; every status change is a conditional write.
import { randomUUID } from 'node:crypto';
import {
  type DynamoDBClient,
  GetItemCommand,
  PutItemCommand,
  QueryCommand,
  type TransactWriteItem,
  TransactWriteItemsCommand,
  UpdateItemCommand,
} from '@aws-sdk/client-dynamodb';
import { marshall } from '@aws-sdk/util-dynamodb';
import type { BudgetCharge } from '../../domain/agent-budget.js';
import { BudgetExhaustedError } from '../../domain/agent-budget.js';
import {
  AdmissionFullError,
  AgentQueueFullError,
  ConflictError,
  IdempotencyConflictError,
} from '../../domain/errors.js';
import type { ConsumeAttempt } from '../../domain/gcra.js';
import type {
  AgentUsageEvent,
  BatchGrant,
  BatchGrantOutcome,
  CreateTicketOptions,
  FastGrantOutcome,
  FastGrantRefusal,
  GrantOutcome,
  QueuedByPriority,
  TicketStore,
} from '../../domain/ports.js';
import { PRIORITIES, type Priority, priorityRank } from '../../domain/priority.js';
import type { PublishedLoad } from '../../domain/queue-estimate.js';
import {
  canTransition,
  isTerminal,
  type Ticket,
  type TicketPatch,
  type TicketStatus,
} from '../../domain/tickets.js';
import { upstreamStateKey } from '../../domain/upstreams.js';
import { translateStoreErrors } from '../aws-errors.js';
import { bucketStateFromItem, consumeUpdate } from './bucket-store.js';
import { budgetChargeItem, budgetUsageOf } from './budget-store.js';
import {
  CONFIG_ITEM_KEY,
  cancellation,
  cancelledByConditionsOnly,
  conditionFailure,
  type Item,
  n,
  plain,
  requestToken,
  s,
  stateKey,
  ttlFrom,
} from './common.js';
import { retryTransactionConflicts } from './transaction-conflicts.js';
import { usageUpdate } from './usage-store.js';

export interface TicketTables {
  ticketsTable: string;
  stateTable: string;
  bucketKey?: string;
  /**
   * The limited upstreams after the first: a ticket naming one spends that upstream's bucket item and in-flight
   * count (the first upstream's are the single-upstream items). @default none
   */
  otherUpstreams?: readonly string[];
  /**
   * The agents' usage counters live on the state table (as DynamoUsageStore keeps them): a ticket's counted move
   * carries the usage it is given in its own transaction (usage-store.ts usageUpdate); false leaves it to the
   * caller. @default true
   */
  countsUsage?: boolean;
}

const ADMISSION_KEY = stateKey('admission', 'global');
/** Per-agent queued counters: one item per agent under this partition, moved with the global counter. */
const AGENT_QUEUED_PK = 'agentq';
/**
 * Per-priority queued counters: one item per priority under this partition (one Query reads all four), apart
 * from the global admission counter so the fast path's checks do not land on that hot item.
 */
const PRIORITY_QUEUED_PK = 'queuedp';
/** The dispatcher's published load (queue-estimate.ts PublishedLoad), beside the counters: read by the same Query. */
const LOAD_SK = 'load';

/**
 * Distinguishes our own logical tries (per process, per try); an SDK retry resends the same command, hence the
 * same token. The process id keeps two writers from ever sharing a token (a shared one would read as success).
 */
const PROCESS_ID = randomUUID();
let tries = 0;

const definedOnly = (patch: TicketPatch): TicketPatch =>
  Object.fromEntries(Object.entries(patch).filter(([, v]) => v !== undefined)) as TicketPatch;

/** Where a ticket sits in the sparse `byPhase` index (terminal tickets leave it). */
const phaseOf = (t: Pick<Ticket, 'status' | 'priority' | 'enqueuedAt' | 'claimBy'>, now: number) => {
  switch (t.status) {
    case 'queued':
      return { phase: `queued#${t.priority}`, phaseAt: t.enqueuedAt };
    case 'granted':
    case 'claimed':
      return { phase: t.status, phaseAt: t.claimBy ?? now };
    default:
      return undefined;
  }
};

const ticketFromItem = (item: Item | undefined): Ticket | undefined => {
  const p = plain<Ticket & { phase?: string; phaseAt?: number; expiresAt?: number }>(item);
  if (!p) return undefined;
  const { phase: _phase, phaseAt: _phaseAt, expiresAt: _expiresAt, ...ticket } = p;
  return ticket;
};

export class DynamoTicketStore implements TicketStore {
  private readonly bucketKey: Item;

  constructor(
    private readonly client: DynamoDBClient,
    private readonly tables: TicketTables,
  ) {
    translateStoreErrors(client, 'DynamoDB');
    retryTransactionConflicts(client);
    this.bucketKey = stateKey('bucket', tables.bucketKey ?? 'default');
  }

  /** The bucket item a ticket of `upstream` spends from. */
  private bucketItemKey(upstream: string | undefined): Item {
    return upstream === undefined ? this.bucketKey : stateKey('bucket', upstreamStateKey(upstream));
  }

  /** The in-flight count of `upstream` (the first upstream's lives on the global counter item), capped. */
  private inflightCounter(upstream: string | undefined, delta: number, cap = 0): TransactWriteItem {
    const global = this.counters({ inflight: delta }, { inflight: cap });
    if (upstream === undefined) return global;
    return { Update: { ...global.Update!, Key: stateKey('admission', upstreamStateKey(upstream)) } };
  }

  private ticketPut(ticket: Ticket): TransactWriteItem {
    const phase = phaseOf(ticket, ticket.enqueuedAt);
    return {
      Put: {
        TableName: this.tables.ticketsTable,
        Item: marshall(
          { ...ticket, ...phase, expiresAt: ttlFrom(ticket.deadline) },
          { removeUndefinedValues: true },
        ),
        ConditionExpression: 'attribute_not_exists(id)',
      },
    };
  }

  /**
   * One update of the counter item: `queued` (admission) and `inflight` (granted or claimed tickets), each
   * optionally capped. A cap's condition failing returns the old item (ALL_OLD).
   */
  private counters(
    delta: { queued?: number; inflight?: number },
    caps: { queued?: number; inflight?: number } = {},
  ): TransactWriteItem {
    const sets: string[] = [];
    const conds: string[] = [];
    const values: Item = { ':zero': n(0) };
    for (const name of ['queued', 'inflight'] as const) {
      const d = delta[name];
      if (d) {
        sets.push(`${name} = if_not_exists(${name}, :zero) + :d_${name}`);
        values[`:d_${name}`] = n(d);
      }
      const cap = caps[name];
      if (cap !== undefined && cap > 0) {
        conds.push(`(attribute_not_exists(${name}) OR ${name} < :max_${name})`);
        values[`:max_${name}`] = n(cap);
      }
    }
    return {
      Update: {
        TableName: this.tables.stateTable,
        Key: ADMISSION_KEY,
        UpdateExpression: `SET ${sets.join(', ')}`,
        ExpressionAttributeValues: values,
        ...(conds.length
          ? {
              ConditionExpression: conds.join(' AND '),
              ReturnValuesOnConditionCheckFailure: 'ALL_OLD' as const,
            }
          : {}),
      },
    };
  }

  /**
   * The agent's queued counter, moved in the same transaction as the global one (so a ticket leaving `queued`
   * decrements it exactly once); `cap` > 0 refuses an increment at the cap (ALL_OLD on failure).
   */
  private agentCounter(agent: string, delta: number, cap = 0): TransactWriteItem {
    const limited = cap > 0 && delta > 0;
    return {
      Update: {
        TableName: this.tables.stateTable,
        Key: stateKey(AGENT_QUEUED_PK, agent),
        UpdateExpression: 'SET queued = if_not_exists(queued, :zero) + :d',
        ExpressionAttributeValues: { ':zero': n(0), ':d': n(delta), ...(limited ? { ':max': n(cap) } : {}) },
        ...(limited
          ? {
              ConditionExpression: 'attribute_not_exists(queued) OR queued < :max',
              ReturnValuesOnConditionCheckFailure: 'ALL_OLD' as const,
            }
          : {}),
      },
    };
  }

  /**
   * The priority's queued counter, moved in the same transaction as the global one (a ticket's priority never
   * changes, so entering and leaving `queued` move the same item).
   */
  private priorityCounter(priority: Priority, delta: number): TransactWriteItem {
    return {
      Update: {
        TableName: this.tables.stateTable,
        Key: stateKey(PRIORITY_QUEUED_PK, priority),
        UpdateExpression: 'SET queued = if_not_exists(queued, :zero) + :d',
        ExpressionAttributeValues: { ':zero': n(0), ':d': n(delta) },
      },
    };
  }

  /** Condition that nothing is queued at `priority` (fast path: one check per priority at or above its own). */
  private priorityIdle(priority: Priority): TransactWriteItem {
    return {
      ConditionCheck: {
        TableName: this.tables.stateTable,
        Key: stateKey(PRIORITY_QUEUED_PK, priority),
        ConditionExpression: 'attribute_not_exists(queued) OR queued <= :zero',
        ExpressionAttributeValues: { ':zero': n(0) },
        ReturnValuesOnConditionCheckFailure: 'ALL_OLD',
      },
    };
  }

  /**
   * Holds only while the stored config is not paused: read inside the transaction, so a pause is exact from the
   * moment its write returns (no config cache in between). A missing item or flag means not paused.
   */
  private unpaused(): TransactWriteItem {
    return {
      ConditionCheck: {
        TableName: this.tables.stateTable,
        Key: CONFIG_ITEM_KEY,
        ConditionExpression: 'attribute_not_exists(#cfg.#paused) OR #cfg.#paused = :false',
        ExpressionAttributeNames: { '#cfg': 'config', '#paused': 'paused' },
        ExpressionAttributeValues: { ':false': { BOOL: false } },
      },
    };
  }

  /**
   * The Idempotency-Key → ticket mapping, written only while the key is free (unused or past its `until`), or
   * taken over from `replaceTicketId`; a refusal returns the mapping (ALL_OLD).
   */
  private idempotencyPut(
    ticket: Ticket,
    idem: { key: string; untilMs: number; replaceTicketId?: string },
  ): TransactWriteItem {
    return {
      Put: {
        TableName: this.tables.stateTable,
        Item: {
          ...stateKey('idem', idem.key),
          ticketId: s(ticket.id),
          until: n(idem.untilMs),
          expiresAt: n(Math.ceil(idem.untilMs / 1000)),
        },
        ConditionExpression: idem.replaceTicketId
          ? 'ticketId = :old'
          : 'attribute_not_exists(pk) OR #until < :now',
        ExpressionAttributeNames: idem.replaceTicketId ? undefined : { '#until': 'until' },
        ExpressionAttributeValues: idem.replaceTicketId
          ? { ':old': s(idem.replaceTicketId) }
          : { ':now': n(ticket.enqueuedAt) },
        ReturnValuesOnConditionCheckFailure: 'ALL_OLD',
      },
    };
  }

  /** The agent and priority of a ticket, from what the caller knows or one read (neither ever changes). */
  private async ownerOf(
    id: string,
    known?: { agent?: string | undefined; priority?: Priority | undefined },
  ): Promise<{ agent?: string; priority?: Priority }> {
    if (known?.agent !== undefined && known.priority !== undefined)
      return { agent: known.agent, priority: known.priority };
    const t = await this.get(id);
    const agent = known?.agent ?? t?.agent;
    const priority = known?.priority ?? t?.priority;
    return { ...(agent !== undefined ? { agent } : {}), ...(priority !== undefined ? { priority } : {}) };
  }

  async create(ticket: Ticket, opts: CreateTicketOptions): Promise<void> {
    if (opts.bypassAdmission) {
      // Not queued; a passthrough grant still counts as in flight.
      if (ticket.status === 'granted') {
        const budget = opts.budget ? [budgetChargeItem(this.tables.stateTable, opts.budget)] : [];
        try {
          await this.client.send(
            new TransactWriteItemsCommand({
              TransactItems: [this.ticketPut(ticket), this.counters({ inflight: 1 }), ...budget],
              ClientRequestToken: requestToken('create', ticket.id, JSON.stringify(ticket)),
            }),
          );
        } catch (err) {
          // Only the budget's refusal is ours to name here; anything else is thrown as before.
          const refused = budget.length ? cancellation(err)[2] : undefined;
          if (refused?.failed) throw new BudgetExhaustedError(budgetUsageOf(refused.item));
          throw err;
        }
      } else await this.client.send(new PutItemCommand(this.ticketPut(ticket).Put!));
      return;
    }
    const items: TransactWriteItem[] = opts.replace
      ? [
          this.transitionUpdate(
            opts.replace.id,
            'queued',
            'dropped',
            { reason: 'dropped_for_newer', finishedAt: ticket.enqueuedAt },
            ticket.enqueuedAt,
            opts.replace.attempt,
          ),
          this.ticketPut(ticket),
        ]
      : [this.counters({ queued: 1 }, { queued: opts.queueMaxSize }), this.ticketPut(ticket)];
    const agentCap = opts.maxQueuedPerAgent ?? 0;
    const victim = opts.replace ? await this.ownerOf(opts.replace.id, opts.replace) : undefined;
    const victimAgent = victim?.agent;
    // Replacing one of the agent's own tickets leaves its count unchanged (and one item per transaction).
    const agentItems =
      opts.replace && victimAgent === ticket.agent
        ? []
        : [
            this.agentCounter(ticket.agent, 1, agentCap),
            ...(victimAgent !== undefined ? [this.agentCounter(victimAgent, -1)] : []),
          ];
    // The same for the priority counters: a victim of the same priority leaves its count unchanged.
    const priorityItems =
      victim && victim.priority === ticket.priority
        ? []
        : [
            this.priorityCounter(ticket.priority, 1),
            ...(victim?.priority !== undefined ? [this.priorityCounter(victim.priority, -1)] : []),
          ];
    const idem = opts.idempotency;
    // The key → ticket mapping is written with the ticket: a second request with the same key never queues twice.
    if (idem) items.push(this.idempotencyPut(ticket, idem));
    const agentAt = items.length;
    items.push(...agentItems, ...priorityItems);
    const budgetAt = items.length;
    if (opts.budget) items.push(budgetChargeItem(this.tables.stateTable, opts.budget));
    try {
      await this.client.send(
        new TransactWriteItemsCommand({
          TransactItems: items,
          ClientRequestToken: requestToken('create', ticket.id, JSON.stringify(ticket)),
        }),
      );
    } catch (err) {
      const reasons = cancellation(err);
      const [first] = reasons;
      const idemReason = idem ? reasons[2] : undefined;
      const agentReason = agentItems.length ? reasons[agentAt] : undefined;
      const budgetReason = opts.budget ? reasons[budgetAt] : undefined;
      // An Idempotency-Key's attach spends nothing, so it answers before the budget; the budget before the caps.
      if (budgetReason?.failed && !idemReason?.failed)
        throw new BudgetExhaustedError(budgetUsageOf(budgetReason.item));
      // A full queue answers first (its policy decides); the agent's cap is next.
      if (agentReason?.failed && !idemReason?.failed && !first?.failed) {
        throw new AgentQueueFullError(plain<{ queued?: number }>(agentReason.item)?.queued ?? agentCap);
      }
      if (idemReason?.failed) {
        throw new IdempotencyConflictError(plain<{ ticketId?: string }>(idemReason.item)?.ticketId);
      }
      if (first?.failed && opts.replace) throw new ConflictError('ticket to drop is no longer queued');
      if (first?.failed)
        throw new AdmissionFullError(plain<{ queued?: number }>(first.item)?.queued ?? opts.queueMaxSize);
      throw new ConflictError(`ticket ${ticket.id} exists`);
    }
  }

  async get(id: string): Promise<Ticket | undefined> {
    const res = await this.client.send(
      new GetItemCommand({ TableName: this.tables.ticketsTable, Key: { id: s(id) }, ConsistentRead: true }),
    );
    return ticketFromItem(res.Item);
  }

  /** The Update that moves a ticket, keeping the phase index in step. */
  private transitionUpdate(
    id: string,
    from: TicketStatus,
    to: TicketStatus,
    patch: TicketPatch,
    now: number,
    attempt?: number,
    priority?: Priority,
    enqueuedAt?: number,
  ): TransactWriteItem {
    const names: Record<string, string> = { '#st': 'status' };
    const values: Item = { ':from': s(from), ':to': s(to) };
    const sets = ['#st = :to'];
    const removes: string[] = [];
    for (const [k, v] of Object.entries(patch)) {
      if (v === undefined) continue;
      names[`#${k}`] = k;
      values[`:${k}`] = typeof v === 'number' ? n(v) : s(String(v));
      sets.push(`#${k} = :${k}`);
    }
    if (to === 'queued') {
      // Requeue: a new attempt, back into its priority's queued phase at its original enqueue time; any member
      // of its pool may take it next.
      removes.push('upstream');
      sets.push('attempt = attempt + :one', 'phase = :phase', 'phaseAt = :phaseAt');
      values[':one'] = n(1);
      values[':phase'] = s(`queued#${priority}`);
      values[':phaseAt'] = n(enqueuedAt ?? now);
    } else {
      const phase = phaseOf({ status: to, priority: 'normal', enqueuedAt: now, claimBy: patch.claimBy }, now);
      if (phase) {
        sets.push('phase = :phase', 'phaseAt = :phaseAt');
        values[':phase'] = s(phase.phase);
        values[':phaseAt'] = n(phase.phaseAt);
      } else removes.push('phase', 'phaseAt');
    }
    let cond = '#st = :from';
    if (attempt !== undefined) {
      cond += ' AND attempt = :attempt';
      values[':attempt'] = n(attempt);
    }
    return {
      Update: {
        TableName: this.tables.ticketsTable,
        Key: { id: s(id) },
        UpdateExpression: `SET ${sets.join(', ')}${removes.length ? ` REMOVE ${removes.join(', ')}` : ''}`,
        ConditionExpression: cond,
        ExpressionAttributeNames: names,
        ExpressionAttributeValues: values,
        ReturnValuesOnConditionCheckFailure: 'ALL_OLD',
      },
    };
  }

  async grant(
    ticket: Pick<Ticket, 'id' | 'attempt'> & { agent?: string; priority?: Priority },
    attempt: ConsumeAttempt,
    patch: TicketPatch,
    opts: { maxInflight?: number; agentQuota?: { bucketKey: string; attempt: ConsumeAttempt } } = {},
  ): Promise<GrantOutcome> {
    const consume = consumeUpdate(attempt);
    const upstream = patch.upstream;
    const items: TransactWriteItem[] = [
      {
        Update: {
          TableName: this.tables.stateTable,
          Key: this.bucketItemKey(upstream),
          ...consume,
          ReturnValuesOnConditionCheckFailure: 'ALL_OLD',
        },
      },
      this.transitionUpdate(ticket.id, 'queued', 'granted', patch, attempt.now, ticket.attempt),
      upstream === undefined
        ? this.counters({ queued: -1, inflight: 1 }, { inflight: opts.maxInflight ?? 0 })
        : this.inflightCounter(upstream, 1, opts.maxInflight ?? 0),
    ];
    if (opts.agentQuota) {
      // The agent's own bucket spends in the same transaction, so a quota token is never spent without a grant.
      items.push({
        Update: {
          TableName: this.tables.stateTable,
          Key: stateKey('bucket', opts.agentQuota.bucketKey),
          ...consumeUpdate(opts.agentQuota.attempt),
          ReturnValuesOnConditionCheckFailure: 'ALL_OLD',
        },
      });
    }
    // Leaving `queued`: the agent's and the priority's counts drop with the global one (unconditional, last).
    const owner = await this.ownerOf(ticket.id, ticket);
    if (owner.agent !== undefined) items.push(this.agentCounter(owner.agent, -1));
    if (owner.priority !== undefined) items.push(this.priorityCounter(owner.priority, -1));
    // Another upstream's in-flight count is its own item: the admission count still drops here.
    if (upstream !== undefined) items.push(this.counters({ queued: -1 }));
    const pausedAt = items.length;
    items.push(this.unpaused());
    try {
      await this.client.send(
        new TransactWriteItemsCommand({
          TransactItems: items,
          ClientRequestToken: requestToken('grant', PROCESS_ID, ticket.id, ticket.attempt, ++tries),
        }),
      );
      return { kind: 'granted' };
    } catch (err) {
      const reasons = cancellation(err);
      const [bucket, tk, counters, agent] = reasons;
      if (tk?.failed) return { kind: 'ticket_conflict', current: ticketFromItem(tk.item) };
      if (reasons[pausedAt]?.failed) return { kind: 'paused' };
      if (counters?.failed) {
        return {
          kind: 'inflight_full',
          inflight: plain<{ inflight?: number }>(counters.item)?.inflight ?? 0,
        };
      }
      if (agent?.failed && !bucket?.failed)
        return { kind: 'agent_quota', current: bucketStateFromItem(agent.item) };
      return { kind: 'bucket_conflict', current: bucketStateFromItem(bucket?.item) };
    }
  }

  async grantBatch(
    batch: readonly BatchGrant[],
    attempt: ConsumeAttempt,
    opts: { maxInflight?: number } = {},
  ): Promise<BatchGrantOutcome> {
    const k = batch.length;
    // Each agent's counter once, with its total (an item may appear only once in a transaction).
    const perAgent = new Map<string, number>();
    for (const t of batch) perAgent.set(t.agent, (perAgent.get(t.agent) ?? 0) + 1);
    const perPriority = new Map<Priority, number>();
    for (const t of batch) perPriority.set(t.priority, (perPriority.get(t.priority) ?? 0) + 1);
    const maxInflight = opts.maxInflight ?? 0;
    // More than max_inflight at once can never fit (and a cap ≤ 0 would read as no cap at all).
    if (maxInflight > 0 && k > maxInflight) return { kind: 'inflight_full', inflight: 0 };
    const items: TransactWriteItem[] = [
      {
        Update: {
          TableName: this.tables.stateTable,
          Key: this.bucketKey,
          ...consumeUpdate(attempt),
          ReturnValuesOnConditionCheckFailure: 'ALL_OLD',
        },
      },
      ...batch.map((t) => this.transitionUpdate(t.id, 'queued', 'granted', t.patch, attempt.now, t.attempt)),
      // In flight below max − k + 1 before: all k fit under max_inflight after.
      this.counters({ queued: -k, inflight: k }, { inflight: maxInflight > 0 ? maxInflight - k + 1 : 0 }),
      ...[...perAgent].map(([agent, n]) => this.agentCounter(agent, -n)),
      ...[...perPriority].map(([priority, n]) => this.priorityCounter(priority, -n)),
      this.unpaused(),
    ];
    const countersAt = 1 + k;
    try {
      await this.client.send(
        new TransactWriteItemsCommand({
          TransactItems: items,
          ClientRequestToken: requestToken(
            'grants',
            PROCESS_ID,
            ...batch.map((t) => `${t.id}#${t.attempt}`),
            ++tries,
          ),
        }),
      );
      return { kind: 'granted' };
    } catch (err) {
      const reasons = cancellation(err);
      const indexes = batch.map((_, i) => i).filter((i) => reasons[1 + i]?.failed);
      if (indexes.length) return { kind: 'ticket_conflict', indexes };
      if (reasons[items.length - 1]?.failed) return { kind: 'paused' };
      const counters = reasons[countersAt];
      if (counters?.failed)
        return {
          kind: 'inflight_full',
          inflight: plain<{ inflight?: number }>(counters.item)?.inflight ?? 0,
        };
      return { kind: 'bucket_conflict', current: bucketStateFromItem(reasons[0]?.item) };
    }
  }

  async transition(
    id: string,
    from: TicketStatus,
    to: TicketStatus,
    patch: TicketPatch,
    opts: {
      attempt?: number;
      known?: Ticket;
      unlessPaused?: boolean;
      usage?: { agent: string; event: AgentUsageEvent };
    } = {},
  ): Promise<{ ticket: Ticket; usageCounted?: true } | { conflict: Ticket | undefined; paused?: true }> {
    // Only legal moves, and never a grant: that one spends a token, so it goes through grant() alone.
    if (!canTransition(from, to) || (from === 'queued' && to === 'granted'))
      return { conflict: await this.get(id) };
    const now = patch.finishedAt ?? patch.claimedAt ?? patch.grantedAt ?? Date.now();
    let current: Ticket | undefined = opts.known;
    const running = (s: TicketStatus) => s === 'granted' || s === 'claimed';
    if (!current && running(from) && !running(to) && this.tables.otherUpstreams?.length) {
      // Several upstreams: whose in-flight count drops is the ticket's own upstream.
      current = await this.get(id);
      if (!current || current.status !== from) return { conflict: current };
    }
    if (to === 'queued' && !current) {
      // Requeue needs the priority and original enqueue time for the phase index.
      current = await this.get(id);
      if (!current || current.status !== from) return { conflict: current };
    }
    const update = this.transitionUpdate(
      id,
      from,
      to,
      patch,
      now,
      opts.attempt,
      current?.priority,
      current?.enqueuedAt,
    );
    const delta = {
      queued: from === 'queued' && to !== 'queued' ? -1 : to === 'queued' && from !== 'queued' ? 1 : 0,
      inflight: running(from) && !running(to) ? -1 : 0,
    };
    const upstream = current?.upstream;
    const counted = delta.queued !== 0 || delta.inflight !== 0;
    const owner = delta.queued !== 0 ? await this.ownerOf(id, current) : {};
    // The agent's usage rides on the counted move's transaction (the ticket's end: one call instead of two).
    const usage =
      counted && opts.usage && this.tables.countsUsage !== false
        ? usageUpdate(this.tables.stateTable, opts.usage.agent, now, opts.usage.event, true)
        : undefined;
    const usageCounted = usage ? ({ usageCounted: true } as const) : {};
    try {
      if (opts.unlessPaused && !counted) {
        // The claim: the last store write before the upstream call, so it too must hold only while not paused.
        await this.client.send(
          new TransactWriteItemsCommand({
            TransactItems: [update, this.unpaused()],
            ClientRequestToken: requestToken('move', PROCESS_ID, id, from, to, opts.attempt ?? '', ++tries),
          }),
        );
        if (current) return { ticket: { ...current, ...definedOnly(patch), status: to } };
        const ticket = await this.get(id);
        return ticket ? { ticket } : { conflict: undefined };
      }
      if (!counted) {
        const res = await this.client.send(
          new UpdateItemCommand({ ...update.Update!, ReturnValues: 'ALL_NEW' }),
        );
        return { ticket: ticketFromItem(res.Attributes)! };
      }
      await this.client.send(
        new TransactWriteItemsCommand({
          TransactItems: [
            update,
            ...(upstream === undefined
              ? [this.counters(delta)]
              : [
                  ...(delta.queued ? [this.counters({ queued: delta.queued })] : []),
                  ...(delta.inflight ? [this.inflightCounter(upstream, delta.inflight)] : []),
                ]),
            ...(owner.agent !== undefined ? [this.agentCounter(owner.agent, delta.queued)] : []),
            ...(owner.priority !== undefined ? [this.priorityCounter(owner.priority, delta.queued)] : []),
            ...(usage ? [{ Update: usage }] : []),
          ],
          ClientRequestToken: requestToken('move', PROCESS_ID, id, from, to, opts.attempt ?? '', ++tries),
        }),
      );
      // The caller's copy plus what this write changed, when it gave one: no read after the write.
      if (current) {
        const attempt = to === 'queued' ? current.attempt + 1 : current.attempt;
        const ticket: Ticket = { ...current, ...definedOnly(patch), status: to, attempt };
        // A requeue forgot the upstream (removed above): any member of its pool may take it next.
        if (to === 'queued') delete ticket.upstream;
        return { ticket, ...usageCounted };
      }
      const ticket = await this.get(id);
      return ticket ? { ticket, ...usageCounted } : { conflict: undefined };
    } catch (err) {
      if (opts.unlessPaused && !counted) {
        const [moved, pause] = cancellation(err);
        if (moved?.failed) return { conflict: ticketFromItem(moved.item) };
        return {
          conflict: current ?? (await this.get(id)),
          ...(pause?.failed ? { paused: true as const } : {}),
        };
      }
      if (!counted) return { conflict: ticketFromItem(conditionFailure(err).item) };
      const [first] = cancellation(err);
      return { conflict: ticketFromItem(first?.item) };
    }
  }

  async unclaim(
    claimed: Ticket,
    calledAt: number | undefined,
    reason: string,
  ): Promise<{ ticket: Ticket } | { conflict: Ticket | undefined }> {
    const update = this.transitionUpdate(
      claimed.id,
      'claimed',
      'queued',
      { reason },
      Date.now(),
      claimed.attempt,
      claimed.priority,
      claimed.enqueuedAt,
    ).Update!;
    // Only the claimer: its own claim time must still be the stored one.
    const values: Item = { ...update.ExpressionAttributeValues };
    const names = { ...update.ExpressionAttributeNames, '#claimedAt': 'claimedAt', '#claimBy': 'claimBy' };
    let condition = update.ConditionExpression ?? '';
    if (claimed.claimedAt !== undefined) {
      condition += ' AND #claimedAt = :mine';
      values[':mine'] = n(claimed.claimedAt);
    } else condition += ' AND attribute_not_exists(#claimedAt)';
    let expression = update.UpdateExpression ?? '';
    const removes = calledAt === undefined ? ['#claimedAt', '#claimBy'] : ['#claimBy'];
    if (calledAt !== undefined) {
      expression = expression.replace(/^SET /, 'SET #claimedAt = :calledAt, ');
      values[':calledAt'] = n(calledAt);
    }
    expression = expression.includes(' REMOVE ')
      ? `${expression}, ${removes.join(', ')}`
      : `${expression} REMOVE ${removes.join(', ')}`;
    try {
      await this.client.send(
        new TransactWriteItemsCommand({
          TransactItems: [
            {
              Update: {
                ...update,
                UpdateExpression: expression,
                ConditionExpression: condition,
                ExpressionAttributeNames: names,
                ExpressionAttributeValues: values,
              },
            },
            this.counters({ queued: 1, inflight: -1 }),
            this.agentCounter(claimed.agent, 1),
            this.priorityCounter(claimed.priority, 1),
          ],
          ClientRequestToken: requestToken('unclaim', PROCESS_ID, claimed.id, claimed.attempt, ++tries),
        }),
      );
    } catch (err) {
      const [first] = cancellation(err);
      return { conflict: ticketFromItem(first?.item) };
    }
    const { claimedAt: _mine, claimBy: _by, ...rest } = claimed;
    return {
      ticket: {
        ...rest,
        ...(calledAt !== undefined ? { claimedAt: calledAt } : {}),
        status: 'queued',
        attempt: claimed.attempt + 1,
        reason,
      },
    };
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
    const idle = opts.ignoreQueued
      ? []
      : PRIORITIES.filter((p) => priorityRank(p) <= priorityRank(ticket.priority));
    // Order matters for reading the cancellation: bucket, ticket, in-flight, config, then the queued checks.
    const items: TransactWriteItem[] = [
      {
        Update: {
          TableName: this.tables.stateTable,
          Key: this.bucketItemKey(ticket.upstream),
          ...consumeUpdate(attempt),
          ReturnValuesOnConditionCheckFailure: 'ALL_OLD',
        },
      },
      this.ticketPut(ticket),
      this.inflightCounter(ticket.upstream, 1, opts.maxInflight),
      this.unpaused(),
      ...idle.map((p) => this.priorityIdle(p)),
      ...(opts.budget ? [budgetChargeItem(this.tables.stateTable, opts.budget)] : []),
      ...(opts.idempotency ? [this.idempotencyPut(ticket, opts.idempotency)] : []),
    ];
    try {
      await this.client.send(
        new TransactWriteItemsCommand({
          TransactItems: items,
          // The attempt too: a try planned again after a refused bucket condition is a new transaction.
          ClientRequestToken: requestToken(
            'fast',
            ticket.id,
            JSON.stringify(ticket),
            JSON.stringify(attempt),
          ),
        }),
      );
      return { kind: 'granted' };
    } catch (err) {
      const [bucket, put, inflight, paused, ...rest] = cancellation(err);
      const queued = rest.slice(0, idle.length);
      const budget = opts.budget ? rest[idle.length] : undefined;
      const idem = opts.idempotency ? rest[idle.length + (opts.budget ? 1 : 0)] : undefined;
      // The queued counts the checks told: a failed one returned its item, a held one means none queued there. Fail
      // fast judges the request by them instead of reading the counters again (Admission.hopeless).
      const counts = queued.map((r) => (r?.failed ? plain<{ queued?: number }>(r.item)?.queued : 0));
      const seen =
        idle.length > 0 && cancelledByConditionsOnly(err) && counts.every((c) => c !== undefined)
          ? (Object.fromEntries(idle.map((p, i) => [p, counts[i]])) as Partial<QueuedByPriority>)
          : undefined;
      const stored = bucket?.failed ? bucketStateFromItem(bucket.item) : undefined;
      const refused = (r: FastGrantRefusal): FastGrantOutcome => ({
        ...r,
        ...(seen ? { queuedSeen: seen } : {}),
        ...(stored && r.kind !== 'bucket_conflict' ? { bucketSeen: stored } : {}),
      });
      // A held key goes the queue's way (attach, 409 or take-over), which also answers before the budget.
      if (idem?.failed) return refused({ kind: 'idempotency_held' });
      // The budget refuses the request outright (the queue would refuse it too); anything else queues it.
      if (budget?.failed) return refused({ kind: 'budget_exceeded', used: budgetUsageOf(budget.item) });
      if (paused?.failed) return refused({ kind: 'paused' });
      if (queued.some((r) => r?.failed)) {
        const waiting = counts.reduce<number>((sum, c) => sum + (c ?? 0), 0);
        return refused({ kind: 'queue_busy', ...(waiting > 0 ? { queued: waiting } : {}) });
      }
      if (inflight?.failed) return refused({ kind: 'inflight_full' });
      if (put?.failed) throw new ConflictError(`ticket ${ticket.id} exists`);
      return refused({ kind: 'bucket_conflict', current: bucketStateFromItem(bucket?.item) });
    }
  }

  async queuedByPriority(): Promise<QueuedByPriority> {
    return (await this.queuedWithLoad()).queued;
  }

  async queuedWithLoad(): Promise<{ queued: QueuedByPriority; load?: PublishedLoad }> {
    const res = await this.client.send(
      new QueryCommand({
        TableName: this.tables.stateTable,
        KeyConditionExpression: 'pk = :pk',
        ExpressionAttributeValues: { ':pk': s(PRIORITY_QUEUED_PK) },
        ConsistentRead: true,
      }),
    );
    const queued: QueuedByPriority = { urgent: 0, high: 0, normal: 0, low: 0 };
    let load: PublishedLoad | undefined;
    for (const item of res.Items ?? []) {
      const p = plain<{ sk: string; queued?: number; at?: number; higher?: Record<string, number> }>(item);
      if (p && (PRIORITIES as readonly string[]).includes(p.sk)) queued[p.sk as Priority] = p.queued ?? 0;
      else if (p?.sk === LOAD_SK && typeof p.at === 'number' && p.higher) {
        const higher = Object.fromEntries(PRIORITIES.map((q) => [q, Number(p.higher?.[q] ?? 0)]));
        load = { at: p.at, higher: higher as Record<Priority, number> };
      }
    }
    return { queued, ...(load ? { load } : {}) };
  }

  async publishLoad(load: PublishedLoad): Promise<void> {
    await this.client.send(
      new PutItemCommand({
        TableName: this.tables.stateTable,
        Item: { ...stateKey(PRIORITY_QUEUED_PK, LOAD_SK), ...marshall({ at: load.at, higher: load.higher }) },
      }),
    );
  }

  async oldestQueued(priority: Priority): Promise<Ticket | undefined> {
    const [t] = await this.listPhase(`queued#${priority}`, Number.MAX_SAFE_INTEGER, 1);
    return t;
  }

  async listPhase(phase: string, before: number, limit: number): Promise<Ticket[]> {
    const res = await this.client.send(
      new QueryCommand({
        TableName: this.tables.ticketsTable,
        IndexName: 'byPhase',
        KeyConditionExpression: 'phase = :p AND phaseAt < :before',
        ExpressionAttributeValues: { ':p': s(phase), ':before': n(before) },
        ScanIndexForward: true,
        Limit: limit,
      }),
    );
    // The index is eventually consistent: callers confirm with a conditional write.
    return (res.Items ?? [])
      .map((i) => ticketFromItem(i))
      .filter((t): t is Ticket => !!t && !isTerminal(t.status));
  }

  async admissionCount(): Promise<number> {
    return (await this.counts()).queued;
  }

  /** Calls granted or running on one upstream after the first (its own counter item). */
  async upstreamInflight(upstream: string): Promise<number> {
    const res = await this.client.send(
      new GetItemCommand({
        TableName: this.tables.stateTable,
        Key: stateKey('admission', upstreamStateKey(upstream)),
        ConsistentRead: true,
      }),
    );
    return plain<{ inflight?: number }>(res.Item)?.inflight ?? 0;
  }

  async counts(): Promise<{ queued: number; inflight: number }> {
    const res = await this.client.send(
      new GetItemCommand({ TableName: this.tables.stateTable, Key: ADMISSION_KEY, ConsistentRead: true }),
    );
    const p = plain<{ queued?: number; inflight?: number }>(res.Item);
    return { queued: p?.queued ?? 0, inflight: p?.inflight ?? 0 };
  }

  async reconcileAdmission(): Promise<number> {
    /** Tickets in a phase; with `upstream`, only that upstream's ('' = the first upstream's). */
    const count = async (phase: string, upstream?: string) => {
      let total = 0;
      let start: Item | undefined;
      do {
        const res = await this.client.send(
          new QueryCommand({
            TableName: this.tables.ticketsTable,
            IndexName: 'byPhase',
            KeyConditionExpression: 'phase = :p',
            ExpressionAttributeValues: { ':p': s(phase), ...(upstream ? { ':u': s(upstream) } : {}) },
            ...(upstream === undefined
              ? {}
              : { FilterExpression: upstream ? 'upstream = :u' : 'attribute_not_exists(upstream)' }),
            Select: 'COUNT',
            ExclusiveStartKey: start,
          }),
        );
        total += res.Count ?? 0;
        start = res.LastEvaluatedKey;
      } while (start);
      return total;
    };
    let queued = 0;
    const byPriority: Partial<QueuedByPriority> = {};
    for (const p of PRIORITIES) {
      byPriority[p] = await count(`queued#${p}`);
      queued += byPriority[p];
    }
    const others = this.tables.otherUpstreams ?? [];
    const first = others.length ? '' : undefined;
    const inflight = (await count('granted', first)) + (await count('claimed', first));
    for (const upstream of others) {
      const running = (await count('granted', upstream)) + (await count('claimed', upstream));
      await this.client.send(
        new UpdateItemCommand({
          TableName: this.tables.stateTable,
          Key: stateKey('admission', upstreamStateKey(upstream)),
          UpdateExpression: 'SET inflight = :i',
          ExpressionAttributeValues: { ':i': n(running) },
        }),
      );
    }
    await this.client.send(
      new UpdateItemCommand({
        TableName: this.tables.stateTable,
        Key: ADMISSION_KEY,
        UpdateExpression: 'SET queued = :q, inflight = :i',
        ExpressionAttributeValues: { ':q': n(queued), ':i': n(inflight) },
      }),
    );
    for (const p of PRIORITIES) {
      await this.client.send(
        new UpdateItemCommand({
          TableName: this.tables.stateTable,
          Key: stateKey(PRIORITY_QUEUED_PK, p),
          UpdateExpression: 'SET queued = :q',
          ExpressionAttributeValues: { ':q': n(byPriority[p] ?? 0) },
        }),
      );
    }
    await this.reconcileAgents();
    return queued;
  }

  /** Per-agent queued counters set to the queued tickets each agent has (the same drift repair as the global one). */
  private async reconcileAgents(): Promise<void> {
    const actual = new Map<string, number>();
    for (const p of PRIORITIES) {
      let start: Item | undefined;
      do {
        const res = await this.client.send(
          new QueryCommand({
            TableName: this.tables.ticketsTable,
            IndexName: 'byPhase',
            KeyConditionExpression: 'phase = :p',
            ExpressionAttributeValues: { ':p': s(`queued#${p}`) },
            ProjectionExpression: '#agent',
            ExpressionAttributeNames: { '#agent': 'agent' },
            ExclusiveStartKey: start,
          }),
        );
        for (const item of res.Items ?? []) {
          const agent = item.agent?.S;
          if (agent !== undefined) actual.set(agent, (actual.get(agent) ?? 0) + 1);
        }
        start = res.LastEvaluatedKey;
      } while (start);
    }
    const stored = await this.agentQueuedCounts();
    for (const agent of new Set([...actual.keys(), ...Object.keys(stored)])) {
      const want = actual.get(agent) ?? 0;
      if (stored[agent] === want) continue;
      await this.client.send(
        new UpdateItemCommand({
          TableName: this.tables.stateTable,
          Key: stateKey(AGENT_QUEUED_PK, agent),
          UpdateExpression: 'SET queued = :q',
          ExpressionAttributeValues: { ':q': n(want) },
        }),
      );
    }
  }

  /** Queued tickets per agent, as the counters hold them (agents with none may be absent). */
  async agentQueuedCounts(): Promise<Record<string, number>> {
    const out: Record<string, number> = {};
    let start: Item | undefined;
    do {
      const res = await this.client.send(
        new QueryCommand({
          TableName: this.tables.stateTable,
          KeyConditionExpression: 'pk = :pk',
          ExpressionAttributeValues: { ':pk': s(AGENT_QUEUED_PK) },
          ConsistentRead: true,
          ExclusiveStartKey: start,
        }),
      );
      for (const item of res.Items ?? []) {
        const p = plain<{ sk: string; queued?: number }>(item);
        if (p) out[p.sk] = p.queued ?? 0;
      }
      start = res.LastEvaluatedKey;
    } while (start);
    return out;
  }
}
