// CPU time spent by the processes of a bench (Linux /proc): which one is busy, and how much per request.
import { readFileSync } from 'node:fs';
import { cpus } from 'node:os';

/** Clock ticks per second of /proc's CPU times (USER_HZ, 100 on the Linux builds this runs on). */
const USER_HZ = 100;

/** CPU seconds a process has used so far (all its threads), or undefined without /proc or once it is gone. */
export const processCpuS = (pid: number): number | undefined => {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the command name (which may hold spaces): utime and stime are the 12th and 13th.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / USER_HZ;
  } catch {
    return undefined;
  }
};

/** CPU seconds the whole machine has been busy so far (every core; all but idle and iowait), from /proc/stat. */
export const machineBusyS = (): number | undefined => {
  try {
    const [, ...ticks] = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).map(Number);
    const total = ticks.slice(0, 8).reduce((a, b) => a + b, 0);
    return (total - ticks[3]! - ticks[4]!) / USER_HZ;
  } catch {
    return undefined;
  }
};

/** Cores busy over a measured span: per named process, for the whole machine, and how many it has. */
export interface CpuUse {
  seconds: number;
  /** Cores used on average by each process (CPU seconds / wall seconds); this process is `self`. */
  coresByProcess: Record<string, number>;
  /** Cores busy on the whole machine (everything running on it, not only the bench). */
  machineCores?: number;
  cores: number;
}

/**
 * Starts measuring CPU now; `stop()` gives the cores each process used since (this process always, as `self`).
 * @param pids other processes by name (e.g. DynamoDB Local's JVM); an unknown pid is left out.
 */
export const startCpuMeter = (pids: Record<string, number | undefined>) => {
  const t0 = performance.now();
  const self0 = process.cpuUsage();
  const machine0 = machineBusyS();
  const others0 = Object.entries(pids).flatMap(([name, pid]) => {
    const s = pid === undefined ? undefined : processCpuS(pid);
    return s === undefined || pid === undefined ? [] : [{ name, pid, s }];
  });
  return {
    stop(): CpuUse {
      const seconds = (performance.now() - t0) / 1000;
      const self = process.cpuUsage(self0);
      const coresByProcess: Record<string, number> = {
        self: (self.user + self.system) / 1e6 / seconds,
      };
      for (const o of others0) {
        const s = processCpuS(o.pid);
        if (s !== undefined) coresByProcess[o.name] = (s - o.s) / seconds;
      }
      const machine1 = machineBusyS();
      return {
        seconds,
        coresByProcess,
        ...(machine0 !== undefined && machine1 !== undefined
          ? { machineCores: (machine1 - machine0) / seconds }
          : {}),
        cores: cpus().length,
      };
    },
  };
};
