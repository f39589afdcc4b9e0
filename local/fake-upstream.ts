// Local runtime: simulated NVIDIA-like OpenAI-compatible upstream (rate limit, capacity cap, faults) for the local stack, tests and benchmarks.
import { createServer, type IncomingMessage, type ServerResponse, STATUS_CODES } from 'node:http';
import type { AddressInfo } from 'node:net';

/** Options for {@link startFakeUpstream}. */
export interface FakeUpstreamOptions {
  /** Port to listen on; default 0 (a free port). */
  port?: number;
  /** Host to bind; default `127.0.0.1`. */
  host?: string;
  /** If set, every request must carry `Authorization: Bearer <apiKey>`, else 401 JSON. */
  apiKey?: string;
  /** Hidden sliding-window rate limit over accepted limited calls; default `{ requests: 40, windowMs: 60000 }`; `null` = unlimited. */
  limit?: { requests: number; windowMs: number } | null;
  /**
   * Hidden sliding-window token limit (OpenAI-style TPM): a limited call's tokens (its prompt + the completion it
   * will get, as its `usage` reports them) count at arrival; a call that would take the window over `tokens` gets
   * a 429 with `x-ratelimit-remaining-tokens: 0` and `x-ratelimit-reset-tokens`. When set, every limited answer
   * carries OpenAI's `x-ratelimit-*` headers (requests too, when `limit` is set). Default null (NVIDIA: none).
   */
  tpm?: { tokens: number; windowMs: number } | null;
  /** Concurrent limited calls allowed before NVIDIA's worker-capacity 429; default 32; `null` = no cap. */
  maxConcurrency?: number | null;
  /** Completion tokens per response (capped by the request's `max_tokens`); default 12. */
  tokensPerResponse?: number;
  /** Delay between streamed chunks (non-streaming replies wait the whole generation time); default 25. */
  tokenDelayMs?: number;
  /** Delay before the first byte of a reply; default 40. */
  firstByteDelayMs?: number;
  /** If set, 429s carry `Retry-After: <n>`; default null (NVIDIA usually sends none). */
  retryAfterSeconds?: number | null;
  /** Clock for the sliding window and `calls[].at`; default `Date.now`. */
  now?: () => number;
}

/** How a request was answered. `bad_request` also covers 404s (see `status`). */
export type UpstreamCallKind = 'ok' | 'rate_limited' | 'capacity' | 'fault' | 'unauthorized' | 'bad_request';

/** One request received by the fake upstream. */
export interface UpstreamCall {
  /** Arrival time on the injected clock. */
  at: number;
  /** URL path (no query string). */
  path: string;
  /** `model` from the JSON body, if any. */
  model: string | undefined;
  /** Whether the body asked for `stream: true`. */
  stream: boolean;
  /** HTTP status sent; 0 if none was sent (reset / hang / still pending). */
  status: number;
  kind: UpstreamCallKind;
  /** Request headers, lower-cased, as received. */
  headers: Record<string, string | string[] | undefined>;
}

/** A misbehaviour injected into accepted limited calls (after the auth, rate-limit and capacity checks). */
export type UpstreamFault =
  | { kind: 'none' }
  | { kind: 'slow_first_byte'; delayMs: number }
  | { kind: 'cut_mid_stream'; afterChunks: number }
  | { kind: 'reset' }
  | { kind: 'status'; status: number; body?: string }
  | { kind: 'hang' }
  | { kind: 'embedded_error' };

