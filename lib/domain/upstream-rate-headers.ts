// Domain: what an upstream's own rate headers ask of the gateway — how long to hold that upstream's grants.
// OpenAI-compatible providers send `retry-after`/`retry-after-ms` and `x-ratelimit-remaining-*` with
// `x-ratelimit-reset-*` durations ("6m0s", "1.5s", "20ms"); NVIDIA sends none of them.
import { parseRetryAfter } from './upstream.js';

const UNIT_MS: Record<string, number> = { h: 3_600_000, m: 60_000, s: 1_000, ms: 1 };

/**
 * A reset duration as providers write it: Go-style `1h2m3.5s`, `6m0s`, `1.5s`, `20ms`, or a bare number of
 * seconds. Undefined when it is none of these.
 */
export const parseResetDuration = (value: string | null | undefined): number | undefined => {
  const text = value?.trim();
  if (!text) return undefined;
  if (/^\d+(\.\d+)?$/.test(text)) return Math.round(Number(text) * 1000);
  const parts = text.match(/(\d+(?:\.\d+)?)(ms|h|m|s)/g);
  if (!parts || parts.join('') !== text) return undefined;
  let ms = 0;
  for (const part of parts) {
    const [, num, unit] = part.match(/^(\d+(?:\.\d+)?)(ms|h|m|s)$/) ?? [];
    ms += Number(num) * (UNIT_MS[unit ?? ''] ?? Number.NaN);
  }
  return Number.isFinite(ms) ? Math.round(ms) : undefined;
};

/** True when a remaining-count header says nothing is left. */
const exhausted = (value: string | null | undefined): boolean =>
  value !== null && value !== undefined && value.trim() !== '' && Number(value) <= 0;

/**
 * How long the upstream asks not to be called (ms), from its answer's headers: `retry-after-ms` (else
 * `retry-after`, seconds or an HTTP date), and the reset of any `x-ratelimit-remaining-requests`/`-tokens` that is
 * 0 (`x-ratelimit-reset-requests`/`-tokens`). The longest of them; undefined when none applies.
 * @param header the answer's header by lower-case name
 */
export const upstreamHoldMs = (
  header: (name: string) => string | null | undefined,
  now: number,
): number | undefined => {
  const retryMs = Number(header('retry-after-ms'));
  const waits = [
    header('retry-after-ms') && Number.isFinite(retryMs) && retryMs >= 0
      ? Math.round(retryMs)
      : parseRetryAfter(header('retry-after'), now),
    ...(['requests', 'tokens'] as const).map((kind) =>
      exhausted(header(`x-ratelimit-remaining-${kind}`))
        ? parseResetDuration(header(`x-ratelimit-reset-${kind}`))
        : undefined,
    ),
  ].filter((w): w is number => w !== undefined);
  return waits.length ? Math.max(...waits) : undefined;
};
