// Crashes, simulated by driving the domain objects with the real DynamoDB and SQS adapters and "killing" them at
// a chosen step (every later call of the killed process never returns, as if its Lambda were frozen): a
// dispatcher killed after a grant and before deleting the message, or while it holds the lease; an ingress killed
// after a grant before claiming, after claiming before the upstream answers, or while its ticket is queued.
// No ticket is granted twice, nothing is lost, tokens are spent only on claimed work, a successor takes over
// within the lease time, and stale grants and calls are swept to terminal states.
import { randomUUID } from 'node:crypto';
import { SetQueueAttributesCommand } from '@aws-sdk/client-sqs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Admission } from '../../lib/domain/admission.js';
import { Dispatcher, type DispatcherDeps, type DispatcherTimings } from '../../lib/domain/dispatcher.js';
import { GRANT_TO_CALL_MAX_MS } from '../../lib/domain/gcra.js';
import type { Priority } from '../../lib/domain/priority.js';
import { isTerminal, type Ticket } from '../../lib/domain/tickets.js';
import { makeClients } from '../../lib/runtime/clients.js';
import { readRuntimeEnv } from '../../lib/runtime/env.js';
import { type GatewayStores, gatewayStores } from '../../local/gateway-stores.js';
import { type TestResources, testResources, testSqsClient } from '../support/aws.js';
import { envFor } from '../support/stores.js';
import { report, sleep } from './support.js';

const TIMINGS: Partial<DispatcherTimings> = {
  leaseMs: 3_000,
  claimWindowMs: 2_000,
  sweepEveryMs: 500,
  idleStopMs: 1_500,
  pollWaitSeconds: 1,
};
const quiet = { info: () => {}, warn: () => {}, error: () => {} };

/** A kill switch: once pulled, every call through a wrapped object never settles (the process is gone). */
class Kill {
  dead = false;
  wrap<T extends object>(target: T): T {
    return new Proxy(target, {
      get: (obj, prop, receiver) => {
        const value = Reflect.get(obj, prop, receiver);
        if (typeof value !== 'function') return value;
        return (...args: unknown[]) => {
          if (this.dead) return new Promise(() => {});
          const out = value.apply(obj, args);
          if (!(out instanceof Promise)) return out;
          return out.then(
            (v) => (this.dead ? new Promise(() => {}) : v),
            (e) => (this.dead ? new Promise(() => {}) : Promise.reject(e)),
          );
        };
      },
    });
  }
}

interface Ctx {
  res: TestResources;
  stores: GatewayStores;
  clients: ReturnType<typeof makeClients>;
  admission: Admission;
  /** Successful grant transactions per ticket, over every dispatcher of the test. */
  grants: Map<string, number>;
}

const setup = async (name: string, extra: Record<string, string>): Promise<Ctx> => {
  const res = await testResources(name);
  const processEnv = envFor(res, extra);
  const env = readRuntimeEnv(processEnv);
  const clients = makeClients(env);
  const stores = gatewayStores(env, clients, processEnv);
  await stores.config.seed();
  // A killed dispatcher's buffered messages come back after the visibility timeout (30 s in production): 4 s here.
  const sqs = testSqsClient();
  for (const url of Object.values(res.names.queueUrls))
    await sqs.send(new SetQueueAttributesCommand({ QueueUrl: url, Attributes: { VisibilityTimeout: '4' } }));
  sqs.destroy();
  const admission = new Admission({ ...stores, wakeDispatcher: async () => {} });
  return { res, stores, clients, admission, grants: new Map() };
};

const teardown = (ctx: Ctx | undefined) => {
  ctx?.clients.dynamo.destroy();
  ctx?.clients.sqs.destroy();
  ctx?.res.close();
};

/**
 * A dispatcher over the context's stores; `kill` wraps its I/O so a pulled switch freezes it; `onGranted` runs
 * after each successful grant transaction (before the dispatcher goes on).
 */
