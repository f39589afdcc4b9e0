// Tokens per minute, on memory stores and a fake clock: a grant handed back before its call (requeued as stale,
// refused as paused, abandoned by its client, swept unclaimed, handed back at the send) gives its token reservation
// back with its request token; a call the upstream answered 429 keeps it (providers count failed requests). And a
// ticket the token window has no room for before its deadline is refused when the dispatcher sees it, not then.
import { describe, expect, it } from 'vitest';
import { MemoryBucketStore, MemoryConfigStore } from '../../lib/adapters/memory/stores.js';
import { MemoryTicketStore } from '../../lib/adapters/memory/tickets.js';
import { TokenBucket } from '../../lib/domain/bucket.js';
import { FakeClock } from '../../lib/domain/clock.js';
import { configFromEnv } from '../../lib/domain/config.js';
import { ConfigService } from '../../lib/domain/config-service.js';
import type { DispatcherDeps } from '../../lib/domain/dispatcher.js';
import { bucketParamsFor } from '../../lib/domain/retreat-controller.js';
import type { Ticket } from '../../lib/domain/tickets.js';
import { tokenNeed, tokensInWindow } from '../../lib/domain/token-window.js';
import { memoryGateway } from '../support/memory-gateway.js';

const ESTIMATE = 300;
const TPM = 1_000;

const setup = async () => {
  const clock = new FakeClock();
  const config = configFromEnv({ SLUICE_UPSTREAM_TPM: String(TPM) });
  const store = new MemoryBucketStore();
  let paused = false;
  const tickets = new MemoryTicketStore(store, () => paused);
  const bucket = new TokenBucket(store, clock, { fraction: 0.5, forNormal: false });
  await bucket.configure(bucketParamsFor({ effectiveRpm: config.upstreamLimit }, config));
  const { queue, admission, newDispatcher } = memoryGateway({
    clock,
    tickets,
    bucket,
    config: new ConfigService(
      new MemoryConfigStore({ config, version: 1, updatedAt: clock.now(), updatedBy: 'test' }),
      clock,
      config,
    ),
  });
  const need = (t: Pick<Ticket, 'upstream' | 'tokens'>) => tokenNeed(config, t.upstream, t.tokens);
  /** Admits a ticket with ESTIMATE tokens and grants it as the dispatcher would: the reservation in the grant. */
  const admitted = async (tokens: number, deadlineMs: number): Promise<Ticket> =>
    (
      await admission.admit(
        {
          agent: 'a',
          priority: 'normal',
          model: 'm',
          stream: false,
          deadline: clock.now() + deadlineMs,
          tokens,
        },
        config,
      )
    ).ticket;
  const granted = async (slotAheadMs = 0, tokens = ESTIMATE): Promise<Ticket> => {
    const { ticket } = await admission.admit(
      {
        agent: 'a',
        priority: 'normal',
        model: 'm',
        stream: false,
        deadline: clock.now() + 30_000,
        tokens,
      },
      config,
    );
    const plan = bucket.planAt('normal', clock.now() + slotAheadMs, need(ticket));
    if ('waitMs' in plan) throw new Error('no room for the grant');
    const grantedAt = plan.attempt.now;
    const res = await tickets.grant(ticket, plan.attempt, { grantedAt, claimBy: grantedAt + 15_000 });
    expect(res.kind).toBe('granted');
    bucket.spent(plan.attempt);
    return (await tickets.get(ticket.id))!;
  };
  const claimed = async (t: Ticket): Promise<Ticket> => {
    const res = await tickets.transition(t.id, 'granted', 'claimed', { claimedAt: clock.now() });
    if (!('ticket' in res)) throw new Error('claim failed');
    return res.ticket;
  };
  /** Tokens the upstream's item counts now, and its request log's length. */
  const counted = () => ({
    tokens: tokensInWindow(store.state?.tokens?.entries ?? [], clock.now(), 61_000),
    requests: store.state?.log?.length ?? 0,
  });
  const untilClaimed = (t: Ticket, signal = new AbortController().signal) =>
    admission.untilClaimed(t, {
      signal,
      passthrough: false,
      windowMs: config.upstreamWindowMs,
      grantSlackMs: config.grantSlackMs,
      tokensOf: need,
      callBudgetMs: 65_000,
      intervalMs: async () => 1_500,
    });
  const dispatcherRun = async (hook?: DispatcherDeps['onTokens'], runMs = 10_000) => {
    // Its first loop sweeps; nothing queued is visible (the messages were taken), so it stops idle.
    await newDispatcher(hook ? { onTokens: hook } : {}).run(clock.now() + runMs);
  };
  return {
    clock,
    config,
    store,
    tickets,
    queue,
    admission,
    need,
    admitted,
    granted,
    claimed,
    counted,
    untilClaimed,
    dispatcherRun,
    pause: () => {
      paused = true;
    },
  };
};

type Setup = Awaited<ReturnType<typeof setup>>;

