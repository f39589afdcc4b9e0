// Domain: the ticket lifecycle — states, legal transitions and what each one means.
import { grantToCallMaxMs } from './gcra.js';
import type { Priority } from './priority.js';

export const TICKET_STATUSES = [
  'queued',
  'granted',
  'claimed',
  'completed',
  'failed',
  'abandoned',
  'expired',
  'dropped',
  'rejected',
] as const;
export type TicketStatus = (typeof TICKET_STATUSES)[number];

export const TERMINAL_STATUSES = [
  'completed',
  'failed',
  'abandoned',
  'expired',
  'dropped',
  'rejected',
] as const;
export type TerminalStatus = (typeof TERMINAL_STATUSES)[number];

export const isTerminal = (s: TicketStatus): s is TerminalStatus =>
  (TERMINAL_STATUSES as readonly string[]).includes(s);

/**
 * Legal moves. `queued → granted` happens only in the grant transaction (with a token);
 * `claimed → queued` is the requeue after an upstream 429 before any byte reached the agent;
 * `queued → failed` ends a ticket whose queue message could not be sent (`enqueue_failed`);
 * `granted → queued` requeues a grant its ingress found too late to use (older than GRANT_TO_CALL_MAX_MS);
 * `claimed → queued` is also the claimer's own hand-back of a claim whose call never left (TicketStore.unclaim).
 */
export const TRANSITIONS: { readonly [S in TicketStatus]: readonly TicketStatus[] } = {
  queued: ['granted', 'abandoned', 'expired', 'dropped', 'rejected', 'failed'],
  granted: ['claimed', 'failed', 'abandoned', 'queued'],
  claimed: ['completed', 'failed', 'abandoned', 'queued'],
  completed: [],
  failed: [],
  abandoned: [],
  expired: [],
  dropped: [],
  rejected: [],
};

export const canTransition = (from: TicketStatus, to: TicketStatus): boolean =>
  TRANSITIONS[from].includes(to);

/** One agent request waiting for, holding or done with an upstream slot. */
export interface Ticket {
  id: string;
  agent: string;
  priority: Priority;
  model: string;
  /** Whether the agent asked for a stream (heartbeats possible). */
  stream: boolean;
  status: TicketStatus;
  /** 0 for the first try, +1 per requeue; grants and requeues are conditioned on it. */
  attempt: number;
  /** First enqueue time; kept across requeues so a requeued ticket keeps its place. */
  enqueuedAt: number;
  /** After this the ticket is of no use to its agent: never granted later. */
  deadline: number;
  grantedAt?: number;
  /** A granted ticket not claimed by then is swept to `failed` (ingress lost). */
  claimBy?: number;
  claimedAt?: number;
  finishedAt?: number;
  /** Why it ended (terminal states) or was requeued. */
  reason?: string;
  upstreamStatus?: number;
  /** Tokens the upstream reported (usage.total_tokens). */
  totalTokens?: number;
  /** When refused: how long the agent should wait (its own quota, low-priority timeout). */
  retryAfterMs?: number;
  /** The agent's Idempotency-Key, if it sent one. */
  idempotencyKey?: string;
  /** The agent's quota at admission (from its key). */
  quotaRpm?: number;
  quotaShare?: number;
  /** The UTC day this request was counted on against its agent's budget (only when its key has one). */
  budgetDay?: string;
  /** The limited upstreams that may serve it (a pool), when not only the first one. */
  pool?: string[];
  /** The upstream its token came from, when not the first one: the ingress calls that one, with its key. */
  upstream?: string;
  /**
   * Its estimated tokens (prompt + completion allowed), when an upstream that may serve it has `tpm`: its grant
   * reserves this much there, and the answer's usage corrects it.
   */
  tokens?: number;
}

/** Fields a transition may set besides the status. */
export type TicketPatch = Partial<
  Pick<
    Ticket,
    | 'grantedAt'
    | 'claimBy'
    | 'claimedAt'
    | 'finishedAt'
    | 'reason'
    | 'upstreamStatus'
    | 'deadline'
    | 'totalTokens'
    | 'upstream'
  >
>;

/** What the dispatcher learns from a queue message: enough to order and to find the ticket. */
export interface TicketMessage {
  ticketId: string;
  attempt: number;
  priority: Priority;
  agent: string;
  enqueuedAt: number;
  deadline: number;
  /** The agent's quota, carried so the dispatcher needs no key lookup. */
  quotaRpm?: number;
  quotaShare?: number;
  /** The upstreams that may serve it, when not only the first one (Ticket.pool). */
  pool?: string[];
  /** Its estimated tokens, for upstreams with `tpm` (Ticket.tokens). */
  tokens?: number;
  /**
   * Weighted shares: admission judged its wait as the dispatcher would (fail fast); that was its first look
   * (FIRST_LOOK_SHARE), so the dispatcher's first hold of it is a later look. (Under strict order the dispatcher's
   * hold is a first look again, judged by the load it measures then.)
   */
  judged?: true;
}

/** The queue message of a ticket (its attempt, priority, deadline, quota, pool and token estimate). */
export const messageFor = (ticket: Ticket): TicketMessage => ({
  ticketId: ticket.id,
  attempt: ticket.attempt,
  priority: ticket.priority,
  agent: ticket.agent,
  enqueuedAt: ticket.enqueuedAt,
  deadline: ticket.deadline,
  ...(ticket.quotaRpm !== undefined ? { quotaRpm: ticket.quotaRpm } : {}),
  ...(ticket.quotaShare !== undefined ? { quotaShare: ticket.quotaShare } : {}),
  ...(ticket.pool ? { pool: ticket.pool } : {}),
  ...(ticket.tokens !== undefined ? { tokens: ticket.tokens } : {}),
});

/**
 * Share of the grant slack a grant may have used when its claim is written: the claim write, the reply headers,
 * the key lookup and the send still follow. An older grant is requeued before the claim (cheap: no claim to undo).
 */
export const CLAIM_SHARE = 0.75;
/**
 * Share of the grant slack a grant may have used when its request is handed to the HTTP client, the last moment
 * sluice controls: the rest (a fifth, 200 ms at the default 1 s) is for the request's bytes to reach the upstream
 * (a write on a kept-alive connection, or a handshake on a near network). An older claimed grant is handed back
 * (Admission.beforeSend) instead of called on, so every call reaches the upstream within the slack of its grant
 * and the window log's bound (L grants per window + slack) bounds the calls.
 */
export const SEND_SHARE = 0.8;

/**
 * True when a grant is too old to call on: calls must reach the upstream within the grant slack (grant_slack_s,
 * at most a tenth of the window) of their grant's slot; `share` is how much of it may be used by now
 * (CLAIM_SHARE before the claim, SEND_SHARE right before the send).
 */
export const isGrantStale = (
  ticket: Ticket,
  now: number,
  windowMs: number,
  slackMs?: number,
  share = CLAIM_SHARE,
): boolean =>
  ticket.grantedAt !== undefined && now - ticket.grantedAt > grantToCallMaxMs(windowMs, slackMs) * share;

/**
 * A claim of `granted` was refused and the ticket now reads `current`: when another waiter on the same ticket
 * (Idempotency-Key) requeued a grant it saw too late, the ticket to wait on next; otherwise undefined (another
 * request claimed it first, or the sweep ended it).
 */
export const waitAfterLostClaim = (granted: Ticket, current: Ticket | undefined): Ticket | undefined =>
  current?.status === 'queued' || (current?.status === 'granted' && current.attempt > granted.attempt)
    ? current
    : undefined;