const dispatcher = (ctx: Ctx, opts: { kill?: Kill; onGranted?: (id: string) => void } = {}) => {
  const w = <T extends object>(o: T) => (opts.kill ? opts.kill.wrap(o) : o);
  const inner = ctx.stores.tickets;
  const tickets = w(
    Object.assign(Object.create(inner) as typeof inner, {
      grant: async (...args: Parameters<typeof inner.grant>) => {
        const out = await inner.grant(...args);
        if (out.kind === 'granted') {
          ctx.grants.set(args[0].id, (ctx.grants.get(args[0].id) ?? 0) + 1);
          opts.onGranted?.(args[0].id);
        }
        return out;
      },
      // Batches (plain GCRA buckets) count each of their tickets; `onGranted` runs once the batch committed.
      grantBatch: async (...args: Parameters<typeof inner.grantBatch>) => {
        const out = await inner.grantBatch(...args);
        if (out.kind === 'granted') {
          for (const t of args[0]) ctx.grants.set(t.id, (ctx.grants.get(t.id) ?? 0) + 1);
          for (const t of args[0]) opts.onGranted?.(t.id);
        }
        return out;
      },
    }),
  );
  const deps: DispatcherDeps = {
    ...ctx.stores,
    tickets,
    queue: w(ctx.stores.queue),
    lease: w(ctx.stores.lease),
    bucket: w(ctx.stores.bucket),
    outcomes: w(ctx.stores.outcomes),
    clock: w(ctx.stores.clock),
    wakeSuccessor: async () => {},
    owner: `dispatcher-${randomUUID().slice(0, 8)}`,
    log: quiet,
  };
  return new Dispatcher(deps, TIMINGS);
};

const admit = async (ctx: Ctx, priority: Priority = 'normal', waitMs = 30_000, idempotencyKey?: string) => {
  const config = await ctx.stores.config.config();
  const { ticket } = await ctx.admission.admit(
    {
      agent: `agent-${randomUUID().slice(0, 4)}`,
      priority,
      model: 'meta/x',
      stream: false,
      deadline: Date.now() + waitMs,
      ...(idempotencyKey ? { idempotencyKey } : {}),
    },
    config,
  );
  return ticket;
};

/** Runs successor dispatchers until `done` holds (each run gives up while another holds the lease). */
const runUntil = async (ctx: Ctx, done: () => Promise<boolean>, timeoutMs: number) => {
  const until = Date.now() + timeoutMs;
  let firstRunAt: number | undefined;
  while (Date.now() < until) {
    const summary = await dispatcher(ctx).run(Date.now() + 3_000);
    // When the first successor took the lease (the item keeps acquiredAt after a release).
    if (summary.ran) firstRunAt ??= (await ctx.stores.lease.get()).acquiredAt;
    if (await done()) return { firstRunAt };
    if (!summary.ran) await sleep(250);
  }
  throw new Error('successors did not finish in time');
};

const statuses = async (ctx: Ctx, ids: string[]) =>
  Promise.all(ids.map(async (id) => (await ctx.stores.tickets.get(id)) as Ticket));

const allTerminal = (ctx: Ctx, ids: string[]) => async () =>
  (await statuses(ctx, ids)).every((t) => isTerminal(t.status));