describe('a grant handed back before its call gives its token reservation back', () => {
  it.each<[string, (s: Setup) => Promise<string | undefined>]>([
    [
      'requeued as stale when the waiting request sees it too late',
      async (s) => {
        const t = await s.granted();
        s.clock.advance(s.config.grantSlackMs + 500);
        await s.untilClaimed({ ...t, status: 'queued' });
        // Requeued once (then it waited out its deadline: nobody grants here).
        return (await s.tickets.get(t.id))?.attempt === 1 ? 'requeued' : undefined;
      },
    ],
    [
      'refused at the claim as paused',
      async (s) => {
        const t = await s.granted();
        s.pause();
        await s.untilClaimed({ ...t, status: 'queued' });
        // Requeued once (then it waited out its deadline: nobody grants here).
        return (await s.tickets.get(t.id))?.attempt === 1 ? 'requeued' : undefined;
      },
    ],
    [
      'abandoned by its client before the slot',
      async (s) => {
        const t = await s.granted(500);
        const gone = new AbortController();
        gone.abort();
        await s.untilClaimed({ ...t, status: 'queued' }, gone.signal);
        return (await s.tickets.get(t.id))?.reason;
      },
    ],
    [
      'handed back at the send (older than the send share of the slack)',
      async (s) => {
        const c = await s.claimed(await s.granted());
        s.clock.advance(s.config.grantSlackMs);
        const gate = await s.admission.beforeSend(c, {
          windowMs: s.config.upstreamWindowMs,
          grantSlackMs: s.config.grantSlackMs,
          tokens: s.need(c),
        });
        expect(gate).not.toBe('send');
        return (await s.tickets.get(c.id))?.reason;
      },
    ],
    [
      'swept: nobody claimed it',
      async (s) => {
        const t = await s.granted();
        s.clock.advance(16_000);
        await s.dispatcherRun();
        return (await s.tickets.get(t.id))?.reason;
      },
    ],
  ])('%s', async (_name, handBack) => {
    const s = await setup();
    // Another call, made: its reservation stays whatever happens to the one handed back.
    await s.claimed(await s.granted());
    expect(s.counted()).toEqual({ tokens: ESTIMATE, requests: 1 });
    const reason = await handBack(s);
    expect(reason).toMatch(/requeued|grant_stale_at_send|client_disconnected|ingress_lost_before_claim/);
    // The other grant's reservation and request stay; the handed-back one's are gone.
    expect(s.counted()).toEqual({ tokens: ESTIMATE, requests: 1 });
  });

  it('a call the upstream answered 429 keeps its reservation (providers count failed requests)', async () => {
    const s = await setup();
    const c = await s.claimed(await s.granted());
    expect(await s.admission.requeue(c, 'upstream_429')).toBeDefined();
    expect(s.counted()).toEqual({ tokens: ESTIMATE, requests: 1 });
  });

  it('the freed room is granted again: a second estimate fits once the first is handed back', async () => {
    const s = await setup();
    const t = await s.granted(0, 600);
    // 600 + 600 > 1000: no room for another until the first leaves the window…
    const probe = { tokens: 600 };
    const bucket = new TokenBucket(s.store, s.clock, { fraction: 0.5, forNormal: false });
    await bucket.refresh();
    expect('waitMs' in bucket.plan('urgent', s.need(probe))).toBe(true);
    s.clock.advance(s.config.grantSlackMs + 500);
    await s.untilClaimed({ ...t, status: 'queued' });
    // …and at once after its hand-back.
    await bucket.refresh();
    expect('attempt' in bucket.plan('urgent', s.need(probe))).toBe(true);
  });

  it('the dispatcher reports the tokens held in the window at its retreat evaluation (the metric), from the item it read', async () => {
    const s = await setup();
    await s.claimed(await s.granted());
    const reported: [string | undefined, number, number][] = [];
    await s.dispatcherRun((upstream, inWindow, tpm) => reported.push([upstream, inWindow, tpm]));
    expect(reported[0]).toEqual([undefined, ESTIMATE, TPM]);
  });
});

describe('tokens per minute: a ticket the window has no room for before its deadline', () => {
  it.each([
    // its deadline → refused at once (no room until the 900-token call leaves the window, ~61 s on) / granted then
    ['20 s: refused when the dispatcher first sees it', 20_000, 'rejected'],
    ['120 s: waits and is granted when the room comes', 120_000, 'granted'],
  ])('%s', async (_name, deadlineMs, expected) => {
    const s = await setup();
    await s.claimed(await s.granted(0, 900));
    const t = await s.admitted(300, deadlineMs);
    const admittedAt = s.clock.now();
    await s.dispatcherRun(undefined, 150_000);
    const after = (await s.tickets.get(t.id))!;
    if (expected === 'rejected') {
      expect(after).toMatchObject({ status: 'rejected', reason: 'wait_exceeds_deadline' });
      // When the dispatcher first held it, not at its deadline; told to come back when the room comes.
      expect(after.finishedAt! - admittedAt).toBeLessThan(2_000);
      expect(after.retryAfterMs).toBeGreaterThan(55_000);
    } else {
      expect(after.grantedAt! - admittedAt).toBeGreaterThan(55_000);
    }
  });
});
