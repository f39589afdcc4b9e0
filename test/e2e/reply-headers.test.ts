// Every reply of the ingress carries x-request-id and the x-ratelimit-* headers, as the README promises: the
// refusals an agent meets first (401 without or with a wrong key, 400, a LOW request refused for lack of a token)
// as well as the upstream's answers.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LocalSystem } from '../../local/runtime.js';
import { startTestSystem } from '../support/system.js';

let system: LocalSystem;
let key: string;

beforeAll(async () => {
  system = await startTestSystem('e2e-reply-headers', {
    fakeUpstream: { limit: null },
    // Two calls a minute, burst 1: after the first call, a LOW request cannot get one within its 1 s timeout.
    env: {
      SLUICE_UPSTREAM_LIMIT: '2',
      SLUICE_RETREAT_FLOOR_RPM: '1',
      SLUICE_BUCKET_BURST: '1',
      SLUICE_LOW_TIMEOUT_S: '1',
      SLUICE_MAX_WAIT_S: '5',
    },
  });
  key = await system.createKey('headers-agent', 'urgent');
});

afterAll(async () => {
  await system?.stop();
});

const chat = (headers: Record<string, string>) =>
  fetch(`${system.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify({
      model: 'meta/llama-3.1-8b-instruct',
      messages: [{ role: 'user', content: 'hi' }],
    }),
  });

const replyHeaders = async (res: Response) => {
  await res.text();
  return {
    status: res.status,
    requestId: res.headers.get('x-request-id'),
    limit: res.headers.get('x-ratelimit-limit-requests'),
    remaining: res.headers.get('x-ratelimit-remaining-requests'),
    reset: res.headers.get('x-ratelimit-reset-requests'),
  };
};

const carriesAll = (status: number) => ({
  status,
  requestId: expect.stringMatching(/\S/),
  limit: '2',
  remaining: expect.stringMatching(/^\d+$/),
  reset: expect.stringMatching(/^[\dhms.]+$/),
});

describe('reply headers on every reply', () => {
  it.each([
    ['no Authorization header', {}],
    ['an unknown key', { authorization: 'Bearer sk-sluice-not-a-real-key-000000000000000000000000' }],
  ])('401 with %s', async (_what, headers) => {
    expect(await replyHeaders(await chat(headers))).toEqual(carriesAll(401));
  });

  it('400 for a bad X-Priority', async () => {
    const res = await chat({ authorization: `Bearer ${key}`, 'x-priority': 'asap' });
    expect(await replyHeaders(res)).toEqual(carriesAll(400));
  });

  it('200 from the upstream, then 429 for a LOW request that gets no token in time', async () => {
    expect(await replyHeaders(await chat({ authorization: `Bearer ${key}` }))).toEqual(carriesAll(200));
    const low = await chat({ authorization: `Bearer ${key}`, 'x-priority': 'low' });
    expect(await replyHeaders(low)).toEqual(carriesAll(429));
  });
});
