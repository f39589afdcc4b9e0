// Local runtime: installs a stand-in for the Lambda Node.js runtime's `awslambda` global (response streaming) outside AWS.
import { Writable } from 'node:stream';
import type { Context } from 'aws-lambda';

/** Key the Lambda runtime (and this shim) sets on a handler wrapped by `awslambda.streamifyResponse`. */
export const HANDLER_STREAMING: unique symbol = Symbol.for('aws.lambda.runtime.handler.streaming');
/** Key under which the Lambda runtime keeps the optional `highWaterMark` passed to `streamifyResponse`. */
export const HANDLER_HIGHWATERMARK: unique symbol = Symbol.for(
  'aws.lambda.runtime.handler.streaming.highWaterMark',
);
/** Value of {@link HANDLER_STREAMING} for response-streaming handlers. */
export const STREAM_RESPONSE = 'response';

/** The HTTP metadata a handler passes to `awslambda.HttpResponseStream.from` (the "prelude"). */
export interface HttpResponseMetadata {
  statusCode?: number;
  headers?: Record<string, string | number | boolean>;
  multiValueHeaders?: Record<string, Array<string | number | boolean>>;
  cookies?: string[];
  [key: string]: unknown;
}

/** Options accepted by `awslambda.streamifyResponse` (same as the real runtime). */
export interface StreamifyOptions {
  highWaterMark?: number;
}

/**
 * A response-streaming Lambda handler as the runtime calls it: `(event, responseStream, context)`.
 * Handlers typed with `awslambda.HttpResponseStream` (from @types/aws-lambda) or `Writable` are assignable.
 */
export type StreamingHandler = (
  event: never,
  responseStream: LocalResponseStream,
  context: Context,
) => unknown;

/** Shape of the `awslambda` global, as this shim installs it (a subset of the real runtime's). */
export interface AwsLambdaGlobal {
  /** Marks `handler` as response-streaming and returns the same function, like the real runtime. */
  streamifyResponse<H extends StreamingHandler>(handler: H, options?: StreamifyOptions): H;
  HttpResponseStream: {
    /** Attaches status/headers to a response stream and returns that same stream. */
    from(responseStream: Writable, metadata: HttpResponseMetadata): Writable;
  };
}

/**
 * Where a {@link LocalResponseStream} delivers the response; implemented by the local API Gateway adapter.
 * `start` is called exactly once, before the first body byte (or at the end for an empty body).
 */
export interface ResponseSink {
  /** `metadata` is the prelude from `HttpResponseStream.from`, or null when the handler never called it. */
  start(metadata: HttpResponseMetadata | null, contentType: string): void;
  /** Writes body bytes; `done` when they are handed to the socket. */
  write(chunk: Buffer, done: (error?: Error | null) => void): void;
  /** The handler ended the stream normally. */
  end(done: () => void): void;
  /** The handler destroyed the stream (or a pipeline into it failed) before ending it. */
  abort(error: Error | null): void;
}

const DEFAULT_CONTENT_TYPE = 'application/octet-stream';

/**
 * The `responseStream` the local adapter passes to streaming handlers, standing in for the runtime's stream.
 * Body bytes go to a {@link ResponseSink} as they are written; `from()` metadata is sent before the first byte.
 * When the HTTP client goes away, {@link LocalResponseStream.disconnect} aborts {@link getClientSignal}'s signal
 * and destroys the stream without an error, so it emits 'close' and later writes are dropped, never thrown.
 */
export class LocalResponseStream extends Writable {
  readonly #sink: ResponseSink;
  readonly #client = new AbortController();
  #metadata: HttpResponseMetadata | null = null;
  #contentType = DEFAULT_CONTENT_TYPE;
  #started = false;

  /** @param sink - receives the status, headers and body. */
  constructor(sink: ResponseSink, highWaterMark?: number) {
    super(highWaterMark === undefined ? {} : { highWaterMark });
    this.#sink = sink;
  }

  /** Content type used when the handler never calls `HttpResponseStream.from` (the runtime's method). */
  setContentType(contentType: string): void {
    this.#contentType = contentType;
  }

  /** Records the prelude; ignored once body bytes were sent, as in the runtime. Used by `HttpResponseStream.from`. */
  setMetadata(metadata: HttpResponseMetadata): void {
    if (this.#started) return;
    // The runtime JSON-serialises the prelude; do the same so non-JSON values behave alike.
    this.#metadata = JSON.parse(JSON.stringify(metadata)) as HttpResponseMetadata;
  }

  /** Aborted when the HTTP client disconnects before the response ends. */
  get clientSignal(): AbortSignal {
    return this.#client.signal;
  }

  /**
   * Called by the adapter when the response can no longer reach the client (disconnect, timeout, stop):
   * aborts the signal, then destroys the stream without an error (it emits 'close').
   */
  disconnect(reason = 'client disconnected'): void {
    if (this.#client.signal.aborted) return;
    this.#client.abort(new Error(reason));
    this.destroy();
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.#start();
    if (chunk.length === 0 || this.destroyed) {
      callback();
      return;
    }
    this.#sink.write(chunk, callback);
  }

  override _final(callback: (error?: Error | null) => void): void {
    this.#start();
    this.#sink.end(() => callback());
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    if (!this.writableFinished && !this.#client.signal.aborted) this.#sink.abort(error);
    callback(error);
  }

  #start(): void {
    if (this.#started) return;
    this.#started = true;
    this.#sink.start(this.#metadata, this.#contentType);
  }
}

/**
 * The signal the local adapter aborts when the HTTP client disconnects mid-response.
 * Returns undefined for any other stream (notably the real Lambda runtime's): portable handlers should also
 * watch the stream's 'close' event (closed before 'finish' = the response was cut short).
 */
export function getClientSignal(responseStream: Writable): AbortSignal | undefined {
  return responseStream instanceof LocalResponseStream ? responseStream.clientSignal : undefined;
}

/** True when `fn` was wrapped by `awslambda.streamifyResponse` (this shim's or the real runtime's). */
export function isStreamingHandler(fn: unknown): fn is StreamingHandler {
  return (
    typeof fn === 'function' &&
    (fn as unknown as Record<symbol, unknown>)[HANDLER_STREAMING] === STREAM_RESPONSE
  );
}

/** The `highWaterMark` a streaming handler asked for via `streamifyResponse(handler, { highWaterMark })`, if any. */
export function getStreamingHighWaterMark(fn: StreamingHandler): number | undefined {
  const value = (fn as unknown as Record<symbol, unknown>)[HANDLER_HIGHWATERMARK];
  return typeof value === 'number' ? value : undefined;
}

function streamifyResponse<H extends StreamingHandler>(handler: H, options?: StreamifyOptions): H {
  const marked = handler as unknown as Record<symbol, unknown>;
  marked[HANDLER_STREAMING] = STREAM_RESPONSE;
  if (typeof options?.highWaterMark === 'number') marked[HANDLER_HIGHWATERMARK] = options.highWaterMark;
  return handler;
}

function httpResponseStreamFrom(responseStream: Writable, metadata: HttpResponseMetadata): Writable {
  if (!(responseStream instanceof LocalResponseStream)) {
    throw new TypeError('awslambda.HttpResponseStream.from expects the responseStream given to the handler');
  }
  responseStream.setMetadata(metadata);
  return responseStream;
}

/** This shim's implementation of the global. */
export const localAwsLambda: AwsLambdaGlobal = {
  streamifyResponse,
  HttpResponseStream: { from: httpResponseStreamFrom },
};

/**
 * Installs {@link localAwsLambda} as `globalThis.awslambda` unless one exists (the real runtime's, or an earlier
 * install), and returns the global in effect. Runs on import; calling it again is harmless.
 */
export function installAwsLambdaShim(): AwsLambdaGlobal {
  // `awslambda` is untyped on globalThis unless @types/aws-lambda's namespace is in scope; read it via a record.
  const globals = globalThis as unknown as Record<string, unknown>;
  // The AWS SDK (@aws/lambda-invoke-store) may already have set `awslambda = {}`: fill in what is missing.
  const current = (globals.awslambda ?? {}) as Partial<AwsLambdaGlobal>;
  current.streamifyResponse ??= localAwsLambda.streamifyResponse;
  current.HttpResponseStream ??= localAwsLambda.HttpResponseStream;
  globals.awslambda = current;
  return current as AwsLambdaGlobal;
}

installAwsLambdaShim();
