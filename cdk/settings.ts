// CDK support: the deployment's settings, read from CDK context (`-c key=value` or cdk.json), defaulted and validated at synth.
import { RetentionDays } from 'aws-cdk-lib/aws-logs';
import {
  CONFIG_FIELDS,
  CONFIG_KEYS,
  configFromEnv,
  DEFAULT_CONFIG,
  externalName,
  type GatewayConfig,
} from '../lib/domain/config.js';
import { parseRoutes } from '../lib/domain/routes.js';
import { parseUpstreamList, type UpstreamEntry } from '../lib/domain/upstreams.js';

/** Everything a deployment may choose; every field has a context key of the same name. */
export interface SluiceSettings {
  /** Base URL of the rate-limited, OpenAI-compatible upstream. @default 'https://integrate.api.nvidia.com/v1' */
  upstreamUrl: string;
  /** Base URL of an unlimited upstream for passthrough routes (`SLUICE_OPEN_UPSTREAM_URL`). @default none */
  openUpstreamUrl?: string;
  /** The upstream's limit: calls per window (`SLUICE_UPSTREAM_LIMIT`). @default 40 */
  upstreamLimit: number;
  /** Grants allowed back to back (`SLUICE_BUCKET_BURST`); burst + rate × window stays within the limit. @default 2 */
  bucketBurst: number;
  /** Model routes as a JSON array (`SLUICE_ROUTES`), added in front of the built-in NVIDIA routes. @default none */
  routes?: string;
  /**
   * Several keys or providers (`SLUICE_UPSTREAMS`, JSON list; see the README): one secret per upstream is created
   * (or imported by an entry's `key_secret` ARN). Replaces `upstreamUrl`/`upstreamLimit`. @default one upstream
   */
  upstreams?: string;
  /** Further gateway config defaults in the admin API's form (snake_case, seconds), e.g. `{"queue_max_size":1000}`. */
  config: Record<string, string | number | boolean>;
  /** Retention of every log group. @default 30 days */
  logRetention: RetentionDays;
  /** Create the S3 + CloudFront dashboard. @default true */
  createDashboard: boolean;
  /** DynamoDB deletion protection; the tables are also retained when the stack is deleted. @default true */
  deletionProtection: boolean;
  /** Use this existing Secrets Manager secret for the upstream key instead of creating one. @default none */
  upstreamKeySecretArn?: string;
  /** The open upstream's own key, an existing secret (`SLUICE_OPEN_UPSTREAM_KEY_SECRET`); none = no credential. @default none */
  openUpstreamKeySecretArn?: string;
  /** Subscribe this address to the alarm topic (no topic without it). @default none */
  alarmEmail?: string;
  /** CORS origin when the dashboard is hosted elsewhere (ignored when `createDashboard`). @default none */
  allowedOrigin?: string;
  /** Alarm when the effective rate sits at the retreat floor this long. @default 15 */
  retreatFloorAlarmMinutes: number;
  /** API Gateway stage throttling: steady requests per second. @default 50 */
  apiRateLimit: number;
  /** API Gateway stage throttling: burst. @default 100 */
  apiBurstLimit: number;
  /** An AWS WAF web ACL with a per-IP rate rule on the API (about $6/month + $0.60 per million requests). @default true */
  waf: boolean;
  /** The WAF rule's limit: requests per IP in any 5 minutes (≥ 10). @default 3000 */
  wafRequestsPer5MinPerIp: number;
}

export const DEFAULT_SETTINGS: Readonly<SluiceSettings> = Object.freeze({
  upstreamUrl: 'https://integrate.api.nvidia.com/v1',
  upstreamLimit: DEFAULT_CONFIG.upstreamLimit,
  bucketBurst: DEFAULT_CONFIG.bucketBurst,
  config: {},
  logRetention: RetentionDays.ONE_MONTH,
  createDashboard: true,
  deletionProtection: true,
  retreatFloorAlarmMinutes: 15,
  apiRateLimit: 50,
  apiBurstLimit: 100,
  waf: true,
  wafRequestsPer5MinPerIp: 3_000,
});

/** Context keys the stack reads (all optional). */
export const CONTEXT_KEYS = [
  'upstreamUrl',
  'openUpstreamUrl',
  'upstreamLimit',
  'bucketBurst',
  'routes',
  'upstreams',
  'config',
  'logRetentionDays',
  'createDashboard',
  'deletionProtection',
  'upstreamKeySecretArn',
  'openUpstreamKeySecretArn',
  'alarmEmail',
  'allowedOrigin',
  'retreatFloorAlarmMinutes',
  'apiRateLimit',
  'apiBurstLimit',
  'waf',
  'wafRequestsPer5MinPerIp',
] as const;
export type ContextKey = (typeof CONTEXT_KEYS)[number];

