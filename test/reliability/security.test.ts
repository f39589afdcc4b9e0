// Security through the whole local system: secrets (agent keys, admin and viewer tokens, the upstream key) never
// appear in logs, metrics, errors, stored items or the status snapshot; the agent's Authorization and hop-by-hop
// headers never go upstream; the upstream host is fixed; a key's max priority holds whatever the headers; a
// disabled key stops within the cache time; admin endpoints always need the admin token; CORS allows the
// dashboard's origin only.
import { createHash } from 'node:crypto';
import { createServer, request as httpRequest, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { ScanCommand } from '@aws-sdk/client-dynamodb';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hashKey, KEY_CACHE_MS } from '../../lib/domain/auth.js';
import { statusRoutes } from '../../local/status-routes.js';
import { testDynamoClient } from '../support/aws.js';
import { allTickets } from '../support/system.js';
import {
  call,
  chatBody,
  expectInvariants,
  type FaultySystem,
  parseError,
  report,
  sleep,
  startFaultySystem,
} from './support.js';

const ORIGIN = 'https://dash.example';
const VIEWER = 'viewer-token-for-security-test-0123456789';
const UPSTREAM_KEY = 'nvapi-local-simulated';

/** Everything written to stdout/stderr (and the local runtime's own log) while the system runs. */
const captured: string[] = [];
const writes = {
  out: process.stdout.write.bind(process.stdout),
  err: process.stderr.write.bind(process.stderr),
};

let f: FaultySystem;
let keys: { urgent: string; low: string; disabled: string };
/** Requests to a second server the gateway must never call. */
const evilHits: string[] = [];
let evil: Server;
let evilAddr: string;

beforeAll(async () => {
  // Full logging and metrics, as an operator debugging production would turn on.
  process.env.LOG_LEVEL = 'DEBUG';
  process.env.POWERTOOLS_LOG_LEVEL = 'DEBUG';
  process.env.POWERTOOLS_METRICS_DISABLED = 'false';
  process.env.POWERTOOLS_METRICS_NAMESPACE = 'sluice';
  const tap =
    (write: typeof writes.out) =>
    (chunk: unknown, ...rest: unknown[]): boolean => {
      captured.push(typeof chunk === 'string' ? chunk : Buffer.from(chunk as Uint8Array).toString('utf8'));
      return (write as (c: unknown, ...r: unknown[]) => boolean)(chunk, ...rest);
    };
  process.stdout.write = tap(writes.out) as typeof process.stdout.write;
  process.stderr.write = tap(writes.err) as typeof process.stderr.write;

  evil = createServer((req, res) => {
    evilHits.push(`${req.method} ${req.url}`);
    res.end('{}');
  });
  await new Promise<void>((r) => evil.listen(0, '127.0.0.1', r));
  evilAddr = `127.0.0.1:${(evil.address() as AddressInfo).port}`;

  f = await startFaultySystem('rel-security', {
    fakeUpstream: { tokenDelayMs: 2, firstByteDelayMs: 2, limit: null },
    env: {
      SLUICE_UPSTREAM_LIMIT: '600',
      SLUICE_BUCKET_BURST: '5',
      SLUICE_ALLOWED_ORIGIN: ORIGIN,
      SLUICE_VIEWER_TOKEN: VIEWER,
      SLUICE_AWS_REQUEST_TIMEOUT_MS: '1000',
    },
    extraRoutes: statusRoutes,
    log: (line) => captured.push(line),
  });
  keys = {
    urgent: await f.system.createKey('sec-urgent', 'urgent'),
    low: await f.system.createKey('sec-low', 'low'),
    disabled: await f.system.createKey('sec-disabled', 'normal'),
  };
});

afterAll(async () => {
  try {
    await expectInvariants(f.system, expect);
  } finally {
    await f?.stop();
    process.stdout.write = writes.out as typeof process.stdout.write;
    process.stderr.write = writes.err as typeof process.stderr.write;
    await new Promise<void>((r) => evil.close(() => r()));
  }
});

/** A POST with the path exactly as given (no client-side normalisation). */
const rawPost = (path: string, key: string, host?: string) =>
  new Promise<{ status: number; text: string }>((resolve, reject) => {
    const url = new URL(f.system.url);
    const body = chatBody();
    const req = httpRequest(
      {
        host: url.hostname,
        port: url.port,
        method: 'POST',
        path,
        headers: {
          ...(host ? { host } : {}),
          authorization: `Bearer ${key}`,
          'content-type': 'application/json',
          'content-length': Buffer.byteLength(body),
        },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () =>
          resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }),
        );
      },
    );
    req.on('error', reject);
    req.end(body);
  });

