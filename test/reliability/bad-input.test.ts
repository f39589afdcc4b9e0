// Bad input at the ingress, through the local API Gateway: each gets a clear OpenAI-shaped 4xx, and nothing is
// enqueued, no ticket written, no token spent, nothing sent upstream. (Extends test/e2e/request-path.test.ts,
// which covers malformed JSON, empty body, a missing model, a non-boolean stream, a text/plain body, an unknown
// priority and the basic key failures.)
import { connect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PRIORITIES } from '../../lib/domain/priority.js';
import type { LocalSystem } from '../../local/runtime.js';
import { allTickets, startTestSystem } from '../support/system.js';
import { parseError } from './support.js';

let system: LocalSystem;
let key: string;

beforeAll(async () => {
  system = await startTestSystem('rel-bad-input', {
    fakeUpstream: { tokenDelayMs: 5, firstByteDelayMs: 5, limit: null },
    env: { SLUICE_UPSTREAM_LIMIT: '600', SLUICE_BUCKET_BURST: '5', SLUICE_MAX_BODY_BYTES: '1048576' },
  });
  key = await system.createKey('bad-input', 'urgent');
});

afterAll(async () => {
  await system?.stop();
});

/** What must not move when a request is refused. */
const snapshot = async () => ({
  tickets: (await allTickets(system)).length,
  counts: await system.stores.tickets.counts(),
  tat: (await system.stores.bucket.refresh())?.tat,
  upstream: system.upstream!.calls.length,
  messages: (await Promise.all(PRIORITIES.map((p) => system.stores.queue.depth(p)))).reduce(
    (a, d) => a + d.visible + d.inFlight,
    0,
  ),
});

interface Raw {
  status: number;
  headers: Record<string, string>;
  body: string;
}

/** The payload of a chunked HTTP/1.1 body. */
const dechunk = (body: string): string => {
  let out = '';
  let rest = body;
  for (;;) {
    const nl = rest.indexOf('\r\n');
    const size = Number.parseInt(rest.slice(0, nl), 16);
    if (nl < 0 || !size) return out;
    out += rest.slice(nl + 2, nl + 2 + size);
    rest = rest.slice(nl + 2 + size + 2);
  }
};

/** Sends raw bytes over TCP and reads the answer until the server closes or answers completely. */
const raw = (request: string | Buffer): Promise<Raw> =>
  new Promise((resolve, reject) => {
    const url = new URL(system.url);
    const socket = connect(Number(url.port), url.hostname);
    const chunks: Buffer[] = [];
    const done = () => {
      const text = Buffer.concat(chunks).toString('utf8');
      const [head = '', ...rest] = text.split('\r\n\r\n');
      const [statusLine = '', ...lines] = head.split('\r\n');
      const headers: Record<string, string> = {};
      for (const l of lines) {
        const i = l.indexOf(':');
        if (i > 0) headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim();
      }
      const body = rest.join('\r\n\r\n');
      resolve({
        status: Number(statusLine.split(' ')[1]),
        headers,
        body: headers['transfer-encoding'] === 'chunked' ? dechunk(body) : body,
      });
    };
    socket.on('data', (c: Buffer) => {
      chunks.push(c);
      const text = Buffer.concat(chunks).toString('utf8');
      const m = /content-length:\s*(\d+)/i.exec(text);
      const sep = text.indexOf('\r\n\r\n');
      if (m && sep >= 0 && Buffer.byteLength(text.slice(sep + 4)) >= Number(m[1])) {
        socket.destroy();
        done();
      }
    });
    socket.on('end', done);
    socket.on('error', (e) => (chunks.length ? done() : reject(e)));
    socket.setTimeout(10_000, () => socket.destroy(new Error('raw request timed out')));
    socket.end(request);
  });

const send = async (init: {
  method?: string;
  path?: string;
  headers?: Record<string, string>;
  body?: string | Uint8Array<ArrayBuffer>;
  auth?: string | null;
}) => {
  const res = await fetch(`${system.url}${init.path ?? '/v1/chat/completions'}`, {
    method: init.method ?? 'POST',
    headers: {
      ...(init.auth === null ? {} : { authorization: init.auth ?? `Bearer ${key}` }),
      ...init.headers,
    },
    ...(init.body !== undefined ? { body: init.body } : {}),
  });
  return { status: res.status, headers: res.headers, body: await res.text() };
};

