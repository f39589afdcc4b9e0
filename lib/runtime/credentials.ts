// Composition support: each upstream's own credential, chosen by upstream name — never another upstream's key.

import { GatewayError, UnavailableError } from '../domain/errors.js';
import type { UpstreamDef } from '../domain/routes.js';
import { secretReader } from './secrets.js';

/** Where one upstream's key comes from: a Secrets Manager secret (AWS) or a plain env value (local only). */
export interface CredentialSource {
  secretId?: string;
  value?: string;
}

/** The credential of each upstream by name; an upstream absent from the map is called without one. */
export type UpstreamCredentials = (upstream: UpstreamDef) => Promise<string | undefined>;

/**
 * Resolves credentials per upstream name. A limited upstream without a configured source is the operator's
 * to fix (503 `not_configured`); an open one is called with no `Authorization` at all. A failed secret read
 * becomes a fixed 503 `upstream_key_unavailable`: the SDK's message (account, role, ARN) goes to `onError`
 * (the logs), never to the agent.
 */
export const upstreamCredentials = (
  sources: ReadonlyMap<string, CredentialSource>,
  onError: (upstream: string, err: Error) => void = () => {},
): UpstreamCredentials => {
  const readers = new Map(
    [...sources].map(([name, s]) => [name, secretReader(s.secretId, s.value, `key for upstream ${name}`)]),
  );
  return async (upstream) => {
    const read = readers.get(upstream.name);
    if (!read) {
      if (!upstream.limited) return undefined;
      throw new UnavailableError(
        `The gateway's key for upstream ${upstream.name} is not configured; ask its operator.`,
        60_000,
        'not_configured',
      );
    }
    try {
      return await read();
    } catch (err) {
      if (err instanceof GatewayError) throw err;
      onError(upstream.name, err as Error);
      throw new UnavailableError(
        'The gateway could not read its upstream credentials; retry later.',
        5_000,
        'upstream_key_unavailable',
      );
    }
  };
};
