// Adapter: agent keys, stored only as SHA-256 hashes.
import {
  type DynamoDBClient,
  GetItemCommand,
  PutItemCommand,
  ScanCommand,
  UpdateItemCommand,
} from '@aws-sdk/client-dynamodb';
import { marshall } from '@aws-sdk/util-dynamodb';
import { ConflictError } from '../../domain/errors.js';
import type { AgentKey, KeyStore } from '../../domain/ports.js';
import { translateStoreErrors } from '../aws-errors.js';
import { conditionFailure, type Item, plain, s } from './common.js';

export class DynamoKeyStore implements KeyStore {
  constructor(
    private readonly client: DynamoDBClient,
    private readonly table: string,
  ) {
    translateStoreErrors(client, 'DynamoDB');
  }

  async get(keyHash: string): Promise<AgentKey | undefined> {
    const res = await this.client.send(
      new GetItemCommand({ TableName: this.table, Key: { keyHash: s(keyHash) }, ConsistentRead: true }),
    );
    return plain<AgentKey>(res.Item);
  }

  async put(key: AgentKey): Promise<void> {
    try {
      await this.client.send(
        new PutItemCommand({
          TableName: this.table,
          Item: marshall(key, { removeUndefinedValues: true }),
          ConditionExpression: 'attribute_not_exists(keyHash)',
        }),
      );
    } catch (err) {
      conditionFailure(err);
      throw new ConflictError('a key with this hash exists');
    }
  }

  async list(): Promise<AgentKey[]> {
    const out: AgentKey[] = [];
    let start: Item | undefined;
    do {
      const res = await this.client.send(
        new ScanCommand({ TableName: this.table, ExclusiveStartKey: start }),
      );
      for (const item of res.Items ?? []) out.push(plain<AgentKey>(item)!);
      start = res.LastEvaluatedKey;
    } while (start);
    return out.sort((a, b) => a.agent.localeCompare(b.agent) || a.createdAt - b.createdAt);
  }

  async setExpiry(keyHash: string, at: number): Promise<void> {
    try {
      await this.client.send(
        new UpdateItemCommand({
          TableName: this.table,
          Key: { keyHash: s(keyHash) },
          UpdateExpression: 'SET expiresAt = :at',
          ConditionExpression: 'attribute_exists(keyHash)',
          ExpressionAttributeValues: { ':at': { N: String(at) } },
        }),
      );
    } catch (err) {
      conditionFailure(err);
      throw new ConflictError('no such key');
    }
  }

  async setBudget(
    keyHash: string,
    budget: { budgetRequestsDay?: number | null; budgetTokensDay?: number | null },
  ): Promise<void> {
    const sets: string[] = [];
    const removes: string[] = [];
    const values: Item = {};
    for (const field of ['budgetRequestsDay', 'budgetTokensDay'] as const) {
      const v = budget[field];
      if (v === undefined) continue;
      if (v === null) removes.push(field);
      else {
        sets.push(`${field} = :${field}`);
        values[`:${field}`] = { N: String(v) };
      }
    }
    if (!sets.length && !removes.length) return;
    try {
      await this.client.send(
        new UpdateItemCommand({
          TableName: this.table,
          Key: { keyHash: s(keyHash) },
          UpdateExpression: [
            sets.length ? `SET ${sets.join(', ')}` : '',
            removes.length ? `REMOVE ${removes.join(', ')}` : '',
          ]
            .filter(Boolean)
            .join(' '),
          ConditionExpression: 'attribute_exists(keyHash)',
          ...(sets.length ? { ExpressionAttributeValues: values } : {}),
        }),
      );
    } catch (err) {
      conditionFailure(err);
      throw new ConflictError('no such key');
    }
  }

  async touch(keyHash: string, now: number, everyMs: number): Promise<boolean> {
    try {
      await this.client.send(
        new UpdateItemCommand({
          TableName: this.table,
          Key: { keyHash: s(keyHash) },
          UpdateExpression: 'SET lastUsedAt = :now',
          ConditionExpression:
            'attribute_exists(keyHash) AND (attribute_not_exists(lastUsedAt) OR lastUsedAt < :before)',
          ExpressionAttributeValues: { ':now': { N: String(now) }, ':before': { N: String(now - everyMs) } },
        }),
      );
      return true;
    } catch (err) {
      conditionFailure(err);
      return false;
    }
  }

  async setEnabled(keyHash: string, enabled: boolean): Promise<void> {
    try {
      await this.client.send(
        new UpdateItemCommand({
          TableName: this.table,
          Key: { keyHash: s(keyHash) },
          UpdateExpression: 'SET enabled = :e',
          ConditionExpression: 'attribute_exists(keyHash)',
          ExpressionAttributeValues: { ':e': { BOOL: enabled } },
        }),
      );
    } catch (err) {
      conditionFailure(err);
      throw new ConflictError('no such key');
    }
  }
}
