// Domain: the exact-match response cache — who opts in (header, agent key, config), the entry key, and the
// conversions between a stored answer and what an agent asked for (JSON, or SSE chunks as the upstream sends them).
import { createHash } from 'node:crypto';
import { ValidationError } from './errors.js';

/** Longest TTL an entry may have (header, agent key or config): a day. */
export const CACHE_MAX_TTL_S = 86_400;

/** Who shares entries: every agent of the deployment, or each agent only its own. */
export const CACHE_SCOPES = ['deployment', 'agent'] as const;
export type CacheScope = (typeof CACHE_SCOPES)[number];

/** Body fields that change how an answer is delivered, not what it says: left out of the key. */
const DELIVERY_FIELDS = new Set(['stream', 'stream_options', 'user']);

/**
 * The `X-Sluice-Cache` header: a TTL in whole seconds, 0 to opt out of a default.
 * @returns undefined when the header is absent
 * @throws ValidationError (400 `invalid_cache_ttl`) unless an integer from 0 to CACHE_MAX_TTL_S
 */
export const parseCacheHeader = (value: string | undefined): number | undefined => {
  if (value === undefined) return undefined;
  const trimmed = value.trim();
  if (!/^\d{1,6}$/.test(trimmed) || Number(trimmed) > CACHE_MAX_TTL_S) {
    throw new ValidationError(
      `X-Sluice-Cache must be a TTL in whole seconds from 0 to ${CACHE_MAX_TTL_S} (0 = do not cache).`,
      'X-Sluice-Cache',
      'invalid_cache_ttl',
    );
  }
  return Number(trimmed);
};

export interface CachePolicyInput {
  /** The X-Sluice-Cache header, parsed. */
  headerTtlS: number | undefined;
  /** The agent key's own default, if it has one. */
  keyTtlS: number | undefined;
  /** The deployment's default (`cache_ttl_s`, 0 = off). */
  configTtlS: number;
  /** The parsed request body (undefined for a GET). */
  body: Record<string, unknown> | undefined;
}

/** Whether and how long this request's answer may be cached, or why not. */
export type CacheDecision =
  | { cache: true; ttlS: number; source: 'header' | 'key' | 'config' }
  | { cache: false; reason: 'off' | 'no_body' | 'sampled' };

/**
 * The header opts in whatever it names; a default (the key's, else the config's) opts in only requests whose answer
 * is meant to repeat: not `n > 1`, not a nonzero `temperature`. An absent temperature counts as cacheable (the
 * operator chose the default; send `temperature: 0` or the header to be explicit).
 */
export const cachePolicy = (input: CachePolicyInput): CacheDecision => {
  if (!input.body) return { cache: false, reason: 'no_body' };
  if (input.headerTtlS !== undefined) {
    return input.headerTtlS > 0
      ? { cache: true, ttlS: input.headerTtlS, source: 'header' }
      : { cache: false, reason: 'off' };
  }
  const [ttlS, source] =
    input.keyTtlS !== undefined ? [input.keyTtlS, 'key' as const] : [input.configTtlS, 'config' as const];
  if (!(ttlS > 0)) return { cache: false, reason: 'off' };
  const { n, temperature } = input.body;
  if ((typeof n === 'number' && n > 1) || (typeof temperature === 'number' && temperature !== 0))
    return { cache: false, reason: 'sampled' };
  return { cache: true, ttlS: Math.min(ttlS, CACHE_MAX_TTL_S), source };
};

/** JSON with object keys sorted at every depth: the same request written in another key order is the same text. */
export const canonicalJson = (value: unknown): string => {
  if (Array.isArray(value)) return `[${value.map((v) => canonicalJson(v ?? null)).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
  }
  return JSON.stringify(value);
};

export interface CacheKeyInput {
  scope: CacheScope;
  agent: string;
  /** The upstream's name. */
  upstream: string;
  /** The path without its query (chat/completions and completions never share an entry). */
  path: string;
  /** The model after routing (what the upstream is asked for). */
  model: string;
  body: Record<string, unknown>;
}

/**
 * The entry's key: `<scope>#<sha256>` of the upstream, path, model after routing and the canonical body without
 * its delivery fields. The scope part keeps agents apart under `cache_scope: agent`.
 */
export const cacheKey = (k: CacheKeyInput): string => {
  const body = Object.fromEntries(
    Object.entries(k.body).filter(([name]) => !DELIVERY_FIELDS.has(name) && name !== 'model'),
  );
  const hash = createHash('sha256')
    .update(canonicalJson({ upstream: k.upstream, path: k.path.split('?')[0], model: k.model, body }))
    .digest('hex');
  return `${k.scope === 'agent' ? `agent:${k.agent}` : 'deployment'}#${hash}`;
};

/** A stored answer: the JSON body an upstream gives to a non-streaming request. */
export interface CachedAnswer {
  /** The answer as JSON text (an assembled one for a streamed miss). */
  body: string;
  storedAt: number;
  expiresAt: number;
  /** total_tokens of its usage: what each hit saves. */
  tokens: number;
}

/** Whole seconds since the entry was stored (the `age` header). */
export const ageSeconds = (answer: Pick<CachedAnswer, 'storedAt'>, now: number): number =>
  Math.max(0, Math.floor((now - answer.storedAt) / 1000));

type Json = Record<string, unknown>;
const isObject = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);

