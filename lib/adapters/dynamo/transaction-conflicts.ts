// Adapter: DynamoDB refuses a transaction that meets another one in progress on one of its items
// (`TransactionConflict`), which the SDK does not retry and DynamoDB Local never does. Such a transaction wrote
// nothing: it is sent again after a short jittered pause, under a new client token (the cancelled one is spent).
import { randomUUID } from 'node:crypto';
import { TransactionCanceledException } from '@aws-sdk/client-dynamodb';
import { addInitializeMiddlewareOnce, type WithMiddlewareStack } from '../sdk-middleware.js';

/** Tries after the first: every request's counters meet on a few hot items, so conflicts come in short runs. */
export const CONFLICT_RETRIES = 2;
/** Upper bound of the first pause (full jitter), doubled for each retry: < 20 ms, then < 40 ms. */
export const CONFLICT_BACKOFF_MS = 20;

/** True when every item that refused the transaction refused it only because another transaction held it. */
export const cancelledByConflictsOnly = (err: unknown): boolean => {
  if (!(err instanceof TransactionCanceledException)) return false;
  const codes = (err.CancellationReasons ?? []).map((r) => r.Code ?? 'None').filter((c) => c !== 'None');
  return codes.length > 0 && codes.every((c) => c === 'TransactionConflict');
};

/** The pause before retry `n` (0-based): full jitter under CONFLICT_BACKOFF_MS·2ⁿ. */
export const conflictBackoffMs = (n: number, random: () => number = Math.random): number =>
  random() * CONFLICT_BACKOFF_MS * 2 ** n;

/**
 * Makes `client` send a TransactWriteItems again, up to CONFLICT_RETRIES times, when conflicts alone cancelled it.
 * Inside translateStoreErrors (which runs first and names what is still refused after the last try as the store
 * being unavailable) and outside the SDK's own retries. Idempotent per client.
 */
export const retryTransactionConflicts = (
  client: WithMiddlewareStack,
  sleep: (ms: number) => Promise<void> = (ms) => new Promise((r) => setTimeout(r, ms)),
  random: () => number = Math.random,
): void =>
  addInitializeMiddlewareOnce<{ input: Record<string, unknown> }>(
    client,
    'sluiceTransactionConflictRetry',
    'normal',
    (next, context) => async (args) => {
      if (context.commandName !== 'TransactWriteItemsCommand') return next(args);
      for (let retry = 0; ; retry++) {
        try {
          return await next(args);
        } catch (err) {
          if (retry >= CONFLICT_RETRIES || !cancelledByConflictsOnly(err)) throw err;
          await sleep(conflictBackoffMs(retry, random));
          // A new try: the spent token could answer with the cancellation again.
          if (args.input.ClientRequestToken !== undefined)
            args = { ...args, input: { ...args.input, ClientRequestToken: randomUUID() } };
        }
      }
    },
  );
