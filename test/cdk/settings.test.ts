// Settings tests: context values (as cdk.json or `-c key=value` strings) → validated deployment settings.
import { RetentionDays } from 'aws-cdk-lib/aws-logs';
import { describe, expect, it } from 'vitest';
import {
  type ContextKey,
  DEFAULT_SETTINGS,
  gatewayConfigEnvironment,
  settingsFromContext,
} from '../../cdk/settings.js';

const fromContext = (context: Partial<Record<ContextKey, unknown>>) =>
  settingsFromContext((key) => context[key]);

describe('settingsFromContext', () => {
  it('defaults to the NVIDIA upstream at 40 per minute with a burst of 2, dashboard on, tables protected', () => {
    expect(fromContext({})).toEqual(DEFAULT_SETTINGS);
    expect(DEFAULT_SETTINGS).toMatchObject({
      upstreamUrl: 'https://integrate.api.nvidia.com/v1',
      upstreamLimit: 40,
      bucketBurst: 2,
      createDashboard: true,
      deletionProtection: true,
      logRetention: RetentionDays.ONE_MONTH,
    });
  });

  it('reads the strings the CLI passes', () => {
    // Act
    const settings = fromContext({
      upstreamUrl: 'https://api.example.com/v1/',
      upstreamLimit: '100',
      bucketBurst: '3',
      createDashboard: 'false',
      deletionProtection: 'false',
      logRetentionDays: '7',
      routes: '[{"match":"gpt-","upstream":"limited"}]',
      config: '{"queue_max_size":1000,"max_wait_s":120}',
    });

    // Assess
    expect(settings).toMatchObject({
      upstreamUrl: 'https://api.example.com/v1',
      upstreamLimit: 100,
      bucketBurst: 3,
      createDashboard: false,
      deletionProtection: false,
      logRetention: RetentionDays.ONE_WEEK,
    });
    expect(gatewayConfigEnvironment(settings)).toEqual({
      SLUICE_UPSTREAM_URL: 'https://api.example.com/v1',
      SLUICE_UPSTREAM_LIMIT: '100',
      SLUICE_BUCKET_BURST: '3',
      SLUICE_ROUTES: '[{"match":"gpt-","upstream":"limited"}]',
      SLUICE_QUEUE_MAX: '1000',
      SLUICE_MAX_WAIT_S: '120',
    });
  });

  it('an upstream list replaces the single upstream’s URL and limit variables', () => {
    const list = [
      { name: 'nv-a', limit: 30 },
      { name: 'nv-b', limit: 40 },
    ];
    const settings = fromContext({ upstreams: list });
    expect(gatewayConfigEnvironment(settings)).toEqual({
      SLUICE_UPSTREAMS: JSON.stringify(list),
      SLUICE_BUCKET_BURST: '2',
    });
  });

  it('takes parsed values from cdk.json as they are', () => {
    const settings = fromContext({
      routes: [{ match: 'meta/', upstream: 'limited' }],
      createDashboard: false,
    });
    expect(settings.routes).toBe('[{"match":"meta/","upstream":"limited"}]');
    expect(settings.createDashboard).toBe(false);
  });

  it.each<[string, Partial<Record<ContextKey, unknown>>, RegExp]>([
    ['a burst that breaks the window limit', { upstreamLimit: '10', bucketBurst: '10' }, /bucket_burst/],
    ['a non-integer limit', { upstreamLimit: '4.5' }, /upstreamLimit: must be a positive integer/],
    ['a plain-http upstream', { upstreamUrl: 'http://api.example.com' }, /https:/],
    [
      'routes that are not an array',
      { routes: '{"match":"x"}' },
      /routes: SLUICE_ROUTES must be a JSON array/,
    ],
    ['routes that are not JSON', { routes: '[oops' }, /routes: is not valid JSON/],
    ['an unknown config field', { config: '{"queue_size":3}' }, /unknown config field queue_size/],
    ['an out-of-range config value', { config: '{"max_wait_s":600}' }, /SLUICE_MAX_WAIT_S must be between/],
    ['a retention CloudWatch does not offer', { logRetentionDays: '31' }, /logRetentionDays: must be one of/],
    ['a boolean spelled otherwise', { createDashboard: 'no' }, /createDashboard: must be true or false/],
    ['a secret id that is not an ARN', { upstreamKeySecretArn: 'my-secret' }, /upstreamKeySecretArn/],
    ['an upstream list that is not JSON', { upstreams: '[oops' }, /upstreams: is not valid JSON/],
    ['an upstream with a bad name', { upstreams: '[{"name":"A B","limit":5}]' }, /upstreams: .*name must be/],
    [
      'a local key variable on AWS',
      { upstreams: '[{"name":"a","key_env":"K","limit":5}]' },
      /key_env is for local/,
    ],
    [
      'a plain-http upstream in the list',
      { upstreams: '[{"name":"a","url":"http://x.example","limit":5}]' },
      /https/,
    ],
    [
      'upstreamLimit beside the list',
      { upstreams: '[{"name":"a","limit":5}]', upstreamLimit: '40' },
      /upstreamLimit: set it in the upstreams list/,
    ],
    [
      'a key_secret that is not an ARN',
      { upstreams: '[{"name":"a","limit":5},{"name":"b","limit":5,"key_secret":"b"}]' },
      /b: key_secret must be a Secrets Manager secret ARN/,
    ],
  ])('refuses %s', (_name, context, message) => {
    expect(() => fromContext(context)).toThrow(message);
  });
});
