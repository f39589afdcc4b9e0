// Adapter: the upstream HTTP call with fetch (one shared connection pool per container), with timeouts.
import {
  UpstreamCallError,
  type UpstreamClient,
  type UpstreamRequest,
  type UpstreamResponse,
} from '../../domain/upstream-port.js';

export class FetchUpstream implements UpstreamClient {
  async call(req: UpstreamRequest): Promise<UpstreamResponse> {
    const overall = AbortSignal.timeout(req.timeoutMs);
    const firstByte = new AbortController();
    const timer = setTimeout(() => firstByte.abort(), req.firstByteTimeoutMs);
    const signals = [overall, firstByte.signal, ...(req.signal ? [req.signal] : [])];
    const url = `${req.baseUrl.replace(/\/+$/, '')}${req.path.startsWith('/v1/') && /\/v1\/?$/.test(req.baseUrl) ? req.path.slice(3) : req.path}`;
    // The host is configuration, never the agent's: a path must not be able to change it.
    if (new URL(url).origin !== new URL(req.baseUrl).origin) {
      throw new UpstreamCallError('connection', 'request path would leave the configured upstream');
    }
    try {
      const res = await fetch(url, {
        method: req.method,
        // Only this upstream's own key, and none for an upstream without one (never the agent's, never another's).
        headers: { ...req.headers, ...(req.apiKey ? { authorization: `Bearer ${req.apiKey}` } : {}) },
        ...(req.body !== undefined ? { body: req.body } : {}),
        signal: AbortSignal.any(signals),
        redirect: 'manual',
      });
      return { status: res.status, headers: res.headers, body: res.body };
    } catch (err) {
      if (req.signal?.aborted) throw new UpstreamCallError('aborted', 'agent disconnected');
      if (firstByte.signal.aborted) {
        throw new UpstreamCallError(
          'first_byte_timeout',
          `upstream sent nothing within ${req.firstByteTimeoutMs} ms`,
        );
      }
      if (overall.aborted)
        throw new UpstreamCallError('timeout', `upstream did not answer within ${req.timeoutMs} ms`);
      throw new UpstreamCallError('connection', `upstream connection failed: ${(err as Error).message}`);
    } finally {
      clearTimeout(timer);
    }
  }
}
