// Status use case: the admin API — read and change the shared config (validated, recorded), reset retreat.

import { callLeavesWithinMs } from '../domain/admission.js';
import { budgetDay, budgetRemaining, budgetResetAt } from '../domain/agent-budget.js';
import type { Clock } from '../domain/clock.js';
import {
  type ExternalConfigValue,
  externalConfig,
  externalName,
  type GatewayConfig,
} from '../domain/config.js';
import type { ConfigService } from '../domain/config-service.js';
import { NotFoundError, ValidationError } from '../domain/errors.js';
import type {
  AgentUsage,
  BudgetStore,
  ConfigStore,
  ResponseCacheStore,
  TicketStore,
  UsageStore,
} from '../domain/ports.js';
import type { RetreatController } from '../domain/retreat-controller.js';
import {
  type ConfigChangeView,
  type ConfigFieldView,
  changeView,
  configFieldViews,
  type RetreatView,
  retreatView,
} from './views.js';

/** Config history entries `GET /admin/config` returns. */
export const HISTORY_LISTED = 50;

/** What `GET /admin/config` answers. */
export interface AdminConfigView {
  version: number;
  updatedAt: number;
  updatedBy: string;
  /** External names (snake_case) and units (seconds for `*_s`), exactly what PATCH accepts. */
  config: Record<string, ExternalConfigValue>;
  fields: ConfigFieldView[];
  /** Latest first. */
  history: ConfigChangeView[];
}

/** What `PATCH /admin/config` answers. */
export interface ConfigUpdateView {
  version: number;
  changes: ConfigChangeView[];
  config: Record<string, ExternalConfigValue>;
}

/** What `GET /admin/usage` answers: per-agent usage, most requests first (no keys, agent names only). */
export interface UsageView {
  at: number;
  hour: AgentUsage[];
  day: AgentUsage[];
  /** Tickets each agent has queued now (against `max_queued_per_agent`), most first; agents with none left out. */
  queued: { agent: string; queued: number }[];
  /**
   * Today's (UTC) daily budgets of the agents counted today (only agents whose key has a budget are counted):
   * used, the limits in force at the agent's last admitted request, what remains, and the reset. Most used first.
   */
  budgets: AgentBudgetView[];
}

export interface AgentBudgetView {
  agent: string;
  /** The UTC day, `YYYY-MM-DD`. */
  day: string;
  requests: number;
  tokens: number;
  requestsLimit?: number;
  tokensLimit?: number;
  requestsRemaining?: number;
  tokensRemaining?: number;
  /** Next UTC midnight (ms since the epoch). */
  resetsAt: number;
}

export type OperatorMode = 'pause' | 'resume' | 'drain';

export interface AdminDeps {
  usage: Pick<UsageStore, 'read'>;
  config: Pick<ConfigService, 'current' | 'update' | 'invalidate'>;
  history: Pick<ConfigStore, 'history'>;
  tickets: Pick<TicketStore, 'admissionCount'> & Partial<Pick<TicketStore, 'agentQueuedCounts'>>;
  /** Per-agent day counts of budgeted agents (left out: no budgets shown). */
  budgets?: Pick<BudgetStore, 'day'>;
  retreat: Pick<RetreatController, 'reset' | 'follow'>;
  clock: Clock;
  /** The response cache; none when the deployment has no cache table. */
  cache?: Pick<ResponseCacheStore, 'purge'>;
}

/** What `DELETE /admin/cache` answers. */
export interface CachePurgeView {
  at: number;
  /** Entries deleted (answers and pending marks). */
  deleted: number;
}

/** Config fields the primary bucket's rate is derived from (retreat-controller.ts bucketParamsFor). */
const RATE_FIELDS: ReadonlySet<string> = new Set(
  (['upstreamLimit', 'upstreamWindowMs', 'bucketBurst', 'grantSlackMs', 'retreatPreset'] as const).map(
    externalName,
  ),
);

export class AdminService {
  constructor(private readonly d: AdminDeps) {}

  /** The current config (fresh, not from the cache), field metadata and recent changes. */
  async getConfig(): Promise<AdminConfigView> {
    this.d.config.invalidate();
    const [current, history] = await Promise.all([
      this.d.config.current(),
      this.d.history.history(HISTORY_LISTED),
    ]);
    return {
      version: current.version,
      updatedAt: current.updatedAt,
      updatedBy: current.updatedBy,
      config: externalConfig(current.config),
      fields: configFieldViews(),
      history: history.map(changeView),
    };
  }

