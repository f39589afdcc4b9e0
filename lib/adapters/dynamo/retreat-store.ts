// Adapter: the retreat record, written only with a version condition.
import { type DynamoDBClient, GetItemCommand, PutItemCommand } from '@aws-sdk/client-dynamodb';
import { marshall } from '@aws-sdk/util-dynamodb';
import type { RetreatStore } from '../../domain/ports.js';
import type { RetreatRecord } from '../../domain/retreat.js';
import { translateStoreErrors } from '../aws-errors.js';
import { conditionFailure, type Item, n, plain, stateKey } from './common.js';

export class DynamoRetreatStore implements RetreatStore {
  private readonly key: Item;

  constructor(
    private readonly client: DynamoDBClient,
    private readonly table: string,
    bucketKey = 'default',
  ) {
    translateStoreErrors(client, 'DynamoDB');
    this.key = stateKey('retreat', bucketKey);
  }

  async get(): Promise<RetreatRecord | undefined> {
    const res = await this.client.send(
      new GetItemCommand({ TableName: this.table, Key: this.key, ConsistentRead: true }),
    );
    const p = plain<RetreatRecord & { pk: string; sk: string }>(res.Item);
    if (!p) return undefined;
    const { pk: _pk, sk: _sk, ...record } = p;
    return record;
  }

  async put(next: RetreatRecord, expectedVersion: number | undefined): Promise<boolean> {
    try {
      await this.client.send(
        new PutItemCommand({
          TableName: this.table,
          Item: { ...marshall(next, { removeUndefinedValues: true }), ...this.key },
          ConditionExpression: expectedVersion === undefined ? 'attribute_not_exists(pk)' : 'version = :v',
          ...(expectedVersion === undefined
            ? {}
            : { ExpressionAttributeValues: { ':v': n(expectedVersion) } }),
        }),
      );
      return true;
    } catch (err) {
      conditionFailure(err);
      return false;
    }
  }
}
