// The dispatcher on in-memory stores and a fake clock: which tickets it grants, in which order, what it leaves.
import { describe, expect, it } from 'vitest';
import {
  MemoryBucketStore,
  MemoryOutcomeStore,
  MemoryRetreatStore,
} from '../../lib/adapters/memory/stores.js';
import { MemoryLeaseStore, MemoryTicketQueue, MemoryTicketStore } from '../../lib/adapters/memory/tickets.js';
import { Admission } from '../../lib/domain/admission.js';
import { TokenBucket } from '../../lib/domain/bucket.js';
import { FakeClock } from '../../lib/domain/clock.js';
import { DEFAULT_CONFIG, type GatewayConfig } from '../../lib/domain/config.js';
import { ConfigService } from '../../lib/domain/config-service.js';
import { Dispatcher } from '../../lib/domain/dispatcher.js';
import type { ConfigStore, VersionedConfig } from '../../lib/domain/ports.js';
import type { Priority } from '../../lib/domain/priority.js';
import { RetreatController } from '../../lib/domain/retreat-controller.js';

class MemoryConfigStore implements ConfigStore {
  value: VersionedConfig | undefined;
  async get() {
    return this.value;
  }
  async put(next: VersionedConfig, expectedVersion: number | undefined) {
    if (this.value?.version !== expectedVersion) return false;
    this.value = next;
    return true;
  }
  async history() {
    return [];
  }
}

const quiet = { info: () => {}, warn: () => {}, error: () => {} };

const setup = async (config: Partial<GatewayConfig>) => {
  const clock = new FakeClock();
  const bucketStore = new MemoryBucketStore();
  const bucket = new TokenBucket(bucketStore, clock, { fraction: 0.5, forNormal: false });
  const tickets = new MemoryTicketStore(bucketStore);
  const queue = new MemoryTicketQueue(clock);
  const lease = new MemoryLeaseStore(clock);
  const outcomes = new MemoryOutcomeStore();
  const configStore = new MemoryConfigStore();
  configStore.value = {
    config: { ...DEFAULT_CONFIG, ...config },
    version: 1,
    updatedAt: clock.now(),
    updatedBy: 'test',
  };
  const configService = new ConfigService(configStore, clock, { ...DEFAULT_CONFIG, ...config });
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
    config: configService,
    outcomes,
    clock,
    wakeSuccessor: async () => {},
    owner: 'test-dispatcher',
    log: quiet,
    agentBucket: () => {
      throw new Error('no agent quotas in these tests');
    },
  });
  return { clock, tickets, queue, admission, dispatcher, config: await configService.config() };
};

type Case = {
  name: string;
  config: Partial<GatewayConfig>;
  /** Admitted in this order, all before the run. */
  admitted: Priority[];
  /** Priorities in grant order. */
  granted: Priority[];
  left: { queued: number; inflight: number };
};

describe('Dispatcher.run', () => {
  it.each<Case>([
    {
      name: 'grants in priority order, FIFO within a priority',
      config: { lowPriorityTimeoutMs: 60_000 },
      admitted: ['low', 'normal', 'urgent', 'normal', 'high'],
      granted: ['urgent', 'high', 'normal', 'normal', 'low'],
      left: { queued: 0, inflight: 5 },
    },
    {
      name: 'paused: grants nothing, tickets keep waiting',
      config: { paused: true },
      admitted: ['urgent', 'normal'],
      granted: [],
      left: { queued: 2, inflight: 0 },
    },
    {
      name: 'max_inflight: grants only up to the cap',
      config: { maxInflight: 2 },
      admitted: ['normal', 'normal', 'normal'],
      granted: ['normal', 'normal'],
      left: { queued: 1, inflight: 2 },
    },
  ])('$name', async ({ config, admitted, granted, left }) => {
    const s = await setup(config);
    const ids: string[] = [];
    for (const priority of admitted) {
      const { ticket } = await s.admission.admit(
        { agent: 'a', priority, model: 'm', stream: false, deadline: s.clock.now() + 600_000 },
        s.config,
      );
      ids.push(ticket.id);
      s.clock.advance(1);
    }
    // Shorter than the claim window (15 s): no grant is swept as unclaimed during the run.
    await s.dispatcher.run(s.clock.now() + 10_000);
    const all = await Promise.all(ids.map((id) => s.tickets.get(id)));
    const order = all
      .filter((t) => t?.status === 'granted')
      .sort((a, b) => a!.grantedAt! - b!.grantedAt! || a!.enqueuedAt - b!.enqueuedAt)
      .map((t) => t!.priority);
    expect(order).toEqual(granted);
    expect(await s.tickets.counts()).toEqual(left);
  });
});