const secrets = () => ({
  ...keys,
  admin: f.system.adminToken,
  viewer: VIEWER,
  upstream: UPSTREAM_KEY,
});

describe('headers that never go upstream', () => {
  it("the agent's Authorization, cookies, proxy and hop-by-hop headers stay at the gateway", async () => {
    const url = new URL(f.system.url);
    const sent: Record<string, string> = {
      authorization: `Bearer ${keys.urgent}`,
      'content-type': 'application/json',
      connection: 'keep-alive, x-hop-secret',
      'x-hop-secret': 'hop-value',
      'keep-alive': 'timeout=5',
      te: 'trailers',
      'proxy-authorization': 'Basic cHJveHk6c2VjcmV0',
      cookie: 'session=cookie-secret',
      'x-api-key': 'agent-api-key-secret',
      'x-forwarded-for': '203.0.113.9',
      'x-forwarded-host': evilAddr,
      forwarded: `host=${evilAddr}`,
      'x-priority': 'high',
      'idempotency-key': 'idem-secret-1',
      'x-amzn-trace-id': 'Root=1-00000000-000000000000000000000000',
    };
    const body = chatBody();
    const status = await new Promise<number>((resolve, reject) => {
      const req = httpRequest(
        {
          host: url.hostname,
          port: url.port,
          method: 'POST',
          path: '/v1/chat/completions',
          headers: { ...sent, 'content-length': Buffer.byteLength(body) },
        },
        (res) => {
          res.resume();
          res.on('end', () => resolve(res.statusCode ?? 0));
        },
      );
      req.on('error', reject);
      req.end(body);
    });
    expect(status).toBe(200);
    const upstream = f.system.upstream!.calls.at(-1)!.headers;
    expect(upstream.authorization).toBe(`Bearer ${UPSTREAM_KEY}`);
    for (const [name, value] of Object.entries(sent)) {
      if (name === 'content-type') continue;
      expect(upstream[name], name).not.toBe(value);
      expect(JSON.stringify(upstream)).not.toContain(
        value === 'keep-alive, x-hop-secret' ? 'x-hop-secret' : value,
      );
    }
  });
});

describe('the upstream is fixed by configuration', () => {
  it.each([
    () => `/v1//${evilAddr}/chat/completions`,
    () => `/v1/@${evilAddr}/chat/completions`,
    () => `/v1/http://${evilAddr}/v1/chat/completions`,
    () => `/v1/..//${evilAddr}/x`,
    () => '/v1/../../admin/config',
    () => '/v1/%2e%2e/%2e%2e/status',
    () => '/v1/chat/../../status',
    () => '/v1/chat/completions/..%2f..%2f..%2fadmin',
    () => '/v1/.%2e/.%2e/evil',
    () => '/v1/chat\\..\\..\\status',
    () => `/v1/chat/completions?url=http://${evilAddr}/`,
  ])('path %# reaches no other host and no path outside /v1', async (pathOf) => {
    const path = pathOf();
    const before = f.system.upstream!.calls.length;
    // Sent as is (fetch would resolve the dot segments before they left the client).
    const res = await rawPost(path, keys.urgent);
    expect(res.status).toBeLessThan(500);
    if (res.status >= 400) expect(parseError(res.text).error).toBeDefined();
    const reached = f.system.upstream!.calls.slice(before).map((c) => c.path);
    for (const p of reached) expect(p.startsWith('/v1/')).toBe(true);
    expect(evilHits).toEqual([]);
    report('upstream fixed', {
      path,
      status: res.status,
      code: parseError(res.text).error?.code,
      upstreamPaths: reached,
    });
  });

  it('an absolute-form request target or a foreign Host header changes nothing', async () => {
    expect((await rawPost(`http://${evilAddr}/v1/chat/completions`, keys.urgent, evilAddr)).status).toBe(404);
    expect((await rawPost('/v1/chat/completions', keys.urgent, evilAddr)).status).toBe(200);
    expect(evilHits).toEqual([]);
  });
});

