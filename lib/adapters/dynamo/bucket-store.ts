// Adapter: the bucket item in the state table. A GCRA consume is one conditional UpdateItem with no read; a
// window-exact consume is one compare-and-set of the tat, the grant log (a compact binary blob) and a version.
import type { AttributeValue } from '@aws-sdk/client-dynamodb';
import { type DynamoDBClient, GetItemCommand, UpdateItemCommand } from '@aws-sdk/client-dynamodb';
import type { BucketParams, BucketState, ConsumeAttempt } from '../../domain/gcra.js';
import type { BucketStore, ConsumeOutcome } from '../../domain/ports.js';
import type { TokenEntry, TokenLog, TokenReserve } from '../../domain/token-window.js';
import { translateStoreErrors } from '../aws-errors.js';
import { conditionFailure, type Item, n, plain, stateKey } from './common.js';

/**
 * The grant log as bytes: a float64 base time, then one uint32 offset (ms) from it per grant — 4 bytes a
 * grant (40 grants ≈ 170 bytes), where a DynamoDB list of numbers would cost several times that per write.
 */
export const encodeLog = (log: readonly number[]): Uint8Array => {
  // Offsets are unsigned: from the earliest grant. A grant earlier than the base (a log out of time order, e.g. a
  // grant now after a reservation for a later slot) wrapped to ~49.7 days ahead and held the bucket shut.
  const sorted = [...log].sort((a, b) => a - b);
  const bytes = new Uint8Array(8 + 4 * sorted.length);
  const view = new DataView(bytes.buffer);
  const base = sorted[0] ?? 0;
  view.setFloat64(0, base);
  sorted.forEach((t, i) => {
    view.setUint32(8 + 4 * i, t - base);
  });
  return bytes;
};

export const decodeLog = (bytes: Uint8Array | undefined): number[] => {
  if (!bytes || bytes.byteLength < 8) return [];
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const base = view.getFloat64(0);
  const out: number[] = [];
  for (let at = 8; at + 4 <= bytes.byteLength; at += 4) out.push(base + view.getUint32(at));
  return out;
};

/**
 * The token entries (an upstream with `tpm`) as bytes: a float64 base time, then per entry a uint32 offset (ms)
 * from it and a uint32 token count — 8 bytes an entry, at most ~61 entries (token-window.ts).
 */
export const encodeTokens = (entries: readonly TokenEntry[]): Uint8Array => {
  const bytes = new Uint8Array(8 + 8 * entries.length);
  const view = new DataView(bytes.buffer);
  const base = entries[0]?.at ?? 0;
  view.setFloat64(0, base);
  entries.forEach((e, i) => {
    view.setUint32(8 + 8 * i, e.at - base);
    view.setUint32(12 + 8 * i, Math.min(0xffffffff, Math.max(0, Math.round(e.tokens))));
  });
  return bytes;
};

export const decodeTokens = (bytes: Uint8Array | undefined): TokenEntry[] => {
  if (!bytes || bytes.byteLength < 8) return [];
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const base = view.getFloat64(0);
  const out: TokenEntry[] = [];
  for (let at = 8; at + 8 <= bytes.byteLength; at += 8)
    out.push({ at: base + view.getUint32(at), tokens: view.getUint32(at + 4) });
  return out;
};

const tokenLogOf = (p: { tk?: Uint8Array; tkVer?: number } | undefined): TokenLog | undefined =>
  p?.tkVer === undefined ? undefined : { entries: decodeTokens(p.tk), version: p.tkVer };

interface StoredBucket {
  tat?: number;
  intervalMs?: number;
  burst?: number;
  holdUntil?: number;
  wLimit?: number;
  wMs?: number;
  grants?: Uint8Array;
  ver?: number;
  /** Token entries and their own version (an upstream with `tpm`). */
  tk?: Uint8Array;
  tkVer?: number;
}

const toState = (item: Item | undefined): BucketState | undefined => {
  const p = plain<StoredBucket>(item);
  if (!p || p.intervalMs === undefined || p.burst === undefined) return undefined;
  const windowed = p.wLimit !== undefined && p.wMs !== undefined;
  return {
    intervalMs: p.intervalMs,
    burst: p.burst,
    ...(windowed ? { window: { limit: p.wLimit as number, windowMs: p.wMs as number } } : {}),
    ...(p.tat !== undefined ? { tat: p.tat } : {}),
    ...(p.holdUntil !== undefined ? { holdUntil: p.holdUntil } : {}),
    ...(windowed && p.grants ? { log: decodeLog(p.grants) } : {}),
    ...(p.ver !== undefined ? { version: p.ver } : {}),
    ...(p.tkVer !== undefined ? { tokens: tokenLogOf(p) } : {}),
  };
};

