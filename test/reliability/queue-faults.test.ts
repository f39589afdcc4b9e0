// SQS faults: send, receive and delete failing (through a fault proxy in front of fauxqs), a message delivered
// twice, a message whose ticket is missing, and a poison message. No ticket is granted twice, no token is spent
// on a message without a queued ticket, poison reaches the DLQ, and every ticket ends in a terminal state.
import { randomUUID } from 'node:crypto';
import {
  ReceiveMessageCommand,
  SendMessageCommand,
  SetQueueAttributesCommand,
  type SQSClient,
} from '@aws-sdk/client-sqs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Admission } from '../../lib/domain/admission.js';
import { Dispatcher } from '../../lib/domain/dispatcher.js';
import type { TicketStore } from '../../lib/domain/ports.js';
import { messageFor } from '../../lib/domain/tickets.js';
import { makeClients } from '../../lib/runtime/clients.js';
import { readRuntimeEnv } from '../../lib/runtime/env.js';
import { type GatewayStores, gatewayStores } from '../../local/gateway-stores.js';
import { type TestResources, testResources, testSqsClient } from '../support/aws.js';
import { envFor } from '../support/stores.js';
import { allTickets } from '../support/system.js';
import { call, expectInvariants, type FaultySystem, report, sleep, startFaultySystem } from './support.js';

