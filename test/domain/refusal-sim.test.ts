// Time to refusal in the fleet bench's heavy overload, simulated: 40 closed-loop agents (4 urgent, 8 high, 20 normal,
// 8 low; half streaming; the openai SDK's two retries after retry-after) behind the default 40-per-60 s key, with
// admission and the dispatcher on the memory stores and a simulated clock.
import { describe, expect, it } from 'vitest';
import { MemoryBucketStore } from '../../lib/adapters/memory/stores.js';
import { MemoryTicketStore } from '../../lib/adapters/memory/tickets.js';
import { TokenBucket } from '../../lib/domain/bucket.js';
import type { Clock } from '../../lib/domain/clock.js';
import { DEFAULT_CONFIG } from '../../lib/domain/config.js';
import { ConfigService } from '../../lib/domain/config-service.js';
import { GatewayError } from '../../lib/domain/errors.js';
import type { VersionedConfig } from '../../lib/domain/ports.js';
import type { Priority } from '../../lib/domain/priority.js';
import { memoryGateway } from '../support/memory-gateway.js';

class SimClock implements Clock {
  private readonly timers: { at: number; wake: () => void }[] = [];
  constructor(private t = 2_000_000_000_000) {}
  now(): number {
    return this.t;
  }
  sleep(ms: number, signal?: AbortSignal): Promise<void> {
    if (ms <= 0 || signal?.aborted) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = { at: this.t + ms, wake: () => resolve() };
      this.timers.push(timer);
      signal?.addEventListener(
        'abort',
        () => {
          const i = this.timers.indexOf(timer);
          if (i >= 0) this.timers.splice(i, 1);
          resolve();
        },
        { once: true },
      );
    });
  }
  async drive(done: Promise<unknown>): Promise<void> {
    let finished = false;
    void done.finally(() => {
      finished = true;
    });
    while (!finished) {
      for (let i = 0; i < 3; i++) await new Promise((r) => setTimeout(r, 0));
      if (finished) break;
      this.timers.sort((a, b) => a.at - b.at);
      const next = this.timers.shift();
      if (!next) continue;
      this.t = Math.max(this.t, next.at);
      next.wake();
    }
  }
}

/** Seeded PRNG (mulberry32). */
const prng = (seed: number) => () => {
  seed = (seed + 0x6d2b79f5) | 0;
  let t = seed;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
};

interface Refusal {
  priority: Priority;
  ms: number;
  code: string;
  at: number;
  stream: boolean;
}

