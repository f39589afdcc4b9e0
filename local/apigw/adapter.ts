// Local runtime: a small API Gateway REST API (Lambda proxy integration, response streaming) in front of Lambda handlers.
import { isUtf8 } from 'node:buffer';
import { randomBytes, randomUUID } from 'node:crypto';
import {
  createServer,
  type IncomingMessage,
  type Server,
  type ServerResponse,
  STATUS_CODES,
} from 'node:http';
import type { AddressInfo } from 'node:net';
import type { APIGatewayProxyEvent, Context } from 'aws-lambda';
import {
  getStreamingHighWaterMark,
  isStreamingHandler,
  LocalResponseStream,
  type ResponseSink,
  type StreamingHandler,
} from '../awslambda-shim.js';

/** Any Lambda handler: buffered `async (event, context)`, or streaming (wrapped by `awslambda.streamifyResponse`). */
export type LambdaFunction = (...args: never[]) => unknown;

/** One API Gateway resource + method bound to a Lambda function. */
export interface ApiRoute {
  /** HTTP method, or `'ANY'`. */
  method: string;
  /** Resource path, e.g. `/v1/{proxy+}`, `/status`, `/items/{id}`; `{name+}` is greedy. */
  path: string;
  handler: LambdaFunction;
  /** Lambda timeout; default 900000 (15 min). Drives `context.getRemainingTimeInMillis()`. */
  timeoutMs?: number;
  /** `context.functionName`; default `sluice-local`. */
  functionName?: string;
}

/** Options for {@link startApiGateway}. */
export interface ApiGatewayOptions {
  /** Routes, tried in order; the first match wins. */
  routes: ApiRoute[];
  /** Host to bind; default `127.0.0.1`. */
  host?: string;
  /** Port to listen on; default 0 (a free port). */
  port?: number;
  /** Stage name in `requestContext`; default `local`. */
  stage?: string;
  /** Request payload limit in bytes; default 10 MiB, API Gateway's. */
  maxBodyBytes?: number;
  /** Request content types passed base64-encoded (API Gateway's binaryMediaTypes); default {@link DEFAULT_BINARY_MEDIA_TYPES}. */
  binaryMediaTypes?: string[];
  /** Where invocation errors are logged (never with the request body); default stderr. */
  log?: (line: string) => void;
}

/** A running local API Gateway. */
export interface LocalApiGateway {
  /** Base URL, e.g. `http://127.0.0.1:41234`. */
  url: string;
  port: number;
  /** Stops listening and closes every connection (in-flight streams see a client disconnect). */
  stop(): Promise<void>;
  /**
   * Resolves when every invocation whose response has ended has also returned. A streaming handler may work on
   * after its response ended (as in Lambda, where the invocation lasts until the handler returns): tests that
   * read state right after a reply wait for that work here. Never waits for a response still in progress.
   */
  settled(): Promise<void>;
}

/** Content types whose bodies reach the handler base64-encoded even when they are valid UTF-8. */
export const DEFAULT_BINARY_MEDIA_TYPES: readonly string[] = [
  'application/octet-stream',
  'application/pdf',
  'application/zip',
  'application/gzip',
  'image/*',
  'audio/*',
  'video/*',
  'multipart/form-data',
];

/** API Gateway's request payload limit (10 MB). */
export const MAX_BODY_BYTES = 10 * 1024 * 1024;

const DEFAULT_TIMEOUT_MS = 900_000;
const ACCOUNT_ID = '123456789012';
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'transfer-encoding', 'upgrade', 'te', 'trailer']);

interface CompiledRoute {
  route: ApiRoute;
  method: string;
  regex: RegExp;
  paramNames: string[];
  resourceId: string;
}

interface Gateway {
  /** Invocations not yet returned, with their response side. */
  running: Map<Promise<void>, Exchange>;
  routes: CompiledRoute[];
  apiId: string;
  stage: string;
  region: string;
  maxBodyBytes: number;
  binaryMediaTypes: readonly string[];
  log: (line: string) => void;
}

interface ParsedHead {
  statusCode: number;
  headers: Array<[string, string]>;
}