/** The data lines of an SSE text, in order; undefined when the stream did not end with [DONE]. */
const sseData = (text: string): { events: Json[]; done: boolean } | undefined => {
  const events: Json[] = [];
  let done = false;
  for (const raw of text.split('\n')) {
    const line = raw.replace(/\r$/, '');
    if (!line.startsWith('data:')) continue;
    const data = line.slice(5).trim();
    if (data === '[DONE]') {
      done = true;
      continue;
    }
    try {
      const v = JSON.parse(data) as unknown;
      if (!isObject(v)) return undefined;
      events.push(v);
    } catch {
      return undefined;
    }
  }
  return { events, done };
};

interface ToolCallAcc {
  index: number;
  id?: string;
  type?: string;
  function: { name: string; arguments: string };
}

interface ChoiceAcc {
  index: number;
  role?: string;
  content: string | null;
  text: string;
  refusal?: string;
  reasoning?: string;
  toolCalls: Map<number, ToolCallAcc>;
  finishReason: unknown;
  logprobs: unknown[] | undefined;
}

/**
 * The JSON answer a streamed answer stands for (`chat.completion` from `chat.completion.chunk`s, a
 * `text_completion` from its chunks), so a streamed miss can be replayed as JSON and as SSE alike.
 * @returns undefined for a stream that is cut short (no [DONE]), carries an error, has no choices or a choice with
 *   no finish_reason: such an answer is never stored.
 */
export const assembleStreamedAnswer = (sse: string): string | undefined => {
  const parsed = sseData(sse);
  if (!parsed?.done || parsed.events.length === 0) return undefined;
  const choices = new Map<number, ChoiceAcc>();
  let head: Json | undefined;
  let usage: unknown;
  let chat = true;
  for (const ev of parsed.events) {
    if (ev.error !== undefined && ev.error !== null) return undefined;
    head ??= ev;
    if (ev.object === 'text_completion') chat = false;
    if (isObject(ev.usage)) usage = ev.usage;
    if (!Array.isArray(ev.choices)) continue;
    for (const c of ev.choices) {
      if (!isObject(c)) return undefined;
      const index = typeof c.index === 'number' ? c.index : 0;
      let acc = choices.get(index);
      if (!acc) {
        acc = {
          index,
          content: null,
          text: '',
          toolCalls: new Map(),
          finishReason: null,
          logprobs: undefined,
        };
        choices.set(index, acc);
      }
      if (c.finish_reason !== null && c.finish_reason !== undefined) acc.finishReason = c.finish_reason;
      const lp = isObject(c.logprobs) ? c.logprobs.content : undefined;
      if (Array.isArray(lp)) acc.logprobs = [...(acc.logprobs ?? []), ...lp];
      if (typeof c.text === 'string') acc.text += c.text;
      const delta = c.delta;
      if (!isObject(delta)) continue;
      if (typeof delta.role === 'string') acc.role = delta.role;
      if (typeof delta.content === 'string') acc.content = (acc.content ?? '') + delta.content;
      if (typeof delta.refusal === 'string') acc.refusal = (acc.refusal ?? '') + delta.refusal;
      if (typeof delta.reasoning_content === 'string')
        acc.reasoning = (acc.reasoning ?? '') + delta.reasoning_content;
      if (Array.isArray(delta.tool_calls)) {
        for (const t of delta.tool_calls) {
          if (!isObject(t)) continue;
          const ti = typeof t.index === 'number' ? t.index : 0;
          const call = acc.toolCalls.get(ti) ?? { index: ti, function: { name: '', arguments: '' } };
          if (typeof t.id === 'string') call.id = t.id;
          if (typeof t.type === 'string') call.type = t.type;
          const fn = isObject(t.function) ? t.function : {};
          if (typeof fn.name === 'string') call.function.name += fn.name;
          if (typeof fn.arguments === 'string') call.function.arguments += fn.arguments;
          acc.toolCalls.set(ti, call);
        }
      }
    }
  }
  if (!head || choices.size === 0) return undefined;
  const ordered = [...choices.values()].sort((a, b) => a.index - b.index);
  if (ordered.some((c) => c.finishReason === null)) return undefined;
  const out: Json = {
    id: head.id,
    object: chat ? 'chat.completion' : 'text_completion',
    created: head.created,
    model: head.model,
    ...(head.system_fingerprint !== undefined ? { system_fingerprint: head.system_fingerprint } : {}),
    choices: ordered.map((c) =>
      chat
        ? {
            index: c.index,
            message: {
              role: c.role ?? 'assistant',
              content: c.content,
              ...(c.refusal !== undefined ? { refusal: c.refusal } : {}),
              ...(c.reasoning !== undefined ? { reasoning_content: c.reasoning } : {}),
              ...(c.toolCalls.size > 0
                ? {
                    tool_calls: [...c.toolCalls.values()]
                      .sort((a, b) => a.index - b.index)
                      .map((t) => ({ id: t.id, type: t.type ?? 'function', function: t.function })),
                  }
                : {}),
            },
            finish_reason: c.finishReason,
            logprobs: c.logprobs === undefined ? null : { content: c.logprobs },
          }
        : { index: c.index, text: c.text, finish_reason: c.finishReason, logprobs: null },
    ),
    ...(usage !== undefined ? { usage } : {}),
  };
  return JSON.stringify(out);
};