class SettingsError extends Error {
  constructor(key: string, problem: string) {
    super(`context ${key}: ${problem}`);
    this.name = 'SettingsError';
  }
}

const text = (key: string, raw: unknown): string | undefined => {
  if (raw === undefined || raw === null || raw === '') return undefined;
  if (typeof raw !== 'string') throw new SettingsError(key, 'must be a string');
  return raw.trim();
};

const bool = (key: string, raw: unknown): boolean | undefined => {
  if (raw === undefined || raw === null || raw === '') return undefined;
  if (typeof raw === 'boolean') return raw;
  if (raw === 'true') return true;
  if (raw === 'false') return false;
  throw new SettingsError(key, 'must be true or false');
};

const positiveInt = (key: string, raw: unknown): number | undefined => {
  if (raw === undefined || raw === null || raw === '') return undefined;
  const n = typeof raw === 'number' ? raw : Number(raw);
  if (!Number.isInteger(n) || n < 1) throw new SettingsError(key, 'must be a positive integer');
  return n;
};

const httpsUrl = (key: string, raw: unknown): string | undefined => {
  const v = text(key, raw);
  if (v === undefined) return undefined;
  let url: URL;
  try {
    url = new URL(v);
  } catch {
    throw new SettingsError(key, `${v} is not a URL`);
  }
  if (url.protocol !== 'https:') throw new SettingsError(key, 'must be an https:// URL');
  return v.replace(/\/+$/, '');
};

/** A JSON value given either as JSON text (CLI `-c`) or already parsed (cdk.json). */
const json = (key: string, raw: unknown): unknown => {
  if (typeof raw !== 'string') return raw;
  try {
    return JSON.parse(raw);
  } catch {
    throw new SettingsError(key, 'is not valid JSON');
  }
};

const retention = (raw: unknown): RetentionDays | undefined => {
  const days = positiveInt('logRetentionDays', raw);
  if (days === undefined) return undefined;
  const allowed = Object.values(RetentionDays).filter((v): v is RetentionDays => typeof v === 'number');
  if (!allowed.includes(days)) {
    throw new SettingsError('logRetentionDays', `must be one of ${allowed.filter((d) => d > 0).join(', ')}`);
  }
  return days;
};

const defined = <T extends object>(o: T): Partial<T> =>
  Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;

/**
 * Reads, defaults and validates the settings; throws naming the bad context key, so synth fails before
 * anything is deployed. The gateway config they imply is checked with the functions' own rules.
 * @param read - context lookup, e.g. `(key) => app.node.tryGetContext(key)`
 */