/** The bench's agents against admission and the dispatcher; every refusal an agent's client saw, timed. */
const simulate = async (durationMs: number) => {
  const clock = new SimClock();
  const bucketStore = new MemoryBucketStore();
  const bucket = new TokenBucket(bucketStore, clock, { fraction: 0.5, forNormal: false });
  const config = { ...DEFAULT_CONFIG };
  const stored: VersionedConfig = { config, version: 1, updatedAt: clock.now(), updatedBy: 'sim' };
  const tickets = new MemoryTicketStore(bucketStore);
  const { admission, dispatcher } = memoryGateway({
    clock,
    tickets,
    bucket,
    config: new ConfigService(
      { get: async () => stored, put: async () => true, history: async () => [] },
      clock,
      config,
    ),
  });
  const start = clock.now();
  const end = start + durationMs;
  const refusals: Refusal[] = [];
  const completed: Record<Priority, number> = { urgent: 0, high: 0, normal: 0, low: 0 };
  const rnd = prng(42);
  const priorities: Priority[] = [
    ...Array<Priority>(4).fill('urgent'),
    ...Array<Priority>(8).fill('high'),
    ...Array<Priority>(20).fill('normal'),
    ...Array<Priority>(8).fill('low'),
  ];
  const stop = new AbortController();
  // The dispatcher is woken by the first doorbell; here it runs from the start (a run per 15 min on AWS).
  const dispatching = dispatcher.run(end + 60_000, stop.signal);
  const attemptOnce = async (
    priority: Priority,
    agent: string,
    stream: boolean,
  ): Promise<'done' | { retryAfterMs: number } | 'failed'> => {
    const sent = clock.now();
    const refuse = (err: GatewayError, inStream = false) => {
      refusals.push({
        priority,
        ms: clock.now() - sent,
        code: err.code + (inStream ? ' (in stream)' : ''),
        at: sent - start,
        stream,
      });
      return inStream ? ('failed' as const) : { retryAfterMs: Math.min(60_000, err.retryAfterMs ?? 1_000) };
    };
    let admitted: Awaited<ReturnType<typeof admission.admit>>;
    try {
      admitted = await admission.admit(
        {
          agent,
          priority,
          model: 'm',
          stream,
          deadline: sent + (stream ? config.streamMaxWaitMs : config.maxWaitMs),
          callBudgetMs: 65_000,
        },
        config,
      );
    } catch (err) {
      if (err instanceof GatewayError && (err.status === 429 || err.status === 503)) return refuse(err);
      throw err;
    }
    let ticket = admitted.ticket;
    if (!admitted.claimed) {
      let firstBeat: number | undefined;
      let committed = false;
      const res = await admission.untilClaimed(ticket, {
        signal: new AbortController().signal,
        passthrough: false,
        windowMs: config.upstreamWindowMs,
        grantSlackMs: config.grantSlackMs,
        callBudgetMs: 65_000,
        intervalMs: async () => bucket.state!.intervalMs,
        ...(admitted.estimatedWaitMs !== undefined ? { estimatedWaitMs: admitted.estimatedWaitMs } : {}),
        onWaitStart: () => {
          if (stream) firstBeat ??= clock.now() + config.heartbeatMs;
        },
        onWaiting: () => {
          if (firstBeat !== undefined && clock.now() >= firstBeat) committed = true;
        },
        readBy: () => (committed ? undefined : firstBeat),
      });
      if (res.kind === 'refused') {
        if (res.error.status === 429 || res.error.status === 503) return refuse(res.error, committed);
        return 'failed';
      }
      if (res.kind !== 'claimed') return 'failed';
      ticket = res.ticket;
    }
    await clock.sleep(4_000);
    await admission.finish(ticket, 'completed', {});
    completed[priority]++;
    return 'done';
  };
  const agents = priorities.map(async (priority, a) => {
    await clock.sleep(rnd() * 1_000);
    while (clock.now() < end) {
      const stream = rnd() < 0.5;
      for (let attempt = 0; attempt < 3; attempt++) {
        const got = await attemptOnce(priority, `a${a}`, stream);
        if (got === 'done' || got === 'failed') break;
        if (attempt < 2) await clock.sleep(got.retryAfterMs);
      }
      await clock.sleep(rnd() * 1_000);
    }
  });
  const work = Promise.all(agents).then(() => stop.abort());
  await clock.drive(Promise.all([work, dispatching]));
  return { refusals, completed, minutes: durationMs / 60_000 };
};

describe('time to refusal under heavy overload (simulated)', () => {
  it('after the first seconds every refusal comes at once (≤ 1 s), and the whole allowance is still used', async () => {
    const { refusals, completed, minutes } = await simulate(120_000);
    // The first seconds of a dispatcher run: the load of more important work is not known yet, so less important
    // requests are let in on the queued counts alone and refused once it is (about 5 token intervals in).
    const steady = refusals.filter((r) => r.at >= 20_000);
    const slow = steady
      .filter((r) => r.ms > 1_000)
      .map((r) => `${r.priority} ${r.code} sent at ${r.at} ms, refused after ${r.ms} ms`);
    expect(steady.length).toBeGreaterThan(100);
    expect(slow).toEqual([]);
    // Before: 179 refusals in 2 minutes, p99 540 s, 21 % after > 10 s (normal tickets kept, refused much later).
    const perMinute = Object.values(completed).reduce((a, b) => a + b, 0) / minutes;
    expect(perMinute).toBeGreaterThanOrEqual(38);
  }, 300_000);
});