/** Condition that the stored parameters are `p` (names :T, :b, :L, :W with `prefix`). */
const paramsCondition = (p: BucketParams, prefix: string, values: Item): string => {
  values[`:${prefix}T`] = n(p.intervalMs);
  values[`:${prefix}b`] = n(p.burst);
  const base = `intervalMs = :${prefix}T AND burst = :${prefix}b`;
  if (!p.window) return `${base} AND attribute_not_exists(wLimit)`;
  values[`:${prefix}L`] = n(p.window.limit);
  values[`:${prefix}W`] = n(p.window.windowMs);
  return `${base} AND wLimit = :${prefix}L AND wMs = :${prefix}W`;
};

/** Condition that the stored version is `version` (0: never written by a compare-and-set). */
const versionCondition = (version: number, values: Item): string => {
  values[':ev'] = n(version);
  return version === 0 ? '(attribute_not_exists(ver) OR ver = :ev)' : 'ver = :ev';
};

const logValue = (log: readonly number[]): AttributeValue => ({ B: encodeLog(log) });

/**
 * The Update (expression, condition, values) that applies a consume attempt; shared by the plain consume
 * and the grant transaction so both spend tokens identically.
 */
export const consumeUpdate = (
  a: ConsumeAttempt,
): { UpdateExpression: string; ConditionExpression: string; ExpressionAttributeValues: Item } => {
  const update = requestConsumeUpdate(a);
  if (!a.tokens) return update;
  // The token reservation rides on the same write: its entries set, conditioned on their own version.
  const values = update.ExpressionAttributeValues;
  values[':tk'] = { B: encodeTokens(a.tokens.newEntries) };
  values[':ntkv'] = n(a.tokens.expectedVersion + 1);
  return {
    UpdateExpression: `${update.UpdateExpression}, tk = :tk, tkVer = :ntkv`,
    ConditionExpression: `${update.ConditionExpression} AND ${tokenVersionCondition(a.tokens.expectedVersion, values)}`,
    ExpressionAttributeValues: values,
  };
};

/** Condition that the token log's version is `version` (0: never written). */
const tokenVersionCondition = (version: number, values: Item): string => {
  values[':etkv'] = n(version);
  return version === 0 ? '(attribute_not_exists(tkVer) OR tkVer = :etkv)' : 'tkVer = :etkv';
};

