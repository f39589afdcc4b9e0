// Composition support: SDK clients and stores built once per container from the runtime env.
import { randomUUID } from 'node:crypto';
import { getSecret } from '@aws-lambda-powertools/parameters/secrets';
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { InvokeCommand, LambdaClient } from '@aws-sdk/client-lambda';
import { SQSClient } from '@aws-sdk/client-sqs';
import { DynamoBucketStore } from '../adapters/dynamo/bucket-store.js';
import { DynamoBudgetStore } from '../adapters/dynamo/budget-store.js';
import { DynamoConfigStore } from '../adapters/dynamo/config-store.js';
import { DynamoKeyStore } from '../adapters/dynamo/key-store.js';
import { DynamoLeaseStore } from '../adapters/dynamo/lease-store.js';
import { DynamoOutcomeStore } from '../adapters/dynamo/outcome-store.js';
import { DynamoResponseCacheStore } from '../adapters/dynamo/response-cache-store.js';
import { DynamoRetreatStore } from '../adapters/dynamo/retreat-store.js';
import { DynamoTicketStore } from '../adapters/dynamo/ticket-store.js';
import { DynamoUsageStore } from '../adapters/dynamo/usage-store.js';
import { SqsTicketQueue } from '../adapters/sqs/ticket-queue.js';
import { TokenBucket } from '../domain/bucket.js';
import { type Clock, systemClock } from '../domain/clock.js';
import { configFromEnv } from '../domain/config.js';
import { ConfigService } from '../domain/config-service.js';
import { UnavailableError } from '../domain/errors.js';
import { RetreatController } from '../domain/retreat-controller.js';
import type { UpstreamLane } from '../domain/upstream-lanes.js';
import { upstreamStateKey } from '../domain/upstreams.js';
import { SECRET_PLACEHOLDER_PREFIX } from '../infra/definitions.js';
import type { UpstreamRowSource } from '../status/upstream-rows.js';
import type { RuntimeEnv } from './env.js';

const LOCAL_CREDENTIALS = { accessKeyId: 'local', secretAccessKey: 'local' };

/** SDK retries: bounded, with the SDK's jittered backoff. */
const MAX_ATTEMPTS = 3;

export const makeClients = (env: RuntimeEnv) => {
  const local = (endpoint: string | undefined) =>
    endpoint ? { endpoint, credentials: LOCAL_CREDENTIALS } : {};
  // Without a request timeout a hung call waits until the function dies; with it, the attempt fails and the
  // SDK retries (SQS long polls set their own, longer timeout per call).
  const requestHandler = {
    connectionTimeout: Math.min(2_000, env.awsRequestTimeoutMs),
    requestTimeout: env.awsRequestTimeoutMs,
    throwOnRequestTimeout: true,
  };
  return {
    dynamo: new DynamoDBClient({
      region: env.region,
      maxAttempts: MAX_ATTEMPTS,
      requestHandler,
      ...local(env.dynamoEndpoint),
    }),
    sqs: new SQSClient({
      region: env.region,
      maxAttempts: MAX_ATTEMPTS,
      requestHandler,
      ...local(env.sqsEndpoint),
    }),
    lambda: new LambdaClient({
      region: env.region,
      maxAttempts: 2,
      requestHandler,
      ...local(env.lambdaEndpoint),
    }),
  };
};

export type Clients = ReturnType<typeof makeClients>;

