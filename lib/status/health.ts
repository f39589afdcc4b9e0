// Status use case: liveness (no dependencies) and readiness (DynamoDB, SQS, the upstream's /v1/models), where the
// upstream is probed at most once per interval and the answer cached, so readiness never spends the rate limit.
import type { Clock } from '../domain/clock.js';

/** One dependency check: resolves when healthy, throws (or times out) when not. */
export type Check = (signal: AbortSignal) => Promise<void>;

/**
 * The upstream probe: one GET of the models list; any HTTP status below 500 means reachable, and a 401/403 to a
 * probe that sent the API key means the key is wrong. `withKey: false` when no key was sent.
 */
export type UpstreamProbe = (signal: AbortSignal) => Promise<{ status: number; withKey?: boolean }>;

export interface CheckResult {
  ok: boolean;
  ms: number;
  error?: string;
}

export interface UpstreamResult extends CheckResult {
  status?: number;
  /** When the upstream was actually probed (the answer is reused until `checkedAt + upstreamEveryMs`). */
  checkedAt: number;
}

export interface ReadinessReport {
  ready: boolean;
  at: number;
  checks: { dynamodb: CheckResult; sqs: CheckResult; upstream: UpstreamResult };
}

export interface ReadinessDeps {
  dynamodb: Check;
  sqs: Check;
  upstream: UpstreamProbe;
  clock: Clock;
  /** @default 60000 */
  upstreamEveryMs?: number;
  /** Per check. @default 3000 */
  timeoutMs?: number;
}

/** What `GET /health` answers: the process is up; nothing else is touched. */
export interface Liveness {
  status: 'ok';
  service: string;
  at: number;
  uptimeS: number;
}

export const liveness = (service: string, startedAt: number, now: number): Liveness => ({
  status: 'ok',
  service,
  at: now,
  uptimeS: Math.round((now - startedAt) / 1000),
});

const describe = (err: unknown): string => (err instanceof Error ? err.message : String(err)).slice(0, 200);

export class Readiness {
  private upstreamResult: UpstreamResult | undefined;
  private upstreamPending: Promise<UpstreamResult> | undefined;

  constructor(private readonly d: ReadinessDeps) {}

  /** Runs the checks (the upstream one from cache when fresh). Never throws. */
  async check(): Promise<ReadinessReport> {
    const [dynamodb, sqs, upstream] = await Promise.all([
      this.timed(this.d.dynamodb),
      this.timed(this.d.sqs),
      this.upstream(),
    ]);
    return {
      ready: dynamodb.ok && sqs.ok && upstream.ok,
      at: this.d.clock.now(),
      checks: { dynamodb, sqs, upstream },
    };
  }

  private async upstream(): Promise<UpstreamResult> {
    const every = this.d.upstreamEveryMs ?? 60_000;
    const cached = this.upstreamResult;
    if (cached && this.d.clock.now() - cached.checkedAt < every) return cached;
    // Concurrent readiness calls share one probe.
    this.upstreamPending ??= this.probeUpstream().finally(() => {
      this.upstreamPending = undefined;
    });
    return this.upstreamPending;
  }

  private async probeUpstream(): Promise<UpstreamResult> {
    const checkedAt = this.d.clock.now();
    let status: number | undefined;
    const result = await this.timed(async (signal) => {
      const answer = await this.d.upstream(signal);
      status = answer.status;
      if (status >= 500) throw new Error(`upstream answered ${status}`);
      // Reachable, but every call would fail the same way: the gateway is not ready to serve.
      if ((status === 401 || status === 403) && answer.withKey !== false) {
        throw new Error(
          `upstream refused the API key (HTTP ${status}): check UPSTREAM_API_KEY or the upstream key secret`,
        );
      }
    });
    this.upstreamResult = { ...result, checkedAt, ...(status !== undefined ? { status } : {}) };
    return this.upstreamResult;
  }

  private async timed(check: Check): Promise<CheckResult> {
    const { clock } = this.d;
    const started = clock.now();
    const timeoutMs = this.d.timeoutMs ?? 3_000;
    const ac = new AbortController();
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        ac.abort();
        reject(new Error(`no answer within ${timeoutMs} ms`));
      }, timeoutMs);
    });
    try {
      await Promise.race([check(ac.signal), timeout]);
      return { ok: true, ms: clock.now() - started };
    } catch (err) {
      return { ok: false, ms: clock.now() - started, error: describe(err) };
    } finally {
      clearTimeout(timer);
    }
  }
}

/**
 * The upstream probe over fetch: Node's global fetch shares one connection pool per container (the same one
 * the ingress uses for upstream calls). The API key is sent when there is one, so a wrong key (401/403) shows
 * as not ready; `/v1/models` is no completion and the answer is cached, so this is one cheap call per interval.
 * @param baseUrl the upstream's OpenAI base URL, e.g. `https://integrate.api.nvidia.com/v1`
 * @param apiKey the limited upstream's key, if this function has it (in AWS the status function does not: the
 *   key stays with the ingress, and a keyless 401 only says the upstream is reachable)
 */
export const fetchModelsProbe =
  (baseUrl: string, apiKey: () => Promise<string | undefined> = async () => undefined): UpstreamProbe =>
  async (signal) => {
    const key = await apiKey();
    const res = await fetch(`${baseUrl.replace(/\/+$/, '')}/models`, {
      signal,
      redirect: 'manual',
      ...(key ? { headers: { authorization: `Bearer ${key}` } } : {}),
    });
    await res.body?.cancel();
    return { status: res.status, withKey: Boolean(key) };
  };
