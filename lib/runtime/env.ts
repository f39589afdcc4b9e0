// Composition support: the environment contract of every function, validated once at cold start.
import { PRIORITIES, type Priority } from '../domain/priority.js';
import { parseRoutes, type Route, type UpstreamDef } from '../domain/routes.js';
import {
  DEFAULT_UPSTREAM_NAME,
  DEFAULT_UPSTREAM_URL,
  parseUpstreamList,
  primaryUpstream,
  type UpstreamEntry,
  upstreamDefs,
  upstreamRoutes,
} from '../domain/upstreams.js';
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
  /** The first limited upstream: its state items keep the single-upstream keys (nothing migrates). */
  primaryUpstream: string;
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
  const { upstreams, primary, routes, upstreamCredentials } = readUpstreams(env);
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
    primaryUpstream: primary,
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

const credentialSource = (
  secretId: string | undefined,
  value: string | undefined,
): CredentialSource | undefined =>
  secretId || value ? { ...(secretId ? { secretId } : {}), ...(value ? { value } : {}) } : undefined;

/**
 * The upstreams, their routes and credentials: `SLUICE_UPSTREAMS` when set, else today's single limited upstream
 * (`SLUICE_UPSTREAM_URL`, its key) — plus the open upstream of `SLUICE_OPEN_UPSTREAM_URL` in both cases.
 * `SLUICE_ROUTES` adds routes before the built-in catalog (`SLUICE_DEFAULT_ROUTES=false` drops the catalog).
 * Each upstream gets only the credential named for it; the first limited one falls back to the single-upstream
 * key variables.
 */
const readUpstreams = (env: Record<string, string | undefined>) => {
  const entries: UpstreamEntry[] = env.SLUICE_UPSTREAMS
    ? // Limits are the config's (configFromEnv); here only who is limited matters.
      parseUpstreamList(env.SLUICE_UPSTREAMS, {
        windowMs: 60_000,
        tpm: 0,
        maxInflight: 0,
        retreatPreset: 'probe',
      })
    : [
        {
          name: DEFAULT_UPSTREAM_NAME,
          url: env.SLUICE_UPSTREAM_URL ?? DEFAULT_UPSTREAM_URL,
          limits: { limit: 1, windowMs: 60_000, tpm: 0, maxInflight: 0, retreatPreset: 'probe' },
        },
      ];
  const first = primaryUpstream(entries);
  if (!first) throw new Error('SLUICE_UPSTREAMS: at least one upstream needs a limit');
  const upstreamCredentials = new Map<string, CredentialSource>();
  for (const e of entries) {
    const own = credentialSource(e.keySecret, e.keyEnv ? env[e.keyEnv] : undefined);
    const legacy =
      e === first && !e.keySecret && !e.keyEnv
        ? credentialSource(env.SLUICE_UPSTREAM_KEY_SECRET, env.UPSTREAM_API_KEY)
        : undefined;
    const source = own ?? legacy;
    if (source) upstreamCredentials.set(e.name, source);
  }
  if (env.SLUICE_OPEN_UPSTREAM_URL && !entries.some((e) => e.name === 'open')) {
    entries.push({ name: 'open', url: env.SLUICE_OPEN_UPSTREAM_URL, models: [] });
    // The open upstream gets a credential only when one is given for it: never the limited upstream's.
    const openKey = credentialSource(env.SLUICE_OPEN_UPSTREAM_KEY_SECRET, env.OPEN_UPSTREAM_API_KEY);
    if (openKey) upstreamCredentials.set('open', openKey);
  }
  const routes = upstreamRoutes(
    entries,
    env.SLUICE_ROUTES ? parseRoutes(env.SLUICE_ROUTES) : [],
    !/^(false|0|no|off)$/i.test(env.SLUICE_DEFAULT_ROUTES?.trim() ?? ''),
  );
  return { upstreams: upstreamDefs(entries), primary: first.name, routes, upstreamCredentials };
};
