// Domain: how an upstream answer is classified, and what an agent's stream reveals (usage, embedded errors).

export type UpstreamOutcome = 'ok' | 'throttled' | 'capacity' | 'upstream_error' | 'client_error';

/** NVIDIA's worker-capacity errors come from concurrency, not rate ("Worker local total request limit reached"). */
const CAPACITY_PATTERN = /ResourceExhausted|Worker local total request limit|worker.*capacity/i;

/**
 * Classifies a response from its status and the first bytes of an error body.
 * 429 with a capacity message is `capacity`; other 429 `throttled`; 5xx `upstream_error`; other 4xx `client_error`.
 */
export const classifyUpstream = (status: number, errorBody = ''): UpstreamOutcome => {
  if (status >= 200 && status < 400) return 'ok';
  if (CAPACITY_PATTERN.test(errorBody) && (status === 429 || status >= 500)) return 'capacity';
  if (status === 429) return 'throttled';
  if (status >= 500) return 'upstream_error';
  return 'client_error';
};

/** Retry-After as ms (seconds or HTTP date); undefined when absent or unparseable. */
export const parseRetryAfter = (value: string | null | undefined, now: number): number | undefined => {
  if (!value) return undefined;
  const secs = Number(value);
  if (Number.isFinite(secs) && secs >= 0) return Math.round(secs * 1000);
  const at = Date.parse(value);
  return Number.isFinite(at) ? Math.max(0, at - now) : undefined;
};

export interface Usage {
  prompt_tokens?: number;
  completion_tokens?: number;
  total_tokens?: number;
}

/**
 * Watches an SSE byte stream as it passes through (no buffering of the stream itself): finds the usage
 * object and errors embedded in a 200 stream (seed 003), across chunk boundaries.
 */
export class SseWatcher {
  private pending = '';
  private readonly decoder = new TextDecoder();
  usage: Usage | undefined;
  embeddedError: string | undefined;
  done = false;
  events = 0;

  push(chunk: Uint8Array): void {
    this.pending += this.decoder.decode(chunk, { stream: true });
    let nl = this.pending.indexOf('\n');
    while (nl !== -1) {
      this.line(this.pending.slice(0, nl).replace(/\r$/, ''));
      this.pending = this.pending.slice(nl + 1);
      nl = this.pending.indexOf('\n');
    }
    // A single line longer than this is not an event we need to read.
    if (this.pending.length > 1_000_000) this.pending = '';
  }

  private line(line: string): void {
    if (!line.startsWith('data:')) return;
    const data = line.slice(5).trim();
    this.events++;
    if (data === '[DONE]') {
      this.done = true;
      return;
    }
    if (!data.includes('"usage"') && !data.includes('"error"')) return;
    try {
      const v = JSON.parse(data) as { usage?: Usage | null; error?: { message?: string } | string };
      if (v.usage) this.usage = v.usage;
      if (v.error) this.embeddedError = typeof v.error === 'string' ? v.error : (v.error.message ?? 'error');
    } catch {
      // Not JSON: passed through untouched.
    }
  }
}

/**
 * The message of an error a 200 JSON answer carries instead of a result (seed 003: errors embedded in 200s),
 * or undefined for a normal answer.
 */
export const embeddedErrorFromBody = (body: string): string | undefined => {
  try {
    const v = JSON.parse(body) as { error?: unknown; choices?: unknown; data?: unknown } | null;
    if (typeof v !== 'object' || v === null || v.error === undefined || v.error === null) return undefined;
    if (v.choices !== undefined || v.data !== undefined) return undefined;
    if (typeof v.error === 'string') return v.error;
    const message = (v.error as { message?: unknown }).message;
    return typeof message === 'string' ? message : 'error';
  } catch {
    return undefined;
  }
};

/** Usage from a non-streaming JSON body. */
export const usageFromBody = (body: string): Usage | undefined => {
  try {
    const v = JSON.parse(body) as { usage?: Usage };
    return v.usage ?? undefined;
  } catch {
    return undefined;
  }
};
