// Local runtime: the whole system on one machine — emulators, the real handlers behind a local API Gateway,
// the singleton dispatcher (doorbell + schedule) and, unless UPSTREAM_URL is set, a simulated upstream.
import './awslambda-shim.js';
import { randomBytes } from 'node:crypto';
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { SQSClient } from '@aws-sdk/client-sqs';
import { buildDispatcherDeps, makeDispatcherHandler } from '../functions/dispatcher/app.js';
import { buildIngressDeps, makeIngressHandler } from '../functions/ingress/app.js';
import type { DispatcherTimings } from '../lib/domain/dispatcher.js';
import { KeyAdmin } from '../lib/domain/key-admin.js';
import type { Priority } from '../lib/domain/priority.js';
import { type Clients, closeClients, makeClients } from '../lib/runtime/clients.js';
import { readRuntimeEnv } from '../lib/runtime/env.js';
import { type ApiRoute, type LocalApiGateway, startApiGateway } from './apigw/adapter.js';
import { localAwsConfig, provisionResources, resourceEnvironment, startEmulators } from './emulators.js';
import { type FakeUpstream, type FakeUpstreamOptions, startFakeUpstream } from './fake-upstream.js';
import { type GatewayStores, gatewayStores } from './gateway-stores.js';
import { type LocalLambdaService, startLocalLambda } from './lambda-service.js';

export interface LocalSystemOptions {
  /** API port (0 = free port). @default 8787 */
  port?: number;
  host?: string;
  /** Use these running emulators instead of starting new ones (tests share one pair). */
  emulators?: { dynamoEndpoint: string; sqsEndpoint: string };
  /**
   * Keep DynamoDB Local's data (keys, config, tickets, bucket) in this directory, across restarts and crashes;
   * unset = in memory. Only used when the emulators are started here.
   */
  dataDir?: string;
  /** Resource name prefix. @default 'sluice' */
  prefix?: string;
  /** An OpenAI-compatible upstream; unset = start the simulated one. */
  upstreamUrl?: string;
  upstreamApiKey?: string;
  fakeUpstream?: FakeUpstreamOptions;
  adminToken?: string;
  /** `SLUICE_*` config env vars (and any other env the functions read). */
  env?: Record<string, string | undefined>;
  dispatcherTimings?: Partial<DispatcherTimings>;
  /** How long one local dispatcher run may last (its Lambda timeout). @default 300000 */
  dispatcherTimeoutMs?: number;
  /** The 1-minute safety-net schedule (0 disables it). @default 60000 */
  scheduleMs?: number;
  /** Extra routes (status function, dashboard), added after the ingress routes; `stop` runs when the system stops. */
  extraRoutes?: (ctx: {
    env: Record<string, string | undefined>;
    stores: GatewayStores;
  }) => Promise<ExtraRoutes> | ExtraRoutes;
  log?: (line: string) => void;
}

/** What `extraRoutes` returns: routes, optionally with a cleanup (e.g. the SDK clients of their function). */
export type ExtraRoutes = ApiRoute[] | { routes: ApiRoute[]; stop?: () => Promise<void> };

export interface LocalSystem {
  url: string;
  adminToken: string;
  upstream: FakeUpstream | undefined;
  upstreamUrl: string;
  /** The env the functions were composed from. */
  env: Record<string, string | undefined>;
  /** Every store of the deployment, sharing the dispatcher's instances (its config cache, its bucket). */
  stores: GatewayStores;
  lambda: LocalLambdaService;
  createKey(
    agent: string,
    maxPriority?: Priority,
    quota?: { rpm?: number; share?: number },
    cache?: { ttlS?: number },
  ): Promise<string>;
  /** Resolves when every answered request's invocation has returned (its outcome recorded after the reply). */
  settled(): Promise<void>;
  stop(): Promise<void>;
}

const DISPATCHER = 'sluice-dispatcher';
const SIMULATED_UPSTREAM_KEY = 'nvapi-local-simulated';

