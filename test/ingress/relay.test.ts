// The upstream relay answers first and records after: the agent's reply (a JSON answer, or the end of a stream)
// never waits for the ticket's terminal write or the outcome count, which still finish before the relay returns.
import { describe, expect, it } from 'vitest';
import type { ReplyChannel } from '../../lib/ingress/reply-channel.js';
import { claimedTicket, stubRelay } from '../support/relay.js';
import { requestContext } from '../support/request-context.js';

const ticket = claimedTicket();

/** A relay whose store writes hang until released; the log says in which order things happened. */
const setup = (answer: () => Response) => {
  const log: string[] = [];
  let release!: () => void;
  const held = new Promise<void>((r) => {
    release = r;
  });
  const relay = stubRelay({
    answer,
    admission: {
      finish: async () => {
        await held;
        log.push('ticket ended');
      },
    },
    record: async () => {
      await held;
      log.push('outcome counted');
    },
  });
  const ctx = requestContext();
  const done = relay.callAndRelay(ctx, ticket, {}).then(() => log.push('relay returned'));
  return { ctx, log, release, done };
};

/** The reply, or a failure if it waits (for the held writes) longer than a generous bound. */
const replyOf = (channel: ReplyChannel) =>
  Promise.race([
    channel.reply,
    new Promise<never>((_, reject) =>
      setTimeout(() => reject(new Error('the reply waited for the store writes')), 5_000),
    ),
  ]);

describe('upstream relay: the reply before the bookkeeping', () => {
  it('a JSON answer reaches the agent while the terminal write is still pending', async () => {
    const { ctx, log, release, done } = setup(
      () => new Response('{"choices":[],"usage":{"total_tokens":3}}', { status: 200 }),
    );
    const reply = await replyOf(ctx.channel);
    log.push('replied');
    expect(reply.body).toContain('choices');
    release();
    await done;
    expect(log[0]).toBe('replied');
    expect(log.at(-1)).toBe('relay returned');
    expect(log).toContain('ticket ended');
    expect(log).toContain('outcome counted');
  });

  it('a stream ends before the terminal write', async () => {
    const { ctx, log, release, done } = setup(
      () =>
        new Response('data: {"choices":[]}\n\ndata: [DONE]\n\n', {
          status: 200,
          headers: { 'content-type': 'text/event-stream' },
        }),
    );
    const reply = await replyOf(ctx.channel);
    const text = await Promise.race([
      new Response(reply.body as ReadableStream<Uint8Array>).text(),
      new Promise<never>((_, reject) =>
        setTimeout(() => reject(new Error('the stream end waited for the store writes')), 5_000),
      ),
    ]);
    log.push('stream ended');
    expect(text).toContain('[DONE]');
    release();
    await done;
    expect(log[0]).toBe('stream ended');
    expect(log.at(-1)).toBe('relay returned');
  });
});
