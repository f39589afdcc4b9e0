// Domain use case: issuing and managing agent keys (the key is shown once; only its hash is stored).
import { formatKey, hashKey } from './auth.js';
import type { Clock } from './clock.js';
import { ValidationError } from './errors.js';
import type { AgentKey, KeyStore } from './ports.js';
import { isPriority, type Priority } from './priority.js';
import { CACHE_MAX_TTL_S } from './response-cache.js';

export const AGENT_NAME = /^[A-Za-z0-9._-]{1,64}$/;

/** Daily budgets of a new key (see agent-budget.ts); unset = no limit. */
export interface KeyBudget {
  budgetRequestsDay?: number;
  budgetTokensDay?: number;
}

/** A change of budgets: a number sets, null clears, unset leaves as is. */
export interface KeyBudgetPatch {
  budgetRequestsDay?: number | null;
  budgetTokensDay?: number | null;
}

const checkBudget = (b: KeyBudgetPatch): void => {
  for (const [field, param] of [
    ['budgetRequestsDay', 'budget-requests-day'],
    ['budgetTokensDay', 'budget-tokens-day'],
  ] as const) {
    const v = b[field];
    if (v !== undefined && v !== null && !(Number.isSafeInteger(v) && v > 0))
      throw new ValidationError(`${param} must be a whole number > 0`, param);
  }
};

export class KeyAdmin {
  constructor(
    private readonly store: KeyStore,
    private readonly clock: Clock,
    private readonly random: (n: number) => Uint8Array,
  ) {}

  /**
   * Issues a key for `agent`; returns the key (print it once) and the stored record.
   * @param cache.ttlS the agent's own response cache default (s), over the config's `cache_ttl_s`; 0 = off
   */
  async create(
    agent: string,
    maxPriority: string = 'normal',
    quota: { rpm?: number; share?: number } = {},
    budget: KeyBudget = {},
    cache: { ttlS?: number } = {},
  ): Promise<{ key: string; record: AgentKey }> {
    if (!AGENT_NAME.test(agent)) throw new ValidationError('agent must be 1-64 of [A-Za-z0-9._-]', 'agent');
    if (!isPriority(maxPriority)) {
      throw new ValidationError('max priority must be urgent, high, normal or low', 'max-priority');
    }
    if (quota.rpm !== undefined && !(quota.rpm > 0))
      throw new ValidationError('quota rpm must be > 0', 'quota-rpm');
    if (quota.share !== undefined && !(quota.share > 0 && quota.share <= 1)) {
      throw new ValidationError('quota share must be in (0, 1]', 'quota-share');
    }
    checkBudget(budget);
    if (
      cache.ttlS !== undefined &&
      !(Number.isInteger(cache.ttlS) && cache.ttlS >= 0 && cache.ttlS <= CACHE_MAX_TTL_S)
    ) {
      throw new ValidationError(
        `cache ttl must be whole seconds from 0 to ${CACHE_MAX_TTL_S}`,
        'cache-ttl-s',
      );
    }
    const key = formatKey(this.random(32));
    const record: AgentKey = {
      keyHash: hashKey(key),
      agent,
      maxPriority: maxPriority as Priority,
      enabled: true,
      createdAt: this.clock.now(),
      ...(quota.rpm !== undefined ? { quotaRpm: quota.rpm } : {}),
      ...(quota.share !== undefined ? { quotaShare: quota.share } : {}),
      ...(budget.budgetRequestsDay ? { budgetRequestsDay: budget.budgetRequestsDay } : {}),
      ...(budget.budgetTokensDay ? { budgetTokensDay: budget.budgetTokensDay } : {}),
      ...(cache.ttlS !== undefined ? { cacheTtlS: cache.ttlS } : {}),
    };
    await this.store.put(record);
    return { key, record };
  }

