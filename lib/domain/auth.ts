// Domain: agent keys (hashed, never stored in clear) and the admin/viewer token check.
import { createHash, timingSafeEqual } from 'node:crypto';
import type { Clock } from './clock.js';
import { AuthenticationError, PermissionError } from './errors.js';
import { LruCache } from './lru.js';
import type { AgentKey, KeyStore } from './ports.js';

/** `sk-sluice-` + 43 base64url characters (32 random bytes). */
export const KEY_PREFIX = 'sk-sluice-';
export const KEY_PATTERN = /^sk-sluice-[A-Za-z0-9_-]{43}$/;

export const hashKey = (key: string): string => createHash('sha256').update(key, 'utf8').digest('hex');

/** A new agent key from 32 random bytes (the caller supplies the randomness). */
export const formatKey = (random: Uint8Array): string =>
  `${KEY_PREFIX}${Buffer.from(random).toString('base64url')}`;

/** Constant-time comparison of two secrets of any length (compares their digests). */
export const secretEquals = (given: string, expected: string): boolean =>
  timingSafeEqual(
    createHash('sha256').update(given).digest(),
    createHash('sha256').update(expected).digest(),
  );

/** The token of an `Authorization: Bearer …` header, or undefined. */
export const bearerToken = (header: string | undefined): string | undefined => {
  const m = /^Bearer\s+(\S+)\s*$/i.exec(header ?? '');
  return m?.[1];
};

/** `last used` is written at most this often per key (one conditional write). */
export const LAST_USED_EVERY_MS = 3_600_000;

/** How long a key lookup is cached per container: a disabled key stops working within this. */
export const KEY_CACHE_MS = 10_000;
/** Known keys kept per container (least recently used dropped first). */
export const KEY_CACHE_SIZE = 10_000;
/** Unknown keys are remembered briefly and apart, so a flood of random keys never evicts real ones. */
export const UNKNOWN_KEY_CACHE_MS = 2_000;
export const UNKNOWN_KEY_CACHE_SIZE = 1_000;

export class KeyAuthenticator {
  private readonly known = new LruCache<{ key: AgentKey; at: number }>(KEY_CACHE_SIZE);
  private readonly unknown = new LruCache<number>(UNKNOWN_KEY_CACHE_SIZE);

  constructor(
    private readonly store: KeyStore,
    private readonly clock: Clock,
    private readonly cacheMs = KEY_CACHE_MS,
  ) {}

  /** The key record for a hash: from the caches while fresh, else one read (its answer cached by kind). */
  private async lookup(hash: string, now: number): Promise<AgentKey | undefined> {
    const hit = this.known.get(hash);
    if (hit && now - hit.at < this.cacheMs) {
      // In the last quarter of its age a known key is re-read in the background: a key in steady use never
      // waits for the read, and a disabled key still stops working within `cacheMs`.
      if (now - hit.at >= (this.cacheMs * 3) / 4 && !this.refreshing.has(hash)) {
        this.refreshing.add(hash);
        void this.read(hash, now)
          .catch(() => undefined)
          .finally(() => this.refreshing.delete(hash));
      }
      return hit.key;
    }
    const missAt = this.unknown.get(hash);
    if (missAt !== undefined && now - missAt < Math.min(this.cacheMs, UNKNOWN_KEY_CACHE_MS)) return undefined;
    return this.read(hash, now);
  }

  private readonly refreshing = new Set<string>();
  /** Reads under way, per key: concurrent requests of one key on a cold (or expired) cache share one. */
  private readonly reading = new Map<string, Promise<AgentKey | undefined>>();

  /** One read of a key record at a time, its answer cached by kind as of `now` (when the read started). */
  private read(hash: string, now: number): Promise<AgentKey | undefined> {
    const under = this.reading.get(hash);
    if (under) return under;
    const read = this.readOnce(hash, now).finally(() => this.reading.delete(hash));
    this.reading.set(hash, read);
    return read;
  }

  private async readOnce(hash: string, now: number): Promise<AgentKey | undefined> {
    const key = await this.store.get(hash);
    if (key) {
      this.known.set(hash, { key, at: now });
      this.unknown.delete(hash);
    } else {
      this.known.delete(hash);
      this.unknown.set(hash, now);
    }
    return key;
  }

  /**
   * @throws AuthenticationError (401) missing, malformed or unknown key; PermissionError (403) disabled or expired.
   */
  async authenticate(authorization: string | undefined): Promise<AgentKey> {
    const token = bearerToken(authorization);
    if (!token) throw new AuthenticationError();
    // A key of the wrong shape never reaches the store.
    if (!KEY_PATTERN.test(token)) throw new AuthenticationError('Invalid API key format.');
    const hash = hashKey(token);
    const now = this.clock.now();
    const key = await this.lookup(hash, now);
    if (!key) throw new AuthenticationError('Unknown API key.');
    if (!key.enabled) throw new PermissionError('This API key is disabled.', 'key_disabled');
    if (key.expiresAt !== undefined && key.expiresAt <= now) {
      throw new PermissionError('This API key has expired (rotated).', 'key_expired');
    }
    if (now - (key.lastUsedAt ?? 0) >= LAST_USED_EVERY_MS) {
      key.lastUsedAt = now;
      // Bookkeeping only: a failed write must not fail the request.
      void this.store.touch(hash, now, LAST_USED_EVERY_MS).catch(() => undefined);
    }
    return key;
  }
}
