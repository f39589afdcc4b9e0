// Security hardening through the whole local system (issue 13): each upstream gets its own credential and no
// other's, only `forward_paths` reach the upstream, a credential that cannot be read costs no token and leaks
// nothing, upstream error text reaches agents trimmed and redacted, and `model` is bounded.
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LocalSystem } from '../../local/runtime.js';
import { allTickets, startTestSystem } from '../support/system.js';
import { call, chatBody } from './support.js';

const LIMITED_KEY = 'nvapi-local-simulated';
const OPEN_MODEL = 'open/tiny-model';
/** A key-like string the open upstream echoes in its error bodies. */
const ECHOED_KEY = 'sk-proj-abcdefghijklmnopqrstuvwxyz0123456789';

/** The open upstream: a loopback server that records what it receives and answers like an OpenAI endpoint. */
interface Capture {
  server: Server;
  url: string;
  hits: { path: string; headers: IncomingHttpHeaders }[];
}

const startCapture = async (): Promise<Capture> => {
  const hits: Capture['hits'] = [];
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      hits.push({ path: req.url ?? '', headers: req.headers });
      const body = Buffer.concat(chunks).toString('utf8');
      if (body.includes('"leak"')) {
        res.writeHead(500, { 'content-type': 'text/plain' });
        res.end(
          `internal error: upstream call with Authorization: Bearer ${ECHOED_KEY} to arn:aws:iam::123456789012:role/x failed ${'x'.repeat(2_000)}`,
        );
        return;
      }
      if (body.includes('"bad"')) {
        res.writeHead(400, { 'content-type': 'application/json' });
        res.end(
          JSON.stringify({ error: { message: `invalid key ${ECHOED_KEY}`, type: 'invalid_request_error' } }),
        );
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(
        JSON.stringify({
          id: 'x',
          object: 'chat.completion',
          choices: [{ index: 0, message: { role: 'assistant', content: 'hi' }, finish_reason: 'stop' }],
          usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 },
        }),
      );
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1`, hits };
};

const ROUTES = JSON.stringify([
  { match: 'open/', upstream: 'open' },
  { match: 'meta/', upstream: 'limited' },
]);

describe('per-upstream credentials and forwarded paths', () => {
  let system: LocalSystem;
  let open: Capture;
  let key: string;

  beforeAll(async () => {
    open = await startCapture();
    system = await startTestSystem('hardening', {
      fakeUpstream: { tokenDelayMs: 1, firstByteDelayMs: 1, limit: null },
      env: {
        SLUICE_UPSTREAM_LIMIT: '600',
        SLUICE_BUCKET_BURST: '5',
        SLUICE_OPEN_UPSTREAM_URL: open.url,
        SLUICE_ROUTES: ROUTES,
      },
    });
    key = await system.createKey('hardening', 'urgent');
  });

  afterAll(async () => {
    await system?.stop();
    await new Promise<void>((r) => open.server.close(() => r()));
  });

  it('the open upstream never sees the limited key (nor any credential by default); the limited one sees only its own', async () => {
    const replies = await Promise.all([
      call(system, key, { body: JSON.stringify({ model: OPEN_MODEL, messages: [] }) }),
      call(system, key, { body: JSON.stringify({ model: OPEN_MODEL, stream: false, messages: [] }) }),
      call(system, key),
    ]);
    expect(replies.map((r) => r.status)).toEqual([200, 200, 200]);
    expect(open.hits.length).toBeGreaterThanOrEqual(2);
    for (const hit of open.hits) {
      expect(hit.headers.authorization).toBeUndefined();
      expect(JSON.stringify(hit.headers)).not.toContain(LIMITED_KEY);
      expect(JSON.stringify(hit.headers)).not.toContain(key);
    }
    const limitedCalls = system.upstream!.calls;
    expect(limitedCalls.length).toBeGreaterThanOrEqual(1);
    for (const c of limitedCalls) expect(c.headers.authorization).toBe(`Bearer ${LIMITED_KEY}`);
  });

  it.each([
    ['/v1/files', 'GET'],
    ['/v1/batches', 'POST'],
    ['/v1/chat/completions/chatcmpl-123', 'GET'],
    ['/v1/chat/completions/chatcmpl-123/messages', 'GET'],
    ['/v1/assistants', 'GET'],
    ['/v1/fine_tuning/jobs', 'GET'],
  ])(
    '%s (%s) is not forwarded: 404 in the OpenAI shape, nothing reaches an upstream',
    async (path, method) => {
      const before = system.upstream!.calls.length + open.hits.length;
      const reply = await call(system, key, {
        path,
        method,
        ...(method === 'POST' ? { body: chatBody() } : {}),
      });
      expect(reply.status).toBe(404);
      expect(reply.error?.type).toBe('not_found_error');
      expect(reply.error?.code).toBe('not_found');
      expect(system.upstream!.calls.length + open.hits.length).toBe(before);
    },
  );

  it.each([
    ['/v1/chat/completions', 'POST', 200],
    ['/v1/embeddings', 'POST', 200],
    ['/v1/models', 'GET', 200],
  ])('%s (%s) is forwarded by default', async (path, method, status) => {
    const reply = await call(system, key, {
      path,
      method,
      ...(method === 'POST'
        ? {
            body:
              path === '/v1/embeddings'
                ? JSON.stringify({ model: 'meta/llama-3.1-8b-instruct', input: 'x' })
                : chatBody(),
          }
        : {}),
    });
    expect(reply.status).toBe(status);
  });

  it('upstream error bodies reach the agent trimmed, with key-like strings and ARNs redacted', async () => {
    const server = await call(system, key, {
      body: JSON.stringify({ model: OPEN_MODEL, messages: [], leak: 1 }),
    });
    const client = await call(system, key, {
      body: JSON.stringify({ model: OPEN_MODEL, messages: [], bad: 1 }),
    });
    expect(server.status).toBe(502);
    expect(client.status).toBe(400);
    for (const reply of [server, client]) {
      expect(reply.text).not.toContain(ECHOED_KEY);
      expect(reply.text).not.toContain('123456789012');
      expect(reply.error?.message.length).toBeLessThanOrEqual(600);
    }
    expect(server.error?.message).toContain('[redacted]');
  });

  it('a model id over 256 characters is refused with 400 before admission; 256 is accepted', async () => {
    const before = (await allTickets(system)).length;
    const long = await call(system, key, { body: chatBody({ model: `meta/${'m'.repeat(252)}` }) });
    expect(long.status).toBe(400);
    expect(long.error?.param).toBe('model');
    expect((await allTickets(system)).length).toBe(before);
    const fits = await call(system, key, { body: chatBody({ model: `meta/${'m'.repeat(251)}` }) });
    expect(fits.status).not.toBe(400);
  });
});

describe('a credential that cannot be read', () => {
  let system: LocalSystem;
  let key: string;
  const saved = { ...process.env };

  beforeAll(async () => {
    // Secrets Manager refuses the connection (a loopback port nobody listens on): the SDK's error names the
    // endpoint and the secret; the agent must see neither, and no token may be spent.
    process.env.AWS_ENDPOINT_URL_SECRETS_MANAGER = 'http://127.0.0.1:9';
    process.env.AWS_ACCESS_KEY_ID = 'local';
    process.env.AWS_SECRET_ACCESS_KEY = 'local';
    process.env.AWS_REGION = 'us-east-1';
    system = await startTestSystem('hardening-key', {
      fakeUpstream: { tokenDelayMs: 1, firstByteDelayMs: 1, limit: null },
      env: {
        SLUICE_UPSTREAM_KEY_SECRET: 'arn:aws:secretsmanager:us-east-1:123456789012:secret:nvidia-key-AbCdEf',
      },
    });
    key = await system.createKey('hardening-key', 'urgent');
  });

  afterAll(async () => {
    await system?.stop();
    for (const k of [
      'AWS_ENDPOINT_URL_SECRETS_MANAGER',
      'AWS_ACCESS_KEY_ID',
      'AWS_SECRET_ACCESS_KEY',
      'AWS_REGION',
    ])
      if (saved[k] === undefined) delete process.env[k];
      else process.env[k] = saved[k];
  });

  it('answers a fixed 503 upstream_key_unavailable, admits nothing and spends no token', async () => {
    const bucketBefore = await system.stores.bucket.refresh().then(() => system.stores.bucket.state);
    const reply = await call(system, key);
    expect(reply.status).toBe(503);
    expect(reply.error?.code).toBe('upstream_key_unavailable');
    expect(reply.text).not.toMatch(/123456789012|arn:aws|ECONNREFUSED|127\.0\.0\.1/);
    expect(await allTickets(system)).toEqual([]);
    expect(system.upstream!.calls).toEqual([]);
    await system.stores.bucket.refresh();
    expect(system.stores.bucket.state?.tat).toBe(bucketBefore?.tat);
  });
});
