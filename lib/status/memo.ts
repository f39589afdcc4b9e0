// Status support: a value rebuilt at most once per period and shared by concurrent callers (single flight).
import type { Clock } from '../domain/clock.js';

/**
 * Caches the result of `build` for `maxAgeMs`. Callers arriving while a build runs wait for that build instead
 * of starting another; a failed build is not cached (the next caller tries again).
 *
 * @example
 * const snapshots = new Memo(() => builder.build(), clock, 1_000);
 * const snapshot = await snapshots.get(); // ≤ 1 build per second, however many dashboards poll
 */
export class Memo<T> {
  private value: { data: T; at: number } | undefined;
  private pending: Promise<T> | undefined;
  private generation = 0;

  /**
   * @param build produces a fresh value
   * @param maxAgeMs how long a value is served @default 1000
   */
  constructor(
    private readonly build: () => Promise<T>,
    private readonly clock: Clock,
    private readonly maxAgeMs = 1_000,
  ) {}

  /** The cached value while it is younger than `maxAgeMs`, else a new one. */
  async get(): Promise<T> {
    const now = this.clock.now();
    if (this.value && now - this.value.at < this.maxAgeMs) return this.value.data;
    if (this.pending) return this.pending;
    const started = now;
    const generation = this.generation;
    const pending = this.build().then((data) => {
      // A build started before an invalidate() holds what was true before the write: it answers its own callers
      // but is not kept (the dashboard's poll was in flight when a PATCH came, and /status showed the old limit).
      if (generation === this.generation) this.value = { data, at: started };
      return data;
    });
    this.pending = pending;
    pending
      .finally(() => {
        if (this.pending === pending) this.pending = undefined;
      })
      .catch(() => undefined);
    return pending;
  }

  /** Drops the cached value (after a write that changes what it shows). */
  invalidate(): void {
    this.value = undefined;
    this.pending = undefined;
    this.generation++;
  }
}