/** Starts the gateway; resolves once it listens. */
export async function startApiGateway(opts: ApiGatewayOptions): Promise<LocalApiGateway> {
  const gateway = createGateway(opts);
  const server = createServer((req, res) => {
    handleRequest(gateway, req, res).catch((error: unknown) => {
      gateway.log(`[apigw] unexpected adapter error: ${describeError(error)}`);
      if (!res.headersSent) sendGatewayError(res, 502, 'bad_gateway');
      else res.destroy();
    });
  });
  // A request the HTTP parser refuses (bad header bytes, headers too large) never reaches a route: answer it
  // as API Gateway would, with a gateway response in the OpenAI error shape, and close the connection.
  server.on('clientError', (error: NodeJS.ErrnoException, socket) => {
    if (!socket.writable || error.code === 'ECONNRESET') {
      socket.destroy();
      return;
    }
    const tooLarge = error.code === 'HPE_HEADER_OVERFLOW';
    const status = tooLarge ? 431 : 400;
    const body = JSON.stringify({
      error: {
        message: tooLarge ? 'Request headers too large' : 'Malformed HTTP request',
        type: 'invalid_request_error',
        param: null,
        code: tooLarge ? 'headers_too_large' : 'bad_request',
      },
    });
    socket.end(
      `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nContent-Type: application/json\r\n` +
        `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
    );
  });
  const port = await listen(server, opts.port ?? 0, opts.host ?? '127.0.0.1');
  let stopped: Promise<void> | undefined;
  const settled = async () => {
    const tails = [...gateway.running].filter(([, exchange]) => exchange.ended).map(([p]) => p);
    await Promise.allSettled(tails);
  };
  return { url: `http://127.0.0.1:${port}`, port, stop: () => (stopped ??= stopServer(server)), settled };
}

function createGateway(opts: ApiGatewayOptions): Gateway {
  return {
    running: new Map(),
    routes: opts.routes.map(compileRoute),
    apiId: randomId(10),
    stage: opts.stage ?? 'local',
    region: process.env.AWS_REGION ?? 'us-east-1',
    maxBodyBytes: opts.maxBodyBytes ?? MAX_BODY_BYTES,
    binaryMediaTypes: opts.binaryMediaTypes ?? DEFAULT_BINARY_MEDIA_TYPES,
    log: opts.log ?? ((line) => process.stderr.write(`${line}\n`)),
  };
}

function listen(server: Server, port: number, host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve((server.address() as AddressInfo).port);
    });
  });
}

function stopServer(server: Server): Promise<void> {
  return new Promise((resolve, reject) => {
    server.close((error) => (error ? reject(error) : resolve()));
    server.closeAllConnections();
  });
}

// ---------------------------------------------------------------------------------------------------------------
// Routing

function compileRoute(route: ApiRoute): CompiledRoute {
  const paramNames: string[] = [];
  const pattern = route.path
    .split('/')
    .map((segment) => {
      const param = /^\{(\w+)(\+?)\}$/.exec(segment);
      if (!param) return segment.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
      paramNames.push(param[1]!);
      return param[2] ? '(.+)' : '([^/]+)';
    })
    .join('/');
  return {
    route,
    method: route.method.toUpperCase(),
    regex: new RegExp(`^${pattern}/?$`),
    paramNames,
    resourceId: randomId(6),
  };
}

function matchRoute(
  routes: CompiledRoute[],
  method: string,
  path: string,
): { compiled: CompiledRoute; params: Record<string, string> | null } | null {
  for (const compiled of routes) {
    if (compiled.method !== 'ANY' && compiled.method !== method) continue;
    const match = compiled.regex.exec(path);
    if (!match) continue;
    if (compiled.paramNames.length === 0) return { compiled, params: null };
    const params: Record<string, string> = {};
    compiled.paramNames.forEach((name, i) => {
      params[name] = safeDecode(match[i + 1] ?? '');
    });
    return { compiled, params };
  }
  return null;
}

// ---------------------------------------------------------------------------------------------------------------
// Request handling