export const settingsFromContext = (read: (key: ContextKey) => unknown): SluiceSettings => {
  const routesRaw = read('routes');
  const routes =
    routesRaw === undefined || routesRaw === '' ? undefined : JSON.stringify(json('routes', routesRaw));
  if (routes !== undefined) {
    try {
      parseRoutes(routes);
    } catch (err) {
      throw new SettingsError('routes', (err as Error).message);
    }
  }
  const upstreamsRaw = read('upstreams');
  const upstreams =
    upstreamsRaw === undefined || upstreamsRaw === ''
      ? undefined
      : JSON.stringify(json('upstreams', upstreamsRaw));
  if (upstreams !== undefined) {
    const entries = settingsUpstreams(upstreams);
    for (const key of ['upstreamUrl', 'upstreamLimit'] as const) {
      if (read(key) !== undefined) throw new SettingsError(key, 'set it in the upstreams list instead');
    }
    const local = entries.find((e) => e.keyEnv);
    if (local)
      throw new SettingsError(
        'upstreams',
        `${local.name}: key_env is for local runs; on AWS each upstream gets a secret (or give key_secret)`,
      );
    const plain = entries.find((e) => !e.url.startsWith('https://'));
    if (plain) throw new SettingsError('upstreams', `${plain.name}: url must be an https:// URL`);
    const bad = entries.find((e) => e.keySecret && !/^arn:aws[\w-]*:secretsmanager:/.test(e.keySecret));
    if (bad)
      throw new SettingsError('upstreams', `${bad.name}: key_secret must be a Secrets Manager secret ARN`);
  }
  const configRaw = read('config');
  const config = configRaw === undefined || configRaw === '' ? {} : json('config', configRaw);
  if (typeof config !== 'object' || config === null || Array.isArray(config)) {
    throw new SettingsError('config', 'must be a JSON object');
  }
  const settings: SluiceSettings = {
    ...DEFAULT_SETTINGS,
    ...defined({
      upstreamUrl: httpsUrl('upstreamUrl', read('upstreamUrl')),
      openUpstreamUrl: httpsUrl('openUpstreamUrl', read('openUpstreamUrl')),
      upstreamLimit: positiveInt('upstreamLimit', read('upstreamLimit')),
      bucketBurst: positiveInt('bucketBurst', read('bucketBurst')),
      routes,
      upstreams,
      config: config as Record<string, string | number | boolean>,
      logRetention: retention(read('logRetentionDays')),
      createDashboard: bool('createDashboard', read('createDashboard')),
      deletionProtection: bool('deletionProtection', read('deletionProtection')),
      upstreamKeySecretArn: text('upstreamKeySecretArn', read('upstreamKeySecretArn')),
      openUpstreamKeySecretArn: text('openUpstreamKeySecretArn', read('openUpstreamKeySecretArn')),
      alarmEmail: text('alarmEmail', read('alarmEmail')),
      allowedOrigin: httpsUrl('allowedOrigin', read('allowedOrigin')),
      retreatFloorAlarmMinutes: positiveInt('retreatFloorAlarmMinutes', read('retreatFloorAlarmMinutes')),
      apiRateLimit: positiveInt('apiRateLimit', read('apiRateLimit')),
      apiBurstLimit: positiveInt('apiBurstLimit', read('apiBurstLimit')),
      waf: bool('waf', read('waf')),
      wafRequestsPer5MinPerIp: positiveInt('wafRequestsPer5MinPerIp', read('wafRequestsPer5MinPerIp')),
    }),
  };
  if (settings.wafRequestsPer5MinPerIp < 10)
    throw new SettingsError('wafRequestsPer5MinPerIp', 'must be at least 10 (the AWS WAF minimum)');
  for (const name of ['upstreamKeySecretArn', 'openUpstreamKeySecretArn'] as const) {
    const arn = settings[name];
    if (arn && !/^arn:aws[\w-]*:secretsmanager:/.test(arn))
      throw new SettingsError(name, 'must be a Secrets Manager secret ARN');
  }
  if (settings.openUpstreamKeySecretArn && !settings.openUpstreamUrl)
    throw new SettingsError('openUpstreamKeySecretArn', 'needs openUpstreamUrl');
  gatewayConfig(settings);
  return settings;
};

/** The `SLUICE_*` config variables every function gets (no secrets: those are passed by ARN). */
export const gatewayConfigEnvironment = (settings: SluiceSettings): Record<string, string> => {
  const byExternalName = new Map(CONFIG_KEYS.map((k) => [externalName(k), k]));
  // The upstream list carries the URL and limit of the first upstream itself.
  const env: Record<string, string> =
    settings.upstreams !== undefined
      ? { SLUICE_UPSTREAMS: settings.upstreams }
      : {
          SLUICE_UPSTREAM_URL: settings.upstreamUrl,
          [CONFIG_FIELDS.upstreamLimit.env]: String(settings.upstreamLimit),
        };
  env[CONFIG_FIELDS.bucketBurst.env] = String(settings.bucketBurst);
  for (const [name, value] of Object.entries(settings.config)) {
    const key = byExternalName.get(name);
    if (!key) throw new SettingsError('config', `unknown config field ${name}`);
    if (key === 'upstreams') throw new SettingsError('config', 'give upstreams as its own setting');
    env[CONFIG_FIELDS[key].env] = String(value);
  }
  if (settings.routes !== undefined) env.SLUICE_ROUTES = settings.routes;
  if (settings.openUpstreamUrl !== undefined) env.SLUICE_OPEN_UPSTREAM_URL = settings.openUpstreamUrl;
  return env;
};

/**
 * The gateway config the functions will start with, validated by the same rules they apply at cold start
 * (e.g. burst + rate × window ≤ limit).
 */
export const gatewayConfig = (settings: SluiceSettings): GatewayConfig => {
  try {
    return configFromEnv(gatewayConfigEnvironment(settings));
  } catch (err) {
    if (err instanceof SettingsError) throw err;
    throw new SettingsError('upstreamLimit/bucketBurst/config', (err as Error).message);
  }
};

/** The `upstreams` setting parsed by the functions' own rules. */
export const settingsUpstreams = (json: string): UpstreamEntry[] => {
  try {
    return parseUpstreamList(json, { windowMs: 60_000, tpm: 0, maxInflight: 0, retreatPreset: 'probe' });
  } catch (err) {
    throw new SettingsError('upstreams', (err as Error).message);
  }
};
