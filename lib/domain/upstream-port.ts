// Port: calling an OpenAI-compatible upstream. The fetch adapter implements it.

export interface UpstreamRequest {
  baseUrl: string;
  /** Path below the base, e.g. `/v1/chat/completions` (query string included). */
  path: string;
  method: string;
  headers: Record<string, string>;
  body?: string;
  /** This upstream's own credential; unset = no `Authorization` header. */
  apiKey?: string;
  firstByteTimeoutMs: number;
  timeoutMs: number;
  signal?: AbortSignal;
}

export interface UpstreamResponse {
  status: number;
  headers: Headers;
  body: ReadableStream<Uint8Array> | null;
}

/** Why a call produced no response. */
export class UpstreamCallError extends Error {
  constructor(
    readonly kind: 'timeout' | 'first_byte_timeout' | 'connection' | 'aborted',
    message: string,
  ) {
    super(message);
    this.name = 'UpstreamCallError';
  }
}

export interface UpstreamClient {
  /** Resolves when the response headers arrived; rejects with UpstreamCallError. */
  call(req: UpstreamRequest): Promise<UpstreamResponse>;
}
