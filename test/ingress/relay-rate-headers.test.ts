// The upstream relay and the upstream's own limits: rate headers saying nothing is left hold its bucket until
// their reset (a 200 too, not only a 429), and on an upstream with tpm the answer's usage corrects the grant's
// token reservation (JSON and streamed); nothing is read or written for an upstream that says nothing.
import { describe, expect, it, vi } from 'vitest';
import type { TokenBucket } from '../../lib/domain/bucket.js';
import { FakeClock } from '../../lib/domain/clock.js';
import { DEFAULT_CONFIG, type GatewayConfig } from '../../lib/domain/config.js';
import type { Ticket } from '../../lib/domain/tickets.js';
import { claimedTicket, stubRelay } from '../support/relay.js';
import { requestContext } from '../support/request-context.js';

const NOW = 1_000_000;
const ticket = claimedTicket({
  enqueuedAt: NOW - 500,
  grantedAt: NOW - 100,
  deadline: NOW + 60_000,
  tokens: 90,
});

const run = async (
  answer: () => Response,
  opts: { config?: Partial<GatewayConfig>; ticket?: Partial<Ticket> } = {},
) => {
  const bucket = {
    hold: vi.fn(async () => {}),
    reconcileTokens: vi.fn(async () => {}),
  };
  const relay = stubRelay({
    answer,
    admission: { finish: async () => {}, requeue: async () => undefined },
    record: async () => {},
    bucket: bucket as unknown as TokenBucket,
    clock: new FakeClock(NOW),
  });
  const ctx = requestContext({ config: { ...DEFAULT_CONFIG, ...opts.config } });
  const result = await relay.callAndRelay(ctx, { ...ticket, ...opts.ticket }, {});
  // A 429 with requeues left is requeued: the agent has no reply yet.
  if (result !== 'done') return { bucket, result };
  const reply = await ctx.channel.reply;
  if (reply.body instanceof ReadableStream) await new Response(reply.body).text();
  return { bucket, result };
};

const json =
  (headers: Record<string, string> = {}, status = 200) =>
  () =>
    new Response('{"choices":[],"usage":{"prompt_tokens":40,"completion_tokens":12,"total_tokens":52}}', {
      status,
      headers: { 'content-type': 'application/json', ...headers },
    });

describe('the upstream says nothing is left: a hold on its bucket until the reset', () => {
  it.each<[string, Record<string, string>, number, number | undefined]>([
    ['a 200 with no headers (NVIDIA): nothing', {}, 200, undefined],
    [
      'a 200 with tokens left: nothing',
      { 'x-ratelimit-remaining-tokens': '10', 'x-ratelimit-reset-tokens': '2s' },
      200,
      undefined,
    ],
    [
      'a 200 with no tokens left: until their reset',
      { 'x-ratelimit-remaining-tokens': '0', 'x-ratelimit-reset-tokens': '1.5s' },
      200,
      1_500,
    ],
    [
      'a 200 with no requests left: until their reset',
      { 'x-ratelimit-remaining-requests': '0', 'x-ratelimit-reset-requests': '6m0s' },
      200,
      300_000,
    ],
    ['a 429 with retry-after-ms', { 'retry-after-ms': '750' }, 429, 750],
    [
      'a 429 with x-ratelimit-remaining-tokens 0',
      { 'x-ratelimit-remaining-tokens': '0', 'x-ratelimit-reset-tokens': '20ms' },
      429,
      20,
    ],
  ])('%s', async (_name, headers, status, holdMs) => {
    const { bucket } = await run(json(headers, status));
    if (holdMs === undefined) expect(bucket.hold).not.toHaveBeenCalled();
    // Holds are capped at 5 minutes (6m0s → 300 s).
    else expect(bucket.hold).toHaveBeenCalledWith(NOW + holdMs);
  });
});

describe('tokens per minute: the answer corrects the reservation', () => {
  const tpm = { upstreamTpm: 5_000 };

  it.each<[string, Partial<GatewayConfig>, Partial<Ticket>, () => Response, boolean]>([
    ['a JSON answer with usage', tpm, {}, json(), true],
    [
      'a stream with a usage chunk',
      tpm,
      { stream: true },
      () =>
        new Response(
          'data: {"choices":[{"delta":{"content":"x"}}]}\n\ndata: {"choices":[],"usage":{"total_tokens":52}}\n\ndata: [DONE]\n\n',
          { status: 200, headers: { 'content-type': 'text/event-stream' } },
        ),
      true,
    ],
    [
      'a stream without usage: the estimate stays',
      tpm,
      { stream: true },
      () =>
        new Response('data: {"choices":[{"delta":{"content":"x"}}]}\n\ndata: [DONE]\n\n', {
          status: 200,
          headers: { 'content-type': 'text/event-stream' },
        }),
      false,
    ],
    ['an upstream without tpm: nothing', {}, {}, json(), false],
    ['a ticket without an estimate: nothing', tpm, { tokens: undefined }, json(), false],
  ])('%s', async (_name, config, t, answer, corrected) => {
    const { bucket } = await run(answer, { config, ticket: t });
    if (!corrected) expect(bucket.reconcileTokens).not.toHaveBeenCalled();
    else
      expect(bucket.reconcileTokens).toHaveBeenCalledWith(NOW - 100, 90, 52, {
        tpm: 5_000,
        windowMs: 61_000,
      });
  });
});
