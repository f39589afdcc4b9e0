// Tests for local/apigw/adapter.ts + local/awslambda-shim.ts: REST v1 events, streaming via middy and Powertools, gateway errors.
import '../../local/awslambda-shim.js';

import { request } from 'node:http';
import { Readable } from 'node:stream';
import { Router, streamify } from '@aws-lambda-powertools/event-handler/http';
import middy from '@middy/core';
import { executionModeStreamifyResponse } from '@middy/core/StreamifyResponse';
import type { APIGatewayProxyEvent, APIGatewayProxyResult, Context } from 'aws-lambda';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type ApiRoute, type LocalApiGateway, startApiGateway } from '../../local/apigw/adapter.js';
import { getClientSignal, isStreamingHandler } from '../../local/awslambda-shim.js';

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** A promise plus its resolver, for handlers to report what they saw. */
function deferred<T>(): { promise: Promise<T>; resolve: (value: T) => void } {
  let resolve!: (value: T) => void;
  const promise = new Promise<T>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

/** Reads a fetch body, noting when each piece arrived. */
async function readTimed(res: Response): Promise<{ text: string; times: number[] }> {
  const reader = res.body!.getReader();
  const decoder = new TextDecoder();
  let text = '';
  const times: number[] = [];
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return { text, times };
    times.push(performance.now());
    text += decoder.decode(value, { stream: true });
  }
}

/** A Readable that yields `chunks` with `gapMs` between them. */
function slowBody(chunks: string[], gapMs: number): Readable {
  return Readable.from(
    (async function* () {
      for (const [i, chunk] of chunks.entries()) {
        if (i > 0) await sleep(gapMs);
        yield chunk;
      }
    })(),
  );
}

// (1) middy 7 streaming: returns { statusCode, headers, body: Readable }; middy calls HttpResponseStream.from.
const middyStreaming = middy({ executionMode: executionModeStreamifyResponse }).handler(async () => ({
  statusCode: 201,
  headers: { 'Content-Type': 'text/plain', 'X-Sluice-Test': 'middy' },
  body: slowBody(['chunk-1 ', 'chunk-2 ', 'chunk-3'], 60),
}));

// (2) Powertools Router with a streaming route and a JSON route, served through `streamify`.
const app = new Router();
app.get('/status', () => ({ ok: true, service: 'sluice' }));
app.post('/v1/chat/completions', async ({ req }) => {
  const { model } = (await req.json()) as { model: string };
  const encoder = new TextEncoder();
  const events = new ReadableStream<Uint8Array>({
    async start(controller) {
      for (const word of ['hello', 'from', model]) {
        controller.enqueue(encoder.encode(`data: ${JSON.stringify({ word })}\n\n`));
        await sleep(60);
      }
      controller.enqueue(encoder.encode('data: [DONE]\n\n'));
      controller.close();
    },
  });
  return new Response(events, { status: 200, headers: { 'Content-Type': 'text/event-stream' } });
});
const powertoolsStreaming = streamify(app);

// (3) A plain buffered handler that echoes the event and context it received.
let lastEvent: APIGatewayProxyEvent | undefined;
let lastRemainingMs = -1;
const echo = async (event: APIGatewayProxyEvent, context: Context): Promise<APIGatewayProxyResult> => {
  lastEvent = event;
  lastRemainingMs = context.getRemainingTimeInMillis();
  return {
    statusCode: 200,
    headers: { 'Content-Type': 'application/json', 'X-Echo': 'yes' },
    multiValueHeaders: { 'Set-Cookie': ['a=1', 'b=2'] },
    body: JSON.stringify({ path: event.path, proxy: event.pathParameters?.proxy ?? null }),
  };
};

