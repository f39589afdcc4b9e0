// Bench support: percentiles and machine facts for result files.
import os from 'node:os';

export const percentile = (values: readonly number[], q: number): number => {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[i] ?? Number.NaN;
};

export const summary = (values: readonly number[]) => ({
  n: values.length,
  p50: round(percentile(values, 0.5)),
  p95: round(percentile(values, 0.95)),
  p99: round(percentile(values, 0.99)),
  max: round(values.length ? Math.max(...values) : Number.NaN),
});

export const round = (x: number, digits = 1): number => Number(x.toFixed(digits));

export const machine = () => ({
  cpu: os.cpus()[0]?.model ?? 'unknown',
  cores: os.cpus().length,
  memoryGiB: round(os.totalmem() / 2 ** 30),
  node: process.version,
  date: new Date().toISOString(),
});
