// Adapter: the dispatcher's lease and doorbell (one state-table item).
import { type DynamoDBClient, GetItemCommand, UpdateItemCommand } from '@aws-sdk/client-dynamodb';
import type { LeaseState, LeaseStore } from '../../domain/ports.js';
import { translateStoreErrors } from '../aws-errors.js';
import { conditionFailure, type Item, n, plain, s, stateKey } from './common.js';

const toLease = (item: Item | undefined): LeaseState => {
  const p = plain<{
    owner?: string;
    leaseUntil?: number;
    rings?: number;
    acquiredAt?: number;
    releasedAt?: number;
  }>(item);
  return {
    rings: p?.rings ?? 0,
    ...(p?.acquiredAt !== undefined ? { acquiredAt: p.acquiredAt } : {}),
    ...(p?.releasedAt !== undefined ? { releasedAt: p.releasedAt } : {}),
    ...(p?.owner !== undefined ? { owner: p.owner } : {}),
    ...(p?.leaseUntil !== undefined ? { expiresAt: p.leaseUntil } : {}),
  };
};

export class DynamoLeaseStore implements LeaseStore {
  private readonly key: Item;

  constructor(
    private readonly client: DynamoDBClient,
    private readonly table: string,
    name = 'dispatcher',
  ) {
    translateStoreErrors(client, 'DynamoDB');
    this.key = stateKey('lease', name);
  }

  async acquire(
    owner: string,
    now: number,
    ttlMs: number,
  ): Promise<{ acquired: boolean; state: LeaseState }> {
    try {
      const res = await this.client.send(
        new UpdateItemCommand({
          TableName: this.table,
          Key: this.key,
          UpdateExpression:
            'SET #o = :o, leaseUntil = :until, rings = if_not_exists(rings, :zero), acquiredAt = :now',
          ConditionExpression: 'attribute_not_exists(#o) OR leaseUntil < :now OR #o = :o',
          ExpressionAttributeNames: { '#o': 'owner' },
          ExpressionAttributeValues: {
            ':o': s(owner),
            ':until': n(now + ttlMs),
            ':now': n(now),
            ':zero': n(0),
          },
          ReturnValues: 'ALL_NEW',
          ReturnValuesOnConditionCheckFailure: 'ALL_OLD',
        }),
      );
      return { acquired: true, state: toLease(res.Attributes) };
    } catch (err) {
      return { acquired: false, state: toLease(conditionFailure(err).item) };
    }
  }

  async renew(owner: string, now: number, ttlMs: number): Promise<boolean> {
    try {
      await this.client.send(
        new UpdateItemCommand({
          TableName: this.table,
          Key: this.key,
          UpdateExpression: 'SET leaseUntil = :until',
          ConditionExpression: '#o = :o',
          ExpressionAttributeNames: { '#o': 'owner' },
          ExpressionAttributeValues: { ':o': s(owner), ':until': n(now + ttlMs) },
        }),
      );
      return true;
    } catch (err) {
      conditionFailure(err);
      return false;
    }
  }

  async release(owner: string, seenRings: number): Promise<boolean> {
    try {
      await this.client.send(
        new UpdateItemCommand({
          TableName: this.table,
          Key: this.key,
          UpdateExpression: 'REMOVE #o, leaseUntil SET releasedAt = :now',
          ConditionExpression: '#o = :o AND rings = :seen',
          ExpressionAttributeNames: { '#o': 'owner' },
          ExpressionAttributeValues: { ':o': s(owner), ':seen': n(seenRings), ':now': n(Date.now()) },
        }),
      );
      return true;
    } catch (err) {
      conditionFailure(err);
      return false;
    }
  }

  async ring(): Promise<LeaseState> {
    const res = await this.client.send(
      new UpdateItemCommand({
        TableName: this.table,
        Key: this.key,
        UpdateExpression: 'ADD rings :one',
        ExpressionAttributeValues: { ':one': n(1) },
        ReturnValues: 'ALL_NEW',
      }),
    );
    return toLease(res.Attributes);
  }

  async get(): Promise<LeaseState> {
    const res = await this.client.send(
      new GetItemCommand({ TableName: this.table, Key: this.key, ConsistentRead: true }),
    );
    return toLease(res.Item);
  }
}
