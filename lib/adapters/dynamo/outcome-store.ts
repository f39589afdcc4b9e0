// Adapter: outcome counters, one state-table item per 10-second slot and shard, written with ADD only.
import { randomInt } from 'node:crypto';
import { type DynamoDBClient, QueryCommand, UpdateItemCommand } from '@aws-sdk/client-dynamodb';
import {
  COUNTERS,
  emptySlot,
  HISTOGRAMS,
  latencyBucket,
  mergeSlots,
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
/** After every shard's sort key of a slot (`<slot>#<shard>`) in string order. */
const AFTER_SHARDS = '#~';

/**
 * Shards per slot. Every request's end writes its slot (~3 KB: 3 write units), so one item would take ~330 writes
 * per second at most (1,000 units per item): each container writes its own shard of four, which a reader's one
 * Query gets together (the same partition key, sort keys side by side) and sums.
 */
export const OUTCOME_SHARDS = 4;
const histAttr = (name: string, priority: string, bucket: number) => `h_${name}_${priority}_${bucket}`;

/** Outcome slots live a day: the dashboard shows 10 minutes, retreat reads at most its windows. */
const SLOT_TTL_S = 24 * 3600;

export class DynamoOutcomeStore implements OutcomeStore {
  constructor(
    private readonly client: DynamoDBClient,
    private readonly table: string,
    private readonly partition = 'outcomes',
    /** This container's shard of every slot. @default one of OUTCOME_SHARDS at random */
    private readonly shard = randomInt(OUTCOME_SHARDS),
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
        Key: stateKey(this.partition, `${slotKey(slotOf(now))}#${this.shard}`),
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
            ':b': s(slotKey(slotOf(toMs)) + AFTER_SHARDS),
          },
          ConsistentRead: true,
          ExclusiveStartKey: start,
        }),
      );
      for (const item of res.Items ?? []) out.push(toSlot(item));
      start = res.LastEvaluatedKey;
    } while (start);
    return mergeSlots(out);
  }
}

const toSlot = (item: Item): SlotCounters => {
  const p = plain<Record<string, number | string>>(item) ?? {};
  // `<slot>#<shard>`; a slot written before shards has no suffix.
  const slot = emptySlot(Number(String(p.sk).split('#')[0]));
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