// (6) Disconnect detection, raw runtime API and middy.
let rawDisconnect = deferred<{ closedAfterMs: number; signalAborted: boolean; finished: boolean }>();
const rawStreaming = awslambda.streamifyResponse(async (_event, responseStream) => {
  const stream = awslambda.HttpResponseStream.from(responseStream, {
    statusCode: 200,
    headers: { 'Content-Type': 'text/plain' },
  });
  stream.write('first chunk\n');
  const signal = getClientSignal(responseStream);
  const wroteAt = performance.now();
  await new Promise((resolve) => stream.once('close', resolve));
  stream.write('written after the client left: must not throw');
  rawDisconnect.resolve({
    closedAfterMs: performance.now() - wroteAt,
    signalAborted: signal?.aborted ?? false,
    finished: stream.writableFinished,
  });
});

let middyBodyClosed = deferred<void>();
const middyEndless = middy({ executionMode: executionModeStreamifyResponse }).handler(async () => {
  let n = 0;
  const body = new Readable({
    read() {
      setTimeout(() => this.push(`tick ${n++}\n`), 30);
    },
  });
  body.once('close', () => middyBodyClosed.resolve());
  return { statusCode: 200, headers: { 'Content-Type': 'text/plain' }, body };
});

// Streaming edge cases: no prelude, failure after headers.
const noPrelude = awslambda.streamifyResponse(async (_event, responseStream) => {
  responseStream.write('plain ');
  responseStream.end('bytes');
});
const failsMidStream = awslambda.streamifyResponse(async (_event, responseStream) => {
  const stream = awslambda.HttpResponseStream.from(responseStream, { statusCode: 200, headers: {} });
  stream.write('partial');
  await sleep(20);
  throw new Error('boom after headers');
});

const routes: ApiRoute[] = [
  { method: 'GET', path: '/middy/stream', handler: middyStreaming },
  { method: 'GET', path: '/middy/endless', handler: middyEndless },
  { method: 'GET', path: '/raw/disconnect', handler: rawStreaming },
  { method: 'GET', path: '/raw/no-prelude', handler: noPrelude },
  { method: 'GET', path: '/raw/fails', handler: failsMidStream },
  {
    method: 'POST',
    path: '/buffered/throws',
    handler: async () => Promise.reject(new Error('handler exploded')),
  },
  {
    method: 'GET',
    path: '/buffered/garbage',
    handler: async () => ({ statusCode: 200, body: { not: 'a string' } }),
  },
  { method: 'GET', path: '/buffered/hangs', handler: () => new Promise(() => {}), timeoutMs: 300 },
  { method: 'ANY', path: '/echo/{proxy+}', handler: echo, timeoutMs: 5000 },
  { method: 'ANY', path: '/status', handler: powertoolsStreaming },
  { method: 'ANY', path: '/v1/{proxy+}', handler: powertoolsStreaming },
];

let gateway: LocalApiGateway;
const logs: string[] = [];

beforeAll(async () => {
  gateway = await startApiGateway({ routes, log: (line) => logs.push(line) });
});

afterAll(async () => {
  await gateway.stop();
});

describe('awslambda shim', () => {
  it('marks streaming handlers like the runtime (same function, Symbol.for marker)', () => {
    expect(isStreamingHandler(middyStreaming)).toBe(true);
    expect(isStreamingHandler(powertoolsStreaming)).toBe(true);
    expect(isStreamingHandler(echo)).toBe(false);
    const fn = async (): Promise<void> => {};
    expect(awslambda.streamifyResponse(fn)).toBe(fn);
  });

  it('Powertools reads the global when its http module loads: without the shim first, streamify is not streaming', async () => {
    const globals = globalThis as unknown as Record<string, unknown>;
    const installed = globals.awslambda;
    delete globals.awslambda;
    try {
      // A fresh instance of Powertools' http utils (the query makes Node evaluate the file again).
      const utilsUrl = new URL(
        '../../node_modules/@aws-lambda-powertools/event-handler/lib/esm/http/utils.js',
        import.meta.url,
      );
      const fresh = (await import(`${utilsUrl.href}?without-shim`)) as { streamify: typeof streamify };
      expect(isStreamingHandler(fresh.streamify(new Router()))).toBe(false);
    } finally {
      globals.awslambda = installed;
    }
  });
});

