// The status function's wrapped handler (middy + Powertools Router) on realistic REST proxy events, with
// injected fakes: auth per route, error shapes, CORS, readiness answers.
import { Logger } from '@aws-lambda-powertools/logger';
import type { APIGatewayProxyEvent, APIGatewayProxyResult, Context } from 'aws-lambda';
import { beforeAll, describe, expect, it } from 'vitest';
import { makeStatusHandler, type StatusDeps } from '../../functions/status/app.js';
import { MemoryConfigStore } from '../../lib/adapters/memory/stores.js';
import { FakeClock } from '../../lib/domain/clock.js';
import { DEFAULT_CONFIG, type GatewayConfig } from '../../lib/domain/config.js';
import { ConfigService } from '../../lib/domain/config-service.js';
import { AuthenticationError, PermissionError } from '../../lib/domain/errors.js';
import type { AgentKey } from '../../lib/domain/ports.js';
import { initialRetreat } from '../../lib/domain/retreat.js';
import { StatusAccess } from '../../lib/status/access.js';
import { AdminService } from '../../lib/status/admin.js';
import { Readiness } from '../../lib/status/health.js';
import { Memo } from '../../lib/status/memo.js';
import type { StatusSnapshot } from '../../lib/status/snapshot.js';
import { ADMIN_TOKEN, type ErrorJson, quietObservability, VIEWER_TOKEN } from './support.js';

const AGENT_KEY = `sk-sluice-${'a'.repeat(43)}`;
const DISABLED_KEY = `sk-sluice-${'d'.repeat(43)}`;
const ORIGIN = 'https://dashboard.example.com';
const clock = new FakeClock(1_800_000_000_000);

const fakeSnapshot = { at: clock.now(), configVersion: 1 } as StatusSnapshot;

/** Switches the fakes read on every call. */
interface Faults {
  dynamodb: boolean;
  sqs: boolean;
  upstreamStatus: number;
  /** Whether the probe sent the upstream's API key (the status function has it locally). */
  upstreamWithKey: boolean;
  snapshotFails: boolean;
}

interface World {
  handler: ReturnType<typeof makeStatusHandler>;
  faults: Faults;
}

const world = (opts: { allowedOrigin?: string; config?: Partial<GatewayConfig> } = {}): World => {
  const store = new MemoryConfigStore();
  const config = new ConfigService(store, clock, { ...DEFAULT_CONFIG, ...opts.config }, 0);
  const faults: Faults = {
    dynamodb: true,
    sqs: true,
    upstreamStatus: 200,
    upstreamWithKey: true,
    snapshotFails: false,
  };
  const deps: StatusDeps = {
    snapshots: new Memo(
      async () => {
        if (faults.snapshotFails)
          throw new Error('ProvisionedThroughputExceeded on table sluice-state (arn:…)');
        return fakeSnapshot;
      },
      clock,
      1_000,
    ),
    access: new StatusAccess({
      keys: {
        authenticate: async (header): Promise<AgentKey> => {
          if (header === `Bearer ${AGENT_KEY}`) {
            return { keyHash: 'h', agent: 'agent-a', maxPriority: 'urgent', enabled: true, createdAt: 0 };
          }
          if (header === `Bearer ${DISABLED_KEY}`)
            throw new PermissionError('This API key is disabled.', 'key_disabled');
          throw new AuthenticationError('Unknown API key.');
        },
      },
      adminToken: async () => ADMIN_TOKEN,
      viewerToken: async () => VIEWER_TOKEN,
    }),
    admin: new AdminService({
      usage: {
        read: async (_now, span) => [
          {
            agent: 'agent-a',
            requests: span === 'hour' ? 3 : 30,
            tokens: 60,
            throttled: 1,
            refused: 0,
            avgQueueMs: 250,
          },
        ],
      },
      config,
      history: store,
      tickets: { admissionCount: async () => 0 },
      retreat: {
        reset: async () => initialRetreat(40, clock.now()),
        follow: async () => initialRetreat(40, clock.now()),
      },
      clock,
    }),
    readiness: new Readiness({
      dynamodb: async () => {
        if (!faults.dynamodb) throw new Error('connect ECONNREFUSED 127.0.0.1:8000');
      },
      sqs: async () => {
        if (!faults.sqs) throw new Error('sqs down');
      },
      upstream: async () => ({ status: faults.upstreamStatus, withKey: faults.upstreamWithKey }),
      clock,
      upstreamEveryMs: 0,
    }),
    config,
    clock,
    startedAt: clock.now() - 42_000,
    ...(opts.allowedOrigin ? { allowedOrigin: opts.allowedOrigin } : {}),
  };
  // The expected 500 below is logged at ERROR; keep the test output for real failures.
  return { handler: makeStatusHandler(deps, { logger: new Logger({ logLevel: 'SILENT' }) }), faults };
};