async function handleRequest(gateway: Gateway, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const method = (req.method ?? 'GET').toUpperCase();
  const url = splitUrl(req.url ?? '/');
  if (!API_GATEWAY_METHODS.has(method)) {
    // API Gateway REST knows these methods only (`ANY` means them); anything else never reaches a Lambda.
    sendGatewayError(res, 405, 'method_not_allowed', `Method ${method} is not supported`);
    return;
  }
  if (Number(req.headers['content-length'] ?? 0) > gateway.maxBodyBytes) {
    rejectTooLarge(req, res);
    return;
  }
  const matched = matchRoute(gateway.routes, method, url.path);
  if (!matched) {
    sendGatewayError(res, 404, 'not_found', `No route for ${method} ${url.path}`);
    return;
  }
  const body = await readBody(req, gateway.maxBodyBytes);
  if (body === 'too_large') {
    rejectTooLarge(req, res);
    return;
  }
  if (body === 'aborted') return;
  const requestId = randomUUID();
  const event = buildEvent({ gateway, req, method, url, body, requestId, ...matched });
  const { route } = matched.compiled;
  const timeoutMs = route.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const context = buildContext(route.functionName ?? 'sluice-local', gateway.region, timeoutMs);
  const exchange = new Exchange(res, requestId, `${method} ${url.path}`, gateway.log);
  exchange.startTimer(timeoutMs);
  const invocation = isStreamingHandler(route.handler)
    ? invokeStreaming(exchange, route.handler, event, context)
    : invokeBuffered(exchange, route.handler, event, context);
  gateway.running.set(invocation, exchange);
  try {
    await invocation;
  } finally {
    gateway.running.delete(invocation);
  }
}

/** The request target as API Gateway sees it: the raw path (not normalised) and the parsed query. */
function splitUrl(target: string): { path: string; query: URLSearchParams } {
  const mark = target.indexOf('?');
  if (mark === -1) return { path: target, query: new URLSearchParams() };
  return { path: target.slice(0, mark), query: new URLSearchParams(target.slice(mark + 1)) };
}

/** Reads the whole body, stopping early once it exceeds `limit`. */
function readBody(req: IncomingMessage, limit: number): Promise<Buffer | 'too_large' | 'aborted'> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const settle = (result: Buffer | 'too_large' | 'aborted'): void => {
      req.off('data', onData).off('end', onEnd).off('error', onAbort).off('close', onAbort);
      resolve(result);
    };
    const onData = (chunk: Buffer): void => {
      size += chunk.length;
      if (size > limit) settle('too_large');
      else chunks.push(chunk);
    };
    const onEnd = (): void => settle(Buffer.concat(chunks));
    const onAbort = (): void => settle('aborted');
    req.on('data', onData).on('end', onEnd).on('error', onAbort).on('close', onAbort);
  });
}

/** 413 before the handler runs; the rest of the upload is drained so the client can read the answer. */
function rejectTooLarge(req: IncomingMessage, res: ServerResponse): void {
  res.shouldKeepAlive = false;
  sendGatewayError(res, 413, 'payload_too_large');
  req.resume();
}

const API_GATEWAY_METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS']);

const GATEWAY_ERRORS = {
  not_found: { message: 'Not found', type: 'invalid_request_error' },
  method_not_allowed: { message: 'Method not allowed', type: 'invalid_request_error' },
  payload_too_large: { message: 'Request payload too large', type: 'invalid_request_error' },
  bad_gateway: { message: 'Internal server error', type: 'api_error' },
} as const;

/** A gateway response (API Gateway answering itself), shaped like an OpenAI error. */
function sendGatewayError(
  res: ServerResponse,
  status: number,
  code: keyof typeof GATEWAY_ERRORS,
  message?: string,
): void {
  const { type, message: defaultMessage } = GATEWAY_ERRORS[code];
  const body = JSON.stringify({ error: { message: message ?? defaultMessage, type, param: null, code } });
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
}

// ---------------------------------------------------------------------------------------------------------------
// Event and context

interface EventInput {
  gateway: Gateway;
  req: IncomingMessage;
  method: string;
  url: { path: string; query: URLSearchParams };
  body: Buffer;
  requestId: string;
  compiled: CompiledRoute;
  params: Record<string, string> | null;
}