describe('dispatcher killed', () => {
  let ctx: Ctx;
  beforeAll(async () => {
    ctx = await setup('rel-crash-dispatcher', { SLUICE_UPSTREAM_LIMIT: '600', SLUICE_BUCKET_BURST: '5' });
  });
  afterAll(() => teardown(ctx));

  it('after granting and before deleting the message: no double grant, successor within the lease time, stale grants swept', async () => {
    const ids = [(await admit(ctx)).id, (await admit(ctx)).id, (await admit(ctx)).id];
    const kill = new Kill();
    const stop = new AbortController();
    let killedAt = 0;
    const d1 = dispatcher(ctx, {
      kill,
      onGranted: () => {
        // Dies right after its first grant committed: the message is never deleted, the lease never released.
        kill.dead = true;
        killedAt = Date.now();
        stop.abort();
      },
    });
    void d1.run(Date.now() + 60_000, stop.signal);
    await eventuallyTrue(async () => killedAt > 0, 10_000);

    const { firstRunAt } = await runUntil(ctx, allTerminal(ctx, ids), 40_000);
    const takeoverMs = firstRunAt! - killedAt;
    // The successor got the lease once the dead one's lease ran out (3 s), not a lease period later (generous
    // for a loaded 2-core machine: under two lease periods).
    expect(takeoverMs).toBeLessThan(2 * TIMINGS.leaseMs!);
    // Each ticket was granted exactly once, although the killed one's message came back.
    expect(ids.map((id) => ctx.grants.get(id))).toEqual([1, 1, 1]);
    // Nobody claimed the grants (no ingress in this test): all swept, none left granted.
    const ended = await statuses(ctx, ids);
    expect(ended.map((t) => [t.status, t.reason])).toEqual(
      ids.map(() => ['failed', 'ingress_lost_before_claim']),
    );
    expect(await ctx.stores.tickets.counts()).toEqual({ queued: 0, inflight: 0 });
    report('dispatcher killed after grant', { takeoverMs, grants: ids.map((id) => ctx.grants.get(id)) });
  });

  it('while holding the lease: a successor takes over within the lease time and serves new work', async () => {
    const kill = new Kill();
    const stop = new AbortController();
    const d1 = dispatcher(ctx, { kill });
    void d1.run(Date.now() + 60_000, stop.signal);
    await eventuallyTrue(async () => (await ctx.stores.lease.get()).owner !== undefined, 5_000);
    await sleep(300);
    kill.dead = true;
    stop.abort();
    const killedAt = Date.now();
    const t = await admit(ctx, 'urgent');
    const { firstRunAt } = await runUntil(
      ctx,
      async () => (await ctx.stores.tickets.get(t.id))?.status !== 'queued',
      20_000,
    );
    expect(firstRunAt! - killedAt).toBeLessThan(2 * TIMINGS.leaseMs!);
    expect(ctx.grants.get(t.id)).toBe(1);
    report('dispatcher killed holding the lease', { takeoverMs: firstRunAt! - killedAt });
  });
});

