// Adapter helpers: which AWS SDK errors mean "the store is unavailable now" (after the SDK's own retries), and a
// client middleware that turns exactly those into the domain's StoreUnavailableError. Anything else is rethrown.
import { StoreUnavailableError } from '../domain/errors.js';
import { addInitializeMiddlewareOnce, type WithMiddlewareStack } from './sdk-middleware.js';

/** Error names of throttling, server-side and timeout failures: retrying later may succeed. */
const UNAVAILABLE_NAMES = new Set([
  'ProvisionedThroughputExceededException',
  'RequestLimitExceeded',
  'ThrottlingException',
  'Throttling',
  'ThrottledException',
  'RequestThrottled',
  'RequestThrottledException',
  'TooManyRequestsException',
  'LimitExceededException',
  'InternalServerError',
  'InternalFailure',
  'InternalError',
  'ServiceUnavailable',
  'ServiceUnavailableException',
  'TransactionConflictException',
  'TransactionInProgressException',
  'TimeoutError',
  'RequestTimeout',
  'RequestTimeoutException',
]);

/** Node network error codes: the connection failed or was cut. */
const NETWORK_CODES = new Set([
  'ECONNRESET',
  'ECONNREFUSED',
  'EPIPE',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENOTFOUND',
  'EAI_AGAIN',
]);

/** Transaction cancellation reasons that are contention or capacity, not a failed condition. */
const TRANSIENT_CANCELLATIONS = new Set([
  'TransactionConflict',
  'ThrottlingError',
  'ProvisionedThroughputExceeded',
]);

interface SdkErrorShape {
  name?: string;
  code?: string;
  $metadata?: { httpStatusCode?: number };
  $retryable?: unknown;
  CancellationReasons?: { Code?: string }[];
}

/**
 * True when `err` says the service could not serve the call now (throttled, 5xx, timed out, connection cut),
 * false for errors that retrying cannot fix (validation, missing table, access) and for our own aborts.
 */
export const isUnavailable = (err: unknown): boolean => {
  if (typeof err !== 'object' || err === null) return false;
  const e = err as SdkErrorShape;
  if (e.name === 'AbortError') return false;
  if (e.name === 'TransactionCanceledException') {
    const codes = (e.CancellationReasons ?? []).map((r) => r.Code ?? 'None').filter((c) => c !== 'None');
    return codes.length > 0 && codes.every((c) => TRANSIENT_CANCELLATIONS.has(c));
  }
  const status = e.$metadata?.httpStatusCode ?? 0;
  return (
    status >= 500 ||
    status === 429 ||
    UNAVAILABLE_NAMES.has(e.name ?? '') ||
    NETWORK_CODES.has(e.code ?? '') ||
    e.$retryable !== undefined
  );
};

/** The domain error for an unavailable store, or `err` itself when it is something else. */
export const storeError = (err: unknown, what: string): unknown =>
  isUnavailable(err)
    ? new StoreUnavailableError(`${what} unavailable: ${(err as Error).name ?? 'error'}`, { cause: err })
    : err;

/**
 * Makes every call of `client` throw StoreUnavailableError, after the SDK's retries, when the service is
 * unavailable. Added at the outermost step so the SDK's bounded, jittered retries run first. Idempotent: the
 * stores sharing one client install it once.
 * @param service shown in the error message, e.g. `DynamoDB`
 */
export const translateStoreErrors = (client: WithMiddlewareStack, service: string): void =>
  addInitializeMiddlewareOnce<object>(
    client,
    'sluiceStoreUnavailable',
    'high',
    (next, context) => async (args) => {
      try {
        return await next(args);
      } catch (err) {
        throw storeError(err, `${service} ${context.commandName ?? 'call'}`);
      }
    },
  );
