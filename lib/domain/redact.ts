// Domain: what of an upstream's error text may reach an agent — trimmed, with anything key-like blanked out.

/** Longest upstream error text an agent sees. */
export const AGENT_ERROR_TEXT_LIMIT = 500;

const REDACTED = '[redacted]';

/**
 * Key-like strings an upstream (or a proxy in front of it) may echo back: bearer credentials, provider keys
 * (`nvapi-…`, `sk-…`), AWS access key ids and ARNs, JWTs, and any long unbroken token of letters and digits.
 */
const KEY_LIKE: readonly RegExp[] = [
  /\b(bearer|basic)\s+[\w.~+/=-]+/gi,
  /\b(nvapi|sk|sk-proj|rk|pk|xox[abp]|ghp|gho|glpat)-[\w-]{6,}/gi,
  /\b(AKIA|ASIA)[0-9A-Z]{12,}\b/g,
  /\barn:aws[\w-]*:[^\s"'<>,]+/gi,
  /\beyJ[\w-]+\.[\w-]+\.[\w-]*/g,
  /\b(?=[\w-]*\d)(?=[\w-]*[A-Za-z])[\w-]{32,}\b/g,
];

/** `text` with every key-like string replaced by `[redacted]`. */
export const redactKeyLike = (text: string): string =>
  KEY_LIKE.reduce((out, pattern) => out.replace(pattern, REDACTED), text);

/** An upstream error text as an agent may see it: key-like strings redacted, then trimmed. */
export const agentSafeErrorText = (text: string, limit = AGENT_ERROR_TEXT_LIMIT): string => {
  const safe = redactKeyLike(text.slice(0, limit * 4));
  return safe.length > limit ? `${safe.slice(0, limit)}…` : safe;
};