describe('priority and keys', () => {
  it.each([
    [{ 'x-priority': 'urgent' }],
    [{ 'x-priority': ' URGENT ' }],
    [{ 'x-priority': 'High' }],
    [{ 'x-sluice-priority': 'urgent' }],
    [{ priority: 'u=0' }],
    [{ 'x-priority': 'low', 'X-Priority-Override': 'urgent' }],
  ])('a low key stays low with %j', async (headers) => {
    const before = new Set((await allTickets(f.system)).map((t) => t.id));
    const res = await call(f.system, keys.low, { headers });
    expect(res.status).toBe(200);
    expect(res.headers.get('x-sluice-priority')).toBe('low');
    const mine = (await allTickets(f.system)).filter((t) => !before.has(t.id));
    expect(mine.map((t) => t.priority)).toEqual(['low']);
  });

  it(`a disabled key stops working within the key cache time (${KEY_CACHE_MS / 1000} s)`, async () => {
    expect((await call(f.system, keys.disabled)).status).toBe(200);
    await f.system.stores.keys.setEnabled(hashKey(keys.disabled), false);
    const disabledAt = Date.now();
    let status = 200;
    while (status === 200 && Date.now() - disabledAt < KEY_CACHE_MS + 8_000) {
      await sleep(250);
      status = (await call(f.system, keys.disabled, { path: '/v1/models', method: 'GET' })).status;
    }
    expect(status).toBe(403);
    // The cache time plus a generous margin for a loaded machine (a cache that never expired still fails this).
    expect(Date.now() - disabledAt).toBeLessThanOrEqual(KEY_CACHE_MS + 4_000);
  }, 30_000);

  it('keys are stored only as SHA-256 hashes: no table holds a key or a token in clear', async () => {
    const client = testDynamoClient();
    try {
      const dump: string[] = [];
      for (const table of [
        f.system.env.SLUICE_KEYS_TABLE,
        f.system.env.SLUICE_STATE_TABLE,
        f.system.env.SLUICE_TICKETS_TABLE,
      ]) {
        const res = await client.send(new ScanCommand({ TableName: table, ConsistentRead: true }));
        dump.push(JSON.stringify(res.Items));
      }
      const all = dump.join('\n');
      for (const [name, secret] of Object.entries(secrets())) expect(all.includes(secret), name).toBe(false);
      // The keys table holds the hashes.
      expect(dump[0]).toContain(hashKey(keys.urgent));
      expect(hashKey(keys.urgent)).toBe(createHash('sha256').update(keys.urgent).digest('hex'));
    } finally {
      client.destroy();
    }
  });
});

