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
  /** `timeout`, `failed` or a fixed `wrong key` phrase — never the error's own text (AWS errors name accounts, roles, ARNs). */
  error?: 'timeout' | 'failed' | `wrong key (HTTP ${number})`;
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
  /** A whole report is reused this long, so a flood of readiness calls costs one set of checks. @default 1000 */
  reportEveryMs?: number;
  /** Where a failed check's error goes (the logs), since the report does not carry it. */
  onError?: (check: string, err: unknown) => void;
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

class CheckTimeout extends Error {}
/** A check that failed for a reason safe to show as is (a fixed phrase, never upstream or AWS text). */
class CheckRefused extends Error {
  declare readonly message: `wrong key (HTTP ${number})`;
}

export class Readiness {
  private upstreamResult: UpstreamResult | undefined;
  private upstreamPending: Promise<UpstreamResult> | undefined;
  private report: ReadinessReport | undefined;
  private reportPending: Promise<ReadinessReport> | undefined;

  constructor(private readonly d: ReadinessDeps) {}

  /** The checks' report, reused for `reportEveryMs` (concurrent calls share one run). Never throws. */
  async check(): Promise<ReadinessReport> {
    const every = this.d.reportEveryMs ?? 1_000;
    if (this.report && this.d.clock.now() - this.report.at < every) return this.report;
    this.reportPending ??= this.run().finally(() => {
      this.reportPending = undefined;
    });
    return this.reportPending;
  }

  private async run(): Promise<ReadinessReport> {
    const [dynamodb, sqs, upstream] = await Promise.all([
      this.timed('dynamodb', this.d.dynamodb),
      this.timed('sqs', this.d.sqs),
      this.upstream(),
    ]);
    this.report = {
      ready: dynamodb.ok && sqs.ok && upstream.ok,
      at: this.d.clock.now(),
      checks: { dynamodb, sqs, upstream },
    };
    return this.report;
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
    const result = await this.timed('upstream', async (signal) => {
      const answer = await this.d.upstream(signal);
      status = answer.status;
      if (status >= 500) throw new Error(`upstream answered ${status}`);
      // Reachable, but every call would fail the same way: the gateway is not ready to serve.
      if ((status === 401 || status === 403) && answer.withKey !== false) {
        throw new CheckRefused(`wrong key (HTTP ${status})`);
      }
    });
    this.upstreamResult = { ...result, checkedAt, ...(status !== undefined ? { status } : {}) };
    return this.upstreamResult;
  }

  private async timed(name: string, check: Check): Promise<CheckResult> {
    const { clock } = this.d;
    const started = clock.now();
    const timeoutMs = this.d.timeoutMs ?? 3_000;
    const ac = new AbortController();
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        ac.abort();
        reject(new CheckTimeout(`no answer within ${timeoutMs} ms`));
      }, timeoutMs);
    });
    try {
      await Promise.race([check(ac.signal), timeout]);
      return { ok: true, ms: clock.now() - started };
    } catch (err) {
      this.d.onError?.(name, err);
      return {
        ok: false,
        ms: clock.now() - started,
        error: err instanceof CheckTimeout ? 'timeout' : err instanceof CheckRefused ? err.message : 'failed',
      };
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
