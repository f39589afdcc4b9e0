// Function support: turning HttpReply into a web Response and CORS headers for the dashboard's origin.
import type { APIGatewayProxyEvent } from 'aws-lambda';
import type { HttpReply } from '../../lib/http/reply.js';

/** CORS for the dashboard's origin only (Lambda proxy integrations must send these themselves). */
export const corsHeaders = (
  allowedOrigin: string | undefined,
  event: Pick<APIGatewayProxyEvent, 'headers'>,
): Record<string, string> => {
  if (!allowedOrigin) return {};
  const origin = Object.entries(event.headers ?? {}).find(([k]) => k.toLowerCase() === 'origin')?.[1];
  if (origin !== allowedOrigin) return {};
  return {
    'access-control-allow-origin': allowedOrigin,
    'access-control-allow-headers': 'authorization, content-type, x-priority, idempotency-key',
    'access-control-allow-methods': 'GET, POST, PATCH, OPTIONS',
    'access-control-expose-headers': 'x-request-id, retry-after, retry-after-ms, x-sluice-queue-ms',
    vary: 'origin',
  };
};

export const toResponse = (reply: HttpReply, extra: Record<string, string> = {}): Response =>
  new Response(reply.body, { status: reply.status, headers: { ...reply.headers, ...extra } });

/** Lower-cased single-value headers of a REST proxy event. */
export const lowerHeaders = (
  event: Pick<APIGatewayProxyEvent, 'headers'>,
): Record<string, string | undefined> => {
  const out: Record<string, string | undefined> = {};
  for (const [k, v] of Object.entries(event.headers ?? {})) out[k.toLowerCase()] = v ?? undefined;
  return out;
};

/** Path plus query string as the agent sent it. */
export const pathWithQuery = (
  event: Pick<APIGatewayProxyEvent, 'path' | 'multiValueQueryStringParameters'>,
): string => {
  const q = new URLSearchParams();
  for (const [k, vs] of Object.entries(event.multiValueQueryStringParameters ?? {}))
    for (const v of vs ?? []) q.append(k, v);
  const qs = q.toString();
  return qs ? `${event.path}?${qs}` : event.path;
};
