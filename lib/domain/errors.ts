// Domain: one typed error hierarchy; the HTTP layer maps it to OpenAI-shaped responses in one place.

/** OpenAI error `type` values used by sluice. */
export type OpenAiErrorType =
  | 'invalid_request_error'
  | 'authentication_error'
  | 'permission_error'
  | 'not_found_error'
  | 'rate_limit_error'
  | 'api_error'
  | 'server_error';

/** An error a client may see: status, OpenAI type and code, and when retrying helps. */
export class GatewayError extends Error {
  readonly status: number;
  readonly type: OpenAiErrorType;
  readonly code: string;
  readonly param: string | null;
  /** Set when waiting helps: becomes `retry-after-ms` and `retry-after`. */
  readonly retryAfterMs: number | undefined;
  /** `false` when a retry can never succeed (becomes `x-should-retry: false`, which the OpenAI SDKs obey). */
  readonly shouldRetry: boolean | undefined;

  constructor(
    status: number,
    type: OpenAiErrorType,
    code: string,
    message: string,
    opts: { param?: string | null; retryAfterMs?: number; shouldRetry?: boolean } = {},
  ) {
    super(message);
    this.name = new.target.name;
    this.status = status;
    this.type = type;
    this.code = code;
    this.param = opts.param ?? null;
    this.retryAfterMs = opts.retryAfterMs;
    this.shouldRetry = opts.shouldRetry;
  }
}

export class ValidationError extends GatewayError {
  constructor(message: string, param: string | null = null, code = 'invalid_value') {
    super(400, 'invalid_request_error', code, message, { param });
  }
}

export class AuthenticationError extends GatewayError {
  constructor(message = 'Missing or invalid API key. Send `Authorization: Bearer <agent key>`.') {
    super(401, 'authentication_error', 'invalid_api_key', message);
  }
}

export class PermissionError extends GatewayError {
  constructor(message: string, code = 'permission_denied') {
    super(403, 'permission_error', code, message);
  }
}

export class NotFoundError extends GatewayError {
  constructor(message: string) {
    super(404, 'not_found_error', 'not_found', message);
  }
}

/** The agent should come back later: queue wait exceeded, low priority refused, upstream 429 after requeues. */
export class RateLimitedError extends GatewayError {
  constructor(message: string, retryAfterMs: number, code = 'rate_limit_exceeded') {
    super(429, 'rate_limit_error', code, message, { retryAfterMs });
  }
}

/** The gateway cannot take the request now: queue full, draining, state store unavailable. */
export class UnavailableError extends GatewayError {
  constructor(message: string, retryAfterMs: number, code = 'service_unavailable') {
    super(503, 'server_error', code, message, { retryAfterMs });
  }
}

/** The upstream failed: 5xx, reset, timeout. */
export class UpstreamError extends GatewayError {
  constructor(status: 502 | 504, message: string, code: string) {
    super(status, 'api_error', code, message);
  }
}

/** A conditional write lost: the item was not in the expected state. Adapters translate SDK errors to this. */
export class ConflictError extends Error {
  constructor(
    message: string,
    readonly current?: Record<string, unknown>,
  ) {
    super(message);
    this.name = 'ConflictError';
  }
}

/** A dependency (DynamoDB, SQS) failed after its retries. */
export class StoreUnavailableError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'StoreUnavailableError';
  }
}

/** The admission counter is at queue_max_size: the ticket was not created. */
export class AdmissionFullError extends Error {
  constructor(readonly count: number) {
    super(`queue full (${count})`);
    this.name = 'AdmissionFullError';
  }
}

/** The agent already has `max_queued_per_agent` tickets queued: the ticket was not created. */
export class AgentQueueFullError extends Error {
  constructor(readonly count: number) {
    super(`agent queue full (${count})`);
    this.name = 'AgentQueueFullError';
  }
}

/** An Idempotency-Key already maps to a ticket (its id, when the store returned it). */
export class IdempotencyConflictError extends Error {
  constructor(readonly ticketId: string | undefined) {
    super('idempotency key in use');
    this.name = 'IdempotencyConflictError';
  }
}
