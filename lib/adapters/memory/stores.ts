// Adapter: in-memory stores with the same conditional semantics as the DynamoDB ones (unit tests, models).

import type { BudgetCharge, BudgetUsage } from '../../domain/agent-budget.js';
import {
  applyConsume,
  type BucketParams,
  type BucketState,
  type ConsumeAttempt,
  sameParams,
} from '../../domain/gcra.js';
import {
  emptySlot,
  latencyBucket,
  type OutcomeEvent,
  type SlotCounters,
  slotOf,
} from '../../domain/outcomes.js';
import type {
  BucketStore,
  BudgetDayRow,
  BudgetStore,
  ConfigChange,
  ConfigStore,
  ConsumeOutcome,
  OutcomeStore,
  RetreatStore,
  VersionedConfig,
} from '../../domain/ports.js';
import type { RetreatRecord } from '../../domain/retreat.js';
import type { TokenEntry, TokenLog, TokenReserve } from '../../domain/token-window.js';

const sameBucket = (a: BucketState | undefined, b: BucketState) =>
  !!a && a.tat === b.tat && sameParams(a, b) && a.version === b.version;

export class MemoryBucketStore implements BucketStore {
  state: BucketState | undefined;

  async get(): Promise<BucketState | undefined> {
    return this.state && { ...this.state };
  }

  async ensure(params: BucketParams): Promise<BucketState> {
    this.state ??= { ...params };
    return { ...this.state };
  }

  async consume(attempt: ConsumeAttempt): Promise<ConsumeOutcome> {
    const next = applyConsume(this.state, attempt);
    if (next?.tat === undefined) return { ok: false, current: this.state && { ...this.state } };
    this.state = next;
    return { ok: true, tat: next.tat };
  }

  async compareAndSet(expected: BucketState, next: BucketState, reserve?: TokenReserve): Promise<boolean> {
    if (!sameBucket(this.state, expected)) return false;
    if (reserve && (this.state?.tokens?.version ?? 0) !== reserve.expectedVersion) return false;
    // The token log is versioned apart and moved by this write only when asked to (as on DynamoDB).
    const { tokens: _ignored, ...rest } = next;
    const tokens = reserve
      ? { entries: [...reserve.newEntries], version: reserve.expectedVersion + 1 }
      : this.state?.tokens;
    this.state = { ...rest, ...(tokens ? { tokens } : {}) };
    return true;
  }

  async writeTokens(
    expectedVersion: number,
    entries: readonly TokenEntry[],
  ): Promise<{ ok: true } | { ok: false; current: TokenLog | undefined }> {
    if (!this.state || (this.state.tokens?.version ?? 0) !== expectedVersion)
      return { ok: false, current: this.state?.tokens };
    this.state = { ...this.state, tokens: { entries: [...entries], version: expectedVersion + 1 } };
    return { ok: true };
  }
}

export class MemoryOutcomeStore implements OutcomeStore {
  readonly slots = new Map<number, SlotCounters>();

  async record(now: number, event: OutcomeEvent): Promise<void> {
    const key = slotOf(now);
    const slot = this.slots.get(key) ?? emptySlot(key);
    for (const [name, by] of Object.entries(event.counts))
      slot.counts[name as keyof typeof slot.counts] += by ?? 0;
    for (const l of event.latencies ?? []) {
      const row = slot.hist[l.name][l.priority];
      const i = latencyBucket(l.ms);
      row[i] = (row[i] ?? 0) + 1;
      slot.sums[l.name][l.priority] += Math.round(l.ms);
    }
    this.slots.set(key, slot);
  }

  async read(fromMs: number, toMs: number): Promise<SlotCounters[]> {
    return [...this.slots.values()]
      .filter((s) => s.slot >= slotOf(fromMs) && s.slot <= slotOf(toMs))
      .sort((a, b) => a.slot - b.slot);
  }
}

export class MemoryRetreatStore implements RetreatStore {
  record: RetreatRecord | undefined;

  async get(): Promise<RetreatRecord | undefined> {
    return this.record && structuredClone(this.record);
  }

  async put(next: RetreatRecord, expectedVersion: number | undefined): Promise<boolean> {
    if (
      expectedVersion === undefined ? this.record !== undefined : this.record?.version !== expectedVersion
    ) {
      return false;
    }
    this.record = structuredClone(next);
    return true;
  }
}

/** Per-agent day counts as the DynamoDB day items hold them; `charge` is the conditional ADD of a ticket write. */
export class MemoryBudgetStore implements BudgetStore {
  readonly days = new Map<string, BudgetDayRow>();

  private row(agent: string, day: string): BudgetDayRow {
    const key = `${day}#${agent}`;
    let row = this.days.get(key);
    if (!row) {
      row = { agent, requests: 0, tokens: 0 };
      this.days.set(key, row);
    }
    return row;
  }

  /**
   * Counts one request unless a limit is reached (the caller's transaction then writes nothing).
   * @returns undefined when counted, else what the day held
   */
  charge(c: BudgetCharge): BudgetUsage | undefined {
    const refused = this.refuses(c);
    if (refused) return refused;
    const row = this.row(c.agent, c.day);
    const { requestsPerDay, tokensPerDay } = c.limits;
    row.requests++;
    if (requestsPerDay !== undefined) row.requestsLimit = requestsPerDay;
    else delete row.requestsLimit;
    if (tokensPerDay !== undefined) row.tokensLimit = tokensPerDay;
    else delete row.tokensLimit;
    return undefined;
  }

  /** Would `charge` refuse? (checked with the other conditions before any write) */
  refuses(c: BudgetCharge): BudgetUsage | undefined {
    const row = this.days.get(`${c.day}#${c.agent}`) ?? { requests: 0, tokens: 0 };
    const { requestsPerDay, tokensPerDay } = c.limits;
    return (requestsPerDay !== undefined && row.requests >= requestsPerDay) ||
      (tokensPerDay !== undefined && row.tokens >= tokensPerDay)
      ? { requests: row.requests, tokens: row.tokens }
      : undefined;
  }

  async addTokens(agent: string, day: string, tokens: number): Promise<void> {
    if (tokens > 0) this.row(agent, day).tokens += Math.round(tokens);
  }

  async used(agent: string, day: string): Promise<BudgetUsage> {
    const row = this.days.get(`${day}#${agent}`);
    return { requests: row?.requests ?? 0, tokens: row?.tokens ?? 0 };
  }

  async day(day: string): Promise<BudgetDayRow[]> {
    return [...this.days.entries()].filter(([k]) => k.startsWith(`${day}#`)).map(([, r]) => ({ ...r }));
  }
}

/** The config record and its change history, with the DynamoDB store's version condition on every put. */
export class MemoryConfigStore implements ConfigStore {
  changes: ConfigChange[] = [];
  constructor(public value?: VersionedConfig) {}
  async get() {
    return this.value && structuredClone(this.value);
  }
  async put(next: VersionedConfig, expected: number | undefined, changes: ConfigChange[] = []) {
    if (expected === undefined ? this.value !== undefined : this.value?.version !== expected) return false;
    this.value = structuredClone(next);
    this.changes.unshift(...changes);
    return true;
  }
  async history(limit: number) {
    return this.changes.slice(0, limit);
  }
}
