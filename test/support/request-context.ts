// A routed chat-completions request's context, as the ingress builds it after parsing: for relay and cache tests.
import { DEFAULT_CONFIG } from '../../lib/domain/config.js';
import type { IngressRequest, RequestContext } from '../../lib/ingress/context.js';
import { ReplyChannel } from '../../lib/ingress/reply-channel.js';

/** A non-streaming normal-priority call to a limited upstream `u`, a fresh reply channel; any part overridden. */
export const requestContext = (
  over: Partial<Omit<RequestContext, 'req'>> & { req?: Partial<IngressRequest> } = {},
): RequestContext => {
  const { req, ...rest } = over;
  return {
    config: DEFAULT_CONFIG,
    priority: 'normal',
    upstream: { name: 'u', baseUrl: 'http://upstream', limited: true },
    upstreamBody: '{}',
    stream: false,
    headers: {},
    channel: new ReplyChannel(),
    ...rest,
    req: {
      requestId: 'r',
      method: 'POST',
      path: '/v1/chat/completions',
      headers: {},
      body: '{}',
      isBase64Encoded: false,
      signal: new AbortController().signal,
      remainingMs: 60_000,
      ...req,
    },
  };
};