describe('SQS failing under the running system', () => {
  let f: FaultySystem;
  let key: string;
  let sqs: SQSClient;

  beforeAll(async () => {
    f = await startFaultySystem('rel-queue', {
      fakeUpstream: { tokenDelayMs: 5, firstByteDelayMs: 5, limit: null },
      env: {
        SLUICE_UPSTREAM_LIMIT: '600',
        SLUICE_BUCKET_BURST: '5',
        SLUICE_MAX_WAIT_S: '10',
        SLUICE_REQUEST_TIMEOUT_S: '2',
        SLUICE_AWS_REQUEST_TIMEOUT_MS: '1000',
      },
      dispatcherTimings: { sweepEveryMs: 500, claimWindowMs: 4_000, leaseMs: 3_000, pollWaitSeconds: 1 },
      scheduleMs: 2_000,
    });
    // A quota of its own keeps every request on the queued path (the fast path grants at admission, no SQS).
    key = await f.system.createKey('queue-faults', 'urgent', { rpm: 6_000 });
    // A short visibility timeout, so a message whose delete failed comes back within the test.
    sqs = testSqsClient();
    await sqs.send(
      new SetQueueAttributesCommand({
        QueueUrl: f.system.env.SLUICE_QUEUE_NORMAL_URL,
        Attributes: { VisibilityTimeout: '2' },
      }),
    );
  });

  afterAll(async () => {
    f.sqs.clear();
    try {
      await expectInvariants(f.system, expect);
    } finally {
      sqs?.destroy();
      await f?.stop();
    }
  });

  it('SendMessage failing: 503 queue_unavailable and the ticket ends failed (enqueue_failed), not queued', async () => {
    const before = new Set((await allTickets(f.system)).map((t) => t.id));
    const remove = f.sqs.add({
      name: 'send',
      match: (c) => c.action === 'SendMessage',
      fault: { kind: 'status', status: 500, type: 'InternalError' },
    });
    const reply = await call(f.system, key).finally(remove);
    expect(reply.status).toBe(503);
    expect(reply.error?.code).toBe('queue_unavailable');
    expect(Number(reply.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    const mine = (await allTickets(f.system)).filter((t) => !before.has(t.id));
    expect(mine).toEqual([expect.objectContaining({ status: 'failed', reason: 'enqueue_failed' })]);
    expect((await f.system.stores.tickets.counts()).queued).toBe(0);
  });

  it('SendMessage delivered but its answer lost: 503, and the stray copies are skipped without a token', async () => {
    const before = new Set((await allTickets(f.system)).map((t) => t.id));
    const calls = f.system.upstream!.calls.length;
    const tatBefore = (await f.system.stores.bucket.refresh())?.tat;
    const remove = f.sqs.add({
      name: 'send-lost',
      match: (c) => c.action === 'SendMessage',
      fault: { kind: 'status', status: 500, type: 'InternalError' },
      afterForward: true,
    });
    const reply = await call(f.system, key).finally(remove);
    expect(reply.status).toBe(503);
    // The SDK's 3 attempts each left a message; the dispatcher meets a failed ticket three times.
    await sleep(3_000);
    // Tokens come every 100 ms here: a grant of a stray copy would have moved the bucket and the ticket.
    expect((await f.system.stores.bucket.refresh())?.tat).toBe(tatBefore);
    const mine = (await allTickets(f.system)).filter((t) => !before.has(t.id));
    expect(mine).toEqual([
      expect.objectContaining({ status: 'failed', reason: 'enqueue_failed', attempt: 0 }),
    ]);
    expect(mine[0]?.grantedAt).toBeUndefined();
    expect(f.system.upstream!.calls.length).toBe(calls);
  });

  it('ReceiveMessage failing for 2 s: the dispatcher keeps polling and serves the request', async () => {
    const remove = f.sqs.add({
      name: 'receive',
      match: (c) => c.action === 'ReceiveMessage',
      fault: { kind: 'status', status: 503, type: 'ServiceUnavailable' },
    });
    const pending = call(f.system, key);
    await sleep(2_000);
    remove();
    expect((await pending).status).toBe(200);
  });

  it('DeleteMessage failing: served once; the message comes back and is deleted without a second grant', async () => {
    const before = new Set((await allTickets(f.system)).map((t) => t.id));
    const calls = f.system.upstream!.calls.length;
    const remove = f.sqs.add({
      name: 'delete',
      match: (c) => c.action === 'DeleteMessage',
      fault: { kind: 'status', status: 500, type: 'InternalError' },
    });
    const reply = await call(f.system, key);
    expect(reply.status).toBe(200);
    remove();
    // The undeleted message reappears after the 2 s visibility timeout and is deleted as a conflict.
    await sleep(4_000);
    const mine = (await allTickets(f.system)).filter((t) => !before.has(t.id));
    expect(mine).toEqual([expect.objectContaining({ status: 'completed', attempt: 0 })]);
    expect(f.system.upstream!.calls.length).toBe(calls + 1);
    report('sqs delete failing', { deleteFaults: f.sqs.injected.get('delete') });
  });
});

describe('odd messages, with the real adapters', () => {
  let res: TestResources;
  let stores: GatewayStores;
  let admission: Admission;
  let clients: ReturnType<typeof makeClients>;

  /** Counts successful grant transactions per ticket. */
  const granted = new Map<string, number>();

  beforeAll(async () => {
    res = await testResources('rel-odd-messages');
    const processEnv = envFor(res, { SLUICE_UPSTREAM_LIMIT: '600', SLUICE_BUCKET_BURST: '5' });
    const env = readRuntimeEnv(processEnv);
    clients = makeClients(env);
    stores = gatewayStores(env, clients, processEnv);
    await stores.config.seed();
    admission = new Admission({ ...stores, wakeDispatcher: async () => {} });
  });

  afterAll(() => {
    clients?.dynamo.destroy();
    clients?.sqs.destroy();
    res?.close();
  });

  const run = async () => {
    const inner = stores.tickets;
    const tickets: TicketStore = Object.assign(Object.create(inner) as TicketStore, {
      grant: async (...args: Parameters<TicketStore['grant']>) => {
        const out = await inner.grant(...args);
        if (out.kind === 'granted') granted.set(args[0].id, (granted.get(args[0].id) ?? 0) + 1);
        return out;
      },
      // Batches (plain GCRA buckets) count each of their tickets.
      grantBatch: async (...args: Parameters<TicketStore['grantBatch']>) => {
        const out = await inner.grantBatch(...args);
        if (out.kind === 'granted') for (const t of args[0]) granted.set(t.id, (granted.get(t.id) ?? 0) + 1);
        return out;
      },
    });
    const dispatcher = new Dispatcher(
      {
        ...stores,
        tickets,
        wakeSuccessor: async () => {},
        owner: `odd-${randomUUID()}`,
        log: { info: () => {}, warn: () => {}, error: () => {} },
      },
      { idleStopMs: 2_000, pollWaitSeconds: 1 },
    );
    return dispatcher.run(Date.now() + 20_000);
  };

  it('a message delivered twice: granted once, the copy skipped', async () => {
    const config = await stores.config.config();
    const { ticket } = await admission.admit(
      { agent: 'dup', priority: 'normal', model: 'meta/x', stream: false, deadline: Date.now() + 30_000 },
      config,
    );
    await stores.queue.send(messageFor(ticket));
    const summary = await run();
    expect(granted.get(ticket.id)).toBe(1);
    expect(summary.skipped).toBeGreaterThanOrEqual(1);
    expect(await stores.tickets.get(ticket.id)).toMatchObject({ status: 'granted', attempt: 0 });
  });

  it('a message whose ticket is missing: skipped and deleted, no token spent', async () => {
    const tatBefore = (await stores.bucket.refresh())?.tat;
    const missing = randomUUID();
    await stores.queue.send({
      ticketId: missing,
      attempt: 0,
      priority: 'high',
      agent: 'ghost',
      enqueuedAt: Date.now(),
      deadline: Date.now() + 30_000,
    });
    const summary = await run();
    expect(summary, JSON.stringify(summary)).toMatchObject({ granted: 0, skipped: 1 });
    expect(granted.has(missing)).toBe(false);
    expect((await stores.bucket.refresh())?.tat).toBe(tatBefore);
    expect(await stores.queue.depth('high')).toEqual({ visible: 0, inFlight: 0 });
  });

  it('a poison message (not JSON) reaches the DLQ and blocks nothing', async () => {
    const sqs = testSqsClient();
    try {
      await sqs.send(
        new SendMessageCommand({ QueueUrl: res.names.queueUrls.low, MessageBody: 'not json {' }),
      );
      const config = await stores.config.config();
      const { ticket } = await admission.admit(
        {
          agent: 'after-poison',
          priority: 'low',
          model: 'meta/x',
          stream: false,
          deadline: Date.now() + 30_000,
        },
        config,
      );
      await run();
      expect((await stores.tickets.get(ticket.id))?.status).toBe('granted');
      const started = Date.now();
      let body: string | undefined;
      while (!body && Date.now() - started < 15_000) {
        const got = await sqs.send(
          new ReceiveMessageCommand({
            QueueUrl: res.dlqUrls.low,
            MaxNumberOfMessages: 1,
            WaitTimeSeconds: 1,
          }),
        );
        body = got.Messages?.[0]?.Body;
        if (!body) await run();
      }
      expect(body).toBe('not json {');
      expect(await stores.queue.depth('low')).toEqual({ visible: 0, inFlight: 0 });
      report('poison message', { dlqAfterMs: Date.now() - started });
    } finally {
      sqs.destroy();
    }
  });
});
