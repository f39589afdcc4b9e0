// Composition support: a secret read from Secrets Manager (cached) or, locally, taken from a plain env value.
import { getSecret } from '@aws-lambda-powertools/parameters/secrets';
import { UnavailableError } from '../domain/errors.js';
import { SECRET_PLACEHOLDER_PREFIX } from '../infra/definitions.js';

/** Secrets are cached this long: a rotated upstream key is used within 5 minutes, without a redeploy. */
export const SECRET_MAX_AGE_S = 300;

/**
 * A secret from Secrets Manager (Powertools Parameters, cached), or the plain local value.
 * @param what how the refusal names it ("admin token", "key for upstream nvidia")
 */
export const secretReader =
  (secretId: string | undefined, plainValue: string | undefined, what: string) =>
  async (): Promise<string> => {
    // Not configured is the operator's to fix: a clear 503, not a generic 500 or an upstream 401.
    const missing = (why: string) =>
      new UnavailableError(`The gateway's ${what} ${why}; ask its operator.`, 60_000, 'not_configured');
    if (secretId) {
      const v = await getSecret(secretId, { maxAge: SECRET_MAX_AGE_S });
      if (typeof v !== 'string' || v === '') throw missing('is empty');
      if (v.startsWith(SECRET_PLACEHOLDER_PREFIX)) throw missing('has not been set yet');
      return v;
    }
    if (plainValue) return plainValue;
    throw missing('is not configured');
  };
