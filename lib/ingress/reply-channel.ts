// Ingress reply transport: one reply settled once (status and headers), then a byte stream the agent can cancel.
import type { GatewayError } from '../domain/errors.js';
import { errorReply, type HttpReply, sseError } from '../http/reply.js';

/** How the reply is delivered: a promise settled once with status and headers, then a byte stream. */
export class ReplyChannel {
  private settle!: (r: HttpReply) => void;
  readonly reply: Promise<HttpReply>;
  private writer: WritableStreamDefaultWriter<Uint8Array> | undefined;
  private readonly enc = new TextEncoder();
  committed = false;
  closed = false;
  /** Set when the agent's side of a stream went away. */
  readonly cancelled = new AbortController();

  constructor() {
    this.reply = new Promise((resolve) => {
      this.settle = resolve;
    });
  }

  /** Sends a complete reply (only before anything was committed). */
  finish(reply: HttpReply): void {
    if (this.committed) return;
    this.committed = true;
    this.closed = true;
    this.settle(reply);
  }

  /** Commits status and headers; the body follows through write(). */
  commit(status: number, headers: Record<string, string>): void {
    if (this.committed) return;
    this.committed = true;
    const cancelled = this.cancelled;
    const { readable, writable } = new TransformStream<Uint8Array, Uint8Array>(undefined, undefined, {
      highWaterMark: 64,
    });
    this.writer = writable.getWriter();
    // The agent went away: the platform cancels the body, which we turn into an abort for the upstream call.
    this.writer.closed.catch(() => cancelled.abort());
    this.settle({ status, headers, body: withCancel(readable, () => cancelled.abort()) });
  }

  async write(chunk: Uint8Array | string): Promise<void> {
    if (!this.writer || this.closed) return;
    try {
      await this.writer.write(typeof chunk === 'string' ? this.enc.encode(chunk) : chunk);
    } catch {
      this.cancelled.abort();
    }
  }

  async end(): Promise<void> {
    if (!this.writer || this.closed) return;
    this.closed = true;
    try {
      await this.writer.close();
    } catch {
      // Already cancelled by the agent.
    }
  }

  /** An error as a JSON reply, or as an SSE error event if the stream already started. */
  async fail(err: GatewayError, headers: Record<string, string>): Promise<void> {
    if (!this.committed) {
      this.finish(errorReply(err, headers));
      return;
    }
    await this.write(sseError(err));
    await this.end();
  }
}

/** A stream that calls `onCancel` when its reader cancels (agent disconnect). */
const withCancel = (src: ReadableStream<Uint8Array>, onCancel: () => void): ReadableStream<Uint8Array> => {
  const reader = src.getReader();
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      const { value, done } = await reader.read();
      if (done) controller.close();
      else controller.enqueue(value);
    },
    cancel(reason) {
      onCancel();
      return reader.cancel(reason);
    },
  });
};

/** Reads at most `limit` bytes of a body as text (error bodies are small; never buffer a whole stream). */
export const readLimited = async (
  body: ReadableStream<Uint8Array> | null,
  limit: number,
): Promise<string> => {
  if (!body) return '';
  const reader = body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  try {
    while (size < limit) {
      const { value, done } = await reader.read();
      if (done) break;
      chunks.push(value);
      size += value.length;
    }
  } catch {
    // A broken error body still classifies by status.
  } finally {
    await reader.cancel().catch(() => undefined);
  }
  return Buffer.concat(chunks).toString('utf8').slice(0, limit);
};
