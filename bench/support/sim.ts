// Bench support: simulated time (a bench runs k× faster than the world it models) and seeded randomness.

/**
 * A bench models minutes of traffic in seconds: every duration of the modelled world (upstream window, think
 * time, retreat windows, client backoff) is divided by `factor`, every rate multiplied by it.
 * Reported times and rates are always in the modelled ("sim") world.
 */
export interface TimeScale {
  factor: number;
  /** Real milliseconds for a modelled duration. */
  real(simMs: number): number;
  /** Modelled milliseconds for a real duration. */
  sim(realMs: number): number;
}

export const timeScale = (factor: number): TimeScale => {
  if (!(factor > 0)) throw new Error(`time scale must be > 0 (got ${factor})`);
  return { factor, real: (ms) => ms / factor, sim: (ms) => ms * factor };
};

/** A clock of the modelled world that starts at 0 when created. */
export const simClock = (scale: TimeScale, startReal = Date.now()) => ({
  startReal,
  /** Modelled ms since start. */
  now: () => scale.sim(Date.now() - startReal),
  /** Modelled ms since start for a real timestamp. */
  at: (realMs: number) => scale.sim(realMs - startReal),
});
export type SimClock = ReturnType<typeof simClock>;

/** mulberry32: small, fast, seeded; the same seed gives every setup the same workload. */
export const prng = (seed: number) => {
  let a = seed >>> 0;
  const next = (): number => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
  };
  return {
    next,
    uniform: (lo: number, hi: number) => lo + (hi - lo) * next(),
    /** Exponential with this mean (Poisson inter-arrival times). */
    exponential: (mean: number) => -mean * Math.log(1 - next()),
    chance: (p: number) => next() < p,
    int: (n: number) => Math.floor(next() * n),
  };
};
export type Prng = ReturnType<typeof prng>;

export const sleep = (ms: number, signal?: AbortSignal): Promise<void> =>
  new Promise((resolve) => {
    if (signal?.aborted || ms <= 0) return resolve();
    const timer = setTimeout(done, ms);
    function done() {
      signal?.removeEventListener('abort', done);
      clearTimeout(timer);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });
