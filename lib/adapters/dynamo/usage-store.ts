// Adapter: per-agent usage counters — one state-table item per 10-minute slot and per hour, agents as attributes.
import { type DynamoDBClient, QueryCommand, type Update, UpdateItemCommand } from '@aws-sdk/client-dynamodb';
import type { AgentUsage, AgentUsageEvent, UsageStore } from '../../domain/ports.js';
import { translateStoreErrors } from '../aws-errors.js';
import { type Item, n, plain, s, stateKey, ttlFrom } from './common.js';

const MINUTE_SLOT_MS = 10 * 60_000;
const FIELDS = ['requests', 'tokens', 'throttled', 'refused', 'queueMs', 'granted'] as const;
const pad = (t: number) => String(t).padStart(15, '0');
const slotSk = (now: number) => `m#${pad(Math.floor(now / MINUTE_SLOT_MS) * MINUTE_SLOT_MS)}`;
/**
 * The suffix of a slot's twin item, written only inside ticket transactions (a ticket's end counts its agent's
 * usage in its own write): plain writes (refusals) never land on an item a transaction holds. Sorted right after
 * its slot's item, so the same range Query reads both.
 */
const IN_TRANSACTION = '#t';

/**
 * The ADD of one usage event to `now`'s slot, as an Update (undefined when it adds nothing); `inTransaction` for
 * the item a ticket transaction writes (see IN_TRANSACTION).
 */
export const usageUpdate = (
  table: string,
  agent: string,
  now: number,
  e: AgentUsageEvent,
  inTransaction = false,
): Update | undefined => {
  const adds: string[] = [];
  const names: Record<string, string> = {};
  const values: Item = { ':exp': n(ttlFrom(now, 2 * 24 * 3600)) };
  for (const f of FIELDS) {
    const v = f === 'granted' ? (e.queueMs !== undefined ? 1 : 0) : (e[f] ?? 0);
    if (!v) continue;
    names[`#${f}`] = `${agent}|${f}`;
    values[`:${f}`] = n(Math.round(v));
    adds.push(`#${f} :${f}`);
  }
  if (adds.length === 0) return undefined;
  return {
    TableName: table,
    Key: stateKey('usage', `${slotSk(now)}${inTransaction ? IN_TRANSACTION : ''}`),
    UpdateExpression: `ADD ${adds.join(', ')} SET expiresAt = if_not_exists(expiresAt, :exp)`,
    ExpressionAttributeNames: names,
    ExpressionAttributeValues: values,
  };
};

/**
 * Bounded cost: one ADD per finished request, made inside the ticket's own end transaction when the ticket store
 * counts usage (`usageUpdate`, on the slot's twin item), else one write here (refusals); the day's view sums the
 * same 10-minute items; items expire by TTL, and the number of items read is fixed (12 for the last hour, 288
 * for the last day: each slot and its twin) whatever the number of agents.
 */
export class DynamoUsageStore implements UsageStore {
  constructor(
    private readonly client: DynamoDBClient,
    private readonly table: string,
  ) {
    translateStoreErrors(client, 'DynamoDB');
  }

  async record(agent: string, now: number, e: AgentUsageEvent): Promise<void> {
    const update = usageUpdate(this.table, agent, now, e);
    if (update) await this.client.send(new UpdateItemCommand(update));
  }

  async read(now: number, span: 'hour' | 'day'): Promise<AgentUsage[]> {
    const count = span === 'hour' ? 6 : 144;
    const last = Math.floor(now / MINUTE_SLOT_MS) * MINUTE_SLOT_MS;
    const items: Item[] = [];
    let start: Item | undefined;
    do {
      const res = await this.client.send(
        new QueryCommand({
          TableName: this.table,
          KeyConditionExpression: 'pk = :pk AND sk BETWEEN :a AND :b',
          ExpressionAttributeValues: {
            ':pk': s('usage'),
            ':a': s(`m#${pad(last - (count - 1) * MINUTE_SLOT_MS)}`),
            // The last slot's twin sorts after it: `~` is above `#`.
            ':b': s(`m#${pad(last)}~`),
          },
          ExclusiveStartKey: start,
        }),
      );
      items.push(...(res.Items ?? []));
      start = res.LastEvaluatedKey;
    } while (start);
    const byAgent = new Map<string, Record<(typeof FIELDS)[number], number>>();
    for (const item of items) {
      for (const [attr, value] of Object.entries(plain<Record<string, unknown>>(item) ?? {})) {
        const bar = attr.lastIndexOf('|');
        if (bar < 0 || typeof value !== 'number') continue;
        const agent = attr.slice(0, bar);
        const field = attr.slice(bar + 1) as (typeof FIELDS)[number];
        if (!FIELDS.includes(field)) continue;
        const row = byAgent.get(agent) ?? {
          requests: 0,
          tokens: 0,
          throttled: 0,
          refused: 0,
          queueMs: 0,
          granted: 0,
        };
        row[field] += value;
        byAgent.set(agent, row);
      }
    }
    return [...byAgent.entries()]
      .map(([agent, r]) => ({
        agent,
        requests: r.requests,
        tokens: r.tokens,
        throttled: r.throttled,
        refused: r.refused,
        avgQueueMs: r.granted ? Math.round(r.queueMs / r.granted) : 0,
      }))
      .sort((a, b) => b.requests - a.requests || a.agent.localeCompare(b.agent));
  }
}
