// The benches' CPU meter: CPU seconds from /proc for another process, cores used by this one over a span.
import { spawn } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { machineBusyS, processCpuS, startCpuMeter } from '../../bench/support/process-cpu.js';

const spin = (ms: number) => {
  const end = performance.now() + ms;
  while (performance.now() < end);
};

describe('process CPU meter', () => {
  it('counts the CPU a busy child process uses, and nothing once it is gone', async () => {
    const child = spawn(process.execPath, ['-e', 'const e = Date.now() + 400; while (Date.now() < e);']);
    const pid = child.pid!;
    const before = processCpuS(pid) ?? 0;
    const meter = startCpuMeter({ child: pid });
    await new Promise<void>((resolve) => {
      const poll = setInterval(() => {
        // Read while it still exists: the last sample before it exits.
        if ((processCpuS(pid) ?? 0) - before >= 0.2) {
          clearInterval(poll);
          resolve();
        }
      }, 20);
    });
    const use = meter.stop();
    expect(use.coresByProcess.child).toBeGreaterThan(0.1);
    await new Promise((r) => child.once('exit', r));
    expect(processCpuS(pid)).toBeUndefined();
  });

  it("gives this process's cores as `self` and the machine's busy cores", () => {
    const machine0 = machineBusyS();
    const meter = startCpuMeter({ gone: 2 ** 22 + 1, unset: undefined });
    spin(300);
    const use = meter.stop();
    expect(use.seconds).toBeGreaterThanOrEqual(0.3);
    // A busy loop on one thread: close to one core (the machine may steal some of it).
    expect(use.coresByProcess.self).toBeGreaterThan(0.3);
    expect(use.coresByProcess.self).toBeLessThan(1.5);
    expect(Object.keys(use.coresByProcess)).toEqual(['self']);
    expect(use.cores).toBeGreaterThan(0);
    expect(machine0).toBeDefined();
    expect(use.machineCores).toBeGreaterThan(0.2);
  });
});
