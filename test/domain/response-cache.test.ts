// Domain: the response cache's opt-in rules, entry key and answer conversions (pure, table-driven).
import { describe, expect, it } from 'vitest';
import { ValidationError } from '../../lib/domain/errors.js';
import {
  answerAsSse,
  assembleStreamedAnswer,
  CACHE_MAX_TTL_S,
  type CacheKeyInput,
  cacheKey,
  cachePolicy,
  canonicalJson,
  parseCacheHeader,
} from '../../lib/domain/response-cache.js';

describe('parseCacheHeader', () => {
  it.each([
    [undefined, undefined],
    ['0', 0],
    ['60', 60],
    [' 300 ', 300],
    [String(CACHE_MAX_TTL_S), CACHE_MAX_TTL_S],
  ])('%j → %j', (header, ttl) => {
    expect(parseCacheHeader(header)).toBe(ttl);
  });

  it.each([['-1'], ['1.5'], ['abc'], [''], ['1e3'], [String(CACHE_MAX_TTL_S + 1)], ['0x10']])(
    '%j is a 400 invalid_cache_ttl',
    (header) => {
      expect(() => parseCacheHeader(header)).toThrow(ValidationError);
      try {
        parseCacheHeader(header);
      } catch (err) {
        expect((err as ValidationError).status).toBe(400);
        expect((err as ValidationError).code).toBe('invalid_cache_ttl');
      }
    },
  );
});

describe('cachePolicy', () => {
  const chat = { model: 'm', messages: [{ role: 'user', content: 'hi' }] };
  it.each([
    [
      'header opts in',
      { headerTtlS: 30, keyTtlS: undefined, configTtlS: 0, body: chat },
      { cache: true, ttlS: 30, source: 'header' },
    ],
    [
      'header 0 opts out of a default',
      { headerTtlS: 0, keyTtlS: undefined, configTtlS: 60, body: chat },
      { cache: false, reason: 'off' },
    ],
    [
      'config default',
      { headerTtlS: undefined, keyTtlS: undefined, configTtlS: 60, body: chat },
      { cache: true, ttlS: 60, source: 'config' },
    ],
    [
      'off by default',
      { headerTtlS: undefined, keyTtlS: undefined, configTtlS: 0, body: chat },
      { cache: false, reason: 'off' },
    ],
    [
      'key default over config',
      { headerTtlS: undefined, keyTtlS: 10, configTtlS: 60, body: chat },
      { cache: true, ttlS: 10, source: 'key' },
    ],
    [
      'key 0 turns the config default off',
      { headerTtlS: undefined, keyTtlS: 0, configTtlS: 60, body: chat },
      { cache: false, reason: 'off' },
    ],
    [
      'default leaves out n > 1',
      { headerTtlS: undefined, keyTtlS: undefined, configTtlS: 60, body: { ...chat, n: 2 } },
      { cache: false, reason: 'sampled' },
    ],
    [
      'default leaves out temperature > 0',
      { headerTtlS: undefined, keyTtlS: 60, configTtlS: 0, body: { ...chat, temperature: 0.7 } },
      { cache: false, reason: 'sampled' },
    ],
    [
      'default keeps temperature 0 and n 1',
      { headerTtlS: undefined, keyTtlS: undefined, configTtlS: 60, body: { ...chat, temperature: 0, n: 1 } },
      { cache: true, ttlS: 60, source: 'config' },
    ],
    [
      'header opts sampled requests in',
      { headerTtlS: 5, keyTtlS: undefined, configTtlS: 0, body: { ...chat, n: 3, temperature: 1 } },
      { cache: true, ttlS: 5, source: 'header' },
    ],
    [
      'no body, nothing to key',
      { headerTtlS: 5, keyTtlS: undefined, configTtlS: 0, body: undefined },
      { cache: false, reason: 'no_body' },
    ],
  ])('%s', (_name, input, expected) => {
    expect(cachePolicy(input)).toEqual(expected);
  });
});

describe('cacheKey', () => {
  const base: CacheKeyInput = {
    scope: 'deployment',
    agent: 'a',
    upstream: 'limited',
    path: '/v1/chat/completions',
    model: 'meta/llama',
    body: { model: 'nvidia/meta/llama', messages: [{ role: 'user', content: 'hi' }], max_tokens: 5 },
  };
  const same = cacheKey(base);

  it.each<[string, Partial<CacheKeyInput>]>([
    ['key order', { body: { max_tokens: 5, messages: [{ content: 'hi', role: 'user' }], model: 'x' } }],
    [
      'stream, stream_options and user',
      { body: { ...base.body, stream: true, stream_options: { include_usage: true }, user: 'u1' } },
    ],
    ['another agent under deployment scope', { agent: 'b' }],
    ['the query string', { path: '/v1/chat/completions?x=1' }],
  ])('same key despite %s', (_name, change) => {
    expect(cacheKey({ ...base, ...change })).toBe(same);
  });

  it.each<[string, Partial<CacheKeyInput>]>([
    ['another upstream', { upstream: 'other' }],
    ['another routed model', { model: 'meta/other' }],
    ['another path', { path: '/v1/completions' }],
    ['another message', { body: { ...base.body, messages: [{ role: 'user', content: 'hi!' }] } }],
    ['another parameter', { body: { ...base.body, max_tokens: 6 } }],
    ['agent scope', { scope: 'agent' }],
  ])('another key for %s', (_name, change) => {
    expect(cacheKey({ ...base, ...change })).not.toBe(same);
  });

  it('agent scope keys differ per agent', () => {
    expect(cacheKey({ ...base, scope: 'agent', agent: 'a' })).not.toBe(
      cacheKey({ ...base, scope: 'agent', agent: 'b' }),
    );
  });

  it('canonical JSON sorts keys at every depth and keeps array order', () => {
    expect(canonicalJson({ b: 1, a: { d: [2, 1], c: null } })).toBe('{"a":{"c":null,"d":[2,1]},"b":1}');
  });
});