export const startLocalSystem = async (opts: LocalSystemOptions = {}): Promise<LocalSystem> => {
  const log = opts.log ?? (() => {});
  // Powertools reads these from the process env: locally, EMF lines and info logs would drown the console.
  if (!process.env.SLUICE_LOCAL_METRICS) process.env.POWERTOOLS_METRICS_DISABLED ??= 'true';
  process.env.LOG_LEVEL ??= 'WARN';
  const stops: (() => Promise<void>)[] = [];
  const stop = async () => {
    for (const s of stops.reverse())
      await s().catch((err: unknown) => log(`stop failed: ${(err as Error).message}`));
  };
  try {
    let emulators = opts.emulators;
    if (!emulators) {
      const started = await startEmulators(opts.dataDir === undefined ? {} : { dynamoDataDir: opts.dataDir });
      stops.push(() => started.stop());
      emulators = started;
    }
    const prefix = opts.prefix ?? 'sluice';
    const dynamo = new DynamoDBClient(localAwsConfig(emulators.dynamoEndpoint));
    const sqs = new SQSClient(localAwsConfig(emulators.sqsEndpoint));
    const names = await provisionResources({ dynamo, sqs }, prefix);
    dynamo.destroy();
    sqs.destroy();

    let upstream: FakeUpstream | undefined;
    let upstreamUrl = opts.upstreamUrl;
    let upstreamKey = opts.upstreamApiKey;
    if (!upstreamUrl) {
      upstream = await startFakeUpstream({ apiKey: SIMULATED_UPSTREAM_KEY, ...opts.fakeUpstream });
      stops.push(() => upstream!.stop());
      upstreamUrl = `${upstream.url}/v1`;
      upstreamKey = SIMULATED_UPSTREAM_KEY;
    }

    // The Lambda endpoint must exist before the functions are composed (their SDK client points at it).
    const lambdaRef: { handler?: (e: unknown, c: import('aws-lambda').Context) => Promise<unknown> } = {};
    const lambda = await startLocalLambda(
      {
        [DISPATCHER]: {
          handler: (e, c) => lambdaRef.handler!(e, c),
          timeoutMs: opts.dispatcherTimeoutMs ?? 300_000,
        },
      },
      log,
    );
    stops.push(() => lambda.stop().then(() => lambda.idle()));

    const adminToken = opts.adminToken ?? randomBytes(24).toString('base64url');
    const env: Record<string, string | undefined> = {
      ...opts.env,
      ...resourceEnvironment(names, emulators),
      SLUICE_LAMBDA_ENDPOINT: lambda.endpoint,
      SLUICE_DISPATCHER_FUNCTION: DISPATCHER,
      SLUICE_UPSTREAM_URL: upstreamUrl,
      UPSTREAM_API_KEY: upstreamKey,
      SLUICE_ADMIN_TOKEN: adminToken,
    };

    // Each function composed as its Lambda entry composes it, each with its own clients ("container").
    const runtimeEnv = readRuntimeEnv(env);
    const container = (): Clients => {
      const clients = makeClients(runtimeEnv);
      stops.push(async () => closeClients(clients));
      return clients;
    };
    const dispatcherClients = container();
    const dispatcher = buildDispatcherDeps(env, dispatcherClients);
    // The tests' view of the state, on the dispatcher's clients and with its objects that keep state in memory:
    // a config update made through `stores.config` reaches the dispatcher at once (no 2 s cache in between).
    const stores: GatewayStores = {
      ...gatewayStores(runtimeEnv, dispatcherClients, env),
      config: dispatcher.config,
      bucket: dispatcher.bucket,
      retreat: dispatcher.retreat,
      lanes: dispatcher.lanes,
      agentBucket: dispatcher.agentBucket,
    };
    await stores.config.seed();
    // Stopping ends the dispatcher's run early: it releases its lease while the stores still answer.
    const dispatcherStop = new AbortController();
    lambdaRef.handler = makeDispatcherHandler({
      ...dispatcher,
      stopSignal: dispatcherStop.signal,
      ...(opts.dispatcherTimings ? { timings: opts.dispatcherTimings } : {}),
    }) as unknown as (e: unknown, c: import('aws-lambda').Context) => Promise<unknown>;

    const ingressHandler = makeIngressHandler(buildIngressDeps(env, container()));
    const extra = opts.extraRoutes ? await opts.extraRoutes({ env, stores }) : [];
    if (!Array.isArray(extra) && extra.stop) stops.push(extra.stop);
    const routes: ApiRoute[] = [
      {
        method: 'ANY',
        path: '/v1/{proxy+}',
        handler: ingressHandler,
        functionName: 'sluice-ingress',
        timeoutMs: 900_000,
      },
      ...(Array.isArray(extra) ? extra : extra.routes),
    ];
    // Runs after the API stopped accepting and before anything the dispatcher uses goes away.
    stops.push(async () => {
      dispatcherStop.abort();
      await lambda.quiesce();
    });
    const api: LocalApiGateway = await startApiGateway({
      routes,
      host: opts.host ?? '127.0.0.1',
      port: opts.port ?? 8787,
      log,
    });
    stops.push(() => api.stop());

    // The safety-net schedule, as EventBridge Scheduler does every minute in AWS.
    const scheduleMs = opts.scheduleMs ?? 60_000;
    const timer =
      scheduleMs > 0
        ? setInterval(() => lambda.invokeAsync(DISPATCHER, { source: 'schedule' }), scheduleMs)
        : undefined;
    timer?.unref();
    stops.push(async () => clearInterval(timer));
    // Over kept data, a previous run may have left tickets and a lease behind: a run now sweeps what it can, and
    // the schedule finishes the rest once the old lease expired.
    if (opts.dataDir !== undefined) lambda.invokeAsync(DISPATCHER, { source: 'start' });

    const keys = new KeyAdmin(stores.keys, stores.clock, (n) => randomBytes(n));
    return {
      url: api.url,
      adminToken,
      upstream,
      upstreamUrl,
      env,
      stores,
      lambda,
      createKey: async (agent, maxPriority = 'urgent', quota = {}, cache = {}) =>
        (await keys.create(agent, maxPriority, quota, {}, cache)).key,
      settled: () => api.settled(),
      stop,
    };
  } catch (err) {
    await stop();
    throw err;
  }
};
