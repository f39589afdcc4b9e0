// Test helpers (status): a local system with the status routes and the dashboard, and small HTTP helpers.
import type { LocalSystem, LocalSystemOptions } from '../../local/runtime.js';
import { statusRoutes } from '../../local/status-routes.js';
import { startTestSystem } from '../support/system.js';

export const ADMIN_TOKEN = 'admin-token-for-status-tests-0123456789';
export const VIEWER_TOKEN = 'viewer-token-for-status-tests-0123456789';

/**
 * Powertools reads these from the process env when a function is composed; tests keep stdout for failures.
 * Call before starting a system.
 */
export const quietObservability = (): void => {
  process.env.POWERTOOLS_METRICS_DISABLED = 'true';
  process.env.POWERTOOLS_LOG_LEVEL = 'ERROR';
  process.env.LOG_LEVEL = 'ERROR';
};

/** The local system with the status function and the dashboard routes, known admin and viewer tokens. */
export const startStatusSystem = (name: string, opts: LocalSystemOptions = {}): Promise<LocalSystem> => {
  quietObservability();
  return startTestSystem(name, {
    adminToken: ADMIN_TOKEN,
    extraRoutes: statusRoutes,
    ...opts,
    env: { SLUICE_VIEWER_TOKEN: VIEWER_TOKEN, ...opts.env },
  });
};

export interface CallResult<T = Record<string, unknown>> {
  status: number;
  headers: Headers;
  json: T;
}

/** One HTTP call to the system; `body` is sent as is when a string, else as JSON. */
export const call = async <T = Record<string, unknown>>(
  system: Pick<LocalSystem, 'url'>,
  method: string,
  path: string,
  opts: { token?: string; body?: unknown; headers?: Record<string, string> } = {},
): Promise<CallResult<T>> => {
  const res = await fetch(`${system.url}${path}`, {
    method,
    headers: {
      ...(opts.token ? { authorization: `Bearer ${opts.token}` } : {}),
      ...(opts.body !== undefined ? { 'content-type': 'application/json' } : {}),
      ...opts.headers,
    },
    ...(opts.body !== undefined
      ? { body: typeof opts.body === 'string' ? opts.body : JSON.stringify(opts.body) }
      : {}),
  });
  const text = await res.text();
  return { status: res.status, headers: res.headers, json: (text ? JSON.parse(text) : {}) as T };
};

/** The OpenAI error object of an error answer. */
export interface ErrorJson {
  error: { message: string; type: string; param: string | null; code: string };
}