/**
 * A stored JSON answer as the SSE stream the upstream sends a streaming request: per choice a first chunk with the
 * role and the whole content (and tool calls), a finish chunk, the usage chunk only when the request asked for it
 * (`stream_options.include_usage`), then `[DONE]`.
 * @returns undefined when the answer is not a chat or text completion (nothing to stream)
 */
export const answerAsSse = (answerJson: string, includeUsage: boolean): string | undefined => {
  let answer: unknown;
  try {
    answer = JSON.parse(answerJson);
  } catch {
    return undefined;
  }
  if (!isObject(answer) || !Array.isArray(answer.choices)) return undefined;
  const chat = answer.object === 'chat.completion';
  if (!chat && answer.object !== 'text_completion') return undefined;
  const base = {
    id: answer.id,
    object: chat ? 'chat.completion.chunk' : 'text_completion',
    created: answer.created,
    model: answer.model,
    ...(answer.system_fingerprint !== undefined ? { system_fingerprint: answer.system_fingerprint } : {}),
  };
  const events: Json[] = [];
  for (const c of answer.choices) {
    if (!isObject(c)) return undefined;
    const index = typeof c.index === 'number' ? c.index : 0;
    if (chat) {
      const m = isObject(c.message) ? c.message : {};
      const toolCalls = Array.isArray(m.tool_calls)
        ? m.tool_calls.map((t, i) => (isObject(t) ? { index: i, ...t } : t))
        : undefined;
      const delta: Json = {
        role: m.role ?? 'assistant',
        content: m.content ?? null,
        ...(m.refusal !== undefined ? { refusal: m.refusal } : {}),
        ...(m.reasoning_content !== undefined ? { reasoning_content: m.reasoning_content } : {}),
        ...(toolCalls ? { tool_calls: toolCalls } : {}),
      };
      events.push({
        ...base,
        choices: [{ index, delta, finish_reason: null, logprobs: c.logprobs ?? null }],
      });
      events.push({
        ...base,
        choices: [{ index, delta: {}, finish_reason: c.finish_reason, logprobs: null }],
      });
    } else {
      events.push({ ...base, choices: [{ index, text: c.text ?? '', finish_reason: null, logprobs: null }] });
      events.push({
        ...base,
        choices: [{ index, text: '', finish_reason: c.finish_reason, logprobs: null }],
      });
    }
  }
  if (includeUsage && isObject(answer.usage)) events.push({ ...base, choices: [], usage: answer.usage });
  return `${events.map((e) => `data: ${JSON.stringify(e)}\n\n`).join('')}data: [DONE]\n\n`;
};

/** total_tokens of an answer's usage (0 when it has none). */
export const answerTokens = (answerJson: string): number => {
  try {
    const v = JSON.parse(answerJson) as { usage?: { total_tokens?: unknown } };
    return typeof v.usage?.total_tokens === 'number' ? v.usage.total_tokens : 0;
  } catch {
    return 0;
  }
};

/** Whether a request asked for the usage chunk at the end of its stream. */
export const wantsStreamUsage = (body: Record<string, unknown> | undefined): boolean =>
  isObject(body?.stream_options) && body.stream_options.include_usage === true;
