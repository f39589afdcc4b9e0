// Ingress application layer: parsing an agent's request (path, body, priority, Idempotency-Key) — clear 400s,
// nothing admitted on bad input.
import { GatewayError, ValidationError } from '../domain/errors.js';
import { capPriority, PRIORITIES, type Priority, parsePriority } from '../domain/priority.js';

/** JSON deeper than this is refused before parsing (stack safety, no legitimate request needs it). */
export const MAX_JSON_DEPTH = 64;

/** Longest model id accepted: it is stored on the ticket, so a huge one must not reach DynamoDB's item limit. */
export const MAX_MODEL_LENGTH = 256;

export interface ParsedBody {
  json: Record<string, unknown>;
  model: string;
  stream: boolean;
  /** The exact bytes to forward (re-serialised only when the model id is rewritten). */
  raw: string;
}

/**
 * Refuses a path that could walk the upstream URL out of its base path: `.`/`..` segments (percent-encoded too,
 * which URL parsers resolve the same way) and backslashes. The host is never the agent's to choose anyway.
 * @throws ValidationError (400 `invalid_path`)
 */
export const assertSafePath = (path: string): void => {
  const pathname = path.split('?')[0] ?? '';
  let decoded: string;
  try {
    decoded = decodeURIComponent(pathname);
  } catch {
    throw new ValidationError('Request path is not valid percent-encoding.', null, 'invalid_path');
  }
  if (decoded.includes('\\') || decoded.split('/').some((seg) => seg === '.' || seg === '..')) {
    throw new ValidationError('Request path may not contain "." or ".." segments.', null, 'invalid_path');
  }
};

/** Decodes the body as UTF-8, refusing invalid sequences. */
export const decodeBody = (body: string | null, isBase64: boolean): string => {
  if (body === null || body === '') return '';
  if (!isBase64) return body;
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(Buffer.from(body, 'base64'));
  } catch {
    throw new ValidationError('Request body is not valid UTF-8.', null, 'invalid_encoding');
  }
};

const nestingDepth = (text: string): number => {
  let depth = 0;
  let max = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (inString) {
      if (c === '\\') i++;
      else if (c === '"') inString = false;
    } else if (c === '"') inString = true;
    else if (c === '{' || c === '[') max = Math.max(max, ++depth);
    else if (c === '}' || c === ']') depth--;
  }
  return max;
};

/**
 * Validates a POST body for a model endpoint.
 * @param maxBytes configured maximum body size
 * @throws GatewayError 413 over `maxBytes`; ValidationError (400) naming what else is wrong
 */
export const parseModelRequest = (
  contentType: string | undefined,
  text: string,
  maxBytes: number,
): ParsedBody => {
  if (Buffer.byteLength(text, 'utf8') > maxBytes) {
    throw new GatewayError(
      413,
      'invalid_request_error',
      'payload_too_large',
      `Request body exceeds ${maxBytes} bytes.`,
    );
  }
  if (!text.trim())
    throw new ValidationError('Request body is empty; send a JSON object.', null, 'empty_body');
  const type = (contentType ?? '').split(';')[0]?.trim().toLowerCase();
  if (type !== 'application/json') {
    throw new ValidationError('Content-Type must be application/json.', null, 'invalid_content_type');
  }
  if (nestingDepth(text) > MAX_JSON_DEPTH) {
    throw new ValidationError(`JSON nested deeper than ${MAX_JSON_DEPTH} levels.`, null, 'json_too_deep');
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new ValidationError('Request body is not valid JSON.', null, 'invalid_json');
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) {
    throw new ValidationError('Request body must be a JSON object.', null, 'invalid_json');
  }
  const obj = json as Record<string, unknown>;
  if (typeof obj.model !== 'string' || obj.model.trim() === '') {
    throw new ValidationError(
      '`model` is required and must be a non-empty string.',
      'model',
      'invalid_model',
    );
  }
  if (obj.model.length > MAX_MODEL_LENGTH) {
    throw new ValidationError(
      `\`model\` is longer than ${MAX_MODEL_LENGTH} characters.`,
      'model',
      'invalid_model',
    );
  }
  if (obj.stream !== undefined && obj.stream !== null && typeof obj.stream !== 'boolean') {
    throw new ValidationError('`stream` must be a boolean.', 'stream', 'invalid_type');
  }
  return { json: obj, model: obj.model, stream: obj.stream === true, raw: text };
};

/** The body to send upstream with another model id (gateway prefix stripped). */
export const withModel = (body: ParsedBody, model: string): string =>
  model === body.model ? body.raw : JSON.stringify({ ...body.json, model });

/**
 * The agent's X-Priority, capped at what its key allows.
 * @returns the effective priority and the reply headers that say it (and any capping)
 * @throws ValidationError (400 `invalid_priority`)
 */
export const requestPriority = (
  header: string | undefined,
  keyMax: Priority,
): { priority: Priority; headers: Record<string, string> } => {
  const requested = parsePriority(header);
  if (requested === null) {
    throw new ValidationError(
      `X-Priority must be one of ${PRIORITIES.join(', ')} (case-insensitive).`,
      'X-Priority',
      'invalid_priority',
    );
  }
  const priority = capPriority(requested ?? 'normal', keyMax);
  return {
    priority,
    headers: {
      'x-sluice-priority': priority,
      ...(requested && priority !== requested
        ? { 'x-sluice-priority-capped': `${requested}->${priority}` }
        : {}),
    },
  };
};

/**
 * The Idempotency-Key header, if any.
 * @throws ValidationError (400 `invalid_idempotency_key`) unless 1-255 printable ASCII characters
 */
export const idempotencyKey = (header: string | undefined): string | undefined => {
  if (header !== undefined && !/^[\x21-\x7e]{1,255}$/.test(header)) {
    throw new ValidationError(
      'Idempotency-Key must be 1-255 printable ASCII characters.',
      'Idempotency-Key',
      'invalid_idempotency_key',
    );
  }
  return header;
};