const requestConsumeUpdate = (
  a: ConsumeAttempt,
): { UpdateExpression: string; ConditionExpression: string; ExpressionAttributeValues: Item } => {
  const values: Item = {};
  const params = paramsCondition(a.params, '', values);
  if (a.branch === 'log') {
    values[':newTat'] = n(a.newTat);
    values[':log'] = logValue(a.newLog);
    values[':nv'] = n(a.expectedVersion + 1);
    return {
      UpdateExpression: 'SET tat = :newTat, grants = :log, ver = :nv',
      ConditionExpression: `${params} AND ${versionCondition(a.expectedVersion, values)}`,
      ExpressionAttributeValues: values,
    };
  }
  values[':now'] = n(a.now);
  if (a.branch === 'idle') {
    values[':newTat'] = n(a.newTat);
    return {
      UpdateExpression: 'SET tat = :newTat',
      ConditionExpression: `${params} AND (attribute_not_exists(tat) OR tat < :now)`,
      ExpressionAttributeValues: values,
    };
  }
  values[':maxTat'] = n(a.maxTat);
  if ((a.count ?? 1) > 1) {
    // Several tokens in one write (a batch of grants): maxTat left room for all of them.
    values[':step'] = n(a.params.intervalMs * (a.count ?? 1));
    return {
      UpdateExpression: 'SET tat = tat + :step',
      ConditionExpression: `${params} AND tat BETWEEN :now AND :maxTat`,
      ExpressionAttributeValues: values,
    };
  }
  return {
    UpdateExpression: 'SET tat = tat + :T',
    ConditionExpression: `${params} AND tat BETWEEN :now AND :maxTat`,
    ExpressionAttributeValues: values,
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
    const values: Item = { ':T': n(params.intervalMs), ':b': n(params.burst) };
    const sets = ['intervalMs = :T', 'burst = :b'];
    if (params.window) {
      values[':L'] = n(params.window.limit);
      values[':W'] = n(params.window.windowMs);
      sets.push('wLimit = :L', 'wMs = :W');
    }
    try {
      // Only a new item is written: an existing one keeps its state, and configure() moves it (compare-and-set).
      const res = await this.client.send(
        new UpdateItemCommand({
          TableName: this.table,
          Key: this.key,
          UpdateExpression: `SET ${sets.join(', ')}`,
          ConditionExpression: 'attribute_not_exists(intervalMs)',
          ExpressionAttributeValues: values,
          ReturnValues: 'ALL_NEW',
          ReturnValuesOnConditionCheckFailure: 'ALL_OLD',
        }),
      );
      const state = toState(res.Attributes);
      if (!state) throw new Error('bucket item incomplete after ensure');
      return state;
    } catch (err) {
      const state = toState(conditionFailure(err).item);
      if (!state) throw new Error('bucket item incomplete after ensure');
      return state;
    }
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

  async compareAndSet(expected: BucketState, next: BucketState, tokens?: TokenReserve): Promise<boolean> {
    const values: Item = { ':T': n(next.intervalMs), ':b': n(next.burst) };
    const sets = ['intervalMs = :T', 'burst = :b'];
    const removes: string[] = [];
    const setOrRemove = (name: string, value: AttributeValue | undefined) => {
      if (value === undefined) removes.push(name);
      else {
        sets.push(`${name} = :${name}`);
        values[`:${name}`] = value;
      }
    };
    setOrRemove('tat', next.tat !== undefined ? n(next.tat) : undefined);
    setOrRemove('wLimit', next.window ? n(next.window.limit) : undefined);
    setOrRemove('wMs', next.window ? n(next.window.windowMs) : undefined);
    setOrRemove('grants', next.window && next.log?.length ? logValue(next.log) : undefined);
    setOrRemove('ver', next.version !== undefined ? n(next.version) : undefined);
    if (next.holdUntil !== undefined) {
      sets.push('holdUntil = :h');
      values[':h'] = n(next.holdUntil);
    }
    let cond = `${paramsCondition(expected, 'e', values)} AND `;
    if (expected.tat !== undefined) {
      cond += 'tat = :etat';
      values[':etat'] = n(expected.tat);
    } else cond += 'attribute_not_exists(tat)';
    if (expected.version === undefined) cond += ' AND attribute_not_exists(ver)';
    else {
      cond += ' AND ver = :ever';
      values[':ever'] = n(expected.version);
    }
    if (tokens) {
      // A refund's token half: the grant's reservation leaves in the same write, on the token log's own version.
      sets.push('tk = :tk', 'tkVer = :ntkv');
      values[':tk'] = { B: encodeTokens(tokens.newEntries) };
      values[':ntkv'] = n(tokens.expectedVersion + 1);
      cond += ` AND ${tokenVersionCondition(tokens.expectedVersion, values)}`;
    }
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

  async writeTokens(
    expectedVersion: number,
    entries: readonly TokenEntry[],
  ): Promise<{ ok: true } | { ok: false; current: TokenLog | undefined }> {
    const values: Item = { ':tk': { B: encodeTokens(entries) }, ':ntkv': n(expectedVersion + 1) };
    try {
      await this.client.send(
        new UpdateItemCommand({
          TableName: this.table,
          Key: this.key,
          UpdateExpression: 'SET tk = :tk, tkVer = :ntkv',
          // Only on an existing bucket item (its params are set): never a half item.
          ConditionExpression: `attribute_exists(intervalMs) AND ${tokenVersionCondition(expectedVersion, values)}`,
          ExpressionAttributeValues: values,
          ReturnValuesOnConditionCheckFailure: 'ALL_OLD',
        }),
      );
      return { ok: true };
    } catch (err) {
      return { ok: false, current: tokenLogOf(plain<StoredBucket>(conditionFailure(err).item)) };
    }
  }
}

export { toState as bucketStateFromItem };
