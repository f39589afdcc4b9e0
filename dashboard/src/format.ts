// Dashboard: number, duration and time formatting (one locale, so the page reads the same everywhere).

const int = new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 });
const one = new Intl.NumberFormat('en-US', { maximumFractionDigits: 1 });

/** 1234 → "1,234". */
export const fmtInt = (n: number): string => int.format(n);

/** 37.5 → "37.5", 40 → "40". */
export const fmtNum = (n: number): string => one.format(n);

/** 0.0412 → "4.1 %". */
/** Dollars per hour, short enough for a tile: `$0.12/h`, `<$0.01/h`, `$0/h` (toPrecision gave `1.2e-7`). */
export const fmtUsdPerHour = (usd: number): string => {
  if (usd === 0) return '$0/h';
  if (usd < 0.01) return '<$0.01/h';
  return `$${usd < 100 ? usd.toFixed(2) : int.format(Math.round(usd))}/h`;
};

export const fmtPct = (ratio: number): string => `${one.format(ratio * 100)} %`;

/** A latency bucket bound: 250 → "250 ms", 2500 → "2.5 s", null → "—". */
export const fmtMs = (ms: number | null): string => {
  if (ms === null) return '—';
  if (ms < 1_000) return `${fmtInt(ms)} ms`;
  if (ms < 60_000) return `${one.format(ms / 1000)} s`;
  return `${one.format(ms / 60_000)} min`;
};

/** Wall-clock time of an epoch-ms instant: "14:03:27". */
export const fmtTime = (at: number): string =>
  new Date(at).toLocaleTimeString('en-GB', { hour: '2-digit', minute: '2-digit', second: '2-digit' });

/** "5 s ago", "3 min ago". */
export const fmtAgo = (ms: number): string => {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 90) return `${s} s ago`;
  if (s < 5_400) return `${Math.round(s / 60)} min ago`;
  return `${one.format(s / 3600)} h ago`;
};

/** A config value for people: booleans and strings as they are, numbers grouped. */
export const fmtValue = (v: unknown): string => {
  if (typeof v === 'number') return fmtNum(v);
  if (typeof v === 'string' || typeof v === 'boolean') return String(v);
  return JSON.stringify(v);
};
