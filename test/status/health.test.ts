// Readiness on a fake clock: the upstream is probed at most once per interval (shared by concurrent calls),
// failures and slow dependencies are reported per check, never thrown.
import { describe, expect, it } from 'vitest';
import { FakeClock } from '../../lib/domain/clock.js';
import { Readiness, type ReadinessDeps } from '../../lib/status/health.js';

const setup = (over: Partial<ReadinessDeps> = {}) => {
  const clock = new FakeClock();
  let probes = 0;
  const readiness = new Readiness({
    dynamodb: async () => undefined,
    sqs: async () => undefined,
    upstream: async () => {
      probes++;
      return { status: 200 };
    },
    clock,
    ...over,
  });
  return { clock, readiness, probes: () => probes };
};

describe('Readiness', () => {
  it('probes the upstream at most once a minute and reuses the answer', async () => {
    const { clock, readiness, probes } = setup();
    for (let i = 0; i < 5; i++) {
      expect((await readiness.check()).ready).toBe(true);
      clock.advance(10_000);
    }
    expect(probes()).toBe(1);
    clock.advance(10_000); // 60 s after the first probe
    const report = await readiness.check();
    expect(probes()).toBe(2);
    expect(report.checks.upstream).toMatchObject({ ok: true, status: 200, checkedAt: clock.now() });
  });

  it('shares one upstream probe between concurrent readiness calls', async () => {
    let release: () => void = () => undefined;
    let probes = 0;
    const { readiness } = setup({
      upstream: async () => {
        probes++;
        await new Promise<void>((r) => {
          release = r;
        });
        return { status: 200 };
      },
    });
    const all = Promise.all([readiness.check(), readiness.check(), readiness.check()]);
    await new Promise((r) => setTimeout(r, 10));
    release();
    expect((await all).every((r) => r.ready)).toBe(true);
    expect(probes).toBe(1);
  });

  it.each([
    ['an upstream 5xx', { upstream: async () => ({ status: 502 }) }, 'upstream', 'failed'],
    // A wrong key: reachable, but every call would fail.
    ['an upstream 401', { upstream: async () => ({ status: 401 }) }, 'upstream', 'wrong key (HTTP 401)'],
    ['an upstream 403', { upstream: async () => ({ status: 403 }) }, 'upstream', 'wrong key (HTTP 403)'],
    [
      'an unreachable upstream',
      {
        upstream: async () => {
          throw new TypeError('fetch failed');
        },
      },
      'upstream',
      'failed',
    ],
    [
      'a failing DynamoDB',
      {
        dynamodb: async () => {
          throw new Error('ResourceNotFoundException');
        },
      },
      'dynamodb',
      'failed',
    ],
    ['a hanging SQS', { sqs: () => new Promise<void>(() => undefined), timeoutMs: 50 }, 'sqs', 'timeout'],
  ] as const)(
    'is not ready on %s, and says which check failed (never the error text)',
    async (_what, over, check, kind) => {
      const { readiness } = setup(over as Partial<ReadinessDeps>);
      const report = await readiness.check();
      expect(report.ready).toBe(false);
      expect(report.checks[check].ok).toBe(false);
      expect(report.checks[check].error).toBe(kind);
      expect(JSON.stringify(report)).not.toMatch(/fetch failed|ResourceNotFound/);
    },
  );

  it('reuses a report for a second, so a flood of readiness calls runs the checks once', async () => {
    let runs = 0;
    const { clock, readiness } = setup({
      dynamodb: async () => {
        runs++;
      },
    });
    await Promise.all([readiness.check(), readiness.check()]);
    await readiness.check();
    expect(runs).toBe(1);
    clock.advance(1_000);
    await readiness.check();
    expect(runs).toBe(2);
  });

  it('is ready on a 401 to a probe that sent no key (the key is not checked then, only reachability)', async () => {
    const { readiness } = setup({ upstream: async () => ({ status: 401, withKey: false }) });
    const report = await readiness.check();
    expect(report.ready).toBe(true);
    expect(report.checks.upstream).toMatchObject({ ok: true, status: 401 });
  });

  it('caches a failed upstream answer too (readiness never hammers the upstream)', async () => {
    let probes = 0;
    const { clock, readiness } = setup({
      upstream: async () => {
        probes++;
        return { status: 503 };
      },
    });
    await readiness.check();
    clock.advance(30_000);
    expect((await readiness.check()).checks.upstream.ok).toBe(false);
    expect(probes).toBe(1);
  });
});
