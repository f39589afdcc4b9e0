// Time to refusal in the fleet bench's heavy overload, simulated: 40 closed-loop agents (4 urgent, 8 high, 20 normal,
// 8 low; half streaming; the openai SDK's two retries after retry-after) behind the default 40-per-60 s key, with
// admission and the dispatcher on the memory stores and a simulated clock.
import { describe, expect, it } from 'vitest';
import { MemoryBucketStore } from '../../lib/adapters/memory/stores.js';
import { MemoryTicketStore } from '../../lib/adapters/memory/tickets.js';
import { farPollMaxMs } from '../../lib/domain/admission.js';
import { TokenBucket } from '../../lib/domain/bucket.js';
import { DEFAULT_CONFIG } from '../../lib/domain/config.js';
import { ConfigService } from '../../lib/domain/config-service.js';
import { GatewayError } from '../../lib/domain/errors.js';
import type { VersionedConfig } from '../../lib/domain/ports.js';
import type { Priority } from '../../lib/domain/priority.js';
import type { PriorityPolicy } from '../../lib/domain/priority-policy.js';
import { memoryGateway } from '../support/memory-gateway.js';
import { SimClock } from '../support/sim-clock.js';

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
const simulate = async (durationMs: number, callMs: number, policy: PriorityPolicy = 'strict') => {
  const clock = new SimClock();
  const bucketStore = new MemoryBucketStore();
  const bucket = new TokenBucket(bucketStore, clock, { fraction: 0.5, forNormal: false });
  const config = { ...DEFAULT_CONFIG, priorityPolicy: policy };
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
  // The dispatcher is woken by the first doorbell: it starts after the first requests, so the backlog they left is
  // not a load it measured arriving (a run lasts up to 15 min on AWS, 5 min in the local runtime).
  const dispatching = (async () => {
    await clock.sleep(1_200);
    // A run that stopped idle is started again (on AWS the next doorbell does it).
    while (!stop.signal.aborted) {
      await dispatcher.run(end + 30 * 60_000, stop.signal);
      await clock.sleep(250);
    }
  })();
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
        intervalMs: async () => bucket.state?.intervalMs ?? 1_525,
        ...(admitted.estimatedWaitMs !== undefined ? { estimatedWaitMs: admitted.estimatedWaitMs } : {}),
        ...(admitted.recheckAt !== undefined ? { recheckAt: admitted.recheckAt } : {}),
        onWaitStart: () => {
          if (stream) firstBeat ??= clock.now() + config.heartbeatMs;
        },
        onWaiting: () => {
          if (firstBeat !== undefined && clock.now() >= firstBeat) committed = true;
        },
        readBy: () => (committed ? undefined : firstBeat),
        // As the ingress does (lib/ingress/service.ts).
        farPollMs: farPollMaxMs(config.priorityPolicy, config.upstreamWindowMs, config.grantSlackMs),
      });
      if (res.kind === 'refused') {
        if (res.error.status === 429 || res.error.status === 503) return refuse(res.error, committed);
        return 'failed';
      }
      if (res.kind !== 'claimed') return 'failed';
      ticket = res.ticket;
    }
    await clock.sleep(callMs);
    await admission.finish(ticket, 'completed', {});
    completed[priority]++;
    return 'done';
  };
  const agents = priorities.map(async (priority, a) => {
    await clock.sleep(rnd() * 1_000);
    while (clock.now() < end) {
      const stream = rnd() < 0.5;
      for (let attempt = 0; attempt < 3 && clock.now() < end; attempt++) {
        const got = await attemptOnce(priority, `a${a}`, stream);
        if (got === 'done' || got === 'failed') break;
        if (attempt < 2) await clock.sleep(got.retryAfterMs);
      }
      await clock.sleep(rnd() * 1_000);
    }
  });
  const work = Promise.all(agents).then(() => stop.abort());
  await clock.drive(Promise.all([work, dispatching]));
  // Grants handed back because their ingress saw them too late to call on (requeued at a later attempt).
  const requeued = [...tickets.tickets.values()].filter((t) => t.attempt > 0).length;
  return { refusals, completed, requeued, minutes: durationMs / 60_000 };
};

describe('time to refusal under heavy overload (simulated)', () => {
  it.each([
    ['calls of 4 s: urgent takes nearly every grant', 4_000],
    ['calls of 6 s: urgent leaves high a share', 6_000],
  ])(
    '%s: refused at once after the first seconds, within 20 s in them; the whole allowance used',
    async (_n, callMs) => {
      const { refusals, completed, minutes } = await simulate(150_000, callMs);
      // The first seconds of a dispatcher run: the load of more important work is not known yet, so less important
      // requests are let in on the queued counts alone and refused once it is (MIN_OBSERVED_INTERVALS in).
      const steady = refusals.filter((r) => r.at >= 15_000);
      const show = (rs: Refusal[]) =>
        rs.map((r) => `${r.priority} ${r.code} sent at ${Math.round(r.at)} ms, after ${Math.round(r.ms)} ms`);
      expect(steady.length).toBeGreaterThan(100);
      expect(show(steady.filter((r) => r.ms > 1_000))).toEqual([]);
      // In the first seconds, grants that drain the backlog queued before the dispatcher's run are not read as load
      // until tickets that arrived during the run wait too (its agents came back): a one-off burst of urgent work
      // must not refuse less important requests it delays for seconds only (test/e2e/priority.test.ts).
      expect(show(refusals.filter((r) => r.ms > 20_000))).toEqual([]);
      // Before: in 2 minutes 140 refusals after the first 20 s took over 1 s (p99 540 s, 21 % after > 10 s); with the
      // load measured from arrivals alone, the first normal requests were kept and refused 15–52 s later.
      const perMinute = Object.values(completed).reduce((a, b) => a + b, 0) / minutes;
      expect(perMinute).toBeGreaterThanOrEqual(38);
    },
    300_000,
  );

  it('weighted shares: every grant is seen within its slack (none handed back), no refusal after > 10 s', async () => {
    // Under weighted shares a grant comes well before its estimate whenever a more heavily weighted priority runs
    // dry for a moment; a far read (every 5 s) found it past its slack, the grant went back to the queue and the
    // window log carried the lost slot on (38.8 completed per minute in the 1x bench, 39.2 under strict order).
    const { refusals, requeued } = await simulate(180_000, 4_000, 'weighted');
    expect(requeued).toBe(0);
    expect(refusals.length).toBeGreaterThan(10);
    expect(
      refusals.filter((r) => r.ms > 10_000).map((r) => `${r.priority} after ${Math.round(r.ms)} ms`),
    ).toEqual([]);
  }, 300_000);
});
