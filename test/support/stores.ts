// Test helpers: the real stores (DynamoDB Local + fauxqs) of a fresh prefix, composed as the functions compose them.

import { Admission } from '../../lib/domain/admission.js';
import { Dispatcher, type DispatcherDeps, type DispatcherTimings } from '../../lib/domain/dispatcher.js';
import type { TicketQueue } from '../../lib/domain/ports.js';
import type { Ticket } from '../../lib/domain/tickets.js';
import { makeClients } from '../../lib/runtime/clients.js';
import { readRuntimeEnv } from '../../lib/runtime/env.js';
import { type GatewayStores, gatewayStores } from '../../local/gateway-stores.js';
import { type TestResources, testResources } from './aws.js';

/** The env a function would get for these resources, plus `SLUICE_*` config overrides. */
export const envFor = (res: TestResources, extra: Record<string, string> = {}): Record<string, string> => ({
  AWS_REGION: 'us-east-1',
  AWS_ACCESS_KEY_ID: 'local',
  AWS_SECRET_ACCESS_KEY: 'local',
  SLUICE_STATE_TABLE: res.names.stateTable,
  SLUICE_TICKETS_TABLE: res.names.ticketsTable,
  SLUICE_KEYS_TABLE: res.names.keysTable,
  SLUICE_QUEUE_URGENT_URL: res.names.queueUrls.urgent,
  SLUICE_QUEUE_HIGH_URL: res.names.queueUrls.high,
  SLUICE_QUEUE_NORMAL_URL: res.names.queueUrls.normal,
  SLUICE_QUEUE_LOW_URL: res.names.queueUrls.low,
  SLUICE_DYNAMODB_ENDPOINT: res.endpoints.dynamoEndpoint,
  SLUICE_SQS_ENDPOINT: res.endpoints.sqsEndpoint,
  ...extra,
});

export const quietLog = { info: () => {}, warn: () => {}, error: () => {} };

/** Fresh resources, the stores over them (config seeded) and an Admission whose doorbell does nothing. */
export const storesFor = async (name: string, config: Record<string, string> = {}) => {
  const res = await testResources(name);
  const processEnv = envFor(res, config);
  const env = readRuntimeEnv(processEnv);
  const clients = makeClients(env);
  const stores = gatewayStores(env, clients, processEnv);
  await stores.config.seed();
  const admission = new Admission({ ...stores, wakeDispatcher: async () => {} });
  const close = () => {
    clients.dynamo.destroy();
    clients.sqs.destroy();
    clients.lambda.destroy();
    res.close();
  };
  return { res, env, clients, stores, admission, close };
};

/** A dispatcher over the stores, with short idle time; `queue`, `owner` and `lease` may be swapped. */
export const dispatcherFor = (
  stores: GatewayStores,
  opts: {
    queue?: TicketQueue;
    owner?: string;
    lease?: DispatcherDeps['lease'];
    wakeSuccessor?: () => Promise<void>;
  } = {},
  timings: Partial<DispatcherTimings> = {},
) =>
  new Dispatcher(
    {
      ...stores,
      queue: opts.queue ?? stores.queue,
      lease: opts.lease ?? stores.lease,
      wakeSuccessor: opts.wakeSuccessor ?? (async () => {}),
      owner: opts.owner ?? 'test-dispatcher',
      log: quietLog,
    },
    { idleStopMs: 1_500, pollWaitSeconds: 1, ...timings },
  );

/**
 * Reads many tickets a few at a time: hundreds of concurrent GetItems open as many connections, and DynamoDB Local
 * on a loaded 2-core machine then refuses some within the client's 2 s connection timeout.
 */
export const readTickets = async (
  store: { get(id: string): Promise<Ticket | undefined> },
  ids: readonly string[],
  atOnce = 10,
): Promise<(Ticket | undefined)[]> => {
  const out: (Ticket | undefined)[] = [];
  for (let i = 0; i < ids.length; i += atOnce) {
    out.push(...(await Promise.all(ids.slice(i, i + atOnce).map((id) => store.get(id)))));
  }
  return out;
};
