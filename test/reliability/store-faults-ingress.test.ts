// DynamoDB faults on each ingress call site (throttling, 5xx, timeouts, resets injected by a proxy in front of
// DynamoDB Local): after the SDK's bounded retries a limited request fails closed with 503 `store_unavailable` +
// Retry-After, or — where the fault comes after the answer — the agent still gets it; every ticket ends terminal.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type AwsCall, dynamoCalls, type Fault } from '../../bench/support/fault-proxy.js';
import { allTickets } from '../support/system.js';
import { call, expectInvariants, type FaultySystem, sleep, startStoreFaultSystem } from './support.js';

let f: FaultySystem;

beforeAll(async () => {
  f = await startStoreFaultSystem('rel-store-ingress');
});

afterAll(async () => {
  f.dynamo.clear();
  try {
    await expectInvariants(f.system, expect);
  } finally {
    await f?.stop();
  }
});

const keysGet = (c: AwsCall) => c.action === 'GetItem' && dynamoCalls.onTable('-keys')(c);
const configGet = (c: AwsCall) => c.action === 'GetItem' && dynamoCalls.partition('config')(c);
const ticketCreate = (c: AwsCall) =>
  c.action === 'TransactWriteItems' && c.body.includes('"Put":') && dynamoCalls.onTable('-tickets')(c);

const FAULTS: [string, Fault][] = [
  ['throttling', { kind: 'throttle', type: 'ProvisionedThroughputExceededException' }],
  ['500', { kind: 'status', status: 500, type: 'InternalServerError' }],
  ['503', { kind: 'status', status: 503, type: 'ServiceUnavailable' }],
  ['timeout', { kind: 'hang' }],
  ['connection reset', { kind: 'reset' }],
];

const SITES: [string, (c: AwsCall) => boolean][] = [
  ['key lookup', keysGet],
  ['config read', configGet],
  ['ticket create', ticketCreate],
];

/** Every fault kind on the create; the three main kinds on the reads before it. */
const MAIN = new Set(['throttling', '500', 'timeout']);
const CASES = SITES.flatMap(([site, match]) =>
  FAULTS.filter(([fault]) => site === 'ticket create' || MAIN.has(fault)).map(
    ([fault, spec]) => [site, fault, match, spec] as const,
  ),
);

describe('DynamoDB failing before admission', () => {
  it.each(CASES)(
    '%s, %s: 503 store_unavailable with Retry-After, nothing queued, no token',
    async (site, fault, match, spec) => {
      // Prepare: a fresh key (the key cache would hide the lookup), caches expired.
      const key = await f.system.createKey(`agent-${site}-${fault}`.replace(/\W+/g, '-'), 'urgent');
      if (site === 'config read') await sleep(2_100);
      const ticketsBefore = (await allTickets(f.system)).length;
      const callsBefore = f.system.upstream!.calls.length;
      const remove = f.dynamo.add({ name: `${site}/${fault}`, match, fault: spec });

      // Act
      const reply = await call(f.system, key).finally(remove);

      // Assess
      expect(reply.status).toBe(503);
      expect(reply.error).toMatchObject({ code: 'store_unavailable', type: 'server_error' });
      expect(reply.error?.message).not.toMatch(/Exception|Injected|at \w+ \(/);
      expect(Number(reply.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
      expect(Number(reply.headers.get('retry-after-ms'))).toBeGreaterThan(0);
      // The SDK retried (bounded): 3 attempts per call (the dispatcher may read the config too).
      expect(f.dynamo.injected.get(`${site}/${fault}`)).toBeGreaterThanOrEqual(3);
      expect((await allTickets(f.system)).length).toBe(ticketsBefore);
      expect(f.system.upstream!.calls.length).toBe(callsBefore);
      expect((await f.system.stores.tickets.counts()).queued).toBe(0);
    },
  );
});

describe('DynamoDB failing while a request waits', () => {
  it('doorbell (lease ring) failing: the request is still served', async () => {
    const key = await f.system.createKey('agent-ring', 'urgent');
    const remove = f.dynamo.add({
      name: 'ring',
      match: (c) => c.action === 'UpdateItem' && c.body.includes('ADD rings'),
      fault: { kind: 'status', status: 500 },
    });
    const reply = await call(f.system, key).finally(remove);
    expect(reply.status).toBe(200);
  });

  it('waiting polls failing for a while: the agent keeps waiting and is served', async () => {
    const key = await f.system.createKey('agent-poll', 'urgent');
    // The dispatcher may be idle: this request finds it asleep, so waiting takes a few polls.
    const remove = f.dynamo.add({
      name: 'poll',
      match: (c) => c.action === 'GetItem' && dynamoCalls.onTable('-tickets')(c),
      fault: { kind: 'status', status: 500 },
      // One poll fails after its 3 attempts (the wait goes on), the next one gets through.
      times: 3,
    });
    const reply = await call(f.system, key).finally(remove);
    expect(reply.status, JSON.stringify(reply.error)).toBe(200);
  });
});