/** Handle on a running fake upstream. */
export interface FakeUpstream {
  /** Server root, e.g. `http://127.0.0.1:PORT`; the OpenAI base URL is `${url}/v1`. */
  url: string;
  /** Every request received, in arrival order. */
  calls: UpstreamCall[];
  setLimit(limit: { requests: number; windowMs: number } | null): void;
  setMaxConcurrency(n: number | null): void;
  /** Apply `fault` to the next `times` accepted limited calls (default: until `reset()` or `setFault({ kind: 'none' })`). */
  setFault(fault: UpstreamFault, times?: number): void;
  /** Limited calls currently being answered. */
  inFlight(): number;
  /** The most accepted (non-429) calls in any sliding window of `windowMs` (default the limit's window, else 60000). */
  maxInWindow(windowMs?: number): number;
  /** The most tokens of accepted calls in any sliding window of `windowMs` (default the tpm's window, else 60000). */
  maxTokensInWindow(windowMs?: number): number;
  stats(): {
    total: number;
    ok: number;
    rateLimited: number;
    capacity: number;
    faults: number;
    maxInFlight: number;
  };
  /** Clears calls, stats, the sliding window and any pending fault (not the other settings). */
  reset(): void;
  /** Closes the server and all sockets (hung requests included) promptly. */
  stop(): Promise<void>;
}

/** Models served by `GET /v1/models`. */
export const FAKE_MODELS: readonly string[] = [
  'meta/llama-3.1-8b-instruct',
  'meta/llama-3.1-70b-instruct',
  'deepseek-ai/deepseek-v3',
  'nvidia/llama-3.1-nemotron-70b-instruct',
  'mistralai/mixtral-8x7b-instruct-v0.1',
  'nvidia/nv-embedqa-e5-v5',
];

/** Body of the sliding-window 429 (exact). */
export const RATE_LIMIT_BODY = '{"status":429,"title":"Too Many Requests"}';

/** Body of NVIDIA's worker-capacity 429 for `n` in flight (incl. this one) against `cap`. */
export function capacityBody(n: number, cap: number): string {
  return JSON.stringify({
    status: 429,
    title: 'Too Many Requests',
    detail: `ResourceExhausted: Worker local total request limit reached (${n}/${cap})`,
  });
}

/** The deterministic reply text for `n` tokens: `tok0 tok1 … tok{n-1}`. */
export function fakeReplyText(n: number): string {
  return Array.from({ length: n }, (_, i) => `tok${i}`).join(' ');
}

type Route = 'chat' | 'completions' | 'embeddings';
type Json = Record<string, unknown>;

const LIMITED: Record<string, Route> = {
  '/v1/chat/completions': 'chat',
  '/v1/completions': 'completions',
  '/v1/embeddings': 'embeddings',
};
const NO_FAULT: UpstreamFault = { kind: 'none' };
const CREATED = 1_700_000_000;

const isObject = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);
const problem = (status: number, detail?: string): string =>
  JSON.stringify({ status, title: STATUS_CODES[status] ?? 'Error', ...(detail ? { detail } : {}) });

