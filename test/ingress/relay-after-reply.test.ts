// The relay's bookkeeping (ticket end, outcome count) starts only once the platform has the whole reply
// (IngressRequest.replied): the store calls never share the event loop with the reply's last bytes, for answers and
// error replies alike.
import { describe, expect, it } from 'vitest';
import type { ReplyChannel } from '../../lib/ingress/reply-channel.js';
import { claimedTicket, stubRelay } from '../support/relay.js';
import { requestContext } from '../support/request-context.js';

const ticket = claimedTicket();

/** A relay on an upstream giving `answer`, its request settling `replied`; the log says what was written when. */
const setup = (answer: () => Response, replied: Promise<void>) => {
  const log: string[] = [];
  const relay = stubRelay({
    answer,
    admission: {
      finish: async () => {
        log.push('write started');
        log.push('ticket ended');
      },
    },
    record: async () => {
      log.push('write started');
      log.push('outcome counted');
    },
  });
  const ctx = requestContext({ req: { replied } });
  const done = relay.callAndRelay(ctx, ticket, {}).then(() => log.push('relay returned'));
  return { ctx, log, done };
};

/** The reply, or a failure if it does not come within a generous bound. */
const replyOf = (channel: ReplyChannel) =>
  Promise.race([
    channel.reply,
    new Promise<never>((_, reject) => setTimeout(() => reject(new Error('no reply')), 5_000)),
  ]);

describe('upstream relay: the bookkeeping waits until the agent has the whole reply', () => {
  /** Lets every pending callback and I/O turn run (the relay has nothing else to wait for). */
  const settle = () => new Promise((r) => setTimeout(r, 50));
  const deferred = () => {
    let resolve!: () => void;
    const promise = new Promise<void>((r) => {
      resolve = r;
    });
    return { promise, resolve };
  };

  it.each([
    ['a JSON answer', () => new Response('{"choices":[],"usage":{"total_tokens":3}}', { status: 200 }), 200],
    [
      'a stream',
      () =>
        new Response('data: {"choices":[]}\n\ndata: [DONE]\n\n', {
          status: 200,
          headers: { 'content-type': 'text/event-stream' },
        }),
      200,
    ],
    ['an upstream 5xx', () => new Response('boom', { status: 500 }), 502],
    ['the agent’s own 4xx', () => new Response('{"error":{"message":"bad"}}', { status: 400 }), 400],
  ])('%s: no store write starts before the reply was handed over whole', async (_name, answer, status) => {
    const replied = deferred();
    const { ctx, log, done } = setup(answer, replied.promise);
    const reply = await replyOf(ctx.channel);
    expect(reply.status).toBe(status);
    if (reply.body instanceof ReadableStream) await new Response(reply.body).text();
    await settle();
    // The reply is complete in the channel, but the platform has not written it out yet: nothing was written.
    expect(log).toEqual([]);
    replied.resolve();
    await done;
    expect(log.filter((e) => e === 'write started').length).toBeGreaterThan(0);
    expect(log).toContain('ticket ended');
    expect(log.at(-1)).toBe('relay returned');
  });

  it('an upstream unreachable: the 502 goes out before the terminal write', async () => {
    const replied = deferred();
    const { ctx, log, done } = setup(() => {
      throw new TypeError('fetch failed');
    }, replied.promise);
    const reply = await replyOf(ctx.channel);
    expect(reply.status).toBe(502);
    await settle();
    expect(log).toEqual([]);
    replied.resolve();
    await done;
    expect(log).toContain('ticket ended');
  });
});
