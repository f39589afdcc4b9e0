// Composition support: the live config of one container: one store over the config item, read through one cache.
import { DynamoConfigStore } from '../adapters/dynamo/config-store.js';
import type { Clock } from '../domain/clock.js';
import { configFromEnv, type GatewayConfig } from '../domain/config.js';
import { ConfigService } from '../domain/config-service.js';
import type { Clients } from './clients.js';
import type { RuntimeEnv } from './env.js';

export interface LiveConfig {
  /** Every live field is read here (its cache is at most 2 s old); writes invalidate it. */
  service: ConfigService;
  /** The item itself: the change history (status, admin API). */
  store: DynamoConfigStore;
  /** What applies before anyone stored a config (`SLUICE_*` env over the built-in defaults). */
  defaults: GatewayConfig;
}

/**
 * The config store and its cached reader, built once per container: every part of the function reads the same
 * cached copy, so a PATCH reaches them all at once.
 */
export const liveConfig = (
  env: RuntimeEnv,
  clients: Clients,
  processEnv: Record<string, string | undefined>,
  clock: Clock,
): LiveConfig => {
  const defaults = configFromEnv(processEnv);
  const store = new DynamoConfigStore(clients.dynamo, env.stateTable);
  return { service: new ConfigService(store, clock, defaults), store, defaults };
};