/** Every store and shared domain object a function may need; cheap to build (no I/O). */
export const makeStores = (
  env: RuntimeEnv,
  clients: Clients,
  processEnv: Record<string, string | undefined>,
  clock: Clock = systemClock,
) => {
  const defaults = configFromEnv(processEnv);
  const bucketStore = new DynamoBucketStore(clients.dynamo, env.stateTable, env.bucketKey);
  const bucket = new TokenBucket(bucketStore, clock, {
    fraction: defaults.reserveFraction,
    forNormal: defaults.reserveForNormal,
  });
  const outcomes = new DynamoOutcomeStore(clients.dynamo, env.stateTable);
  const retreatStore = new DynamoRetreatStore(clients.dynamo, env.stateTable, env.bucketKey);
  const configStore = new DynamoConfigStore(clients.dynamo, env.stateTable);
  // Per-agent quota buckets: the same GCRA item shape, one per agent, kept for the container's life.
  const agentBuckets = new Map<string, { bucket: TokenBucket; key: string }>();
  const agentBucket = (agent: string) => {
    let hit = agentBuckets.get(agent);
    if (!hit) {
      const key = `agent#${agent}`;
      hit = {
        key,
        bucket: new TokenBucket(new DynamoBucketStore(clients.dynamo, env.stateTable, key), clock, {
          fraction: 0,
          forNormal: false,
        }),
      };
      if (agentBuckets.size > 10_000) agentBuckets.clear();
      agentBuckets.set(agent, hit);
    }
    return hit;
  };
  const retreat = new RetreatController({ retreat: retreatStore, outcomes, bucket, clock });
  // Several limited upstreams: a lane each; the first one's items keep the single-upstream keys.
  const others = [...env.upstreams.values()]
    .filter((u) => u.limited && u.name !== env.primaryUpstream)
    .map((u) => u.name);
  const tickets = new DynamoTicketStore(clients.dynamo, {
    ticketsTable: env.ticketsTable,
    stateTable: env.stateTable,
    bucketKey: env.bucketKey,
    otherUpstreams: others,
  });
  // /status: each upstream's own items (several upstreams only).
  const upstreamSources: UpstreamRowSource[] | undefined = others.length
    ? [
        {
          name: env.primaryUpstream,
          retreat: retreatStore,
          outcomes,
          inFlight: async () => (await tickets.counts()).inflight,
        },
        ...others.map((name) => {
          const key = upstreamStateKey(name);
          return {
            name,
            retreat: new DynamoRetreatStore(clients.dynamo, env.stateTable, key),
            outcomes: new DynamoOutcomeStore(clients.dynamo, env.stateTable, `outcomes#${key}`),
            inFlight: () => tickets.upstreamInflight(name),
            // Read by /status only when this upstream has `tpm` (its token entries).
            bucket: new DynamoBucketStore(clients.dynamo, env.stateTable, key),
          };
        }),
      ]
    : undefined;
  const lanes: UpstreamLane[] | undefined = others.length
    ? [
        { name: env.primaryUpstream, primary: true, bucket, retreat, outcomes },
        ...others.map((name): UpstreamLane => {
          const key = upstreamStateKey(name);
          const laneBucket = new TokenBucket(
            new DynamoBucketStore(clients.dynamo, env.stateTable, key),
            clock,
            {
              fraction: defaults.reserveFraction,
              forNormal: defaults.reserveForNormal,
            },
          );
          const laneOutcomes = new DynamoOutcomeStore(clients.dynamo, env.stateTable, `outcomes#${key}`);
          return {
            name,
            primary: false,
            bucket: laneBucket,
            outcomes: laneOutcomes,
            retreat: new RetreatController({
              retreat: new DynamoRetreatStore(clients.dynamo, env.stateTable, key),
              outcomes: laneOutcomes,
              bucket: laneBucket,
              clock,
            }),
          };
        }),
      ]
    : undefined;
  return {
    agentBucket,
    clock,
    bucket,
    outcomes,
    retreatStore,
    lanes,
    upstreamSources,
    tickets,
    queue: new SqsTicketQueue(clients.sqs, env.queueUrls),
    lease: new DynamoLeaseStore(clients.dynamo, env.stateTable),
    keys: new DynamoKeyStore(clients.dynamo, env.keysTable),
    usage: new DynamoUsageStore(clients.dynamo, env.stateTable),
    budgets: new DynamoBudgetStore(clients.dynamo, env.stateTable),
    responseCache: env.cacheTable ? new DynamoResponseCacheStore(clients.dynamo, env.cacheTable) : undefined,
    configStore,
    config: new ConfigService(configStore, clock, defaults),
    retreat,
    newId: () => randomUUID(),
  };
};

export type Stores = ReturnType<typeof makeStores>;

/** The doorbell's second half: an asynchronous invoke of the dispatcher (Event: no waiting, no retries here). */
export const dispatcherWaker = (env: RuntimeEnv, clients: Clients) => async (): Promise<void> => {
  await clients.lambda.send(
    new InvokeCommand({
      FunctionName: env.dispatcherFunction,
      InvocationType: 'Event',
      Payload: '{"source":"doorbell"}',
    }),
  );
};

/** Secrets are cached this long: a rotated upstream key is used within 5 minutes, without a redeploy. */
export const SECRET_MAX_AGE_S = 300;

/** A secret from Secrets Manager (Powertools Parameters, cached), or the plain local value. */
export const secretReader =
  (secretId: string | undefined, plainValue: string | undefined, what: string) =>
  async (): Promise<string> => {
    // Not configured is the operator's to fix: a clear 503, not a generic 500 or an upstream 401.
    const missing = (why: string) =>
      new UnavailableError(`The gateway's ${what} ${why}; ask its operator.`, 60_000, 'not_configured');
    if (secretId) {
      const v = await getSecret(secretId, { maxAge: SECRET_MAX_AGE_S });
      if (typeof v !== 'string' || v === '') throw missing('is empty');
      if (v.startsWith(SECRET_PLACEHOLDER_PREFIX)) throw missing('has not been set yet');
      return v;
    }
    if (plainValue) return plainValue;
    throw missing('is not configured');
  };
