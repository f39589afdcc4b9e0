// Domain tests: tokens per minute through admission and the dispatcher, on memory stores and a fake clock (the
// ingress is modelled as calling at the grant's slot and correcting the reservation with the answer's usage).

import { describe, expect, it } from 'vitest';
import { MemoryBucketStore, MemoryConfigStore } from '../../lib/adapters/memory/stores.js';
import { MemoryTicketStore } from '../../lib/adapters/memory/tickets.js';
import { TokenBucket } from '../../lib/domain/bucket.js';
import { FakeClock } from '../../lib/domain/clock.js';
import { configFromEnv, type GatewayConfig } from '../../lib/domain/config.js';
import { ConfigService } from '../../lib/domain/config-service.js';
import type { ConsumeAttempt } from '../../lib/domain/gcra.js';
import type { Ticket, TicketPatch } from '../../lib/domain/tickets.js';
import { tokenLimitOf } from '../../lib/domain/token-window.js';
import { memoryGateway, memoryLanes } from '../support/memory-gateway.js';

interface Call {
  upstream: string;
  at: number;
  ticket: string;
  tokens: number;
}

/**
 * Calls every grant at its slot and answers at once: the answer used `used(estimate)` tokens, which the ingress
 * (its own copy of the upstream's bucket, as another container) writes as the usage correction.
 */
class AnsweringTicketStore extends MemoryTicketStore {
  readonly calls: Call[] = [];
  used: (estimate: number) => number | undefined = (estimate) => estimate;
  ingressBucket: (upstream: string | undefined) => TokenBucket = () => {
    throw new Error('no ingress');
  };
  config: GatewayConfig | undefined;
  constructor(
    private readonly primary: string,
    ...args: ConstructorParameters<typeof MemoryTicketStore>
  ) {
    super(...args);
  }
  override async grant(
    ticket: Pick<Ticket, 'id' | 'attempt'>,
    attempt: ConsumeAttempt,
    patch: TicketPatch,
    opts?: { maxInflight?: number },
  ) {
    const res = await super.grant(ticket, attempt, patch, opts);
    if (res.kind !== 'granted') return res;
    const granted = (await this.get(ticket.id))!;
    const actual = this.used(granted.tokens ?? 0);
    this.calls.push({
      upstream: patch.upstream ?? this.primary,
      at: patch.grantedAt!,
      ticket: ticket.id,
      tokens: actual ?? granted.tokens ?? 0,
    });
    await this.transition(ticket.id, 'granted', 'claimed', { claimedAt: patch.grantedAt! });
    const limit = this.config && tokenLimitOf(this.config, patch.upstream);
    if (limit && actual !== undefined && granted.tokens !== undefined)
      await this.ingressBucket(patch.upstream).reconcileTokens(
        patch.grantedAt!,
        granted.tokens,
        actual,
        limit,
      );
    await this.transition(ticket.id, 'claimed', 'completed', { finishedAt: patch.grantedAt! });
    return res;
  }
}

const setup = async (upstreams: object[]) => {
  const clock = new FakeClock();
  const config = configFromEnv({ SLUICE_UPSTREAMS: JSON.stringify(upstreams), SLUICE_QUEUE_MAX: '2000' });
  const names = upstreams.map((u) => (u as { name: string }).name);
  const stores = new Map(names.map((n) => [n, new MemoryBucketStore()]));
  const tickets = new AnsweringTicketStore(
    names[0]!,
    stores.get(names[0]!)!,
    () => false,
    undefined,
    (name) => stores.get(name)!,
  );
  const reserve = { fraction: 0.5, forNormal: false };
  const ingress = new Map(names.map((n) => [n, new TokenBucket(stores.get(n)!, clock, reserve)]));
  tickets.ingressBucket = (upstream) => ingress.get(upstream ?? names[0]!)!;
  tickets.config = config;
  let n = 0;
  const { admission, dispatcher } = memoryGateway({
    clock,
    tickets,
    bucket: ingress.get(names[0]!)!,
    lanes: (outcomes) => memoryLanes(names, (name) => stores.get(name)!, clock, outcomes),
    newId: () => `t${String(++n).padStart(4, '0')}`,
    config: new ConfigService(
      new MemoryConfigStore({ config, version: 1, updatedAt: clock.now(), updatedBy: 'test' }),
      clock,
      config,
    ),
    timings: { bufferSize: 1_000 },
  });
  const admit = async (count: number, tokens: number, pool?: string[]) => {
    for (let i = 0; i < count; i++) {
      await admission.admit(
        {
          agent: `a${i % 5}`,
          priority: 'normal',
          model: 'm',
          stream: false,
          deadline: clock.now() + 600_000,
          tokens,
          ...(pool ? { pool } : {}),
        },
        config,
      );
      clock.advance(1);
    }
  };
  return { clock, config, tickets, dispatcher, admit };
};