const json = { 'content-type': 'application/json' };
const chat = (extra: Record<string, unknown>) => JSON.stringify({ messages: [], ...extra });
const nested = (depth: number) => `{"model":"meta/x","messages":${'['.repeat(depth)}${']'.repeat(depth)}}`;

type Case = [name: string, init: Parameters<typeof send>[0], status: number, code: string];

const CASES: Case[] = [
  ['malformed JSON, trailing garbage', { headers: json, body: '{"model":"meta/x"} x' }, 400, 'invalid_json'],
  ['a JSON array, not an object', { headers: json, body: '[]' }, 400, 'invalid_json'],
  ['a JSON string', { headers: json, body: '"hi"' }, 400, 'invalid_json'],
  ['JSON null', { headers: json, body: 'null' }, 400, 'invalid_json'],
  [
    'missing content type',
    { body: new TextEncoder().encode(chat({ model: 'meta/x' })) },
    400,
    'invalid_content_type',
  ],
  [
    'form content type',
    { headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: 'model=meta/x' },
    400,
    'invalid_content_type',
  ],
  [
    'binary content type',
    { headers: { 'content-type': 'application/octet-stream' }, body: chat({ model: 'meta/x' }) },
    400,
    'invalid_content_type',
  ],
  [
    'application/jsonx',
    { headers: { 'content-type': 'application/jsonx' }, body: chat({ model: 'meta/x' }) },
    400,
    'invalid_content_type',
  ],
  ['whitespace-only body', { headers: json, body: ' \n\t ' }, 400, 'empty_body'],
  [
    'body over the configured maximum (1 MiB)',
    { headers: json, body: chat({ model: 'meta/x', pad: 'x'.repeat(1_100_000) }) },
    413,
    'payload_too_large',
  ],
  [
    "body over API Gateway's 10 MB",
    { headers: json, body: chat({ model: 'meta/x', pad: 'x'.repeat(10_500_000) }) },
    413,
    'payload_too_large',
  ],
  ['JSON nested 65 deep', { headers: json, body: nested(65) }, 400, 'json_too_deep'],
  ['JSON nested 100 000 deep', { headers: json, body: nested(100_000) }, 400, 'json_too_deep'],
  [
    'invalid UTF-8',
    { headers: json, body: Uint8Array.from([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x7d]) },
    400,
    'invalid_encoding',
  ],
  [
    'stream as a string',
    { headers: json, body: chat({ model: 'meta/x', stream: 'true' }) },
    400,
    'invalid_type',
  ],
  ['stream as a number', { headers: json, body: chat({ model: 'meta/x', stream: 1 }) }, 400, 'invalid_type'],
  ['model a number', { headers: json, body: chat({ model: 5 }) }, 400, 'invalid_model'],
  ['model null', { headers: json, body: chat({ model: null }) }, 400, 'invalid_model'],
  ['model an array', { headers: json, body: chat({ model: ['meta/x'] }) }, 400, 'invalid_model'],
  ['model blank', { headers: json, body: chat({ model: '   ' }) }, 400, 'invalid_model'],
  [
    'POST on models',
    { method: 'POST', path: '/v1/models', headers: json, body: '{}' },
    405,
    'method_not_allowed',
  ],
  ['unknown path outside /v1', { method: 'GET', path: '/v2/chat/completions' }, 404, 'not_found'],
  ['the root', { method: 'GET', path: '/' }, 404, 'not_found'],
  [
    'DELETE on chat completions',
    { method: 'DELETE', path: '/v1/chat/completions' },
    405,
    'method_not_allowed',
  ],
  [
    'PUT on chat completions',
    { method: 'PUT', headers: json, body: chat({ model: 'meta/x' }) },
    405,
    'method_not_allowed',
  ],
  [
    'PATCH on embeddings',
    { method: 'PATCH', path: '/v1/embeddings', headers: json, body: '{}' },
    405,
    'method_not_allowed',
  ],
  ['DELETE on models', { method: 'DELETE', path: '/v1/models' }, 405, 'method_not_allowed'],
  [
    'X-Priority unknown',
    { headers: { ...json, 'x-priority': 'asap!' }, body: chat({ model: 'meta/x' }) },
    400,
    'invalid_priority',
  ],
  [
    'X-Priority a list',
    { headers: { ...json, 'x-priority': 'urgent, low' }, body: chat({ model: 'meta/x' }) },
    400,
    'invalid_priority',
  ],
  [
    'key too short',
    { auth: 'Bearer sk-sluice-abc', headers: json, body: chat({ model: 'meta/x' }) },
    401,
    'invalid_api_key',
  ],
  [
    'key with a bad character',
    { auth: `Bearer sk-sluice-${'A'.repeat(42)}!`, headers: json, body: chat({ model: 'meta/x' }) },
    401,
    'invalid_api_key',
  ],
  [
    'key too long',
    { auth: `Bearer sk-sluice-${'A'.repeat(44)}`, headers: json, body: chat({ model: 'meta/x' }) },
    401,
    'invalid_api_key',
  ],
  [
    'Basic scheme',
    { auth: 'Basic dXNlcjpwYXNz', headers: json, body: chat({ model: 'meta/x' }) },
    401,
    'invalid_api_key',
  ],
  [
    'Bearer without a token',
    { auth: 'Bearer ', headers: json, body: chat({ model: 'meta/x' }) },
    401,
    'invalid_api_key',
  ],
  [
    'two tokens',
    { auth: 'Bearer a b', headers: json, body: chat({ model: 'meta/x' }) },
    401,
    'invalid_api_key',
  ],
];

