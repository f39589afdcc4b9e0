// Adapter: per-agent daily budget counts — one state-table item per UTC day and agent (`budget#<day>`, agent).
import {
  type DynamoDBClient,
  GetItemCommand,
  QueryCommand,
  type TransactWriteItem,
  UpdateItemCommand,
} from '@aws-sdk/client-dynamodb';
import { type BudgetCharge, type BudgetUsage, DAY_MS } from '../../domain/agent-budget.js';
import type { BudgetDayRow, BudgetStore } from '../../domain/ports.js';
import { translateStoreErrors } from '../aws-errors.js';
import { type Item, n, plain, s, stateKey } from './common.js';

/** One partition per day: the admin view reads a day with one Query, admission touches one item. */
const dayKey = (agent: string, day: string): Item => stateKey(`budget#${day}`, agent);

/** Day items expire two days after their day ends (TTL). */
const expiresAtOf = (day: string): number => Math.floor((Date.parse(`${day}T00:00:00Z`) + 3 * DAY_MS) / 1000);

/**
 * The charge as a transaction item: `ADD requests 1` on the agent's day item, only while each limit set is not
 * reached (requests < limit; tokens < limit). The limits in force are kept on the item for the admin view. On a
 * refusal the old item comes back (ALL_OLD) so admission can say what was used.
 */
export const budgetChargeItem = (table: string, charge: BudgetCharge): TransactWriteItem => {
  const conds: string[] = [];
  const sets = ['expiresAt = if_not_exists(expiresAt, :exp)'];
  const removes: string[] = [];
  const values: Item = { ':one': n(1), ':exp': n(expiresAtOf(charge.day)) };
  const { requestsPerDay, tokensPerDay } = charge.limits;
  if (requestsPerDay !== undefined) {
    conds.push('(attribute_not_exists(requests) OR requests < :maxRequests)');
    sets.push('requestsLimit = :maxRequests');
    values[':maxRequests'] = n(requestsPerDay);
  } else removes.push('requestsLimit');
  if (tokensPerDay !== undefined) {
    conds.push('(attribute_not_exists(tokens) OR tokens < :maxTokens)');
    sets.push('tokensLimit = :maxTokens');
    values[':maxTokens'] = n(tokensPerDay);
  } else removes.push('tokensLimit');
  return {
    Update: {
      TableName: table,
      Key: dayKey(charge.agent, charge.day),
      UpdateExpression: `ADD requests :one SET ${sets.join(', ')}${removes.length ? ` REMOVE ${removes.join(', ')}` : ''}`,
      ExpressionAttributeValues: values,
      ...(conds.length
        ? {
            ConditionExpression: conds.join(' AND '),
            ReturnValuesOnConditionCheckFailure: 'ALL_OLD' as const,
          }
        : {}),
    },
  };
};

/** What a day item holds (zeros for a missing one). */
export const budgetUsageOf = (item: Item | undefined): BudgetUsage => {
  const p = plain<{ requests?: number; tokens?: number }>(item);
  return { requests: p?.requests ?? 0, tokens: p?.tokens ?? 0 };
};

/** Cost: admission adds one item to a transaction it makes anyway; an answer's tokens are one ADD. */
export class DynamoBudgetStore implements BudgetStore {
  constructor(
    private readonly client: DynamoDBClient,
    private readonly table: string,
  ) {
    translateStoreErrors(client, 'DynamoDB');
  }

  async addTokens(agent: string, day: string, tokens: number): Promise<void> {
    if (!(tokens > 0)) return;
    await this.client.send(
      new UpdateItemCommand({
        TableName: this.table,
        Key: dayKey(agent, day),
        UpdateExpression: 'ADD tokens :t SET expiresAt = if_not_exists(expiresAt, :exp)',
        ExpressionAttributeValues: { ':t': n(Math.round(tokens)), ':exp': n(expiresAtOf(day)) },
      }),
    );
  }

  async used(agent: string, day: string): Promise<BudgetUsage> {
    const res = await this.client.send(
      new GetItemCommand({ TableName: this.table, Key: dayKey(agent, day), ConsistentRead: true }),
    );
    return budgetUsageOf(res.Item);
  }

  async day(day: string): Promise<BudgetDayRow[]> {
    const rows: BudgetDayRow[] = [];
    let start: Item | undefined;
    do {
      const res = await this.client.send(
        new QueryCommand({
          TableName: this.table,
          KeyConditionExpression: 'pk = :pk',
          ExpressionAttributeValues: { ':pk': s(`budget#${day}`) },
          ExclusiveStartKey: start,
        }),
      );
      for (const item of res.Items ?? []) {
        const p = plain<{ sk: string; requestsLimit?: number; tokensLimit?: number }>(item)!;
        rows.push({
          agent: p.sk,
          ...budgetUsageOf(item),
          ...(p.requestsLimit !== undefined ? { requestsLimit: p.requestsLimit } : {}),
          ...(p.tokensLimit !== undefined ? { tokensLimit: p.tokensLimit } : {}),
        });
      }
      start = res.LastEvaluatedKey;
    } while (start);
    return rows;
  }
}