const event = (
  method: string,
  path: string,
  opts: { token?: string; body?: string; headers?: Record<string, string> } = {},
): APIGatewayProxyEvent => {
  const headers: Record<string, string> = {
    Host: 'abc123.execute-api.eu-west-1.amazonaws.com',
    'X-Forwarded-Proto': 'https',
    ...(opts.token ? { Authorization: `Bearer ${opts.token}` } : {}),
    ...(opts.body ? { 'Content-Type': 'application/json' } : {}),
    ...opts.headers,
  };
  return {
    resource: path,
    path,
    httpMethod: method,
    headers,
    multiValueHeaders: Object.fromEntries(Object.entries(headers).map(([k, v]) => [k, [v]])),
    queryStringParameters: null,
    multiValueQueryStringParameters: null,
    pathParameters: null,
    stageVariables: null,
    body: opts.body ?? null,
    isBase64Encoded: false,
    requestContext: {
      accountId: '123456789012',
      apiId: 'abc123',
      authorizer: undefined,
      domainName: 'abc123.execute-api.eu-west-1.amazonaws.com',
      domainPrefix: 'abc123',
      extendedRequestId: 'x=',
      httpMethod: method,
      identity: {
        accessKey: null,
        accountId: null,
        apiKey: null,
        apiKeyId: null,
        caller: null,
        clientCert: null,
        cognitoAuthenticationProvider: null,
        cognitoAuthenticationType: null,
        cognitoIdentityId: null,
        cognitoIdentityPoolId: null,
        principalOrgId: null,
        sourceIp: '203.0.113.9',
        user: null,
        userAgent: 'vitest',
        userArn: null,
      },
      path: `/prod${path}`,
      protocol: 'HTTP/1.1',
      requestId: 'req-1',
      requestTime: '22/Nov/2026:00:00:00 +0000',
      requestTimeEpoch: clock.now(),
      resourceId: 'r1',
      resourcePath: path,
      stage: 'prod',
    },
  };
};

let requestNo = 0;
const context = (): Context => ({
  callbackWaitsForEmptyEventLoop: false,
  functionName: 'sluice-status',
  functionVersion: '$LATEST',
  invokedFunctionArn: 'arn:aws:lambda:eu-west-1:123456789012:function:sluice-status',
  memoryLimitInMB: '256',
  awsRequestId: `aws-req-${++requestNo}`,
  logGroupName: '/aws/lambda/sluice-status',
  logStreamName: 'stream',
  getRemainingTimeInMillis: () => 29_000,
  done: () => undefined,
  fail: () => undefined,
  succeed: () => undefined,
});

const invoke = async (w: World, ev: APIGatewayProxyEvent) => {
  const res = (await w.handler(ev, context())) as APIGatewayProxyResult;
  // As API Gateway sends them: single-value headers, and multi-value ones joined.
  const headers = Object.fromEntries([
    ...Object.entries(res.headers ?? {}).map(([k, v]) => [k.toLowerCase(), String(v)]),
    ...Object.entries(res.multiValueHeaders ?? {}).map(([k, vs]) => [k.toLowerCase(), vs.join(', ')]),
  ]);
  return {
    status: res.statusCode,
    headers,
    json: res.body ? (JSON.parse(res.body) as Record<string, unknown>) : {},
  };
};

const expectOpenAiError = (json: Record<string, unknown>, type: string, code: string) => {
  const e = (json as unknown as ErrorJson).error;
  expect(e).toEqual({ message: expect.any(String), type, param: e.param, code });
};

beforeAll(() => quietObservability());

describe('GET /status access', () => {
  it.each([
    ['no token', undefined, 401, 'authentication_error', 'invalid_api_key'],
    ['an unknown token', 'not-a-token', 401, 'authentication_error', 'invalid_api_key'],
    ['an unknown agent key', `sk-sluice-${'z'.repeat(43)}`, 401, 'authentication_error', 'invalid_api_key'],
    ['a disabled agent key', DISABLED_KEY, 403, 'permission_error', 'key_disabled'],
  ])('refuses %s', async (_what, token, status, type, code) => {
    const res = await invoke(world(), event('GET', '/status', token ? { token } : {}));
    expect(res.status).toBe(status);
    expectOpenAiError(res.json, type, code);
  });

  it.each([
    ['the viewer token', VIEWER_TOKEN],
    ['the admin token', ADMIN_TOKEN],
    ['an agent key', AGENT_KEY],
  ])('serves the snapshot to %s, cacheable for one second', async (_what, token) => {
    const res = await invoke(world(), event('GET', '/status', { token }));
    expect(res.status).toBe(200);
    expect(res.headers['cache-control']).toBe('max-age=1');
    expect(res.json).toEqual(fakeSnapshot);
  });

  it('is open without a token only when status_public is on', async () => {
    const res = await invoke(world({ config: { statusPublic: true } }), event('GET', '/status'));
    expect(res.status).toBe(200);
  });

  it('answers a failed build with a generic 500 that leaks nothing', async () => {
    const w = world();
    w.faults.snapshotFails = true;
    const res = await invoke(w, event('GET', '/status', { token: VIEWER_TOKEN }));
    expect(res.status).toBe(500);
    expectOpenAiError(res.json, 'server_error', 'internal_error');
    expect(JSON.stringify(res.json)).not.toMatch(/Provisioned|arn|sluice-state/);
  });
});

