// The /status memo: one build per max age however many callers, and a write's invalidate() is never undone by a
// build that started before it.
import { describe, expect, it } from 'vitest';
import { FakeClock } from '../../lib/domain/clock.js';
import { Memo } from '../../lib/status/memo.js';

describe('Memo', () => {
  it('a build in flight when invalidate() comes answers its callers, but the next get builds anew', async () => {
    // Prepare: the first build is held open (a dashboard poll in flight).
    const clock = new FakeClock();
    let value = 'before';
    let release!: () => void;
    const held = new Promise<void>((r) => {
      release = r;
    });
    let builds = 0;
    const memo = new Memo(
      async () => {
        builds++;
        const seen = value;
        if (builds === 1) await held;
        return seen;
      },
      clock,
      1_000,
    );
    const inFlight = memo.get();

    // Act: a write lands and invalidates while that build is open
    value = 'after';
    memo.invalidate();
    const next = memo.get();
    release();

    // Assess
    expect(await inFlight).toBe('before');
    expect(await next).toBe('after');
    expect(await memo.get()).toBe('after');
    expect(builds).toBe(2);
  });

  it('callers within the max age share one build', async () => {
    const clock = new FakeClock();
    let builds = 0;
    const memo = new Memo(async () => ++builds, clock, 1_000);
    expect(await Promise.all([memo.get(), memo.get()])).toEqual([1, 1]);
    clock.advance(999);
    expect(await memo.get()).toBe(1);
    clock.advance(1);
    expect(await memo.get()).toBe(2);
  });
});
