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
 * The item a ticket transaction counts its agent's usage on (a ticket's end, in its own write): one per agent and
 * slot, so it stays small (a transactional write costs 2 units per KB of the item, and the slot's shared item grows
 * with every agent) and plain writes (refusals, on the shared item) never land on an item a transaction holds.
 * Sorted right after its slot's shared item, so the same range Query reads both.
 */
const inTransactionSk = (now: number, agent: string) => `${slotSk(now)}#t#${agent}`;

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
    Key: stateKey('usage', inTransaction ? inTransactionSk(now, agent) : slotSk(now)),
    UpdateExpression: `ADD ${adds.join(', ')} SET expiresAt = if_not_exists(expiresAt, :exp)`,
    ExpressionAttributeNames: names,
    ExpressionAttributeValues: values,
  };
};

/**
 * Bounded cost: one ADD per finished request, made inside the ticket's own end transaction when the ticket store
 * counts usage (`usageUpdate`, on the agent's own item of the slot), else one write here (refusals, on the slot's
 * shared item); the day's view sums the same 10-minute items; items expire by TTL. A view reads the slots' shared
 * items (6 for the last hour, 144 for the day) and the agents' items of those slots.
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
            // The last slot's per-agent items sort after it: `~` is above `#`.
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
