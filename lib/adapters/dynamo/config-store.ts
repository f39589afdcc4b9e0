// Adapter: the versioned config record and its change history (state table, partition `config`).
import {
  type DynamoDBClient,
  GetItemCommand,
  QueryCommand,
  type TransactWriteItem,
  TransactWriteItemsCommand,
} from '@aws-sdk/client-dynamodb';
import { marshall } from '@aws-sdk/util-dynamodb';
import type { ConfigChange, ConfigStore, VersionedConfig } from '../../domain/ports.js';
import { translateStoreErrors } from '../aws-errors.js';
import { CONFIG_ITEM_KEY, cancellation, n, plain, requestToken, s, stateKey, ttlFrom } from './common.js';
import { retryTransactionConflicts } from './transaction-conflicts.js';

const CURRENT = CONFIG_ITEM_KEY;
const HISTORY_TTL_S = 90 * 24 * 3600;

export class DynamoConfigStore implements ConfigStore {
  constructor(
    private readonly client: DynamoDBClient,
    private readonly table: string,
  ) {
    translateStoreErrors(client, 'DynamoDB');
    retryTransactionConflicts(client);
  }

  async get(): Promise<VersionedConfig | undefined> {
    const res = await this.client.send(
      new GetItemCommand({ TableName: this.table, Key: CURRENT, ConsistentRead: true }),
    );
    const p = plain<VersionedConfig>(res.Item);
    return p
      ? { config: p.config, version: p.version, updatedAt: p.updatedAt, updatedBy: p.updatedBy }
      : undefined;
  }

  async put(
    next: VersionedConfig,
    expectedVersion: number | undefined,
    changes: ConfigChange[],
  ): Promise<boolean> {
    const items: TransactWriteItem[] = [
      {
        Put: {
          TableName: this.table,
          Item: { ...marshall(next, { removeUndefinedValues: true }), ...CURRENT },
          ConditionExpression: expectedVersion === undefined ? 'attribute_not_exists(pk)' : 'version = :v',
          ...(expectedVersion === undefined
            ? {}
            : { ExpressionAttributeValues: { ':v': n(expectedVersion) } }),
        },
      },
      ...changes.slice(0, 90).map(
        (c, i): TransactWriteItem => ({
          Put: {
            TableName: this.table,
            Item: {
              ...marshall({
                ...c,
                from: JSON.stringify(c.from),
                to: JSON.stringify(c.to),
                expiresAt: ttlFrom(c.at, HISTORY_TTL_S),
              }),
              ...stateKey(
                'config',
                `hist#${String(c.at).padStart(15, '0')}#${next.version}#${String(i).padStart(3, '0')}`,
              ),
            },
          },
        }),
      ),
    ];
    try {
      await this.client.send(
        new TransactWriteItemsCommand({
          TransactItems: items,
          ClientRequestToken: requestToken(
            'config',
            this.table,
            next.version,
            next.updatedAt,
            JSON.stringify(next.config),
          ),
        }),
      );
      return true;
    } catch (err) {
      cancellation(err);
      return false;
    }
  }

  async history(limit: number): Promise<ConfigChange[]> {
    const res = await this.client.send(
      new QueryCommand({
        TableName: this.table,
        KeyConditionExpression: 'pk = :pk AND begins_with(sk, :h)',
        ExpressionAttributeValues: { ':pk': s('config'), ':h': s('hist#') },
        ScanIndexForward: false,
        Limit: limit,
      }),
    );
    return (res.Items ?? []).map((item) => {
      const p = plain<ConfigChange & { from: string; to: string }>(item)!;
      return { at: p.at, by: p.by, field: p.field, from: JSON.parse(p.from), to: JSON.parse(p.to) };
    });
  }
}