/** Most tokens an upstream was called with in any window of `windowMs` (each call opens a window). */
const maxTokensInWindow = (calls: readonly Call[], windowMs: number): number => {
  const sorted = [...calls].sort((a, b) => a.at - b.at);
  let most = 0;
  for (const [i, c] of sorted.entries()) {
    let sum = 0;
    for (let j = i; j < sorted.length && sorted[j]!.at < c.at + windowMs; j++) sum += sorted[j]!.tokens;
    most = Math.max(most, sum);
  }
  return most;
};

describe('one upstream with tpm: reservations by estimate, corrected by usage', () => {
  it.each([
    // what the answers used of their estimate → tokens never over tpm in any 60 s; served in 3 minutes
    // (3 windows of a minute and its slack: at most 3 × 3000 / 300 by the estimates, 3 × 3000 / 120 corrected)
    ['usage below the estimate gives room back', (e: number) => Math.round(e * 0.4), 60, 75],
    ['no usage reported: the estimate stays', () => undefined, 27, 30],
    ['usage equal to the estimate', (e: number) => e, 27, 30],
  ])('%s', async (_name, used, servedAtLeast, servedAtMost) => {
    // Prepare: a 500-per-minute key (requests are not what limits) with 3000 tokens per minute; 150 tickets of
    // 300 tokens (estimated) each, far more than 3 minutes can serve.
    const s = await setup([{ name: 'oai', limit: 500, window_s: 60, tpm: 3_000 }]);
    s.tickets.used = used;
    await s.admit(150, 300);

    // Act
    await s.dispatcher.run(s.clock.now() + 180_000);

    // Assess: what the upstream counted (the actual tokens, at the call) never exceeds 3000 in any minute; the
    // corrections let more through than the estimates alone would (10 per minute of 300).
    const calls = s.tickets.calls;
    expect(maxTokensInWindow(calls, 60_000)).toBeLessThanOrEqual(3_000);
    expect(calls.length).toBeGreaterThanOrEqual(servedAtLeast);
    expect(calls.length).toBeLessThanOrEqual(servedAtMost);
  });
});

describe('a pool of two upstreams with tpm', () => {
  it('a ticket the first member has no room for goes to the other; one neither has room for waits, and a smaller one behind it does not pass', async () => {
    // Prepare: two keys of 2000 tokens per minute; three tickets of 1500 then one of 100, all at once.
    const s = await setup([
      { name: 'oai-a', limit: 500, window_s: 60, tpm: 2_000 },
      { name: 'oai-b', limit: 500, window_s: 60, tpm: 2_000 },
    ]);
    const pool = ['oai-a', 'oai-b'];
    const start = s.clock.now();
    await s.admit(3, 1_500, pool);
    await s.admit(1, 100, pool);

    // Act
    await s.dispatcher.run(s.clock.now() + 90_000);

    // Assess: one to each member at once; the third waits for a window to empty (a minute and its slack), and the
    // fourth is not granted before it.
    const calls = s.tickets.calls;
    expect(calls.map((c) => c.ticket)).toEqual(['t0001', 't0002', 't0003', 't0004']);
    expect(new Set(calls.slice(0, 2).map((c) => c.upstream))).toEqual(new Set(pool));
    expect(calls[1]!.at - start).toBeLessThan(1_000);
    expect(calls[2]!.at - start).toBeGreaterThanOrEqual(60_000);
    for (const name of pool)
      expect(
        maxTokensInWindow(
          calls.filter((c) => c.upstream === name),
          60_000,
        ),
      ).toBeLessThanOrEqual(2_000);
  });
});
