// Adapter: outcome counters, one state-table item per 10-second slot, written with ADD only.
import { type DynamoDBClient, QueryCommand, UpdateItemCommand } from '@aws-sdk/client-dynamodb';
import {
  COUNTERS,
  emptySlot,
  HISTOGRAMS,
  latencyBucket,
  type OutcomeEvent,
  SLOT_MS,
  type SlotCounters,
  slotOf,
} from '../../domain/outcomes.js';
import type { OutcomeStore } from '../../domain/ports.js';
import { PRIORITIES } from '../../domain/priority.js';
import { translateStoreErrors } from '../aws-errors.js';
import { type Item, n, plain, s, stateKey, ttlFrom } from './common.js';

/** Sort key of a slot: fixed width so string order is time order. */
const slotKey = (slot: number) => String(slot).padStart(15, '0');
const histAttr = (name: string, priority: string, bucket: number) => `h_${name}_${priority}_${bucket}`;

/** Outcome slots live a day: the dashboard shows 10 minutes, retreat reads at most its windows. */
const SLOT_TTL_S = 24 * 3600;

export class DynamoOutcomeStore implements OutcomeStore {
  constructor(
    private readonly client: DynamoDBClient,
    private readonly table: string,
    private readonly partition = 'outcomes',
  ) {
    translateStoreErrors(client, 'DynamoDB');
  }

  async record(now: number, event: OutcomeEvent): Promise<void> {
    // Merged per attribute first: one UpdateExpression may not name the same path twice.
    const totals = new Map<string, number>();
    const add = (attr: string, by: number) => totals.set(attr, (totals.get(attr) ?? 0) + by);
    for (const [name, by] of Object.entries(event.counts)) if (by) add(name, by);
    for (const l of event.latencies ?? []) {
      add(histAttr(l.name, l.priority, latencyBucket(l.ms)), 1);
      add(`sum_${l.name}_${l.priority}`, Math.round(l.ms));
    }
    const adds: string[] = [];
    const values: Item = {};
    // Names go through placeholders: some counters (e.g. capacity) are DynamoDB reserved words.
    const names: Record<string, string> = {};
    for (const [attr, by] of totals) {
      const i = adds.length;
      adds.push(`#a${i} :v${i}`);
      names[`#a${i}`] = attr;
      values[`:v${i}`] = n(by);
    }
    if (adds.length === 0) return;
    values[':exp'] = n(ttlFrom(now, SLOT_TTL_S));
    await this.client.send(
      new UpdateItemCommand({
        TableName: this.table,
        Key: stateKey(this.partition, slotKey(slotOf(now))),
        UpdateExpression: `ADD ${adds.join(', ')} SET expiresAt = if_not_exists(expiresAt, :exp)`,
        ExpressionAttributeNames: names,
        ExpressionAttributeValues: values,
      }),
    );
  }

  async read(fromMs: number, toMs: number): Promise<SlotCounters[]> {
    const out: SlotCounters[] = [];
    let start: Item | undefined;
    do {
      const res = await this.client.send(
        new QueryCommand({
          TableName: this.table,
          KeyConditionExpression: 'pk = :pk AND sk BETWEEN :a AND :b',
          ExpressionAttributeValues: {
            ':pk': s(this.partition),
            ':a': s(slotKey(slotOf(fromMs))),
            ':b': s(slotKey(slotOf(toMs))),
          },
          ConsistentRead: true,
          ExclusiveStartKey: start,
        }),
      );
      for (const item of res.Items ?? []) out.push(toSlot(item));
      start = res.LastEvaluatedKey;
    } while (start);
    return out;
  }
}

const toSlot = (item: Item): SlotCounters => {
  const p = plain<Record<string, number | string>>(item) ?? {};
  const slot = emptySlot(Number(p.sk));
  for (const c of COUNTERS) slot.counts[c] = Number(p[c] ?? 0);
  for (const h of HISTOGRAMS) {
    for (const pr of PRIORITIES) {
      slot.hist[h][pr] = slot.hist[h][pr].map((_, i) => Number(p[histAttr(h, pr, i)] ?? 0));
      slot.sums[h][pr] = Number(p[`sum_${h}_${pr}`] ?? 0);
    }
  }
  return slot;
};

export { SLOT_MS };