function buildEvent(input: EventInput): APIGatewayProxyEvent {
  const { gateway, req, method, url, compiled } = input;
  const { headers, multiValueHeaders } = collectHeaders(req);
  const query = collectQuery(url.query);
  const contentType = headerValue(headers, 'content-type');
  return {
    resource: compiled.route.path,
    path: url.path,
    httpMethod: method,
    headers,
    multiValueHeaders,
    queryStringParameters: query.single,
    multiValueQueryStringParameters: query.multi,
    pathParameters: input.params,
    stageVariables: null,
    requestContext: {
      accountId: ACCOUNT_ID,
      apiId: gateway.apiId,
      authorizer: undefined,
      domainName: headerValue(headers, 'host') ?? 'localhost',
      domainPrefix: (headerValue(headers, 'host') ?? 'localhost').split('.')[0],
      extendedRequestId: `${randomBytes(12).toString('base64url')}=`,
      httpMethod: method,
      identity: buildIdentity(req),
      path: `/${gateway.stage}${url.path}`,
      protocol: `HTTP/${req.httpVersion}`,
      requestId: input.requestId,
      requestTime: formatRequestTime(new Date()),
      requestTimeEpoch: Date.now(),
      resourceId: compiled.resourceId,
      resourcePath: compiled.route.path,
      stage: gateway.stage,
    },
    ...encodeBody(input.body, contentType, gateway.binaryMediaTypes),
  };
}

/** Header maps as API Gateway builds them: the client's casing, last value wins in `headers`, plus X-Forwarded-*. */
function collectHeaders(req: IncomingMessage): {
  headers: Record<string, string>;
  multiValueHeaders: Record<string, string[]>;
} {
  const headers: Record<string, string> = {};
  const multiValueHeaders: Record<string, string[]> = {};
  const casing = new Map<string, string>();
  const keyFor = (name: string): string => {
    const key = casing.get(name.toLowerCase()) ?? name;
    casing.set(name.toLowerCase(), key);
    return key;
  };
  const add = (name: string, value: string): void => {
    const key = keyFor(name);
    headers[key] = value;
    multiValueHeaders[key] = [...(multiValueHeaders[key] ?? []), value];
  };
  const set = (name: string, value: string): void => {
    const key = keyFor(name);
    headers[key] = value;
    multiValueHeaders[key] = [value];
  };
  for (let i = 0; i + 1 < req.rawHeaders.length; i += 2) add(req.rawHeaders[i]!, req.rawHeaders[i + 1]!);
  const sourceIp = req.socket.remoteAddress ?? '127.0.0.1';
  const forwardedFor = headerValue(headers, 'x-forwarded-for');
  set('X-Forwarded-For', forwardedFor ? `${forwardedFor}, ${sourceIp}` : sourceIp);
  set('X-Forwarded-Port', String(req.socket.localPort ?? 80));
  set('X-Forwarded-Proto', 'http');
  if (!headerValue(headers, 'x-amzn-trace-id')) set('X-Amzn-Trace-Id', traceId());
  return { headers, multiValueHeaders };
}

function collectQuery(params: URLSearchParams): {
  single: Record<string, string> | null;
  multi: Record<string, string[]> | null;
} {
  const single: Record<string, string> = {};
  const multi: Record<string, string[]> = {};
  for (const [name, value] of params) {
    single[name] = value;
    multi[name] = [...(multi[name] ?? []), value];
  }
  return Object.keys(single).length === 0 ? { single: null, multi: null } : { single, multi };
}

function encodeBody(
  body: Buffer,
  contentType: string | undefined,
  binaryMediaTypes: readonly string[],
): { body: string | null; isBase64Encoded: boolean } {
  if (body.length === 0) return { body: null, isBase64Encoded: false };
  if (isBinaryMediaType(contentType, binaryMediaTypes) || !isUtf8(body)) {
    return { body: body.toString('base64'), isBase64Encoded: true };
  }
  return { body: body.toString('utf8'), isBase64Encoded: false };
}

