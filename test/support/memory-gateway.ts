// Admission and the Dispatcher on the in-memory stores (lib/adapters/memory) and a given clock, wired as the
// functions wire them on AWS: for table tests and simulations on a fake clock.
import { MemoryOutcomeStore, MemoryRetreatStore } from '../../lib/adapters/memory/stores.js';
import {
  MemoryLeaseStore,
  MemoryTicketQueue,
  type MemoryTicketStore,
} from '../../lib/adapters/memory/tickets.js';
import { Admission } from '../../lib/domain/admission.js';
import { TokenBucket } from '../../lib/domain/bucket.js';
import type { Clock } from '../../lib/domain/clock.js';
import type { ConfigService } from '../../lib/domain/config-service.js';
import { Dispatcher } from '../../lib/domain/dispatcher.js';
import type { BucketStore } from '../../lib/domain/ports.js';
import { RetreatController } from '../../lib/domain/retreat-controller.js';
import type { UpstreamLane } from '../../lib/domain/upstream-lanes.js';

export const quietLog = { info: () => {}, warn: () => {}, error: () => {} };

export const memoryGateway = (parts: {
  clock: Clock;
  tickets: MemoryTicketStore;
  bucket: TokenBucket;
  config: ConfigService;
}) => {
  const { clock, tickets, bucket, config } = parts;
  const queue = new MemoryTicketQueue(clock);
  const lease = new MemoryLeaseStore(clock);
  const outcomes = new MemoryOutcomeStore();
  let n = 0;
  const admission = new Admission({
    tickets,
    queue,
    lease,
    outcomes,
    bucket,
    wakeDispatcher: async () => {},
    clock,
    newId: () => `t${++n}`,
  });
  const dispatcher = new Dispatcher({
    tickets,
    queue,
    lease,
    bucket,
    retreat: new RetreatController({ retreat: new MemoryRetreatStore(), outcomes, bucket, clock }),
    config,
    outcomes,
    clock,
    wakeSuccessor: async () => {},
    owner: 'test-dispatcher',
    log: quietLog,
    agentBucket: () => {
      throw new Error('no agent quotas in these tests');
    },
  });
  return { queue, lease, outcomes, admission, dispatcher };
};

/**
 * One lane per upstream on the in-memory stores, as the wiring builds them: its own bucket (on the given store),
 * outcome slots and retreat record; the first lane is the primary and uses `outcomes`.
 */
export const memoryLanes = (
  names: readonly string[],
  bucketStore: (name: string) => BucketStore,
  clock: Clock,
  outcomes: MemoryOutcomeStore,
): UpstreamLane[] =>
  names.map((name, i) => {
    const bucket = new TokenBucket(bucketStore(name), clock, { fraction: 0.5, forNormal: false });
    const laneOutcomes = i === 0 ? outcomes : new MemoryOutcomeStore();
    return {
      name,
      primary: i === 0,
      bucket,
      outcomes: laneOutcomes,
      retreat: new RetreatController({
        retreat: new MemoryRetreatStore(),
        outcomes: laneOutcomes,
        bucket,
        clock,
      }),
    };
  });