describe('admin endpoints and CORS', () => {
  const status = async (
    method: string,
    path: string,
    headers: Record<string, string> = {},
    body?: string,
  ) => {
    const res = await fetch(`${f.system.url}${path}`, { method, headers, ...(body ? { body } : {}) });
    return { status: res.status, headers: res.headers, text: await res.text() };
  };

  const ADMIN_ROUTES: [string, string, string?][] = [
    ['GET', '/admin/config'],
    ['PATCH', '/admin/config', '{"queue_max_size": 7}'],
    ['POST', '/admin/retreat/reset'],
    ['POST', '/admin/pause'],
    ['POST', '/admin/resume'],
    ['POST', '/admin/drain'],
    ['GET', '/admin/usage'],
  ];
  const BAD_CREDENTIALS: [string, () => Record<string, string>, number][] = [
    ['no token', () => ({}), 401],
    ['an agent key', () => ({ authorization: `Bearer ${keys.urgent}` }), 403],
    ['the viewer token', () => ({ authorization: `Bearer ${VIEWER}` }), 403],
    ['a wrong token', () => ({ authorization: `Bearer ${f.system.adminToken}x` }), 401],
    [
      'a prefix of the admin token',
      () => ({ authorization: `Bearer ${f.system.adminToken.slice(0, -1)}` }),
      401,
    ],
    ['the admin token in another header', () => ({ 'x-api-key': f.system.adminToken }), 401],
    [
      'the admin token as Basic',
      () => ({ authorization: `Basic ${Buffer.from(`admin:${f.system.adminToken}`).toString('base64')}` }),
      401,
    ],
  ];

  it.each(
    ADMIN_ROUTES.flatMap(([m, p, b]) =>
      BAD_CREDENTIALS.map(([who, h, s]) => [`${m} ${p}`, who, m, p, b, h, s] as const),
    ),
  )('%s with %s is refused', async (_route, _who, method, path, body, headers, expected) => {
    const before = await f.system.stores.config.current();
    const res = await status(method, path, { 'content-type': 'application/json', ...headers() }, body);
    expect(res.status).toBe(expected);
    expect(parseError(res.text).error).toMatchObject({
      type: expect.stringMatching(/authentication_error|permission_error/),
    });
    f.system.stores.config.invalidate();
    expect((await f.system.stores.config.current()).version).toBe(before.version);
  });

  it('the admin token in the query string is not accepted either', async () => {
    const res = await status('GET', `/admin/config?token=${f.system.adminToken}`);
    expect(res.status).toBe(401);
  });

  it.each([
    ['GET', '/status'],
    ['OPTIONS', '/status'],
    ['OPTIONS', '/admin/config'],
    ['GET', '/admin/config'],
    ['GET', '/v1/models'],
    ['OPTIONS', '/v1/chat/completions'],
  ])('CORS on %s %s: the dashboard origin only, never a wildcard', async (method, path) => {
    const auth = { authorization: `Bearer ${f.system.adminToken}` };
    const preflight: Record<string, string> =
      method === 'OPTIONS' ? { 'access-control-request-method': 'GET' } : {};
    for (const origin of [
      'https://evil.example',
      'null',
      `${ORIGIN}.evil.example`,
      `${ORIGIN}:8443`,
      'http://dash.example',
    ]) {
      const res = await status(method, path, { origin, ...auth, ...preflight });
      expect(res.headers.get('access-control-allow-origin'), origin).toBeNull();
    }
    const ok = await status(method, path, { origin: ORIGIN, ...auth, ...preflight });
    expect(ok.headers.get('access-control-allow-origin')).toBe(ORIGIN);
    expect(ok.headers.get('access-control-allow-credentials')).toBeNull();
  });

  it('the status snapshot (admin view) leaks no key, token or key hash', async () => {
    await call(f.system, keys.urgent);
    const res = await status('GET', '/status', { authorization: `Bearer ${f.system.adminToken}` });
    expect(res.status).toBe(200);
    for (const [name, secret] of Object.entries(secrets()))
      expect(res.text.includes(secret), name).toBe(false);
    for (const k of Object.values(keys)) expect(res.text.includes(hashKey(k))).toBe(false);
    const usage = await status('GET', '/admin/usage', { authorization: `Bearer ${f.system.adminToken}` });
    for (const [name, secret] of Object.entries(secrets()))
      expect(usage.text.includes(secret), name).toBe(false);
  });
});

describe('no secret in any log line, metric or error of the run', () => {
  it('failures on the way (bad keys, a failing store, upstream errors) are logged without secrets', async () => {
    // Errors of every kind, so their log lines are part of the capture.
    await call(f.system, `${keys.urgent.slice(0, -1)}A`);
    await call(f.system, 'sk-sluice-short');
    await call(f.system, keys.disabled);
    f.system.upstream!.setFault({ kind: 'status', status: 401, body: '{"error":"bad key"}' }, 1);
    const refused = await call(f.system, keys.urgent);
    expect(refused.status).toBe(502);
    expect(refused.error?.code).toBe('upstream_auth_failed');
    f.system.upstream!.setFault({ kind: 'status', status: 500 }, 1);
    await call(f.system, keys.urgent);
    f.system.upstream!.setFault({ kind: 'cut_mid_stream', afterChunks: 2 }, 1);
    await call(f.system, keys.urgent, { body: chatBody({ stream: true }) });
    const remove = f.dynamo.add({
      name: 'keys-down',
      match: (c) => c.action === 'GetItem' && c.body.includes(hashKey(keys.low)),
      fault: { kind: 'status', status: 500 },
    });
    await sleep(KEY_CACHE_MS);
    const down = await call(f.system, keys.low).finally(remove);
    expect(down.error?.code).toBe('store_unavailable');
    // Every reply the agents saw is free of secrets too (the errors above included).
    for (const r of [refused, down])
      for (const s of Object.values(secrets())) expect(r.text.includes(s)).toBe(false);
  }, 30_000);

  it('the capture holds logs and metrics, and none of the secrets', async () => {
    await sleep(500);
    const text = captured.join('');
    // The capture is real: debug logs and EMF metrics of the functions are in it.
    expect(text).toMatch(/"_aws":\{"Timestamp"/);
    expect(text).toMatch(/"level":"(DEBUG|INFO|WARN|ERROR)"/);
    for (const [name, secret] of Object.entries(secrets())) expect(text.includes(secret), name).toBe(false);
    for (const k of Object.values(keys)) expect(text.includes(hashKey(k)), 'key hash').toBe(false);
  });
});
