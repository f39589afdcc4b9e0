// Composition support: the per-agent quota buckets (one GCRA item each), kept for the container's life.
import { DynamoBucketStore } from '../adapters/dynamo/bucket-store.js';
import { TokenBucket } from '../domain/bucket.js';
import type { Clock } from '../domain/clock.js';
import type { Clients } from './clients.js';
import type { RuntimeEnv } from './env.js';

/** Forgotten all at once past this many agents (a container never grows without bound). */
const MAX_AGENTS = 10_000;

/** The quota bucket of an agent: the same item shape as the upstream's, keyed `agent#<name>`, no reserve. */
export const agentBuckets = (env: RuntimeEnv, clients: Clients, clock: Clock) => {
  const known = new Map<string, { bucket: TokenBucket; key: string }>();
  return (agent: string): { bucket: TokenBucket; key: string } => {
    let hit = known.get(agent);
    if (!hit) {
      const key = `agent#${agent}`;
      hit = {
        key,
        bucket: new TokenBucket(new DynamoBucketStore(clients.dynamo, env.stateTable, key), clock, {
          fraction: 0,
          forNormal: false,
        }),
      };
      if (known.size > MAX_AGENTS) known.clear();
      known.set(agent, hit);
    }
    return hit;
  };
};