describe('ingress killed', () => {
  let ctx: Ctx;
  // A slow bucket (one token per 20 s, burst 1): a refund is visible as a token free at once.
  beforeAll(async () => {
    ctx = await setup('rel-crash-ingress', {
      SLUICE_UPSTREAM_LIMIT: '4',
      SLUICE_UPSTREAM_WINDOW_S: '60',
      SLUICE_BUCKET_BURST: '1',
      SLUICE_RETREAT_FLOOR_RPM: '1',
      SLUICE_REQUEST_TIMEOUT_S: '1',
    });
  });
  afterAll(() => teardown(ctx));

  it('after a grant, before claiming: the grant is swept to failed and its token refunded', async () => {
    const t = await admit(ctx, 'urgent');
    await runUntil(ctx, async () => (await ctx.stores.tickets.get(t.id))?.status === 'granted', 10_000);
    const spent = (await ctx.stores.bucket.refresh())!;
    expect(spent.tat! - Date.now()).toBeGreaterThan(10_000);
    // The ingress is gone: nobody claims. The sweep fails the grant after claimBy and gives the token back.
    await runUntil(ctx, async () => isTerminal((await ctx.stores.tickets.get(t.id))!.status), 15_000);
    expect(await ctx.stores.tickets.get(t.id)).toMatchObject({
      status: 'failed',
      reason: 'ingress_lost_before_claim',
    });
    const after = (await ctx.stores.bucket.refresh())!;
    // Back near now, not 10+ s ahead (margin for a loaded machine).
    expect(after.tat!).toBeLessThanOrEqual(Date.now() + 4_000);
    // So the next request is granted at once rather than 20 s later.
    const next = await admit(ctx, 'urgent');
    const started = Date.now();
    await runUntil(ctx, async () => (await ctx.stores.tickets.get(next.id))?.status === 'granted', 10_000);
    expect(Date.now() - started).toBeLessThan(10_000);
    // Its agent leaves before the call: the token comes back again (for the next test).
    await ctx.admission.abandonGrant((await ctx.stores.tickets.get(next.id))!, 'client_disconnected');
    expect((await ctx.stores.tickets.get(next.id))?.status).toBe('abandoned');
  });

  it('a grant seen too late (a slow ingress): requeued at its place with its token back, then granted afresh', async () => {
    const t = await admit(ctx, 'urgent');
    await runUntil(ctx, async () => (await ctx.stores.tickets.get(t.id))?.status === 'granted', 10_000);
    const granted = (await ctx.stores.tickets.get(t.id))!;
    // The ingress was frozen past GRANT_TO_CALL_MAX_MS: calling now could push a window of calls over the limit.
    await sleep(GRANT_TO_CALL_MAX_MS);
    expect(ctx.admission.isStale(granted)).toBe(true);
    const requeued = await ctx.admission.requeueStale(granted);
    expect(requeued).toMatchObject({ status: 'queued', attempt: 1, enqueuedAt: t.enqueuedAt });
    // The token came back, so the new grant does not wait 20 s for the next one.
    const started = Date.now();
    await runUntil(
      ctx,
      async () => {
        const now = await ctx.stores.tickets.get(t.id);
        return now?.status === 'granted' && now.attempt === 1;
      },
      10_000,
    );
    expect(Date.now() - started).toBeLessThan(10_000);
    const fresh = (await ctx.stores.tickets.get(t.id))!;
    expect(fresh.grantedAt!).toBeGreaterThan(granted.grantedAt! + GRANT_TO_CALL_MAX_MS);
    // Its agent goes away before the call: the token comes back for the next test.
    await ctx.admission.abandonGrant(fresh, 'client_disconnected');
  });

  it('after claiming, before the upstream answers: swept to failed after claimBy, the token stays spent', async () => {
    const t = await admit(ctx, 'urgent');
    await runUntil(ctx, async () => (await ctx.stores.tickets.get(t.id))?.status === 'granted', 10_000);
    const granted = (await ctx.stores.tickets.get(t.id))!;
    // The ingress claims (it is starting the call) and dies before the answer: claimBy = now + 2 s.
    expect(await ctx.admission.claim(granted, Date.now() + 2_000)).toBeTruthy();
    const tatAtClaim = (await ctx.stores.bucket.refresh())!.tat!;
    await runUntil(ctx, async () => isTerminal((await ctx.stores.tickets.get(t.id))!.status), 15_000);
    expect(await ctx.stores.tickets.get(t.id)).toMatchObject({
      status: 'failed',
      reason: 'ingress_lost_during_call',
    });
    // The call may have reached the upstream: no refund.
    expect((await ctx.stores.bucket.refresh())!.tat).toBe(tatAtClaim);
    expect(await ctx.stores.tickets.counts()).toEqual({ queued: 0, inflight: 0 });
  });

  it('while its ticket is queued (the function timed out or froze): expired at the deadline, no token', async () => {
    // The claimed call above spent the only token for 20 s: the ticket cannot be granted before its deadline.
    const tatBefore = (await ctx.stores.bucket.refresh())!.tat!;
    // Fail fast refuses such a request at admission, writing nothing.
    await expect(admit(ctx, 'urgent', 2_500)).rejects.toMatchObject({
      status: 429,
      code: 'queue_wait_exceeded',
    });
    // One that skips the estimate (an Idempotency-Key may attach to a waiting ticket) still queues: the crash case.
    const t = await admit(ctx, 'urgent', 2_500, randomUUID());
    // Nobody waits for it. The dispatcher meets its message past the deadline.
    await sleep(3_000);
    await runUntil(ctx, async () => isTerminal((await ctx.stores.tickets.get(t.id))!.status), 10_000);
    const ended = (await ctx.stores.tickets.get(t.id))!;
    expect(ended.status === 'expired' || ended.status === 'failed').toBe(true);
    if (ended.status === 'expired') {
      expect(ended.reason).toBe('deadline');
      expect((await ctx.stores.bucket.refresh())!.tat).toBe(tatBefore);
    } else {
      expect(ended.reason).toBe('ingress_lost_before_claim');
    }
    expect(await ctx.stores.tickets.counts()).toEqual({ queued: 0, inflight: 0 });
  });
});

const eventuallyTrue = async (check: () => Promise<boolean>, timeoutMs: number) => {
  const until = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > until) throw new Error('condition not met in time');
    await sleep(50);
  }
};
