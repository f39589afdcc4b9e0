// Domain: how many tokens a request may spend — what a tokens-per-minute upstream must have room for.
import type { GatewayConfig } from './config.js';
import { ValidationError } from './errors.js';
import type { UpstreamDef } from './routes.js';
import { upstreamLimits } from './upstreams.js';

/** Characters per token of English text in the common tokenizers: the estimate errs on the large side below it. */
const CHARS_PER_TOKEN = 4;

/**
 * The tokens a request may spend at most, estimated before the call: its prompt (the request's text, at
 * CHARS_PER_TOKEN) plus the completion it allows (`max_completion_tokens`, else `max_tokens`, else
 * `defaultCompletion`).
 */
export const estimateRequestTokens = (
  raw: string,
  json: Record<string, unknown>,
  defaultCompletion = 0,
): number => {
  const completion = [json.max_completion_tokens, json.max_tokens].find(
    (v): v is number => typeof v === 'number' && Number.isFinite(v) && v >= 0,
  );
  return Math.ceil(raw.length / CHARS_PER_TOKEN) + Math.ceil(completion ?? defaultCompletion);
};

/** The most tokens per minute any member of a pool allows; 0 when one of them is not metered in tokens. */
export const poolTpm = (config: GatewayConfig, pool: readonly UpstreamDef[]): number => {
  const limited = pool.filter((u) => u.limited);
  if (limited.length === 0) return 0;
  const tpms = limited.map((u) => upstreamLimits(config, u.name).tpm);
  return tpms.some((t) => t === 0) ? 0 : Math.max(...tpms);
};

/**
 * The tokens a request's grant reserves when some limited upstream that may serve it has `tpm` and it has a body
 * (else undefined: nothing to reserve): the estimate, with `tpm_default_max_tokens` for a request that states no
 * completion size.
 */
export const tokensToReserve = (
  config: GatewayConfig,
  pool: readonly UpstreamDef[],
  body: { raw: string; json: Record<string, unknown> } | undefined,
): number | undefined => {
  if (!pool.some((u) => u.limited && upstreamLimits(config, u.name).tpm > 0)) return undefined;
  // A request without a body (GET /v1/models) spends no tokens.
  return body ? estimateRequestTokens(body.raw, body.json, config.tpmDefaultMaxTokens) : undefined;
};

/**
 * Refuses a request that could never fit: its estimate exceeds a whole minute of every upstream that may serve it.
 * @throws ValidationError (400 `request_too_large`)
 */
export const checkFitsTpm = (estimate: number, tpm: number): void => {
  if (tpm > 0 && estimate > tpm)
    throw new ValidationError(
      `Request too large: about ${estimate} tokens (prompt + max_tokens) but the upstream allows ${tpm} tokens per minute. Shorten the prompt or lower max_tokens.`,
      'messages',
      'request_too_large',
    );
};
