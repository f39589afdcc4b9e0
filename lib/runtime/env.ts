// Composition support: the environment contract of every function, validated once at cold start.
import { PRIORITIES, type Priority } from '../domain/priority.js';
import { defaultRoutes, parseRoutes, type Route, type UpstreamDef } from '../domain/routes.js';
import type { CredentialSource } from './credentials.js';

export interface RuntimeEnv {
  region: string;
  stateTable: string;
  ticketsTable: string;
  keysTable: string;
  /** The response cache's table; unset = no response cache (requests that opt in are served uncached). */
  cacheTable?: string;
  queueUrls: Record<Priority, string>;
  /** Local emulator endpoints (unset in AWS). */
  dynamoEndpoint?: string;
  sqsEndpoint?: string;
  lambdaEndpoint?: string;
  dispatcherFunction: string;
  upstreams: Map<string, UpstreamDef>;
  routes: Route[];
  /** Where the limited upstream's key comes from: a secret (AWS) or a plain env value (local only). */
  upstreamKeySecret?: string;
  upstreamKeyValue?: string;
  /** Each upstream's own credential source by upstream name; an open upstream has none unless configured. */
  upstreamCredentials: Map<string, CredentialSource>;
  adminTokenSecret?: string;
  adminTokenValue?: string;
  /** Read-only token for /status and the dashboard: a secret (AWS) or a plain env value (local only). */
  viewerTokenSecret?: string;
  viewerTokenValue?: string;
  bucketKey: string;
  /** The ingress function's memory (MB): what a waiting request costs per second. */
  ingressMemoryMb: number;
  /** CORS: the dashboard's origin ('*' never used with credentials; unset = no CORS headers). */
  allowedOrigin?: string;
  /** Per-attempt timeout of DynamoDB, SQS and Lambda calls (a hung call fails and is retried). @default 5000 */
  awsRequestTimeoutMs: number;
  /** Largest request body the ingress accepts (413 above it). @default 6 MiB (Lambda's payload limit) */
  maxBodyBytes: number;
}

const need = (env: Record<string, string | undefined>, name: string): string => {
  const v = env[name];
  if (!v) throw new Error(`missing environment variable ${name}`);
  return v;
};

const positive = (env: Record<string, string | undefined>, name: string, fallback: number): number => {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  const v = Number(raw);
  if (!Number.isFinite(v) || v <= 0) throw new Error(`${name} must be a positive number`);
  return v;
};

/** Reads and checks the env; throws at cold start, not at the first request. */
export const readRuntimeEnv = (env: Record<string, string | undefined>): RuntimeEnv => {
  const queueUrls = Object.fromEntries(
    PRIORITIES.map((p) => [p, need(env, `SLUICE_QUEUE_${p.toUpperCase()}_URL`)]),
  ) as Record<Priority, string>;
  const upstreams = new Map<string, UpstreamDef>([
    [
      'limited',
      {
        name: 'limited',
        baseUrl: env.SLUICE_UPSTREAM_URL ?? 'https://integrate.api.nvidia.com/v1',
        limited: true,
      },
    ],
  ]);
  if (env.SLUICE_OPEN_UPSTREAM_URL) {
    upstreams.set('open', { name: 'open', baseUrl: env.SLUICE_OPEN_UPSTREAM_URL, limited: false });
  }
  const upstreamCredentials = new Map<string, CredentialSource>();
  const source = (secretId: string | undefined, value: string | undefined): CredentialSource | undefined =>
    secretId || value ? { ...(secretId ? { secretId } : {}), ...(value ? { value } : {}) } : undefined;
  const limitedKey = source(env.SLUICE_UPSTREAM_KEY_SECRET, env.UPSTREAM_API_KEY);
  if (limitedKey) upstreamCredentials.set('limited', limitedKey);
  // The open upstream gets a credential only when one is given for it: never the limited upstream's.
  const openKey = source(env.SLUICE_OPEN_UPSTREAM_KEY_SECRET, env.OPEN_UPSTREAM_API_KEY);
  if (openKey && upstreams.has('open')) upstreamCredentials.set('open', openKey);
  const routes = env.SLUICE_ROUTES ? parseRoutes(env.SLUICE_ROUTES) : defaultRoutes('limited');
  return {
    region: env.AWS_REGION ?? 'us-east-1',
    stateTable: need(env, 'SLUICE_STATE_TABLE'),
    ticketsTable: need(env, 'SLUICE_TICKETS_TABLE'),
    keysTable: need(env, 'SLUICE_KEYS_TABLE'),
    ...(env.SLUICE_CACHE_TABLE ? { cacheTable: env.SLUICE_CACHE_TABLE } : {}),
    queueUrls,
    ...(env.SLUICE_DYNAMODB_ENDPOINT ? { dynamoEndpoint: env.SLUICE_DYNAMODB_ENDPOINT } : {}),
    ...(env.SLUICE_SQS_ENDPOINT ? { sqsEndpoint: env.SLUICE_SQS_ENDPOINT } : {}),
    ...(env.SLUICE_LAMBDA_ENDPOINT ? { lambdaEndpoint: env.SLUICE_LAMBDA_ENDPOINT } : {}),
    dispatcherFunction: env.SLUICE_DISPATCHER_FUNCTION ?? 'sluice-dispatcher',
    upstreams,
    routes,
    ...(env.SLUICE_UPSTREAM_KEY_SECRET ? { upstreamKeySecret: env.SLUICE_UPSTREAM_KEY_SECRET } : {}),
    ...(env.UPSTREAM_API_KEY ? { upstreamKeyValue: env.UPSTREAM_API_KEY } : {}),
    upstreamCredentials,
    ...(env.SLUICE_ADMIN_TOKEN_SECRET ? { adminTokenSecret: env.SLUICE_ADMIN_TOKEN_SECRET } : {}),
    ...(env.SLUICE_ADMIN_TOKEN ? { adminTokenValue: env.SLUICE_ADMIN_TOKEN } : {}),
    ...(env.SLUICE_VIEWER_TOKEN_SECRET ? { viewerTokenSecret: env.SLUICE_VIEWER_TOKEN_SECRET } : {}),
    ...(env.SLUICE_VIEWER_TOKEN ? { viewerTokenValue: env.SLUICE_VIEWER_TOKEN } : {}),
    bucketKey: env.SLUICE_BUCKET_KEY ?? 'default',
    ingressMemoryMb: Number(env.SLUICE_INGRESS_MEMORY_MB ?? 512),
    ...(env.SLUICE_ALLOWED_ORIGIN ? { allowedOrigin: env.SLUICE_ALLOWED_ORIGIN } : {}),
    awsRequestTimeoutMs: positive(env, 'SLUICE_AWS_REQUEST_TIMEOUT_MS', 5_000),
    maxBodyBytes: positive(env, 'SLUICE_MAX_BODY_BYTES', 6 * 1024 * 1024),
  };
};
