// Domain: per-agent daily budgets (requests and tokens per UTC day) — the day, the check, the refusal, what remains.
import { GatewayError, ValidationError } from './errors.js';

/** Limits on one agent key; unset = no limit of that kind. */
export interface AgentBudget {
  /** Requests admitted per UTC day (a ticket created, queued or granted at once). */
  requestsPerDay?: number;
  /** Tokens (`usage.total_tokens` of the answers) per UTC day. */
  tokensPerDay?: number;
}

/** What an agent used on one UTC day, as its day item holds it. */
export interface BudgetUsage {
  requests: number;
  tokens: number;
}

/**
 * What admission asks the ticket store to do in the ticket's own transaction: count one request on the agent's
 * day item, only while each limit set is not reached (nothing written otherwise).
 */
export interface BudgetCharge {
  agent: string;
  /** The UTC day (`YYYY-MM-DD`) the request is counted on. */
  day: string;
  limits: AgentBudget;
}

export const DAY_MS = 86_400_000;

/** Longest wait a retry header carries (the openai SDKs ignore larger values; see lib/http/reply.ts). */
const RETRY_HEADER_MAX_MS = 60_000;

/** The UTC day of `now`, as `YYYY-MM-DD` (the day items' key). */
export const budgetDay = (now: number): string => new Date(now).toISOString().slice(0, 10);

/** When the budget of `now`'s day starts again: the next UTC midnight. */
export const budgetResetAt = (now: number): number => (Math.floor(now / DAY_MS) + 1) * DAY_MS;

export const hasBudget = (b: AgentBudget | undefined): b is AgentBudget =>
  b?.requestsPerDay !== undefined || b?.tokensPerDay !== undefined;

/** The budget a key record carries (the stored names), or undefined when it has none. */
export const budgetOfKey = (key: {
  budgetRequestsDay?: number;
  budgetTokensDay?: number;
}): AgentBudget | undefined => {
  const b: AgentBudget = {
    ...(key.budgetRequestsDay !== undefined ? { requestsPerDay: key.budgetRequestsDay } : {}),
    ...(key.budgetTokensDay !== undefined ? { tokensPerDay: key.budgetTokensDay } : {}),
  };
  return hasBudget(b) ? b : undefined;
};

/** `{ budget }` for an admission request when the key has one, else nothing (spread into the request). */
export const budgetOf = (key: {
  budgetRequestsDay?: number;
  budgetTokensDay?: number;
}): { budget?: AgentBudget } => {
  const budget = budgetOfKey(key);
  return budget ? { budget } : {};
};

/** Which limit refuses the next request: requests when used ≥ limit, else tokens when used ≥ limit. */
export type BudgetVerdict =
  | { ok: true }
  | { ok: false; which: 'requests' | 'tokens'; used: number; limit: number };

/**
 * The admission rule. A request is refused when the day's admitted requests already reached the requests limit
 * (so exactly `limit` are admitted), or the day's tokens already reached the tokens limit. Tokens are known only
 * when an answer ends, so requests admitted while under the tokens limit may take the day past it.
 */
export const checkBudget = (limits: AgentBudget, used: BudgetUsage): BudgetVerdict => {
  if (limits.requestsPerDay !== undefined && used.requests >= limits.requestsPerDay)
    return { ok: false, which: 'requests', used: used.requests, limit: limits.requestsPerDay };
  if (limits.tokensPerDay !== undefined && used.tokens >= limits.tokensPerDay)
    return { ok: false, which: 'tokens', used: used.tokens, limit: limits.tokensPerDay };
  return { ok: true };
};

/** What is left of each limit set (never below 0). */
export const budgetRemaining = (
  limits: AgentBudget,
  used: BudgetUsage,
): { requests?: number; tokens?: number } => ({
  ...(limits.requestsPerDay !== undefined
    ? { requests: Math.max(0, limits.requestsPerDay - used.requests) }
    : {}),
  ...(limits.tokensPerDay !== undefined ? { tokens: Math.max(0, limits.tokensPerDay - used.tokens) } : {}),
});

/**
 * 429 `agent_budget_exceeded`: which budget, used/limit, and when it resets. The retry headers carry the wait to
 * the reset (capped at 60 s by the reply); when the reset is further than that, `x-should-retry: false` tells the
 * openai SDKs not to spend their retries on a wait that cannot succeed (the body gives the real time).
 */
export const budgetExceeded = (verdict: Extract<BudgetVerdict, { ok: false }>, now: number): GatewayError => {
  const resetAt = budgetResetAt(now);
  const waitMs = resetAt - now;
  const what = verdict.which === 'requests' ? 'requests' : 'tokens';
  return new GatewayError(
    429,
    'rate_limit_error',
    'agent_budget_exceeded',
    `This agent's daily ${what} budget is used up (${verdict.used} of ${verdict.limit} ${what} today, UTC); it resets at ${new Date(resetAt).toISOString()} (in ${formatWait(waitMs)}).`,
    {
      param: verdict.which === 'requests' ? 'budget_requests_day' : 'budget_tokens_day',
      retryAfterMs: waitMs,
      ...(waitMs > RETRY_HEADER_MAX_MS ? { shouldRetry: false } : {}),
    },
  );
};

const formatWait = (ms: number): string => {
  const s = Math.ceil(ms / 1000);
  if (s < 60) return `${s} s`;
  const m = Math.ceil(s / 60);
  return m < 60 ? `${m} min` : `${Math.floor(m / 60)} h ${m % 60} min`;
};

/**
 * The ticket store's answer when the day item refused the charge (nothing was written).
 * @param used what the day item held when it refused
 */
export class BudgetExhaustedError extends Error {
  constructor(readonly used: BudgetUsage) {
    super(`agent budget exhausted (${used.requests} requests, ${used.tokens} tokens today)`);
    this.name = 'BudgetExhaustedError';
  }
}

/**
 * A budget limit from the CLI: a positive whole number sets it, `off` (or 0) clears it (null).
 * @throws ValidationError otherwise
 */
export const parseBudgetLimit = (value: string, param: string): number | null => {
  const v = value.trim().toLowerCase();
  if (v === 'off' || v === '0') return null;
  const n = Number(v);
  if (!/^\d+$/.test(v) || !Number.isSafeInteger(n) || n <= 0)
    throw new ValidationError(`${param} must be a whole number > 0, or off`, param);
  return n;
};