const sse = (events: unknown[], done = true) =>
  `${events.map((e) => `data: ${JSON.stringify(e)}\n\n`).join('')}${done ? 'data: [DONE]\n\n' : ''}`;
const head = { id: 'chatcmpl-1', object: 'chat.completion.chunk', created: 1700000000, model: 'meta/llama' };
const usage = { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5 };
const chunks = [
  { ...head, choices: [{ index: 0, delta: { role: 'assistant', content: 'Hel' }, finish_reason: null }] },
  { ...head, choices: [{ index: 0, delta: { content: 'lo' }, finish_reason: null }] },
  { ...head, choices: [{ index: 0, delta: {}, finish_reason: 'stop' }] },
  { ...head, choices: [], usage },
];

describe('assembleStreamedAnswer', () => {
  it('builds the chat.completion a stream stands for', () => {
    const json = JSON.parse(assembleStreamedAnswer(sse(chunks))!);
    expect(json).toEqual({
      id: 'chatcmpl-1',
      object: 'chat.completion',
      created: 1700000000,
      model: 'meta/llama',
      choices: [
        { index: 0, message: { role: 'assistant', content: 'Hello' }, finish_reason: 'stop', logprobs: null },
      ],
      usage,
    });
  });

  it('joins tool call fragments by index', () => {
    const tool = [
      {
        ...head,
        choices: [
          {
            index: 0,
            delta: {
              role: 'assistant',
              tool_calls: [
                { index: 0, id: 'c1', type: 'function', function: { name: 'get', arguments: '{"a"' } },
              ],
            },
            finish_reason: null,
          },
        ],
      },
      {
        ...head,
        choices: [
          {
            index: 0,
            delta: { tool_calls: [{ index: 0, function: { arguments: ':1}' } }] },
            finish_reason: null,
          },
        ],
      },
      { ...head, choices: [{ index: 0, delta: {}, finish_reason: 'tool_calls' }] },
    ];
    const json = JSON.parse(assembleStreamedAnswer(sse(tool))!);
    expect(json.choices[0].message.tool_calls).toEqual([
      { id: 'c1', type: 'function', function: { name: 'get', arguments: '{"a":1}' } },
    ]);
  });

  it.each([
    ['cut short (no [DONE])', sse(chunks, false)],
    ['an error inside the stream', sse([chunks[0], { error: { message: 'boom' } }])],
    ['no finish_reason', sse(chunks.slice(0, 2))],
    ['no events', 'data: [DONE]\n\n'],
    ['not JSON', 'data: {nope\n\ndata: [DONE]\n\n'],
  ])('stores nothing for a stream %s', (_name, text) => {
    expect(assembleStreamedAnswer(text)).toBeUndefined();
  });
});

describe('answerAsSse', () => {
  const answer = assembleStreamedAnswer(sse(chunks))!;

  it('replays a stored answer as chunks ending with [DONE], usage only when asked', () => {
    const withUsage = answerAsSse(answer, true)!;
    expect(withUsage.endsWith('data: [DONE]\n\n')).toBe(true);
    // Round trip: the replay assembles to the same answer.
    expect(JSON.parse(assembleStreamedAnswer(withUsage)!)).toEqual(JSON.parse(answer));
    const events = withUsage
      .split('\n\n')
      .filter((l) => l.startsWith('data: {'))
      .map((l) => JSON.parse(l.slice(6)));
    expect(events.every((e) => e.object === 'chat.completion.chunk' && e.id === 'chatcmpl-1')).toBe(true);
    expect(events.at(-1).usage).toEqual(usage);
    expect(answerAsSse(answer, false)!.includes('"usage"')).toBe(false);
  });

  it('replays a text completion as text_completion chunks', () => {
    const text = JSON.stringify({
      id: 'cmpl-1',
      object: 'text_completion',
      created: 1,
      model: 'm',
      choices: [{ index: 0, text: 'hi', finish_reason: 'stop', logprobs: null }],
    });
    const replay = answerAsSse(text, false)!;
    expect(JSON.parse(assembleStreamedAnswer(replay)!)).toMatchObject({
      object: 'text_completion',
      choices: [{ text: 'hi', finish_reason: 'stop' }],
    });
  });

  it('has no stream for an embeddings answer', () => {
    expect(answerAsSse(JSON.stringify({ object: 'list', data: [] }), false)).toBeUndefined();
  });
});