describe('admin routes', () => {
  it.each([
    ['GET', '/admin/config', undefined],
    ['PATCH', '/admin/config', '{"queue_max_size": 10}'],
    ['POST', '/admin/retreat/reset', undefined],
    ['POST', '/admin/pause', undefined],
    ['POST', '/admin/resume', undefined],
    ['POST', '/admin/drain', undefined],
    ['GET', '/admin/usage', undefined],
  ])(
    '%s %s: 401 without or with an unknown token, 403 for viewer and agent tokens',
    async (method, path, body) => {
      const w = world();
      const b = body ? { body } : {};
      expect((await invoke(w, event(method, path, b))).status).toBe(401);
      expect((await invoke(w, event(method, path, { ...b, token: 'nope' }))).status).toBe(401);
      for (const token of [VIEWER_TOKEN, AGENT_KEY]) {
        const res = await invoke(w, event(method, path, { ...b, token }));
        expect(res.status).toBe(403);
        expectOpenAiError(res.json, 'permission_error', 'admin_required');
      }
      expect((await invoke(w, event(method, path, { ...b, token: ADMIN_TOKEN }))).status).toBe(200);
    },
  );

  it.each([
    ['not JSON', '{"queue_max_size":', 'invalid_json'],
    ['an array', '[1,2]', 'invalid_json'],
    ['an empty object', '{}', 'empty_patch'],
    ['empty', '', 'empty_body'],
  ])('refuses a body that is %s', async (_what, body, code) => {
    const res = await invoke(world(), event('PATCH', '/admin/config', { token: ADMIN_TOKEN, body }));
    expect(res.status).toBe(400);
    expectOpenAiError(res.json, 'invalid_request_error', code);
  });
});

describe('operator modes and usage', () => {
  it.each([
    ['pause', { paused: true, draining: false }],
    ['drain', { paused: false, draining: true }],
  ] as const)('POST /admin/%s sets the switch, records it, and resume clears it', async (mode, expected) => {
    const w = world();
    const res = await invoke(w, event('POST', `/admin/${mode}`, { token: ADMIN_TOKEN }));
    expect(res.status).toBe(200);
    expect(res.json.config).toMatchObject(expected);
    const changes = res.json.changes as { field: string; from: unknown; to: unknown; by: string }[];
    expect(changes).toEqual([
      expect.objectContaining({
        field: mode === 'pause' ? 'paused' : 'draining',
        from: false,
        to: true,
        by: 'admin',
      }),
    ]);
    const resumed = await invoke(w, event('POST', '/admin/resume', { token: ADMIN_TOKEN }));
    expect(resumed.json.config).toMatchObject({ paused: false, draining: false });
  });

  it('POST /admin/pause answers only once a call let go before it has left (3/4 of the grant slack)', async () => {
    const w = world();
    for (const [mode, waited] of [
      ['pause', 750],
      ['resume', 0],
      ['drain', 0],
    ] as const) {
      const before = clock.now();
      const res = await invoke(w, event('POST', `/admin/${mode}`, { token: ADMIN_TOKEN }));
      expect(res.status).toBe(200);
      expect(clock.now() - before).toBe(waited);
    }
  });

  it('GET /admin/usage lists per-agent usage for the last hour and day, admin only', async () => {
    const res = await invoke(world(), event('GET', '/admin/usage', { token: ADMIN_TOKEN }));
    expect(res.status).toBe(200);
    expect(res.json).toMatchObject({
      hour: [{ agent: 'agent-a', requests: 3, tokens: 60, throttled: 1, avgQueueMs: 250 }],
      day: [{ agent: 'agent-a', requests: 30 }],
    });
  });
});

