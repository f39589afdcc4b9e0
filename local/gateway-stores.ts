// Local runtime and tests: every store of one deployment on one set of clients, to look at and seed its state.
// No function composes itself from this (each has its own build<Fn>Deps); it is the test's and the local
// runtime's view of the same tables and items, built from the same blocks.
import { randomUUID } from 'node:crypto';
import { DynamoBudgetStore } from '../lib/adapters/dynamo/budget-store.js';
import { DynamoKeyStore } from '../lib/adapters/dynamo/key-store.js';
import { DynamoLeaseStore } from '../lib/adapters/dynamo/lease-store.js';
import { DynamoResponseCacheStore } from '../lib/adapters/dynamo/response-cache-store.js';
import { DynamoUsageStore } from '../lib/adapters/dynamo/usage-store.js';
import { SqsTicketQueue } from '../lib/adapters/sqs/ticket-queue.js';
import { type Clock, systemClock } from '../lib/domain/clock.js';
import { agentBuckets } from '../lib/runtime/agent-buckets.js';
import type { Clients } from '../lib/runtime/clients.js';
import type { RuntimeEnv } from '../lib/runtime/env.js';
import {
  primaryUpstreamState,
  ticketStore,
  upstreamLanes,
  upstreamRowSources,
} from '../lib/runtime/lanes.js';
import { liveConfig } from '../lib/runtime/live-config.js';

/** The stores and shared domain objects of one deployment; cheap to build (no I/O). */
export const gatewayStores = (
  env: RuntimeEnv,
  clients: Clients,
  processEnv: Record<string, string | undefined>,
  clock: Clock = systemClock,
) => {
  const config = liveConfig(env, clients, processEnv, clock);
  const primary = primaryUpstreamState(env, clients, clock, config.defaults);
  const tickets = ticketStore(env, clients);
  return {
    clock,
    ...primary,
    lanes: upstreamLanes(env, clients, clock, primary, config.defaults),
    upstreamSources: upstreamRowSources(env, clients, primary, tickets),
    agentBucket: agentBuckets(env, clients, clock),
    tickets,
    queue: new SqsTicketQueue(clients.sqs, env.queueUrls),
    lease: new DynamoLeaseStore(clients.dynamo, env.stateTable),
    keys: new DynamoKeyStore(clients.dynamo, env.keysTable),
    usage: new DynamoUsageStore(clients.dynamo, env.stateTable),
    budgets: new DynamoBudgetStore(clients.dynamo, env.stateTable),
    responseCache: env.cacheTable ? new DynamoResponseCacheStore(clients.dynamo, env.cacheTable) : undefined,
    configStore: config.store,
    config: config.service,
    newId: () => randomUUID(),
  };
};

export type GatewayStores = ReturnType<typeof gatewayStores>;
