// Adapter: in-memory response cache with the DynamoDB store's conditional semantics (unit tests, models).
import type { CacheEntry, ResponseCacheStore } from '../../domain/ports.js';
import type { CachedAnswer } from '../../domain/response-cache.js';

/** The live part of an entry at `now`: an unexpired answer or an unexpired pending mark. */
export const isLive = (entry: CacheEntry | undefined, now: number): boolean =>
  entry !== undefined && (entry.kind === 'answer' ? entry.expiresAt > now : entry.until > now);

export class MemoryResponseCache implements ResponseCacheStore {
  readonly entries = new Map<string, CacheEntry>();

  /** @param maxBodyBytes answers larger than this are refused as too large */
  constructor(private readonly maxBodyBytes = Number.POSITIVE_INFINITY) {}

  async get(key: string): Promise<CacheEntry | undefined> {
    const e = this.entries.get(key);
    return e && { ...e };
  }

  async claim(
    key: string,
    owner: string,
    until: number,
    now: number,
    rank: number,
  ): Promise<true | CacheEntry | undefined> {
    const current = this.entries.get(key);
    if (isLive(current, now) && !(current?.kind === 'pending' && current.owner === owner))
      return { ...current! };
    this.entries.set(key, { kind: 'pending', owner, until, rank });
    return true;
  }

  async put(key: string, answer: CachedAnswer): Promise<'stored' | 'too_large'> {
    if (Buffer.byteLength(answer.body) > this.maxBodyBytes) return 'too_large';
    this.entries.set(key, { kind: 'answer', ...answer });
    return 'stored';
  }

  async release(key: string, owner: string, now: number): Promise<void> {
    const current = this.entries.get(key);
    if (current?.kind === 'pending' && current.owner === owner)
      this.entries.set(key, { ...current, until: now });
  }

  async purge(): Promise<number> {
    const n = this.entries.size;
    this.entries.clear();
    return n;
  }
}