function isBinaryMediaType(contentType: string | undefined, binaryMediaTypes: readonly string[]): boolean {
  if (!contentType) return false;
  const [type = '', subtype = ''] = contentType.split(';')[0]!.trim().toLowerCase().split('/');
  return binaryMediaTypes.some((pattern) => {
    const [patternType, patternSubtype] = pattern.toLowerCase().split('/');
    return (
      (patternType === '*' || patternType === type) && (patternSubtype === '*' || patternSubtype === subtype)
    );
  });
}

function buildIdentity(req: IncomingMessage): APIGatewayProxyEvent['requestContext']['identity'] {
  return {
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
    sourceIp: req.socket.remoteAddress ?? '127.0.0.1',
    user: null,
    userAgent: req.headers['user-agent'] ?? null,
    userArn: null,
  };
}

function buildContext(functionName: string, region: string, timeoutMs: number): Context {
  const deadline = Date.now() + timeoutMs;
  const unsupported = (name: string) => (): never => {
    throw new Error(`context.${name}() is not supported by the Node.js 24 Lambda runtime`);
  };
  return {
    callbackWaitsForEmptyEventLoop: true,
    functionName,
    functionVersion: '$LATEST',
    invokedFunctionArn: `arn:aws:lambda:${region}:${ACCOUNT_ID}:function:${functionName}`,
    memoryLimitInMB: '1024',
    awsRequestId: randomUUID(),
    logGroupName: `/aws/lambda/${functionName}`,
    logStreamName: `${new Date().toISOString().slice(0, 10).replaceAll('-', '/')}/[$LATEST]${randomBytes(16).toString('hex')}`,
    getRemainingTimeInMillis: () => Math.max(0, deadline - Date.now()),
    done: unsupported('done'),
    fail: unsupported('fail'),
    succeed: unsupported('succeed'),
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Invocation

/** One request's response side: who may still write, the Lambda timeout, and what to do on disconnect. */
class Exchange {
  readonly #res: ServerResponse;
  readonly #requestId: string;
  readonly #label: string;
  readonly #log: (line: string) => void;
  readonly #onAbandon: Array<(reason: string) => void> = [];
  #done = false;
  #clientGone = false;

  /** The response is over (sent, failed or cut); the handler may still be running. */
  get ended(): boolean {
    return this.#done;
  }
  #timer: NodeJS.Timeout | undefined;

  constructor(res: ServerResponse, requestId: string, label: string, log: (line: string) => void) {
    this.#res = res;
    this.#requestId = requestId;
    this.#label = label;
    this.#log = log;
    res.on('close', () => {
      if (!res.writableFinished) this.#clientDisconnected();
    });
  }

  /** Fails the invocation with a 502 (or a cut connection) when the Lambda timeout elapses. */
  startTimer(timeoutMs: number): void {
    this.#timer = setTimeout(() => {
      this.fail(new Error(`Task timed out after ${(timeoutMs / 1000).toFixed(2)} seconds`));
    }, timeoutMs);
  }

  /** Runs `callback` when the response ends abnormally (client gone, timeout, failure), with the reason. */
  onAbandon(callback: (reason: string) => void): void {
    this.#onAbandon.push(callback);
  }

  /**
   * Sends status and headers (hop-by-hop and Content-Length are dropped). With `contentLength` (a buffered
   * response) they leave with the body; without it (streaming) they are flushed at once and the body is chunked.
   */
  sendHead(head: ParsedHead, contentLength?: number): void {
    if (this.#done) return;
    const headers = this.#responseHeaders(head.headers);
    if (contentLength !== undefined) headers.push('Content-Length', String(contentLength));
    this.#res.writeHead(head.statusCode, headers);
    if (contentLength === undefined) this.#res.flushHeaders();
  }

  /** Writes body bytes straight to the socket; dropped once the exchange is over. */
  write(chunk: Buffer, done: () => void): void {
    if (this.#done) done();
    else this.#res.write(chunk, () => done());
  }

  /** Ends a successful response. */
  end(body?: Buffer): void {
    if (this.#done) return;
    this.#finish();
    this.#res.end(body);
  }

  /** Handler failure: 502 if nothing was sent yet, else the connection is cut. Logged without the request body. */
  fail(error: unknown): void {
    if (this.#done) {
      if (!(this.#clientGone && isDisconnectFallout(error)))
        this.#logError('failed after the response ended', error);
      return;
    }
    if (this.#res.headersSent) {
      this.#logError('failed mid-stream, connection cut', error);
      this.#res.destroy();
    } else {
      this.#logError('failed, answered 502', error);
      sendGatewayError(this.#res, 502, 'bad_gateway');
    }
    this.#abandon(error instanceof Error ? error.message : 'invocation failed');
  }

  #clientDisconnected(): void {
    this.#clientGone = true;
    if (!this.#done) this.#abandon('client disconnected');
  }

  #abandon(reason: string): void {
    this.#finish();
    for (const callback of this.#onAbandon.splice(0)) callback(reason);
  }

  #finish(): void {
    this.#done = true;
    clearTimeout(this.#timer);
  }

  #responseHeaders(headers: Array<[string, string]>): string[] {
    const flat: string[] = [];
    let hasContentType = false;
    for (const [name, value] of headers) {
      const lower = name.toLowerCase();
      if (HOP_BY_HOP.has(lower) || lower === 'content-length') continue;
      hasContentType ||= lower === 'content-type';
      flat.push(name, value);
    }
    // API Gateway REST defaults the content type of proxy responses to JSON.
    if (!hasContentType) flat.push('Content-Type', 'application/json');
    flat.push('x-amzn-RequestId', this.#requestId, 'x-amz-apigw-id', randomId(16));
    return flat;
  }

  #logError(what: string, error: unknown): void {
    this.#log(`[apigw] ${this.#label} requestId=${this.#requestId} ${what}: ${describeError(error)}`);
  }
}

async function invokeBuffered(
  exchange: Exchange,
  handler: LambdaFunction,
  event: APIGatewayProxyEvent,
  context: Context,
): Promise<void> {
  // Routes take any function; a buffered Lambda handler is called as `(event, context)`.
  const call = handler as unknown as (event: APIGatewayProxyEvent, context: Context) => unknown;
  let result: unknown;
  try {
    result = await call(event, context);
  } catch (error) {
    exchange.fail(error);
    return;
  }
  const parsed = parseProxyResult(result);
  if (typeof parsed === 'string') {
    exchange.fail(new Error(`Malformed Lambda proxy response: ${parsed}`));
    return;
  }
  exchange.sendHead(parsed, parsed.body.length);
  exchange.end(parsed.body);
}

async function invokeStreaming(
  exchange: Exchange,
  handler: StreamingHandler,
  event: APIGatewayProxyEvent,
  context: Context,
): Promise<void> {
  const stream = new LocalResponseStream(streamSink(exchange), getStreamingHighWaterMark(handler));
  exchange.onAbandon((reason) => stream.disconnect(reason));
  try {
    // Like the runtime, the handler's promise settling does not end the response: `responseStream.end()` does.
    await handler(event as never, stream, context);
  } catch (error) {
    exchange.fail(error);
  }
}

function streamSink(exchange: Exchange): ResponseSink {
  return {
    start(metadata, contentType) {
      // Without `HttpResponseStream.from`, Lambda answers 200 with the stream's content type.
      const parsed = parseHead(metadata ?? { statusCode: 200, headers: { 'Content-Type': contentType } });
      if (typeof parsed === 'string') {
        exchange.fail(new Error(`Malformed streaming response metadata: ${parsed}`));
      } else {
        exchange.sendHead(parsed);
      }
    },
    write: (chunk, done) => exchange.write(chunk, done),
    end(done) {
      exchange.end();
      done();
    },
    abort: (error) => exchange.fail(error ?? new Error('responseStream was destroyed before end()')),
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Handler results

/** Validates a buffered proxy result like API Gateway does; returns the reason when it is malformed. */
function parseProxyResult(value: unknown): (ParsedHead & { body: Buffer }) | string {
  if (!isRecord(value)) return `expected an object, got ${value === null ? 'null' : typeof value}`;
  if (value.body != null && typeof value.body !== 'string') return 'body must be a string';
  if (value.isBase64Encoded != null && typeof value.isBase64Encoded !== 'boolean') {
    return 'isBase64Encoded must be a boolean';
  }
  const head = parseHead(value);
  if (typeof head === 'string') return head;
  const text = typeof value.body === 'string' ? value.body : '';
  return { ...head, body: Buffer.from(text, value.isBase64Encoded === true ? 'base64' : 'utf8') };
}

/** Status and headers from a proxy result or a streaming prelude (`headers`, `multiValueHeaders`, `cookies`). */
function parseHead(value: Record<string, unknown>): ParsedHead | string {
  const statusCode = value.statusCode === undefined ? 200 : Number(value.statusCode);
  if (!Number.isInteger(statusCode) || statusCode < 100 || statusCode > 599) return 'invalid statusCode';
  const single = value.headers ?? {};
  const multi = value.multiValueHeaders ?? {};
  const cookies: unknown = value.cookies ?? [];
  if (!isRecord(single) || !Object.values(single).every(isHeaderValue)) return 'invalid headers';
  if (!isRecord(multi) || !Object.values(multi).every(isHeaderValueList)) return 'invalid multiValueHeaders';
  if (!isHeaderValueList(cookies)) return 'invalid cookies';
  return { statusCode, headers: mergeHeaders(single, multi, cookies) };
}

/** As API Gateway: a name in both maps takes the `multiValueHeaders` values only. */
function mergeHeaders(
  single: Record<string, unknown>,
  multi: Record<string, unknown>,
  cookies: unknown[],
): Array<[string, string]> {
  const multiNames = new Set(Object.keys(multi).map((name) => name.toLowerCase()));
  const merged: Array<[string, string]> = [];
  for (const [name, value] of Object.entries(single)) {
    if (!multiNames.has(name.toLowerCase())) merged.push([name, String(value)]);
  }
  for (const [name, values] of Object.entries(multi)) {
    for (const value of values as unknown[]) merged.push([name, String(value)]);
  }
  for (const cookie of cookies) merged.push(['Set-Cookie', String(cookie)]);
  return merged;
}

function isHeaderValue(value: unknown): boolean {
  return typeof value === 'string' || typeof value === 'number' || typeof value === 'boolean';
}

function isHeaderValueList(value: unknown): value is unknown[] {
  return Array.isArray(value) && value.every(isHeaderValue);
}

// ---------------------------------------------------------------------------------------------------------------
// Small helpers

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function headerValue(headers: Record<string, string>, lowerName: string): string | undefined {
  for (const [name, value] of Object.entries(headers)) if (name.toLowerCase() === lowerName) return value;
  return undefined;
}

function safeDecode(value: string): string {
  try {
    return decodeURIComponent(value);
  } catch {
    return value;
  }
}

function randomId(length: number): string {
  const alphabet = 'abcdefghijklmnopqrstuvwxyz0123456789';
  return Array.from(randomBytes(length), (byte) => alphabet[byte % alphabet.length]).join('');
}

function traceId(): string {
  const epoch = Math.floor(Date.now() / 1000).toString(16);
  return `Root=1-${epoch}-${randomBytes(12).toString('hex')}`;
}

function formatRequestTime(date: Date): string {
  const months = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
  const pad = (n: number): string => String(n).padStart(2, '0');
  const day = `${pad(date.getUTCDate())}/${months[date.getUTCMonth()]}/${date.getUTCFullYear()}`;
  return `${day}:${pad(date.getUTCHours())}:${pad(date.getUTCMinutes())}:${pad(date.getUTCSeconds())} +0000`;
}

/** Errors a streaming handler gets because the client left (its pipeline into the destroyed stream fails). */
function isDisconnectFallout(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return (
    code === 'ERR_STREAM_PREMATURE_CLOSE' ||
    code === 'ERR_STREAM_DESTROYED' ||
    code === 'ERR_STREAM_UNABLE_TO_PIPE' ||
    code === 'ABORT_ERR'
  );
}

function describeError(error: unknown): string {
  if (error instanceof Error) return error.stack ?? `${error.name}: ${error.message}`;
  return String(error);
}
