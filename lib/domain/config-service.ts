// Domain use case: read the shared config through a short cache; change it with validation and history.
import type { Clock } from './clock.js';
import {
  applyConfigPatch,
  CONFIG_KEYS,
  externalConfig,
  externalName,
  type GatewayConfig,
  validateConfig,
  withDefaults,
} from './config.js';
import type { ConfigChange, ConfigStore, VersionedConfig } from './ports.js';

/** Other functions see a change within this long (the cache age bound). */
export const CONFIG_CACHE_MS = 2_000;

export class ConfigService {
  private cached: { value: VersionedConfig; at: number } | undefined;

  /**
   * @param defaults what applies before anyone stored a config (env vars over built-in defaults)
   */
  constructor(
    private readonly store: ConfigStore,
    private readonly clock: Clock,
    private readonly defaults: GatewayConfig,
    private readonly cacheMs = CONFIG_CACHE_MS,
  ) {}

  /** Current config, at most `cacheMs` old. */
  async current(): Promise<VersionedConfig> {
    const now = this.clock.now();
    if (this.cached && now - this.cached.at < this.cacheMs) {
      // In the last quarter of its age the cache is refreshed in the background: a steady stream of requests
      // never waits for the read, and what it returns is still at most `cacheMs` old.
      if (now - this.cached.at >= (this.cacheMs * 3) / 4 && !this.refreshing) {
        this.refreshing = this.read(now)
          .catch(() => undefined)
          .finally(() => {
            this.refreshing = undefined;
          });
      }
      return this.cached.value;
    }
    return this.read(now);
  }

  private refreshing: Promise<unknown> | undefined;
  /** Bumped by every invalidation: a read started before it is not cached. */
  private generation = 0;

  /** One read of the stored config, cached as of `at` (when the read started, so it never looks fresher). */
  private async read(at: number): Promise<VersionedConfig> {
    const generation = this.generation;
    const stored = await this.store.get();
    // Fields added in a later version take their defaults until someone sets them.
    const value: VersionedConfig = stored
      ? { ...stored, config: withDefaults(this.defaults, stored.config) }
      : { config: this.defaults, version: 0, updatedAt: 0, updatedBy: 'defaults' };
    // A write or invalidate() meanwhile wins over an older read.
    if (generation === this.generation && (!this.cached || this.cached.at <= at)) this.cached = { value, at };
    return value;
  }

  async config(): Promise<GatewayConfig> {
    return (await this.current()).config;
  }

  /** Writes the defaults if no config is stored yet (start-up of the local runtime, first deploy). */
  async seed(): Promise<VersionedConfig> {
    const stored = await this.store.get();
    if (stored) return this.current();
    const value: VersionedConfig = {
      config: validateConfig({ ...this.defaults }),
      version: 1,
      updatedAt: this.clock.now(),
      updatedBy: 'startup',
    };
    await this.store.put(value, undefined, []);
    this.invalidate();
    return this.current();
  }

  /**
   * Applies an external (snake_case, seconds) patch; `check` may refuse it against live state
   * (e.g. queue_max_size below the current depth).
   * @throws ValidationError naming the field; ConflictError if another writer won repeatedly.
   */
  async update(
    patch: Record<string, unknown>,
    by: string,
    check?: (next: GatewayConfig, prev: GatewayConfig) => Promise<void>,
  ): Promise<{ value: VersionedConfig; changes: ConfigChange[] }> {
    for (let i = 0; i < 5; i++) {
      this.invalidate();
      const prev = await this.current();
      const next = applyConfigPatch(prev.config, patch);
      await check?.(next, prev.config);
      const now = this.clock.now();
      // Recorded in the admin API's own names and units (seconds for `*_s` fields).
      const [before, after] = [externalConfig(prev.config), externalConfig(next)];
      const changes: ConfigChange[] = CONFIG_KEYS.filter(
        (k) => JSON.stringify(next[k]) !== JSON.stringify(prev.config[k]),
      ).map((k) => ({
        at: now,
        by,
        field: externalName(k),
        from: before[externalName(k)],
        to: after[externalName(k)],
      }));
      if (changes.length === 0) return { value: prev, changes };
      const value: VersionedConfig = {
        config: next,
        version: prev.version + 1,
        updatedAt: now,
        updatedBy: by,
      };
      if (await this.store.put(value, prev.version === 0 ? undefined : prev.version, changes)) {
        // A background refresh that started during the put may have read the old value: it must not win.
        this.generation++;
        this.cached = { value, at: now };
        return { value, changes };
      }
    }
    throw new Error('config update kept conflicting with other writers');
  }

  /** Forget the cache (tests, admin writes in the same container). */
  invalidate(): void {
    this.generation++;
    this.cached = undefined;
  }
}
