// Simulated time for runs of admission and the dispatcher on the memory stores: sleeps are timers, and the driver
// moves time to the next one once everything else has settled.
import type { Clock } from '../../lib/domain/clock.js';

export class SimClock implements Clock {
  private readonly timers: { at: number; wake: () => void }[] = [];
  constructor(private t = 2_000_000_000_000) {}
  now(): number {
    return this.t;
  }
  sleep(ms: number, signal?: AbortSignal): Promise<void> {
    if (ms <= 0 || signal?.aborted) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = { at: this.t + ms, wake: () => resolve() };
      this.timers.push(timer);
      signal?.addEventListener(
        'abort',
        () => {
          const i = this.timers.indexOf(timer);
          if (i >= 0) this.timers.splice(i, 1);
          resolve();
        },
        { once: true },
      );
    });
  }
  /** Runs until `done` settles: lets everything settle (real ticks: the memory queue yields one), then fires the next timer. */
  async drive(done: Promise<unknown>): Promise<void> {
    let finished = false;
    void done.finally(() => {
      finished = true;
    });
    while (!finished) {
      for (let i = 0; i < 3; i++) await new Promise((r) => setTimeout(r, 0));
      if (finished) break;
      this.timers.sort((a, b) => a.at - b.at);
      const next = this.timers.shift();
      if (!next) continue;
      this.t = Math.max(this.t, next.at);
      next.wake();
    }
  }
}
