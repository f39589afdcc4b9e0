// Ingress: HTTP details of relaying an OpenAI-compatible upstream — its error bodies in the OpenAI shape, the
// headers passed each way and the rate-limit reset format.
import type { OpenAiErrorType } from '../domain/errors.js';
import { agentSafeErrorText } from '../domain/redact.js';
import type { OpenAiErrorBody } from '../http/reply.js';

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