describe('health', () => {
  it('answers liveness without a token and without touching anything', async () => {
    const w = world();
    w.faults.dynamodb = false;
    const res = await invoke(w, event('GET', '/health'));
    expect(res.status).toBe(200);
    expect(res.json).toMatchObject({ status: 'ok', service: 'sluice-status', uptimeS: 42 });
  });

  it('is ready when DynamoDB, SQS and the upstream answer (a 401 to a probe without the key still means reachable)', async () => {
    const w = world();
    w.faults.upstreamStatus = 401;
    w.faults.upstreamWithKey = false;
    const res = await invoke(w, event('GET', '/health/ready'));
    expect(res.status).toBe(200);
    expect(res.json).toMatchObject({
      status: 'ready',
      ready: true,
      checks: { dynamodb: { ok: true }, sqs: { ok: true }, upstream: { ok: true, status: 401 } },
    });
  });

  it.each([
    // Check names and a fixed word only: the raw error (AWS text names accounts, roles, ARNs) stays out.
    ['DynamoDB is down', { dynamodb: false }, /^Not ready \(dynamodb: failed\)\.$/],
    ['SQS is down', { sqs: false }, /^Not ready \(sqs: failed\)\.$/],
    ['the upstream answers 503', { upstreamStatus: 503 }, /^Not ready \(upstream: failed\)\.$/],
    [
      'the upstream refuses the key (401)',
      { upstreamStatus: 401 },
      /^Not ready \(upstream: wrong key \(HTTP 401\)\)\.$/,
    ],
    [
      'the upstream refuses the key (403)',
      { upstreamStatus: 403 },
      /^Not ready \(upstream: wrong key \(HTTP 403\)\)\.$/,
    ],
  ])('is not ready when %s: 503, OpenAI-shaped, with the checks', async (_what, broken, message) => {
    const w = world();
    Object.assign(w.faults, broken);
    const res = await invoke(w, event('GET', '/health/ready'));
    expect(res.status).toBe(503);
    expectOpenAiError(res.json, 'server_error', 'not_ready');
    expect((res.json as unknown as ErrorJson).error.message).toMatch(message);
    expect(res.json).toMatchObject({ ready: false, checks: expect.any(Object) });
    expect(JSON.stringify(res.json)).not.toMatch(/ECONNREFUSED|sqs down|answered 503/);
    expect(res.headers['retry-after']).toBe('5');
  });
});

describe('routing and CORS', () => {
  it('answers unknown paths 404 and wrong methods 405, OpenAI-shaped, with a request id', async () => {
    const w = world();
    const missing = await invoke(w, event('GET', '/nope', { token: ADMIN_TOKEN }));
    expect(missing.status).toBe(404);
    expectOpenAiError(missing.json, 'not_found_error', 'not_found');
    expect(missing.headers['x-request-id']).toMatch(/^aws-req-\d+$/);
    const wrong = await invoke(w, event('DELETE', '/status', { token: ADMIN_TOKEN }));
    expect(wrong.status).toBe(405);
    expectOpenAiError(wrong.json, 'invalid_request_error', 'method_not_allowed');
  });

  it("sends CORS headers for the dashboard's origin only and answers preflights", async () => {
    const w = world({ allowedOrigin: ORIGIN });
    const preflight = await invoke(
      w,
      event('OPTIONS', '/admin/config', {
        headers: { Origin: ORIGIN, 'Access-Control-Request-Method': 'PATCH' },
      }),
    );
    expect(preflight.status).toBe(204);
    expect(preflight.headers).toMatchObject({
      'access-control-allow-origin': ORIGIN,
      'access-control-allow-methods': expect.stringContaining('PATCH'),
      'access-control-allow-headers': expect.stringContaining('authorization'),
      'access-control-max-age': '600',
    });
    const ok = await invoke(w, event('GET', '/status', { token: VIEWER_TOKEN, headers: { Origin: ORIGIN } }));
    expect(ok.headers['access-control-allow-origin']).toBe(ORIGIN);
    // Errors carry them too, or the browser could not read the 401.
    const refused = await invoke(w, event('GET', '/status', { headers: { Origin: ORIGIN } }));
    expect(refused.status).toBe(401);
    expect(refused.headers['access-control-allow-origin']).toBe(ORIGIN);
    const other = await invoke(
      w,
      event('GET', '/status', { token: VIEWER_TOKEN, headers: { Origin: 'https://evil.example' } }),
    );
    expect(other.headers['access-control-allow-origin']).toBeUndefined();
    const unset = await invoke(
      world(),
      event('GET', '/status', { token: VIEWER_TOKEN, headers: { Origin: ORIGIN } }),
    );
    expect(unset.headers['access-control-allow-origin']).toBeUndefined();
  });
});
