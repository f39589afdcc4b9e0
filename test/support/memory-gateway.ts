// Admission and the Dispatcher on the in-memory stores (lib/adapters/memory) and a given clock, wired as the
// functions wire them on AWS: for table tests and simulations on a fake clock.
import { MemoryOutcomeStore, MemoryRetreatStore } from '../../lib/adapters/memory/stores.js';
import {
  MemoryLeaseStore,
  MemoryTicketQueue,
  type MemoryTicketStore,
} from '../../lib/adapters/memory/tickets.js';
import { Admission, type AdmissionDeps } from '../../lib/domain/admission.js';
import { TokenBucket } from '../../lib/domain/bucket.js';
import type { Clock } from '../../lib/domain/clock.js';
import type { ConfigService } from '../../lib/domain/config-service.js';
import { Dispatcher, type DispatcherDeps, type DispatcherTimings } from '../../lib/domain/dispatcher.js';
import type { BucketStore } from '../../lib/domain/ports.js';
import { RetreatController } from '../../lib/domain/retreat-controller.js';
import type { UpstreamLane } from '../../lib/domain/upstream-lanes.js';

export const quietLog = { info: () => {}, warn: () => {}, error: () => {} };

/** Admission on the in-memory queue, lease and outcome stores (no dispatcher: tests that grant by hand). */
export const memoryAdmission = (parts: {
  clock: Clock;
  tickets: MemoryTicketStore;
  bucket: TokenBucket;
  /** Several limited upstreams, built on this gateway's outcome store (see `memoryLanes`). */
  lanes?: (outcomes: MemoryOutcomeStore) => UpstreamLane[];
  newId?: () => string;
  /** Where agents' usage is counted apart from a ticket's end. */
  usage?: AdmissionDeps['usage'];
}) => {
  const { clock, tickets } = parts;
  const queue = new MemoryTicketQueue(clock);
  const lease = new MemoryLeaseStore(clock);
  const outcomes = new MemoryOutcomeStore();
  const lanes = parts.lanes?.(outcomes);
  const bucket = lanes?.[0]?.bucket ?? parts.bucket;
  let n = 0;
  const admission = new Admission({
    tickets,
    queue,
    lease,
    outcomes,
    bucket,
    ...(lanes ? { lanes } : {}),
    wakeDispatcher: async () => {},
    clock,
    newId: parts.newId ?? (() => `t${++n}`),
    ...(parts.usage ? { usage: parts.usage } : {}),
  });
  return { queue, lease, outcomes, bucket, lanes, admission };
};

/** Admission and the Dispatcher on the in-memory stores, wired as the functions wire them. */
export const memoryGateway = (
  parts: Parameters<typeof memoryAdmission>[0] & {
    config: ConfigService;
    /** The dispatcher's optional hooks (per-upstream retreat, tokens), as the function passes them. */
    hooks?: Pick<DispatcherDeps, 'onUpstreamRetreat' | 'onTokens'>;
    timings?: Partial<DispatcherTimings>;
  },
) => {
  const { clock, tickets, config } = parts;
  const admitting = memoryAdmission(parts);
  const { queue, lease, outcomes, bucket, lanes } = admitting;
  // One per run, as the function builds one per invocation.
  const newDispatcher = (hooks = parts.hooks) =>
    new Dispatcher(
      {
        tickets,
        queue,
        lease,
        bucket,
        retreat:
          lanes?.[0]?.retreat ??
          new RetreatController({ retreat: new MemoryRetreatStore(), outcomes, bucket, clock }),
        ...(lanes ? { lanes } : {}),
        ...hooks,
        config,
        outcomes,
        clock,
        wakeSuccessor: async () => {},
        owner: 'test-dispatcher',
        log: quietLog,
        agentBucket: () => {
          throw new Error('no agent quotas in these tests');
        },
      },
      parts.timings,
    );
  return { ...admitting, dispatcher: newDispatcher(), newDispatcher };
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