  /**
   * Applies a patch of external fields. Every field is validated (a 400 names the first bad one); cross-field
   * rules hold; `queue_max_size` may not go below the number of requests queued now (seed `set_max_size`).
   * Other functions see the change within the config cache age (2 s).
   * @param body the parsed JSON body
   * @param by who changes it (recorded in the history)
   * @throws ValidationError
   */
  async patchConfig(body: unknown, by: string): Promise<ConfigUpdateView> {
    if (typeof body !== 'object' || body === null || Array.isArray(body)) {
      throw new ValidationError('Send a JSON object of config fields to change.', null, 'invalid_json');
    }
    const patch = body as Record<string, unknown>;
    if (Object.keys(patch).length === 0) {
      throw new ValidationError('The patch is empty; name at least one config field.', null, 'empty_patch');
    }
    const { value, changes } = await this.d.config.update(patch, by, (next, prev) =>
      this.checkLive(next, prev),
    );
    // A new limit, window, burst or slack holds once this answers, on the fast path too (which never wakes the
    // dispatcher that would otherwise apply it).
    if (changes.some((c) => RATE_FIELDS.has(c.field))) await this.d.retreat.follow(value.config);
    return { version: value.version, changes: changes.map(changeView), config: externalConfig(value.config) };
  }

  /**
   * Pause stops granting (queued tickets wait, new ones queue); drain refuses new requests with 503 while the
   * queue empties; resume clears both. Recorded in the config history like any change.
   */
  async setMode(mode: OperatorMode, by: string): Promise<ConfigUpdateView> {
    const patch =
      mode === 'pause'
        ? { paused: true }
        : mode === 'drain'
          ? { draining: true }
          : { paused: false, draining: false };
    const { value, changes } = await this.d.config.update(patch, by);
    // Every grant and claim checks the stored flag in its own transaction, but a call let go just before may still
    // be waiting for its slot: answering after that bound means nothing reaches the upstream once pause returns.
    if (mode === 'pause') await this.d.clock.sleep(callLeavesWithinMs(value.config));
    return { version: value.version, changes: changes.map(changeView), config: externalConfig(value.config) };
  }

  /** Per-agent usage over the last hour and day (admin only: agent names are operational data). */
  async usage(limit = 50): Promise<UsageView> {
    const now = this.d.clock.now();
    const today = budgetDay(now);
    const [hour, day, counts, budgetRows] = await Promise.all([
      this.d.usage.read(now, 'hour'),
      this.d.usage.read(now, 'day'),
      this.d.tickets.agentQueuedCounts?.() ?? Promise.resolve<Record<string, number>>({}),
      this.d.budgets?.day(today) ?? Promise.resolve([]),
    ]);
    const budgets = budgetRows
      .map((r): AgentBudgetView => {
        const limits = {
          ...(r.requestsLimit !== undefined ? { requestsPerDay: r.requestsLimit } : {}),
          ...(r.tokensLimit !== undefined ? { tokensPerDay: r.tokensLimit } : {}),
        };
        const left = budgetRemaining(limits, r);
        return {
          ...r,
          day: today,
          ...(left.requests !== undefined ? { requestsRemaining: left.requests } : {}),
          ...(left.tokens !== undefined ? { tokensRemaining: left.tokens } : {}),
          resetsAt: budgetResetAt(now),
        };
      })
      .sort((a, b) => b.requests - a.requests || a.agent.localeCompare(b.agent))
      .slice(0, limit);
    const queued = Object.entries(counts)
      .filter(([, n]) => n > 0)
      .map(([agent, n]) => ({ agent, queued: n }))
      .sort((a, b) => b.queued - a.queued)
      .slice(0, limit);
    return { at: now, hour: hour.slice(0, limit), day: day.slice(0, limit), queued, budgets };
  }

  /**
   * Empties the response cache. An answer whose upstream call was running meanwhile may still be stored after
   * this returns (it was asked before the purge).
   * @throws NotFoundError when the deployment has no response cache
   */
  async purgeCache(): Promise<CachePurgeView> {
    if (!this.d.cache) throw new NotFoundError('This deployment has no response cache.');
    const deleted = await this.d.cache.purge();
    return { at: this.d.clock.now(), deleted };
  }

  /** Back to the base rate now (seed `reset_to_base`); the bucket follows at once. */
  async resetRetreat(by: string): Promise<RetreatView> {
    this.d.config.invalidate();
    const config = (await this.d.config.current()).config;
    return retreatView(await this.d.retreat.reset(config, by));
  }

  /** Rules that depend on live state rather than on the config alone. */
  private async checkLive(next: GatewayConfig, prev: GatewayConfig): Promise<void> {
    if (next.queueMaxSize === prev.queueMaxSize) return;
    const depth = await this.d.tickets.admissionCount();
    if (next.queueMaxSize < depth) {
      throw new ValidationError(
        `queue_max_size ${next.queueMaxSize} is below the ${depth} requests queued now; let the queue drain or choose at least ${depth}.`,
        'queue_max_size',
        'below_queue_depth',
      );
    }
  }
}
