// Status use case: who may read /status (agent key, viewer or admin token, or anyone when status_public) and
// who may change the gateway (the admin token only).
import { bearerToken, KEY_PATTERN, type KeyAuthenticator, secretEquals } from '../domain/auth.js';
import { AuthenticationError, PermissionError, UnavailableError } from '../domain/errors.js';

/** Who is calling. `public` only when `status_public` let a request without a token read /status. */
export type Principal =
  | { role: 'admin' }
  | { role: 'viewer' }
  | { role: 'agent'; agent: string }
  | { role: 'public' };

/** A configured secret: undefined when that kind of token is not set up. */
export type TokenSource = () => Promise<string | undefined>;

export interface StatusAccessDeps {
  keys: Pick<KeyAuthenticator, 'authenticate'>;
  adminToken: TokenSource;
  viewerToken: TokenSource;
}

const READ_HINT = 'Send `Authorization: Bearer <viewer token, admin token or agent key>`.';

export class StatusAccess {
  constructor(private readonly d: StatusAccessDeps) {}

  /**
   * Identifies the bearer of `authorization`. Admin and viewer tokens are compared in constant time; agent
   * keys go through the key store (cached, disabled and rotated keys refused).
   * @throws AuthenticationError (401) no or unknown token; PermissionError (403) a disabled or expired agent key
   */
  async identify(authorization: string | undefined): Promise<Principal> {
    const token = bearerToken(authorization);
    if (!token) throw new AuthenticationError(`Missing token. ${READ_HINT}`);
    const [admin, viewer] = await this.tokens();
    // Both comparisons always run, so the answer time does not tell which token came close.
    const isAdmin = admin !== undefined && secretEquals(token, admin);
    const isViewer = viewer !== undefined && secretEquals(token, viewer);
    if (isAdmin) return { role: 'admin' };
    if (isViewer) return { role: 'viewer' };
    if (KEY_PATTERN.test(token)) {
      const key = await this.d.keys.authenticate(`Bearer ${token}`);
      return { role: 'agent', agent: key.agent };
    }
    throw new AuthenticationError(`Unknown token. ${READ_HINT}`);
  }

  /** Anyone with a valid token reads /status; with `statusPublic` anyone at all. */
  async reader(authorization: string | undefined, statusPublic: boolean): Promise<Principal> {
    if (statusPublic && !bearerToken(authorization)) return { role: 'public' };
    return this.identify(authorization);
  }

  /**
   * The admin token, always (there is no open mode).
   * @throws AuthenticationError (401) missing or unknown token; PermissionError (403) a valid non-admin token
   */
  async admin(authorization: string | undefined): Promise<Principal> {
    if (!bearerToken(authorization)) {
      throw new AuthenticationError('Admin endpoints need `Authorization: Bearer <admin token>`.');
    }
    const who = await this.identify(authorization);
    if (who.role !== 'admin') {
      throw new PermissionError(
        'This token may read /status but not change the gateway; use the admin token.',
        'admin_required',
      );
    }
    return who;
  }

  private async tokens(): Promise<[string | undefined, string | undefined]> {
    try {
      return await Promise.all([this.d.adminToken(), this.d.viewerToken()]);
    } catch {
      throw new UnavailableError(
        'Access tokens cannot be read right now; retry shortly.',
        1_000,
        'auth_unavailable',
      );
    }
  }
}
