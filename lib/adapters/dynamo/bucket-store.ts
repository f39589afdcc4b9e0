// Adapter: the GCRA bucket item in the state table. Consume = one conditional UpdateItem, no read.
import { type DynamoDBClient, GetItemCommand, UpdateItemCommand } from '@aws-sdk/client-dynamodb';
import type { BucketParams, BucketState, ConsumeAttempt } from '../../domain/gcra.js';
import type { BucketStore, ConsumeOutcome } from '../../domain/ports.js';
import { translateStoreErrors } from '../aws-errors.js';
import { conditionFailure, type Item, n, plain, stateKey } from './common.js';

const toState = (item: Item | undefined): BucketState | undefined => {
  const p = plain<{ tat?: number; intervalMs?: number; burst?: number; holdUntil?: number }>(item);
  if (!p || p.intervalMs === undefined || p.burst === undefined) return undefined;
  return {
    intervalMs: p.intervalMs,
    burst: p.burst,
    ...(p.tat !== undefined ? { tat: p.tat } : {}),
    ...(p.holdUntil !== undefined ? { holdUntil: p.holdUntil } : {}),
  };
};

/**
 * The Update (expression, condition, values) that applies a consume attempt; shared by the plain consume
 * and the grant transaction so both spend tokens identically.
 */
export const consumeUpdate = (
  a: ConsumeAttempt,
): { UpdateExpression: string; ConditionExpression: string; ExpressionAttributeValues: Item } => {
  const params = 'intervalMs = :T AND burst = :b';
  if (a.branch === 'idle') {
    return {
      UpdateExpression: 'SET tat = :newTat',
      ConditionExpression: `${params} AND (attribute_not_exists(tat) OR tat < :now)`,
      ExpressionAttributeValues: {
        ':T': n(a.params.intervalMs),
        ':b': n(a.params.burst),
        ':now': n(a.now),
        ':newTat': n(a.newTat),
      },
    };
  }
  return {
    UpdateExpression: 'SET tat = tat + :T',
    ConditionExpression: `${params} AND tat BETWEEN :now AND :maxTat`,
    ExpressionAttributeValues: {
      ':T': n(a.params.intervalMs),
      ':b': n(a.params.burst),
      ':now': n(a.now),
      ':maxTat': n(a.maxTat),
    },
  };
};

export class DynamoBucketStore implements BucketStore {
  readonly key: Item;

  constructor(
    private readonly client: DynamoDBClient,
    private readonly table: string,
    bucketKey = 'default',
  ) {
    translateStoreErrors(client, 'DynamoDB');
    this.key = stateKey('bucket', bucketKey);
  }

  async get(): Promise<BucketState | undefined> {
    const res = await this.client.send(
      new GetItemCommand({ TableName: this.table, Key: this.key, ConsistentRead: true }),
    );
    return toState(res.Item);
  }

  async ensure(params: BucketParams): Promise<BucketState> {
    const res = await this.client.send(
      new UpdateItemCommand({
        TableName: this.table,
        Key: this.key,
        UpdateExpression: 'SET intervalMs = if_not_exists(intervalMs, :T), burst = if_not_exists(burst, :b)',
        ExpressionAttributeValues: { ':T': n(params.intervalMs), ':b': n(params.burst) },
        ReturnValues: 'ALL_NEW',
      }),
    );
    const state = toState(res.Attributes);
    if (!state) throw new Error('bucket item incomplete after ensure');
    return state;
  }

  async consume(attempt: ConsumeAttempt): Promise<ConsumeOutcome> {
    try {
      const res = await this.client.send(
        new UpdateItemCommand({
          TableName: this.table,
          Key: this.key,
          ...consumeUpdate(attempt),
          ReturnValues: 'UPDATED_NEW',
          ReturnValuesOnConditionCheckFailure: 'ALL_OLD',
        }),
      );
      const tat = plain<{ tat: number }>(res.Attributes)?.tat;
      if (tat === undefined) throw new Error('consume returned no tat');
      return { ok: true, tat };
    } catch (err) {
      return { ok: false, current: toState(conditionFailure(err).item) };
    }
  }

  async compareAndSet(expected: BucketState, next: BucketState): Promise<boolean> {
    const sets = ['intervalMs = :T', 'burst = :b'];
    const values: Item = {
      ':T': n(next.intervalMs),
      ':b': n(next.burst),
      ':eT': n(expected.intervalMs),
      ':eb': n(expected.burst),
    };
    const removes: string[] = [];
    if (next.tat !== undefined) {
      sets.push('tat = :tat');
      values[':tat'] = n(next.tat);
    } else removes.push('tat');
    if (next.holdUntil !== undefined) {
      sets.push('holdUntil = :h');
      values[':h'] = n(next.holdUntil);
    }
    let cond = 'intervalMs = :eT AND burst = :eb AND ';
    if (expected.tat !== undefined) {
      cond += 'tat = :etat';
      values[':etat'] = n(expected.tat);
    } else cond += 'attribute_not_exists(tat)';
    try {
      await this.client.send(
        new UpdateItemCommand({
          TableName: this.table,
          Key: this.key,
          UpdateExpression: `SET ${sets.join(', ')}${removes.length ? ` REMOVE ${removes.join(', ')}` : ''}`,
          ConditionExpression: cond,
          ExpressionAttributeValues: values,
        }),
      );
      return true;
    } catch (err) {
      conditionFailure(err);
      return false;
    }
  }
}

export { toState as bucketStateFromItem };
