// Adapter: the response cache in its own DynamoDB table — one item per key, answers gzip-compressed, expiry by TTL.
import { gunzipSync, gzipSync } from 'node:zlib';
import {
  BatchWriteItemCommand,
  type DynamoDBClient,
  GetItemCommand,
  PutItemCommand,
  ScanCommand,
  UpdateItemCommand,
} from '@aws-sdk/client-dynamodb';
import type { CacheEntry, ResponseCacheStore } from '../../domain/ports.js';
import type { CachedAnswer } from '../../domain/response-cache.js';
import { translateStoreErrors } from '../aws-errors.js';
import { conditionFailure, type Item, n, s } from './common.js';

/**
 * Largest compressed answer stored. DynamoDB items stop at 400 KB; the rest of the item is a few hundred bytes.
 * Chat answers compress 3-5×, so this is well over a megabyte of JSON; a larger one is simply not cached.
 */
export const MAX_STORED_BODY_BYTES = 390_000;

/** A pending mark outlives its `until` this long in the table (TTL deletes it later; readers judge `until`). */
const PENDING_TTL_GRACE_S = 60;

const toEntry = (item: Item | undefined): CacheEntry | undefined => {
  if (!item) return undefined;
  if (item.kind?.S === 'pending') {
    return {
      kind: 'pending',
      owner: item.owner?.S ?? '',
      until: Number(item.until?.N ?? 0),
      rank: Number(item.rank?.N ?? 0),
    };
  }
  const gz = item.body?.B;
  if (!gz) return undefined;
  return {
    kind: 'answer',
    body: gunzipSync(gz).toString('utf8'),
    storedAt: Number(item.storedAt?.N ?? 0),
    expiresAt: Number(item.validUntil?.N ?? 0),
    tokens: Number(item.tokens?.N ?? 0),
  };
};

export class DynamoResponseCacheStore implements ResponseCacheStore {
  constructor(
    private readonly client: DynamoDBClient,
    private readonly table: string,
  ) {
    translateStoreErrors(client, 'DynamoDB');
  }

  async get(key: string): Promise<CacheEntry | undefined> {
    // Consistent: a waiter must see the answer the moment the fetching request stored it.
    const res = await this.client.send(
      new GetItemCommand({ TableName: this.table, Key: { key: s(key) }, ConsistentRead: true }),
    );
    return toEntry(res.Item);
  }

  async claim(
    key: string,
    owner: string,
    until: number,
    now: number,
    rank: number,
  ): Promise<true | CacheEntry | undefined> {
    try {
      await this.client.send(
        new PutItemCommand({
          TableName: this.table,
          Item: {
            key: s(key),
            kind: s('pending'),
            owner: s(owner),
            until: n(until),
            rank: n(rank),
            expiresAt: n(Math.ceil(until / 1000) + PENDING_TTL_GRACE_S),
          },
          ConditionExpression:
            'attribute_not_exists(#k) OR (kind = :answer AND validUntil <= :now) OR (kind = :pending AND (#u <= :now OR #o = :owner))',
          ExpressionAttributeNames: { '#k': 'key', '#u': 'until', '#o': 'owner' },
          ExpressionAttributeValues: {
            ':answer': s('answer'),
            ':pending': s('pending'),
            ':now': n(now),
            ':owner': s(owner),
          },
          ReturnValuesOnConditionCheckFailure: 'ALL_OLD',
        }),
      );
      return true;
    } catch (err) {
      return toEntry(conditionFailure(err).item);
    }
  }

  async put(key: string, answer: CachedAnswer): Promise<'stored' | 'too_large'> {
    const gz = gzipSync(answer.body);
    if (gz.byteLength > MAX_STORED_BODY_BYTES) return 'too_large';
    await this.client.send(
      new PutItemCommand({
        TableName: this.table,
        Item: {
          key: s(key),
          kind: s('answer'),
          body: { B: gz },
          storedAt: n(answer.storedAt),
          validUntil: n(answer.expiresAt),
          tokens: n(answer.tokens),
          expiresAt: n(Math.ceil(answer.expiresAt / 1000)),
        },
      }),
    );
    return 'stored';
  }

  async release(key: string, owner: string, now: number): Promise<void> {
    try {
      await this.client.send(
        new UpdateItemCommand({
          TableName: this.table,
          Key: { key: s(key) },
          UpdateExpression: 'SET #u = :now',
          ConditionExpression: 'kind = :pending AND #o = :owner',
          ExpressionAttributeNames: { '#u': 'until', '#o': 'owner' },
          ExpressionAttributeValues: { ':now': n(now), ':pending': s('pending'), ':owner': s(owner) },
        }),
      );
    } catch (err) {
      // Already replaced by an answer or taken over by another request: nothing of ours to release.
      conditionFailure(err);
    }
  }

  async purge(): Promise<number> {
    let deleted = 0;
    let start: Item | undefined;
    do {
      const page = await this.client.send(
        new ScanCommand({
          TableName: this.table,
          ProjectionExpression: '#k',
          ExpressionAttributeNames: { '#k': 'key' },
          ExclusiveStartKey: start,
        }),
      );
      const keys: Item[] = (page.Items ?? []).map((item) => ({ key: item.key! }));
      for (let i = 0; i < keys.length; i += 25) {
        let requests = keys.slice(i, i + 25).map((Key) => ({ DeleteRequest: { Key } }));
        for (let attempt = 0; requests.length > 0; attempt++) {
          if (attempt > 0) await new Promise((r) => setTimeout(r, Math.min(1_000, 50 * 2 ** attempt)));
          const res = await this.client.send(
            new BatchWriteItemCommand({ RequestItems: { [this.table]: requests } }),
          );
          const left = res.UnprocessedItems?.[this.table] ?? [];
          deleted += requests.length - left.length;
          requests = left.flatMap((r) =>
            r.DeleteRequest?.Key ? [{ DeleteRequest: { Key: r.DeleteRequest.Key } }] : [],
          );
          if (attempt > 8 && requests.length > 0)
            throw new Error('cache purge: deletes kept being throttled');
        }
      }
      start = page.LastEvaluatedKey;
    } while (start);
    return deleted;
  }
}
