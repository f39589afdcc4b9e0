// Ingress application layer: the HTTP reply shape, OpenAI-shaped errors and the headers every reply carries.

import {
  GatewayError,
  type OpenAiErrorType,
  StoreUnavailableError,
  UnavailableError,
} from '../domain/errors.js';
import { agentSafeErrorText } from '../domain/redact.js';

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

const typeForStatus = (status: number): OpenAiErrorType =>
  status === 401
    ? 'authentication_error'
    : status === 403
      ? 'permission_error'
      : status === 404
        ? 'not_found_error'
        : status === 429
          ? 'rate_limit_error'
          : 'invalid_request_error';

/**
 * An upstream error body in the OpenAI error shape: an OpenAI error is kept (missing fields filled in), anything
 * else (problem+json, plain text) is wrapped, so agents always parse `{ error: { message, type, param, code } }`.
 */
export const asOpenAiErrorBody = (status: number, text: string): string => {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    v = undefined;
  }
  const o = (typeof v === 'object' && v !== null ? v : {}) as Record<string, unknown>;
  const e = (typeof o.error === 'object' && o.error !== null ? o.error : {}) as Record<string, unknown>;
  const pick = (x: unknown) => (typeof x === 'string' && x.trim() ? x : undefined);
  const message =
    pick(e.message) ??
    pick(o.error) ??
    pick(o.detail) ??
    pick(o.message) ??
    pick(o.title) ??
    (v === undefined ? pick(text.slice(0, 500)) : undefined) ??
    `Upstream answered ${status}.`;
  const body: OpenAiErrorBody = {
    error: {
      // Upstream text may echo a credential (its own, or a proxy's): trimmed and redacted before an agent sees it.
      message: agentSafeErrorText(message),
      type: (pick(e.type) as OpenAiErrorType | undefined) ?? typeForStatus(status),
      param: pick(e.param) ?? null,
      code: e.code !== undefined && e.code !== null ? String(e.code) : `upstream_${status}`,
    },
  };
  return JSON.stringify(body);
};

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

/** OpenAI-style duration for `x-ratelimit-reset-requests` (e.g. `1.5s`, `2m3s`). */
export const formatReset = (ms: number): string => {
  const s = Math.max(0, ms) / 1000;
  if (s < 60) return `${Number(s.toFixed(3))}s`;
  const m = Math.floor(s / 60);
  return `${m}m${Math.round(s - m * 60)}s`;
};

/** Headers an upstream reply may pass on to the agent (hop-by-hop, length and encoding are ours to set). */
const PASSED_RESPONSE_HEADERS = new Set([
  'content-type',
  'openai-processing-ms',
  'openai-model',
  'cache-control',
]);

export const passResponseHeaders = (h: Headers): Record<string, string> => {
  const out: Record<string, string> = {};
  h.forEach((v, k) => {
    if (PASSED_RESPONSE_HEADERS.has(k.toLowerCase())) out[k.toLowerCase()] = v;
  });
  return out;
};

/** Headers of the agent's request that may go upstream: never Authorization, cookies or hop-by-hop ones. */
const FORWARDED_REQUEST_HEADERS = new Set(['content-type', 'accept', 'user-agent', 'openai-beta']);

export const forwardRequestHeaders = (h: Record<string, string | undefined>): Record<string, string> => {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(h))
    if (v !== undefined && FORWARDED_REQUEST_HEADERS.has(k.toLowerCase())) out[k.toLowerCase()] = v;
  return out;
};
