// Dashboard: the gateway's HTTP API as the page uses it — status, admin config, retreat reset — with
// OpenAI-shaped errors surfaced as ApiError.
import type { AdminConfigView, ConfigUpdateView, UsageView } from '../../lib/status/admin.js';
import type { StatusSnapshot } from '../../lib/status/snapshot.js';
import type { RetreatView } from '../../lib/status/views.js';

/** A failed call: `status` 0 means no HTTP answer at all (network down, timeout). */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly param: string | null = null,
    readonly code: string | null = null,
  ) {
    super(message);
    this.name = 'ApiError';
  }

  /** The token was refused (missing, unknown, or not allowed here). */
  get auth(): boolean {
    return this.status === 401 || this.status === 403;
  }
}

interface OpenAiError {
  error?: { message?: unknown; param?: unknown; code?: unknown };
}

/** How long one call may take before it counts as lost. */
const TIMEOUT_MS = 4_000;

export class Api {
  private readonly base: string;

  /** @param base API base URL; a stage path (e.g. `/prod`) is kept */
  constructor(
    base: string,
    private token: string | undefined,
  ) {
    this.base = base.endsWith('/') ? base : `${base}/`;
  }

  setToken(token: string | undefined): void {
    this.token = token;
  }

  status(): Promise<StatusSnapshot> {
    return this.request<StatusSnapshot>('GET', '/status');
  }

  config(): Promise<AdminConfigView> {
    return this.request<AdminConfigView>('GET', '/admin/config');
  }

  patchConfig(patch: Record<string, unknown>): Promise<ConfigUpdateView> {
    return this.request<ConfigUpdateView>('PATCH', '/admin/config', patch);
  }

  setMode(mode: 'pause' | 'resume' | 'drain'): Promise<ConfigUpdateView> {
    return this.request<ConfigUpdateView>('POST', `/admin/${mode}`);
  }

  usage(): Promise<UsageView> {
    return this.request<UsageView>('GET', '/admin/usage');
  }

  resetRetreat(): Promise<{ retreat: RetreatView }> {
    return this.request<{ retreat: RetreatView }>('POST', '/admin/retreat/reset');
  }

  private async request<T>(method: string, path: string, body?: unknown): Promise<T> {
    const headers: Record<string, string> = {};
    if (this.token) headers.authorization = `Bearer ${this.token}`;
    if (body !== undefined) headers['content-type'] = 'application/json';
    let res: Response;
    try {
      res = await fetch(new URL(path.replace(/^\//, ''), this.base), {
        method,
        headers,
        cache: 'no-store',
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
        signal: AbortSignal.timeout(TIMEOUT_MS),
      });
    } catch (err) {
      throw new ApiError(0, err instanceof Error ? err.message : 'network error');
    }
    const text = await res.text();
    let json: unknown;
    try {
      json = text ? JSON.parse(text) : undefined;
    } catch {
      throw new ApiError(res.status, `Unexpected answer (${res.status}) from ${path}.`);
    }
    if (!res.ok) {
      const e = (json as OpenAiError | undefined)?.error;
      throw new ApiError(
        res.status,
        typeof e?.message === 'string' ? e.message : `HTTP ${res.status} from ${path}.`,
        typeof e?.param === 'string' ? e.param : null,
        typeof e?.code === 'string' ? e.code : null,
      );
    }
    return json as T;
  }
}

/**
 * The API base URL from `config.json` next to the page (the deployment writes it; the local runtime serves
 * it). Without one the page's own origin is used.
 */
export const loadApiUrl = async (): Promise<string> => {
  try {
    const res = await fetch(new URL('config.json', location.href), { cache: 'no-store' });
    if (res.ok) {
      const cfg = (await res.json()) as { apiUrl?: unknown };
      if (typeof cfg.apiUrl === 'string' && cfg.apiUrl) return cfg.apiUrl;
    }
  } catch {
    // Served without config.json: same origin.
  }
  return location.origin;
};