describe('streaming through the local API Gateway', () => {
  it('(1) middy executionModeStreamifyResponse: status + headers first, chunks as they are produced', async () => {
    const start = performance.now();
    const res = await fetch(`${gateway.url}/middy/stream`);
    const headersAt = performance.now() - start;
    expect(res.status).toBe(201);
    expect(res.headers.get('x-sluice-test')).toBe('middy');
    expect(res.headers.get('content-type')).toBe('text/plain');
    const { text, times } = await readTimed(res);
    expect(text).toBe('chunk-1 chunk-2 chunk-3');
    expect(times.length).toBeGreaterThanOrEqual(2);
    const lastAt = times.at(-1)! - start;
    expect(lastAt - (times[0]! - start)).toBeGreaterThanOrEqual(50);
    expect(lastAt - headersAt).toBeGreaterThanOrEqual(50);
  });

  it('(2) Powertools Router + streamify: streaming SSE route over a REST v1 event', async () => {
    const start = performance.now();
    const res = await fetch(`${gateway.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ model: 'tiny' }),
    });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('text/event-stream');
    const { text, times } = await readTimed(res);
    expect(text).toContain('data: {"word":"hello"}');
    expect(text).toContain('data: {"word":"tiny"}');
    expect(text.endsWith('data: [DONE]\n\n')).toBe(true);
    expect(times.length).toBeGreaterThanOrEqual(2);
    expect(times.at(-1)! - times[0]!).toBeGreaterThanOrEqual(50);
    expect(times.at(-1)! - start).toBeGreaterThanOrEqual(150);
  });

  it('(2) Powertools Router + streamify: plain JSON route and its own 404', async () => {
    const res = await fetch(`${gateway.url}/status`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('application/json');
    expect(await res.json()).toEqual({ ok: true, service: 'sluice' });

    const missing = await fetch(`${gateway.url}/v1/unknown`);
    expect(missing.status).toBe(404);
    expect(((await missing.json()) as { statusCode: number }).statusCode).toBe(404);
  });

  it('a streaming handler that never calls HttpResponseStream.from answers 200 with its bytes', async () => {
    const res = await fetch(`${gateway.url}/raw/no-prelude`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('application/octet-stream');
    expect(await res.text()).toBe('plain bytes');
  });

  it('a streaming handler that throws after the headers cuts the connection', async () => {
    const res = await fetch(`${gateway.url}/raw/fails`);
    expect(res.status).toBe(200);
    await expect(res.text()).rejects.toThrow();
    expect(logs.some((line) => line.includes('boom after headers'))).toBe(true);
  });
});

describe('buffered handlers', () => {
  it('(3) returns status, headers, multi-value headers and body', async () => {
    const res = await fetch(`${gateway.url}/echo/a/b`);
    expect(res.status).toBe(200);
    expect(res.headers.get('x-echo')).toBe('yes');
    expect(res.headers.getSetCookie()).toEqual(['a=1', 'b=2']);
    expect(res.headers.get('content-length')).not.toBeNull();
    expect(res.headers.get('x-amzn-requestid')).toMatch(/^[0-9a-f-]{36}$/);
    expect(await res.json()).toEqual({ path: '/echo/a/b', proxy: 'a/b' });
    expect(lastRemainingMs).toBeGreaterThan(0);
    expect(lastRemainingMs).toBeLessThanOrEqual(5000);
  });

  it('a throwing handler gives 502 and is logged without the request body', async () => {
    const res = await fetch(`${gateway.url}/buffered/throws`, {
      method: 'POST',
      body: 'secret-request-body',
    });
    expect(res.status).toBe(502);
    expect(await res.json()).toEqual({
      error: { message: 'Internal server error', type: 'api_error', param: null, code: 'bad_gateway' },
    });
    expect(logs.some((line) => line.includes('handler exploded'))).toBe(true);
    expect(logs.some((line) => line.includes('secret-request-body'))).toBe(false);
  });

  it('a malformed proxy result (non-string body) gives 502', async () => {
    const res = await fetch(`${gateway.url}/buffered/garbage`);
    expect(res.status).toBe(502);
    expect(logs.some((line) => line.includes('Malformed Lambda proxy response'))).toBe(true);
  });

  it('a handler outliving its timeoutMs gives 502', async () => {
    const res = await fetch(`${gateway.url}/buffered/hangs`);
    expect(res.status).toBe(502);
    expect(logs.some((line) => line.includes('Task timed out'))).toBe(true);
  });
});

describe('gateway responses', () => {
  it('(4) rejects bodies over 10 MB with 413 before invoking the handler', async () => {
    lastEvent = undefined;
    const res = await fetch(`${gateway.url}/echo/upload`, {
      method: 'POST',
      body: Buffer.alloc(10 * 1024 * 1024 + 1, 97),
    });
    expect(res.status).toBe(413);
    expect(await res.json()).toEqual({
      error: {
        message: 'Request payload too large',
        type: 'invalid_request_error',
        param: null,
        code: 'payload_too_large',
      },
    });
    expect(lastEvent).toBeUndefined();
  });

  it('(5) answers unmatched routes with an OpenAI-shaped 404', async () => {
    const res = await fetch(`${gateway.url}/nope`, { method: 'DELETE' });
    expect(res.status).toBe(404);
    const body = (await res.json()) as { error: Record<string, unknown> };
    expect(body.error).toMatchObject({ type: 'invalid_request_error', param: null, code: 'not_found' });
    expect(body.error.message).toEqual(expect.any(String));
  });
});

describe('client disconnects', () => {
  it('(6) a raw streaming handler sees the stream close and the client signal abort', async () => {
    rawDisconnect = deferred();
    const controller = new AbortController();
    const res = await fetch(`${gateway.url}/raw/disconnect`, { signal: controller.signal });
    const reader = res.body!.getReader();
    expect(new TextDecoder().decode((await reader.read()).value)).toBe('first chunk\n');
    controller.abort();
    const abortedAt = performance.now();
    const seen = await Promise.race([rawDisconnect.promise, sleep(2000).then(() => null)]);
    expect(seen).not.toBeNull();
    expect(performance.now() - abortedAt).toBeLessThan(2000);
    expect(seen?.signalAborted).toBe(true);
    expect(seen?.finished).toBe(false);
  });

  it('(6) a middy streaming handler sees its body stream destroyed', async () => {
    middyBodyClosed = deferred();
    const controller = new AbortController();
    const res = await fetch(`${gateway.url}/middy/endless`, { signal: controller.signal });
    const reader = res.body!.getReader();
    expect(new TextDecoder().decode((await reader.read()).value)).toMatch(/^tick 0/);
    controller.abort();
    const closed = await Promise.race([
      middyBodyClosed.promise.then(() => true),
      sleep(2000).then(() => false),
    ]);
    expect(closed).toBe(true);
  });

  it('stop() closes in-flight streams promptly and they observe the disconnect', async () => {
    const own = await startApiGateway({ routes, log: (line) => logs.push(line) });
    middyBodyClosed = deferred();
    const res = await fetch(`${own.url}/middy/endless`);
    const reader = res.body!.getReader();
    await reader.read();
    const stoppedAt = performance.now();
    await own.stop();
    expect(performance.now() - stoppedAt).toBeLessThan(2000);
    await expect(reader.read()).rejects.toThrow();
    const closed = await Promise.race([
      middyBodyClosed.promise.then(() => true),
      sleep(2000).then(() => false),
    ]);
    expect(closed).toBe(true);
  });

  it('disconnect fallout (premature close in the handler pipeline) is not logged as an error', async () => {
    await sleep(100);
    expect(
      logs.filter((line) => line.includes('/middy/endless') || line.includes('/raw/disconnect')),
    ).toEqual([]);
  });
});

describe('(7) REST v1 event shape', () => {
  /** Sends a request with node:http so header casing and repeated headers survive. */
  function rawRequest(
    path: string,
    method: string,
    headers: Record<string, string | string[]>,
    body?: Buffer,
  ): Promise<number> {
    return new Promise((resolve, reject) => {
      const req = request(`${gateway.url}${path}`, { method }, (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
      });
      for (const [name, value] of Object.entries(headers)) req.setHeader(name, value);
      req.on('error', reject);
      req.end(body);
    });
  }

  it('query strings, path parameters, multi-value headers with client casing, requestContext', async () => {
    const status = await rawRequest('/echo/chat/completions?tag=a&tag=b%20c&model=m1&flag', 'GET', {
      'X-Agent-Name': 'alpha',
      'x-multi': ['one', 'two'],
    });
    expect(status).toBe(200);
    const event = lastEvent!;
    expect(event.resource).toBe('/echo/{proxy+}');
    expect(event.path).toBe('/echo/chat/completions');
    expect(event.httpMethod).toBe('GET');
    expect(event.pathParameters).toEqual({ proxy: 'chat/completions' });
    expect(event.queryStringParameters).toEqual({ tag: 'b c', model: 'm1', flag: '' });
    expect(event.multiValueQueryStringParameters).toEqual({ tag: ['a', 'b c'], model: ['m1'], flag: [''] });
    expect(event.headers['X-Agent-Name']).toBe('alpha');
    expect(event.headers['x-multi']).toBe('two');
    expect(event.multiValueHeaders['x-multi']).toEqual(['one', 'two']);
    expect(event.headers['X-Forwarded-For']).toBe('127.0.0.1');
    expect(event.stageVariables).toBeNull();
    expect(event.body).toBeNull();
    expect(event.isBase64Encoded).toBe(false);
    expect(event.requestContext).toMatchObject({
      accountId: expect.any(String),
      apiId: expect.any(String),
      stage: 'local',
      resourcePath: '/echo/{proxy+}',
      httpMethod: 'GET',
      path: '/local/echo/chat/completions',
      identity: { sourceIp: '127.0.0.1' },
    });
    expect(event.requestContext.requestId).toMatch(/^[0-9a-f-]{36}$/);
    expect(Math.abs(event.requestContext.requestTimeEpoch - Date.now())).toBeLessThan(5000);
  });

  it('null query maps when there is no query string', async () => {
    await fetch(`${gateway.url}/echo/x`);
    expect(lastEvent?.queryStringParameters).toBeNull();
    expect(lastEvent?.multiValueQueryStringParameters).toBeNull();
  });

  it('text bodies as UTF-8, binary ones base64-encoded', async () => {
    await rawRequest(
      '/echo/text',
      'POST',
      { 'Content-Type': 'application/json' },
      Buffer.from('{"q":"héllo"}'),
    );
    expect(lastEvent).toMatchObject({ body: '{"q":"héllo"}', isBase64Encoded: false });

    const invalidUtf8 = Buffer.from([0xff, 0xfe, 0x00, 0x61]);
    await rawRequest('/echo/bytes', 'POST', { 'Content-Type': 'text/plain' }, invalidUtf8);
    expect(lastEvent).toMatchObject({ body: invalidUtf8.toString('base64'), isBase64Encoded: true });

    const png = Buffer.from('looks like text but is image/png');
    await rawRequest('/echo/image', 'POST', { 'Content-Type': 'image/png' }, png);
    expect(lastEvent).toMatchObject({ body: png.toString('base64'), isBase64Encoded: true });
  });
});