  /**
   * Rotation: a new key with the same priority cap and quota; the agent's current keys keep working for
   * `overlapMs` and then expire, so agents can switch without downtime.
   */
  async rotate(
    agent: string,
    overlapMs: number,
  ): Promise<{ key: string; record: AgentKey; expiring: number }> {
    const now = this.clock.now();
    const current = (await this.list(agent)).filter(
      (k) => k.enabled && (k.expiresAt === undefined || k.expiresAt > now),
    );
    if (current.length === 0) throw new ValidationError(`no active keys for agent ${agent}`, 'agent');
    const newest = current.reduce((a, b) => (a.createdAt >= b.createdAt ? a : b));
    const issued = await this.create(
      agent,
      newest.maxPriority,
      {
        ...(newest.quotaRpm !== undefined ? { rpm: newest.quotaRpm } : {}),
        ...(newest.quotaShare !== undefined ? { share: newest.quotaShare } : {}),
      },
      {
        ...(newest.budgetRequestsDay !== undefined ? { budgetRequestsDay: newest.budgetRequestsDay } : {}),
        ...(newest.budgetTokensDay !== undefined ? { budgetTokensDay: newest.budgetTokensDay } : {}),
      },
      newest.cacheTtlS !== undefined ? { ttlS: newest.cacheTtlS } : {},
    );
    for (const k of current) await this.store.setExpiry(k.keyHash, now + overlapMs);
    return { ...issued, expiring: current.length };
  }

  /** Keys of one agent (or all), never the keys themselves. */
  async list(agent?: string): Promise<AgentKey[]> {
    const all = await this.store.list();
    return agent ? all.filter((k) => k.agent === agent) : all;
  }

  /**
   * Enables or disables the one key whose id (the hash prefix `list` shows) starts with `keyId`.
   * @throws ValidationError when no key or more than one matches (at least 6 characters needed)
   */
  async setEnabledById(keyId: string, enabled: boolean): Promise<AgentKey> {
    const key = await this.byId(keyId);
    await this.store.setEnabled(key.keyHash, enabled);
    return { ...key, enabled };
  }

  /**
   * Sets (a number) or clears (null) the daily budgets of every key of `agent`, or of the one key `keyId` names;
   * fields left out stay. Agents see the change within the key cache age (10 s).
   * @returns the changed keys
   */
  async setBudget(
    target: { agent: string } | { keyId: string },
    budget: KeyBudgetPatch,
  ): Promise<AgentKey[]> {
    checkBudget(budget);
    if (budget.budgetRequestsDay === undefined && budget.budgetTokensDay === undefined)
      throw new ValidationError(
        'name a budget to set or clear (--budget-requests-day, --budget-tokens-day)',
        'budget',
      );
    const keys = 'agent' in target ? await this.list(target.agent) : [await this.byId(target.keyId)];
    if (keys.length === 0)
      throw new ValidationError(`no keys for agent ${'agent' in target ? target.agent : ''}`, 'agent');
    const changed: AgentKey[] = [];
    for (const k of keys) {
      await this.store.setBudget(k.keyHash, budget);
      const next: AgentKey = { ...k };
      for (const field of ['budgetRequestsDay', 'budgetTokensDay'] as const) {
        const v = budget[field];
        if (v === null) delete next[field];
        else if (v !== undefined) next[field] = v;
      }
      changed.push(next);
    }
    return changed;
  }

  /**
   * The one key whose id (the hash prefix `list` shows) starts with `keyId`.
   * @throws ValidationError when no key or more than one matches (at least 6 characters needed)
   */
  private async byId(keyId: string): Promise<AgentKey> {
    const prefix = keyId.trim().toLowerCase();
    if (!/^[0-9a-f]{6,64}$/.test(prefix))
      throw new ValidationError('key id must be at least 6 hex characters (from `list`)', 'key-id');
    const matches = (await this.store.list()).filter((k) => k.keyHash.startsWith(prefix));
    if (matches.length === 0) throw new ValidationError(`no key with id ${prefix}`, 'key-id');
    if (matches.length > 1)
      throw new ValidationError(`${matches.length} keys match id ${prefix}; give more characters`, 'key-id');
    return matches[0] as AgentKey;
  }

  /** Enables or disables every key of `agent`; returns how many changed. */
  async setEnabled(agent: string, enabled: boolean): Promise<number> {
    const keys = await this.list(agent);
    if (keys.length === 0) throw new ValidationError(`no keys for agent ${agent}`, 'agent');
    for (const k of keys) await this.store.setEnabled(k.keyHash, enabled);
    return keys.length;
  }
}