describe('bad input gets an OpenAI-shaped 4xx and costs nothing', () => {
  it.each(
    CASES.map(([name, init, status, code]) => [`${name} → ${status} ${code}`, init, status, code] as const),
  )('%s', async (_name, init, status, code) => {
    const before = await snapshot();
    const res = await send(init);
    expect(res.status, res.body.slice(0, 300)).toBe(status);
    const body = JSON.parse(res.body) as { error: Record<string, unknown> };
    expect(body.error).toMatchObject({ code, message: expect.any(String), type: expect.any(String) });
    expect(body.error).toHaveProperty('param');
    expect(await snapshot()).toEqual(before);
  });
});

describe('bad input the HTTP layer refuses before the handler', () => {
  const head = (extra: string) =>
    `POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${key}\r\nContent-Type: application/json\r\n${extra}Content-Length: 2\r\nConnection: close\r\n\r\n{}`;

  it.each([
    ['X-Priority with a bare CR', 'X-Priority: urgent\rX-Evil: 1\r\n', 400],
    ['X-Priority with a bare LF', 'X-Priority: urgent\nX-Evil: 1\r\n', 400],
    ['a NUL in a header', 'X-Priority: urg\0ent\r\n', 400],
    ['a 20 KB header', `X-Pad: ${'a'.repeat(20_000)}\r\n`, 431],
    [
      'a 100 KB header block',
      Array.from({ length: 50 }, (_, i) => `X-Pad-${i}: ${'b'.repeat(2_000)}\r\n`).join(''),
      431,
    ],
  ])('%s → %s, OpenAI-shaped, nothing queued', async (_name, extra, status) => {
    const before = await snapshot();
    const res = await raw(head(extra));
    expect(res.status).toBe(status);
    expect(res.headers['content-type']).toContain('application/json');
    expect(parseError(res.body).error).toMatchObject({ type: 'invalid_request_error' });
    expect(await snapshot()).toEqual(before);
  });

  it('a GET with a body → 400 unexpected_body', async () => {
    const before = await snapshot();
    const res = await raw(
      `GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${key}\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}`,
    );
    expect(res.status).toBe(400);
    expect(parseError(res.body).error).toMatchObject({ code: 'unexpected_body' });
    expect(await snapshot()).toEqual(before);
  });

  it('an unknown HTTP method → 405, OpenAI-shaped', async () => {
    const before = await snapshot();
    const res = await raw(
      `FOO /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${key}\r\nConnection: close\r\n\r\n`,
    );
    expect([400, 405]).toContain(res.status);
    expect(parseError(res.body).error).toMatchObject({ type: 'invalid_request_error' });
    expect(await snapshot()).toEqual(before);
  });
});
