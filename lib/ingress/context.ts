// Ingress: the request as the router hands it over, and the one context object a request carries through its path.
import type { GatewayConfig } from '../domain/config.js';
import type { Priority } from '../domain/priority.js';
import type { UpstreamDef } from '../domain/routes.js';
import type { ReplyChannel } from './reply-channel.js';

/** A request as the router hands it over (headers lower-cased). */
export interface IngressRequest {
  requestId: string;
  method: string;
  /** Path with query string, e.g. `/v1/chat/completions`. */
  path: string;
  headers: Record<string, string | undefined>;
  body: string | null;
  isBase64Encoded: boolean;
  /** Aborts when the agent disconnects (where the platform can tell). */
  signal: AbortSignal;
  /** Time left before the function is stopped. */
  remainingMs: number;
  /**
   * Keeps the invocation alive until `work` settles: the ticket's terminal write runs after the reply ended (the
   * agent does not wait for it) but before the handler returns. Unset (tests), the work runs on its own.
   */
  waitUntil?: (work: Promise<unknown>) => void;
  /**
   * Settles once the platform has the whole reply (or the agent went away). The ticket's end and counters start
   * only then: their store calls would otherwise share the event loop with the reply's last bytes and delay them.
   * Unset (tests), they start as soon as the reply is complete in the channel.
   */
  replied?: Promise<void>;
}

/** Everything one routed request needs after parsing, built once by the ingress and passed along whole. */
export interface RequestContext {
  req: IngressRequest;
  /** The config as read once for this request. */
  config: GatewayConfig;
  priority: Priority;
  upstream: UpstreamDef;
  /** The bytes to send upstream (model id rewritten), none for a GET. */
  upstreamBody: string | undefined;
  stream: boolean;
  /** Headers every reply of this request carries (request id, priority). */
  headers: Record<string, string>;
  channel: ReplyChannel;
  /** Takes the complete answer of a 2xx call before the agent gets its end (the response cache's miss). */
  answerSink?: AnswerSink;
}

/** Where a relayed answer goes besides the agent: called once per complete, unbroken answer, before it ends. */
export interface AnswerSink {
  /** Streams longer than this are not captured (nothing is passed). */
  maxBytes: number;
  answer(answer: { status: number; sse: boolean; text: string }): Promise<void>;
}
