// Composition support: each limited upstream's state (bucket, retreat, outcome slots, in-flight), built once.
import { DynamoBucketStore } from '../adapters/dynamo/bucket-store.js';
import { DynamoOutcomeStore } from '../adapters/dynamo/outcome-store.js';
import { DynamoRetreatStore } from '../adapters/dynamo/retreat-store.js';
import { DynamoTicketStore } from '../adapters/dynamo/ticket-store.js';
import { TokenBucket } from '../domain/bucket.js';
import type { Clock } from '../domain/clock.js';
import type { GatewayConfig } from '../domain/config.js';
import { RetreatController } from '../domain/retreat-controller.js';
import type { UpstreamLane } from '../domain/upstream-lanes.js';
import { upstreamStateKey } from '../domain/upstreams.js';
import type { UpstreamRowSource } from '../status/upstream-rows.js';
import type { Clients } from './clients.js';
import type { RuntimeEnv } from './env.js';

/** The first limited upstream's state: its items keep the single-upstream keys (nothing migrates). */
export interface PrimaryUpstreamState {
  bucket: TokenBucket;
  outcomes: DynamoOutcomeStore;
  retreatStore: DynamoRetreatStore;
  retreat: RetreatController;
}

/** The limited upstreams besides the first (none: one upstream, no lanes). */
export const otherLimitedUpstreams = (env: RuntimeEnv): string[] =>
  [...env.upstreams.values()].filter((u) => u.limited && u.name !== env.primaryUpstream).map((u) => u.name);

/** The bucket's reserve at cold start; the functions apply the live value from the cached config. */
const reserveOf = (config: GatewayConfig) => ({
  fraction: config.reserveFraction,
  forNormal: config.reserveForNormal,
});

/** The first upstream's bucket, outcome slots and retreat. */
export const primaryUpstreamState = (
  env: RuntimeEnv,
  clients: Clients,
  clock: Clock,
  defaults: GatewayConfig,
): PrimaryUpstreamState => {
  const bucket = new TokenBucket(
    new DynamoBucketStore(clients.dynamo, env.stateTable, env.bucketKey),
    clock,
    reserveOf(defaults),
  );
  const outcomes = new DynamoOutcomeStore(clients.dynamo, env.stateTable);
  const retreatStore = new DynamoRetreatStore(clients.dynamo, env.stateTable, env.bucketKey);
  return {
    bucket,
    outcomes,
    retreatStore,
    retreat: new RetreatController({ retreat: retreatStore, outcomes, bucket, clock }),
  };
};

/** The ticket table, with an in-flight counter per limited upstream besides the first. */
export const ticketStore = (env: RuntimeEnv, clients: Clients): DynamoTicketStore =>
  new DynamoTicketStore(clients.dynamo, {
    ticketsTable: env.ticketsTable,
    stateTable: env.stateTable,
    bucketKey: env.bucketKey,
    otherUpstreams: otherLimitedUpstreams(env),
  });

/**
 * Several limited upstreams: a lane each (its own bucket, retreat and outcome slots), the first one's over
 * `primary`; undefined for one upstream.
 */
export const upstreamLanes = (
  env: RuntimeEnv,
  clients: Clients,
  clock: Clock,
  primary: PrimaryUpstreamState,
  defaults: GatewayConfig,
): readonly UpstreamLane[] | undefined => {
  const others = otherLimitedUpstreams(env);
  if (!others.length) return undefined;
  return [
    { name: env.primaryUpstream, primary: true, ...primary },
    ...others.map((name): UpstreamLane => {
      const key = upstreamStateKey(name);
      const bucket = new TokenBucket(
        new DynamoBucketStore(clients.dynamo, env.stateTable, key),
        clock,
        reserveOf(defaults),
      );
      const outcomes = new DynamoOutcomeStore(clients.dynamo, env.stateTable, `outcomes#${key}`);
      const retreat = new DynamoRetreatStore(clients.dynamo, env.stateTable, key);
      return {
        name,
        primary: false,
        bucket,
        outcomes,
        retreat: new RetreatController({ retreat, outcomes, bucket, clock }),
      };
    }),
  ];
};

/** /status with several upstreams: each one's own items (undefined for one upstream). */
export const upstreamRowSources = (
  env: RuntimeEnv,
  clients: Clients,
  primary: Pick<PrimaryUpstreamState, 'outcomes' | 'retreatStore'>,
  tickets: DynamoTicketStore,
): UpstreamRowSource[] | undefined => {
  const others = otherLimitedUpstreams(env);
  if (!others.length) return undefined;
  return [
    {
      name: env.primaryUpstream,
      retreat: primary.retreatStore,
      outcomes: primary.outcomes,
      inFlight: async () => (await tickets.counts()).inflight,
    },
    ...others.map((name) => {
      const key = upstreamStateKey(name);
      return {
        name,
        retreat: new DynamoRetreatStore(clients.dynamo, env.stateTable, key),
        outcomes: new DynamoOutcomeStore(clients.dynamo, env.stateTable, `outcomes#${key}`),
        inFlight: () => tickets.upstreamInflight(name),
        // Read by /status only when this upstream has `tpm` (its token entries).
        bucket: new DynamoBucketStore(clients.dynamo, env.stateTable, key),
      };
    }),
  ];
};
