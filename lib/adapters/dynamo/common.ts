// Adapter helpers: DynamoDB key shapes, marshalling and SDK-error translation shared by the stores.
import { createHash } from 'node:crypto';
import {
  type AttributeValue,
  ConditionalCheckFailedException,
  TransactionCanceledException,
} from '@aws-sdk/client-dynamodb';
import { unmarshall } from '@aws-sdk/util-dynamodb';

export type Item = Record<string, AttributeValue>;

/** Key of an item in the state table. */
export const stateKey = (pk: string, sk: string): Item => ({ pk: { S: pk }, sk: { S: sk } });

/** The live config record (state table); grants and claims ConditionCheck its `paused` flag. */
export const CONFIG_ITEM_KEY = stateKey('config', 'current');

export const n = (value: number): AttributeValue => ({ N: String(value) });
export const s = (value: string): AttributeValue => ({ S: value });

export const plain = <T>(item: Item | undefined): T | undefined =>
  item ? (unmarshall(item) as T) : undefined;

/** The old item of a failed condition (ReturnValuesOnConditionCheckFailure ALL_OLD), or rethrows. */
export const conditionFailure = (err: unknown): { item: Item | undefined } => {
  if (err instanceof ConditionalCheckFailedException) return { item: err.Item };
  throw err;
};

/** Per-item outcome of a cancelled transaction: undefined = that item's condition held. */
export const cancellation = (err: unknown): ({ failed: boolean; item?: Item } | undefined)[] => {
  if (!(err instanceof TransactionCanceledException)) throw err;
  const reasons = err.CancellationReasons ?? [];
  // A cancellation for a reason other than conditions (conflict, throttling) is not ours to interpret.
  if (!reasons.some((r) => r.Code === 'ConditionalCheckFailed')) throw err;
  return reasons.map((r) =>
    r.Code === 'ConditionalCheckFailed' ? { failed: true, ...(r.Item ? { item: r.Item } : {}) } : undefined,
  );
};

/**
 * A cancelled transaction whose every item reports its condition (held: `None`, or failed): each condition was
 * evaluated, so one that does not say it failed held. Not so when an item reports a conflict or throttling.
 */
export const cancelledByConditionsOnly = (err: unknown): boolean =>
  err instanceof TransactionCanceledException &&
  (err.CancellationReasons ?? []).length > 0 &&
  (err.CancellationReasons ?? []).every((r) => r.Code === 'None' || r.Code === 'ConditionalCheckFailed');

/** ClientRequestToken (≤ 36 chars) for an idempotent transaction: SDK retries reuse it, new tries do not. */
export const requestToken = (...parts: (string | number)[]): string =>
  createHash('sha256').update(parts.join('#')).digest('hex').slice(0, 32);

/** Two-week retention for items that only serve history (tickets, slots). */
export const RETENTION_S = 14 * 24 * 3600;
export const ttlFrom = (ms: number, seconds = RETENTION_S): number => Math.floor(ms / 1000) + seconds;
