// HTTP shared by the ingress and status functions: the reply shape, OpenAI-shaped errors, retry headers.
import {
  GatewayError,
  type OpenAiErrorType,
  StoreUnavailableError,
  UnavailableError,
} from '../domain/errors.js';

/** What a route handler answers: a status, headers and a body that may stream. */
export interface HttpReply {
  status: number;
  headers: Record<string, string>;
  body: string | ReadableStream<Uint8Array>;
}

export interface OpenAiErrorBody {
  error: { message: string; type: OpenAiErrorType; param: string | null; code: string };
}

/** How long an agent is asked to wait when the state store failed (the SDK already retried for about a second). */
export const STORE_RETRY_AFTER_MS = 2_000;

/**
 * Anything thrown becomes a GatewayError: a store that failed after its retries is a 503 `store_unavailable`
 * with Retry-After (fail closed); unknown errors become a generic 500 without internals.
 */
export const asGatewayError = (err: unknown): GatewayError =>
  err instanceof GatewayError
    ? err
    : err instanceof StoreUnavailableError
      ? new UnavailableError(
          'The gateway cannot reach its state store right now; retry shortly.',
          STORE_RETRY_AFTER_MS,
          'store_unavailable',
        )
      : new GatewayError(
          500,
          'server_error',
          'internal_error',
          'The gateway hit an internal error; it has been logged.',
        );

export const errorBody = (e: GatewayError): OpenAiErrorBody => ({
  error: { message: e.message, type: e.type, param: e.param, code: e.code },
});

/** Longest wait put in headers: the openai SDKs ignore larger values (the body may say more). */
export const MAX_RETRY_HEADER_MS = 60_000;

/** `retry-after-ms` and `retry-after` (both ≤ 60 s so the openai client honours them). */
export const retryHeaders = (retryAfterMs: number | undefined): Record<string, string> =>
  retryAfterMs === undefined
    ? {}
    : {
        'retry-after-ms': String(Math.min(MAX_RETRY_HEADER_MS, Math.max(0, Math.round(retryAfterMs)))),
        'retry-after': String(Math.min(60, Math.max(1, Math.ceil(retryAfterMs / 1000)))),
      };

export const jsonReply = (
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): HttpReply => ({
  status,
  headers: { 'content-type': 'application/json', ...headers },
  body: JSON.stringify(body),
});

export const errorReply = (err: unknown, headers: Record<string, string> = {}): HttpReply => {
  const e = asGatewayError(err);
  return jsonReply(e.status, errorBody(e), {
    ...headers,
    ...retryHeaders(e.retryAfterMs),
    ...(e.shouldRetry === false ? { 'x-should-retry': 'false' } : {}),
  });
};

/** An error inside an SSE stream that already started (after a heartbeat or mid-answer). */
export const sseError = (err: unknown): string =>
  `data: ${JSON.stringify(errorBody(asGatewayError(err)))}\n\n`;