/** Resolves true after `ms` (never, if `ms` is Infinity), or false as soon as `signal` aborts. */
function sleep(ms: number, signal: AbortSignal): Promise<boolean> {
  if (signal.aborted) return Promise.resolve(false);
  if (ms <= 0) return Promise.resolve(true);
  return new Promise((resolve) => {
    const onAbort = (): void => {
      clearTimeout(timer);
      resolve(false);
    };
    const timer = Number.isFinite(ms)
      ? setTimeout(() => {
          signal.removeEventListener('abort', onAbort);
          resolve(true);
        }, ms)
      : undefined;
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

/** Drops the connection once already-written bytes are flushed (a mid-body cut, not a reset). */
function cut(res: ServerResponse): void {
  if (res.socket) res.socket.destroySoon();
  else res.destroy();
}

/** Body of the token-window 429 (OpenAI's shape). */
export const TOKEN_LIMIT_BODY = JSON.stringify({
  error: {
    message: 'Rate limit reached for tokens per min (TPM).',
    type: 'tokens',
    code: 'rate_limit_exceeded',
  },
});

/** OpenAI-style reset duration (`1.5s`, `20ms`). */
const resetText = (ms: number): string =>
  ms < 1_000 ? `${Math.max(0, Math.ceil(ms))}ms` : `${Number((ms / 1000).toFixed(3))}s`;

/** The tokens a limited call will be counted for: its prompt and the completion it gets (its `usage` total). */
function callTokens(route: Route, body: Json | undefined, tokensPerResponse: number): number {
  if (body === undefined) return 0;
  if (route === 'embeddings') return body.input === undefined ? 0 : promptTokens(body.input);
  const promptField = route === 'chat' ? body.messages : body.prompt;
  if (promptField === undefined) return 0;
  const maxTokens = body.max_completion_tokens ?? body.max_tokens;
  const n =
    typeof maxTokens === 'number' && maxTokens > 0
      ? Math.min(tokensPerResponse, maxTokens)
      : tokensPerResponse;
  return promptTokens(promptField) + n;
}

/** Rough deterministic token count of the text in a request body. */
function promptTokens(value: unknown): number {
  const text = JSON.stringify(value ?? '');
  return Math.max(1, Math.ceil(text.length / 4));
}

/** Deterministic 8-float embedding derived from the input. */
function embed(input: unknown): number[] {
  let h = 2166136261;
  for (const ch of JSON.stringify(input)) h = Math.imul(h ^ (ch.codePointAt(0) ?? 0), 16777619);
  return Array.from({ length: 8 }, (_, i) => {
    h = Math.imul(h ^ (h >>> 15), 2246822507) + i;
    return Math.fround(((h >>> 0) / 0xffffffff) * 2 - 1);
  });
}

function modelObject(id: string): Json {
  return { id, object: 'model', created: CREATED, owned_by: id.split('/')[0] ?? 'system' };
}

/** Starts a fake NVIDIA-like upstream; resolves once it is listening. */
export async function startFakeUpstream(opts: FakeUpstreamOptions = {}): Promise<FakeUpstream> {
  const now = opts.now ?? Date.now;
  const tokensPerResponse = opts.tokensPerResponse ?? 12;
  const tokenDelayMs = opts.tokenDelayMs ?? 25;
  const firstByteDelayMs = opts.firstByteDelayMs ?? 40;
  const retryAfterSeconds = opts.retryAfterSeconds ?? null;
  let limit = opts.limit === undefined ? { requests: 40, windowMs: 60_000 } : opts.limit;
  let maxConcurrency = opts.maxConcurrency === undefined ? 32 : opts.maxConcurrency;
  let fault: UpstreamFault = NO_FAULT;
  let faultRemaining = 0;
  let inFlight = 0;
  let maxInFlight = 0;
  let seq = 0;
  const calls: UpstreamCall[] = [];
  const accepted: number[] = []; // arrival times of accepted limited calls
  const acceptedTokens: { at: number; tokens: number }[] = []; // and their tokens (for the tpm option)
  const tpm = opts.tpm ?? null;
  const active = new Set<AbortController>();

  const countInWindow = (t: number, windowMs: number): number => {
    let n = 0;
    for (let i = accepted.length - 1; i >= 0 && accepted[i]! > t - windowMs; i--) n++;
    return n;
  };

  const tokensInWindow = (t: number, windowMs: number): number => {
    let n = 0;
    for (let i = acceptedTokens.length - 1; i >= 0 && acceptedTokens[i]!.at > t - windowMs; i--)
      n += acceptedTokens[i]!.tokens;
    return n;
  };

  /** How long until the window of `windowMs` has room for `tokens` more (0: now). */
  const tokenResetMs = (t: number, windowMs: number, limitTokens: number, tokens: number): number => {
    let used = tokensInWindow(t, windowMs);
    for (const e of acceptedTokens) {
      if (used + tokens <= limitTokens) break;
      if (e.at <= t - windowMs) continue;
      used -= e.tokens;
      if (used + tokens <= limitTokens) return e.at + windowMs - t;
    }
    return 0;
  };

  /** The x-ratelimit-* headers of a limited answer (tpm option only): the windows as they stand at `t`. */
  const rateHeaders = (t: number, exhaustedTokens = false): Record<string, string> => {
    if (tpm === null) return {};
    const oldestTokens = acceptedTokens.find((e) => e.at > t - tpm.windowMs);
    const out: Record<string, string> = {
      'x-ratelimit-limit-tokens': String(tpm.tokens),
      'x-ratelimit-remaining-tokens': exhaustedTokens
        ? '0'
        : String(Math.max(0, tpm.tokens - tokensInWindow(t, tpm.windowMs))),
      'x-ratelimit-reset-tokens': resetText(oldestTokens ? oldestTokens.at + tpm.windowMs - t : 0),
    };
    if (limit !== null) {
      out['x-ratelimit-limit-requests'] = String(limit.requests);
      out['x-ratelimit-remaining-requests'] = String(
        Math.max(0, limit.requests - countInWindow(t, limit.windowMs)),
      );
      const oldest = accepted.find((a) => a > t - limit!.windowMs);
      out['x-ratelimit-reset-requests'] = resetText(oldest === undefined ? 0 : oldest + limit.windowMs - t);
    }
    return out;
  };

  const takeFault = (): UpstreamFault => {
    if (fault.kind === 'none' || faultRemaining <= 0) return NO_FAULT;
    faultRemaining--;
    return fault;
  };

  async function handle(req: IncomingMessage, res: ServerResponse, signal: AbortSignal): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const raw = Buffer.concat(chunks).toString('utf8');
    const path = new URL(req.url ?? '/', 'http://upstream').pathname;
    let body: Json | undefined;
    try {
      const parsed: unknown = raw.length > 0 ? JSON.parse(raw) : undefined;
      if (isObject(parsed)) body = parsed;
    } catch {
      body = undefined;
    }
    const call: UpstreamCall = {
      at: now(),
      path,
      model: typeof body?.model === 'string' ? body.model : undefined,
      stream: body?.stream === true,
      status: 0,
      kind: 'ok',
      headers: { ...req.headers },
    };
    calls.push(call);

    let acceptedHeaders: Record<string, string> = {};
    const send = (
      status: number,
      kind: UpstreamCallKind,
      text: string,
      headers: Record<string, string> = {},
    ): void => {
      call.status = status;
      call.kind = kind;
      const isJson = text.startsWith('{') || text.startsWith('[');
      res.writeHead(status, {
        'content-type': isJson ? 'application/json' : 'text/plain; charset=utf-8',
        'content-length': Buffer.byteLength(text),
        ...acceptedHeaders,
        ...headers,
      });
      res.end(text);
    };

    if (opts.apiKey !== undefined && req.headers.authorization !== `Bearer ${opts.apiKey}`) {
      return send(401, 'unauthorized', problem(401, 'Authentication failed'));
    }
    if (req.method === 'GET' && path === '/v1/models') {
      return send(200, 'ok', JSON.stringify({ object: 'list', data: FAKE_MODELS.map(modelObject) }));
    }
    if (req.method === 'GET' && path.startsWith('/v1/models/')) {
      const id = decodeURIComponent(path.slice('/v1/models/'.length));
      if (FAKE_MODELS.includes(id)) return send(200, 'ok', JSON.stringify(modelObject(id)));
      return send(404, 'bad_request', problem(404, `Model '${id}' not found`));
    }
    const route = req.method === 'POST' ? LIMITED[path] : undefined;
    if (route === undefined)
      return send(404, 'bad_request', problem(404, `No route for ${req.method} ${path}`));

    // Limited endpoint: hidden sliding window, then worker capacity.
    const retry: Record<string, string> =
      retryAfterSeconds === null ? {} : { 'retry-after': String(retryAfterSeconds) };
    if (limit !== null && countInWindow(call.at, limit.windowMs) + 1 > limit.requests) {
      return send(429, 'rate_limited', RATE_LIMIT_BODY, { ...retry, ...rateHeaders(call.at) });
    }
    const callTokenCount = tpm === null ? 0 : callTokens(route, body, tokensPerResponse);
    if (tpm !== null && tokensInWindow(call.at, tpm.windowMs) + callTokenCount > tpm.tokens) {
      return send(429, 'rate_limited', TOKEN_LIMIT_BODY, {
        ...retry,
        ...rateHeaders(call.at, true),
        'x-ratelimit-reset-tokens': resetText(
          tokenResetMs(call.at, tpm.windowMs, tpm.tokens, callTokenCount),
        ),
      });
    }
    if (maxConcurrency !== null && inFlight >= maxConcurrency) {
      return send(429, 'capacity', capacityBody(inFlight + 1, maxConcurrency), retry);
    }
    accepted.push(call.at);
    if (tpm !== null) acceptedTokens.push({ at: call.at, tokens: callTokenCount });
    // Every answer of this call from here on carries the limits as they stand after it (tpm option only).
    acceptedHeaders = rateHeaders(call.at);
    inFlight++;
    maxInFlight = Math.max(maxInFlight, inFlight);
    res.once('close', () => inFlight--);

    if (body === undefined)
      return send(400, 'bad_request', problem(400, 'Request body must be a JSON object'));
    const f = takeFault();
    const kind: UpstreamCallKind = f.kind === 'none' ? 'ok' : 'fault';
    if (f.kind === 'reset') {
      call.kind = kind;
      res.destroy();
      return;
    }
    if (f.kind === 'hang') {
      call.kind = kind;
      await sleep(Number.POSITIVE_INFINITY, signal);
      return;
    }
    if (!(await sleep(f.kind === 'slow_first_byte' ? f.delayMs : firstByteDelayMs, signal))) return;
    if (f.kind === 'status') return send(f.status, kind, f.body ?? problem(f.status));

    const id = `${route === 'chat' ? 'chatcmpl' : route === 'completions' ? 'cmpl' : 'emb'}-fake-${++seq}`;
    const model = call.model ?? FAKE_MODELS[0]!;
    const embeddedError = JSON.stringify({
      error: { message: 'Internal error while generating', type: 'internal_server_error', code: 500 },
    });

    if (route === 'embeddings') {
      const input = body.input;
      if (input === undefined) return send(400, 'bad_request', problem(400, "'input' is required"));
      if (f.kind === 'embedded_error') return send(200, kind, embeddedError);
      const items =
        Array.isArray(input) && input.length > 0 && typeof input[0] !== 'number' ? input : [input];
      const base64 = body.encoding_format === 'base64';
      const data = items.map((item, index) => {
        const vec = embed(item);
        const embedding = base64 ? Buffer.from(new Float32Array(vec).buffer).toString('base64') : vec;
        return { object: 'embedding', index, embedding };
      });
      const prompt = promptTokens(input);
      return send(
        200,
        kind,
        JSON.stringify({
          object: 'list',
          data,
          model,
          usage: { prompt_tokens: prompt, total_tokens: prompt },
        }),
      );
    }

    const promptField = route === 'chat' ? body.messages : body.prompt;
    if (promptField === undefined) {
      return send(
        400,
        'bad_request',
        problem(400, `'${route === 'chat' ? 'messages' : 'prompt'}' is required`),
      );
    }
    const maxTokens = body.max_completion_tokens ?? body.max_tokens;
    const n =
      typeof maxTokens === 'number' && maxTokens > 0
        ? Math.min(tokensPerResponse, maxTokens)
        : tokensPerResponse;
    const finishReason = n < tokensPerResponse ? 'length' : 'stop';
    const tokens = fakeReplyText(n).split(' ');
    const prompt = promptTokens(promptField);
    const usage = { prompt_tokens: prompt, completion_tokens: n, total_tokens: prompt + n };
    const base = { id, created: CREATED, model };

    if (!call.stream) {
      if (!(await sleep(n * tokenDelayMs, signal))) return;
      if (f.kind === 'embedded_error') return send(200, kind, embeddedError);
      const text = tokens.join(' ');
      const choice =
        route === 'chat'
          ? {
              index: 0,
              message: { role: 'assistant', content: text },
              finish_reason: finishReason,
              logprobs: null,
            }
          : { index: 0, text, finish_reason: finishReason, logprobs: null };
      const object = route === 'chat' ? 'chat.completion' : 'text_completion';
      const payload = JSON.stringify({ ...base, object, choices: [choice], usage });
      if (f.kind === 'cut_mid_stream') {
        call.status = 200;
        call.kind = kind;
        res.writeHead(200, {
          'content-type': 'application/json',
          'content-length': Buffer.byteLength(payload),
        });
        res.write(payload.slice(0, Math.floor(payload.length / 2)));
        cut(res);
        return;
      }
      return send(200, kind, payload);
    }

    // Streaming: one token per chunk, then the finish chunk, the optional usage chunk and [DONE].
    call.status = 200;
    call.kind = kind;
    res.writeHead(200, {
      'content-type': 'text/event-stream',
      'cache-control': 'no-cache',
      ...acceptedHeaders,
    });
    res.flushHeaders();
    const object = route === 'chat' ? 'chat.completion.chunk' : 'text_completion';
    const chunk = (text: string | null, finish: string | null): Json => {
      const choice =
        route === 'chat'
          ? {
              index: 0,
              delta: text === null ? {} : { role: 'assistant', content: text },
              finish_reason: finish,
              logprobs: null,
            }
          : { index: 0, text: text ?? '', finish_reason: finish, logprobs: null };
      return { ...base, object, choices: [choice] };
    };
    const event = (data: Json | string): void => {
      res.write(`data: ${typeof data === 'string' ? data : JSON.stringify(data)}\n\n`);
    };
    for (let i = 0; i < tokens.length; i++) {
      if (f.kind === 'cut_mid_stream' && i >= f.afterChunks) {
        cut(res);
        return;
      }
      if (f.kind === 'embedded_error' && i === 1) {
        event(embeddedError);
        res.end();
        return;
      }
      if (i > 0 && !(await sleep(tokenDelayMs, signal))) return;
      event(chunk(i === 0 ? tokens[i]! : ` ${tokens[i]}`, null));
    }
    event(chunk(null, finishReason));
    const streamOptions = body.stream_options;
    if (isObject(streamOptions) && streamOptions.include_usage === true) {
      event({ ...base, object, choices: [], usage });
    }
    event('[DONE]');
    res.end();
  }

  const server = createServer((req, res) => {
    const ctrl = new AbortController();
    active.add(ctrl);
    res.once('close', () => {
      active.delete(ctrl);
      ctrl.abort();
    });
    handle(req, res, ctrl.signal).catch(() => {
      if (!res.headersSent && !res.destroyed) {
        res.writeHead(500, { 'content-type': 'application/json' });
        res.end(problem(500));
      } else {
        res.destroy();
      }
    });
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, opts.host ?? '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  const addr = server.address() as AddressInfo;
  const host = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;

  return {
    url: `http://${host}:${addr.port}`,
    calls,
    setLimit(l) {
      limit = l;
    },
    setMaxConcurrency(n) {
      maxConcurrency = n;
    },
    setFault(f, times = Number.POSITIVE_INFINITY) {
      fault = f;
      faultRemaining = times;
    },
    inFlight: () => inFlight,
    maxTokensInWindow(windowMs = tpm?.windowMs ?? 60_000) {
      const sorted = [...acceptedTokens].sort((a, b) => a.at - b.at);
      let best = 0;
      let sum = 0;
      for (let lo = 0, hi = 0; hi < sorted.length; hi++) {
        sum += sorted[hi]!.tokens;
        while (sorted[lo]!.at <= sorted[hi]!.at - windowMs) sum -= sorted[lo++]!.tokens;
        best = Math.max(best, sum);
      }
      return best;
    },
    maxInWindow(windowMs = limit?.windowMs ?? 60_000) {
      const ts = [...accepted].sort((a, b) => a - b);
      let best = 0;
      for (let lo = 0, hi = 0; hi < ts.length; hi++) {
        while (ts[lo]! <= ts[hi]! - windowMs) lo++;
        best = Math.max(best, hi - lo + 1);
      }
      return best;
    },
    stats() {
      const count = (k: UpstreamCallKind): number => calls.filter((c) => c.kind === k).length;
      return {
        total: calls.length,
        ok: count('ok'),
        rateLimited: count('rate_limited'),
        capacity: count('capacity'),
        faults: count('fault'),
        maxInFlight,
      };
    },
    reset() {
      calls.length = 0;
      accepted.length = 0;
      acceptedTokens.length = 0;
      maxInFlight = inFlight;
      fault = NO_FAULT;
      faultRemaining = 0;
    },
    async stop() {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const ctrl of active) ctrl.abort();
      server.closeAllConnections();
      await closed;
    },
  };
}
