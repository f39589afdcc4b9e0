// Bench support: small hand-written SVG charts (no chart library): stacked bars per time bin in small
// multiples, grouped latency bars on a log scale, and step/line traces.

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
const f = (x: number) => (Number.isFinite(x) ? Number(x.toFixed(1)) : 0);

export const PALETTE = [
  '#4c78a8',
  '#f58518',
  '#54a24b',
  '#b279a2',
  '#e45756',
  '#72b7b2',
  '#eeca3b',
  '#9d755d',
];
const ACCEPTED = '#4c78a8';
const REFUSED = '#e45756';
const LIMIT = '#222';

const svgDoc = (width: number, height: number, body: string[]) =>
  [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="system-ui, -apple-system, Segoe UI, sans-serif" font-size="12">`,
    `<rect width="${width}" height="${height}" fill="#fff"/>`,
    ...body,
    '</svg>',
  ].join('\n');

const text = (x: number, y: number, s: string, extra = '') =>
  `<text x="${f(x)}" y="${f(y)}" ${extra}>${esc(s)}</text>`;

/** Round axis maximum and tick step for a value range. */
const niceMax = (max: number): { max: number; step: number } => {
  if (max <= 0) return { max: 1, step: 1 };
  const raw = max / 4;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? 10 * mag;
  return { max: Math.ceil(max / step) * step, step };
};

export interface BinPanel {
  title: string;
  subtitle?: string;
  accepted: readonly number[];
  refused: readonly number[];
}

/**
 * Small multiples: one panel per setup, calls per bin as stacked bars (accepted below, 429 above) against a
 * horizontal limit line. All panels share the y scale so they compare at a glance.
 */
export const binPanels = (opts: {
  title: string;
  panels: readonly BinPanel[];
  binMs: number;
  limitPerBin: number;
  limitLabel: string;
  /** A limit that changes over time: [from ms, per bin] steps (overrides `limitPerBin` for the line). */
  limitSteps?: readonly (readonly [number, number])[];
  /** Panel y axis is capped here (bars above are clipped and marked); default: largest bar. */
  yCap?: number;
}): string => {
  const width = 960;
  const panelH = 120;
  const top = 48;
  const gap = 34;
  const left = 56;
  const right = 16;
  const plotW = width - left - right;
  const bins = Math.max(...opts.panels.map((p) => p.accepted.length), 1);
  const tallest = Math.max(
    opts.limitPerBin * 1.5,
    ...opts.panels.flatMap((p) => p.accepted.map((a, i) => a + (p.refused[i] ?? 0))),
  );
  const { max, step } = niceMax(Math.min(tallest, opts.yCap ?? tallest));
  const height = top + opts.panels.length * (panelH + gap) + 30;
  const body: string[] = [
    text(left, 20, opts.title, 'font-size="15" font-weight="600"'),
    `<rect x="${left}" y="28" width="10" height="10" fill="${ACCEPTED}"/>`,
    text(left + 14, 37, 'accepted'),
    `<rect x="${left + 80}" y="28" width="10" height="10" fill="${REFUSED}"/>`,
    text(left + 94, 37, '429 (rate limit or capacity)'),
    `<line x1="${left + 270}" y1="33" x2="${left + 295}" y2="33" stroke="${LIMIT}" stroke-width="2" stroke-dasharray="6 3"/>`,
    text(left + 300, 37, opts.limitLabel),
  ];
  const bw = plotW / bins;
  opts.panels.forEach((p, k) => {
    const y0 = top + k * (panelH + gap) + 18;
    const y = (v: number) => y0 + panelH - (Math.min(v, max) / max) * panelH;
    body.push(text(left, y0 - 5, p.title, 'font-weight="600"'));
    if (p.subtitle) body.push(text(left + plotW, y0 - 5, p.subtitle, 'text-anchor="end" fill="#555"'));
    for (let v = 0; v <= max + 1e-9; v += step) {
      body.push(
        `<line x1="${left}" y1="${f(y(v))}" x2="${left + plotW}" y2="${f(y(v))}" stroke="#eee"/>`,
        text(
          left - 6,
          y(v) + 4,
          String(Number(v.toFixed(2))),
          'text-anchor="end" fill="#666" font-size="10"',
        ),
      );
    }
    for (let i = 0; i < bins; i++) {
      const a = p.accepted[i] ?? 0;
      const r = p.refused[i] ?? 0;
      const x = left + i * bw + 0.5;
      const w = Math.max(0.5, bw - 1);
      if (a > 0)
        body.push(
          `<rect x="${f(x)}" y="${f(y(a))}" width="${f(w)}" height="${f(y(0) - y(a))}" fill="${ACCEPTED}"/>`,
        );
      if (r > 0)
        body.push(
          `<rect x="${f(x)}" y="${f(y(a + r))}" width="${f(w)}" height="${f(y(a) - y(a + r))}" fill="${REFUSED}"/>`,
        );
      if (a + r > max)
        body.push(text(x + w / 2, y0 - 1, '▲', `text-anchor="middle" fill="${REFUSED}" font-size="8"`));
    }
    const steps = opts.limitSteps ?? [[0, opts.limitPerBin] as const];
    const tx = (t: number) => left + (Math.min(t, bins * opts.binMs) * plotW) / (bins * opts.binMs);
    const pts = steps.flatMap(([t, v], j) => {
      const end = steps[j + 1]?.[0] ?? bins * opts.binMs;
      return [`${f(tx(t))},${f(y(v))}`, `${f(tx(end))},${f(y(v))}`];
    });
    body.push(
      `<polyline points="${pts.join(' ')}" fill="none" stroke="${LIMIT}" stroke-width="1.5" stroke-dasharray="6 3"/>`,
      `<line x1="${left}" y1="${f(y(0))}" x2="${left + plotW}" y2="${f(y(0))}" stroke="#999"/>`,
    );
    const minutes = (bins * opts.binMs) / 60_000;
    for (let m = 0; m <= minutes + 1e-9; m++) {
      const x = left + (m * 60_000 * plotW) / (bins * opts.binMs);
      body.push(text(x, y(0) + 13, `${m}`, 'text-anchor="middle" fill="#666" font-size="10"'));
    }
  });
  body.push(
    text(left + plotW / 2, height - 6, 'time (modelled minutes)', 'text-anchor="middle" fill="#444"'),
    text(14, top + 70, `calls per ${opts.binMs / 1000} s`, 'transform="rotate(-90 14 118)" fill="#444"'),
  );
  return svgDoc(width, height, body);
};

export interface LatencyGroupValue {
  p50: number | null;
  p95: number | null;
  p99: number | null;
  n: number;
}

/**
 * Latency per priority: one group per priority, one bar per setup (bar = p50, whisker to p99, tick at p95),
 * log scale in seconds.
 */
export const latencyBars = (opts: {
  title: string;
  groups: readonly string[];
  series: readonly { name: string; values: Readonly<Record<string, LatencyGroupValue>> }[];
}): string => {
  const width = 960;
  const height = 380;
  const left = 60;
  const right = 16;
  const top = 64;
  const bottom = 44;
  const plotW = width - left - right;
  const plotH = height - top - bottom;
  const all = opts.series.flatMap((s) =>
    Object.values(s.values).flatMap((v) =>
      [v.p50, v.p95, v.p99].filter((x): x is number => x !== null && x > 0),
    ),
  );
  const lo = 10 ** Math.floor(Math.log10(Math.max(0.01, Math.min(...all, 1))));
  const hi = 10 ** Math.ceil(Math.log10(Math.max(...all, 1)));
  const y = (v: number) =>
    top +
    plotH -
    ((Math.log10(Math.max(v, lo)) - Math.log10(lo)) / (Math.log10(hi) - Math.log10(lo))) * plotH;
  const body: string[] = [text(left, 20, opts.title, 'font-size="15" font-weight="600"')];
  let lx = left;
  opts.series.forEach((s, i) => {
    body.push(
      `<rect x="${lx}" y="32" width="10" height="10" fill="${PALETTE[i % PALETTE.length]}"/>`,
      text(lx + 14, 41, s.name),
    );
    lx += 24 + s.name.length * 6.6;
  });
  body.push(
    text(
      width - right,
      41,
      'bar p50 · tick p95 · whisker p99 · × none completed',
      'text-anchor="end" fill="#555" font-size="11"',
    ),
  );
  for (let d = lo; d <= hi * 1.0001; d *= 10) {
    body.push(
      `<line x1="${left}" y1="${f(y(d))}" x2="${left + plotW}" y2="${f(y(d))}" stroke="#e5e5e5"/>`,
      text(left - 6, y(d) + 4, d >= 1 ? `${d} s` : `${d} s`, 'text-anchor="end" fill="#666" font-size="10"'),
    );
  }
  const gw = plotW / opts.groups.length;
  const bw = Math.min(36, (gw * 0.8) / Math.max(1, opts.series.length));
  opts.groups.forEach((g, gi) => {
    const gx = left + gi * gw + (gw - bw * opts.series.length) / 2;
    body.push(text(left + gi * gw + gw / 2, top + plotH + 18, g, 'text-anchor="middle" font-weight="600"'));
    opts.series.forEach((s, si) => {
      const v = s.values[g];
      const x = gx + si * bw;
      const color = PALETTE[si % PALETTE.length];
      if (!v || v.p50 === null) {
        body.push(
          text(x + bw / 2, top + plotH - 4, '×', `text-anchor="middle" fill="${color}" font-size="14"`),
        );
        return;
      }
      body.push(
        `<rect x="${f(x + 1)}" y="${f(y(v.p50))}" width="${f(bw - 2)}" height="${f(top + plotH - y(v.p50))}" fill="${color}" fill-opacity="0.85"><title>${esc(`${s.name} ${g}: p50 ${v.p50} s, p95 ${v.p95} s, p99 ${v.p99} s (n=${v.n})`)}</title></rect>`,
      );
      const cx = x + bw / 2;
      if (v.p99 !== null)
        body.push(
          `<line x1="${f(cx)}" y1="${f(y(v.p50))}" x2="${f(cx)}" y2="${f(y(v.p99))}" stroke="#333"/>`,
          `<line x1="${f(cx - 4)}" y1="${f(y(v.p99))}" x2="${f(cx + 4)}" y2="${f(y(v.p99))}" stroke="#333"/>`,
        );
      if (v.p95 !== null)
        body.push(
          `<line x1="${f(cx - bw / 2 + 2)}" y1="${f(y(v.p95))}" x2="${f(cx + bw / 2 - 2)}" y2="${f(y(v.p95))}" stroke="#333" stroke-width="2"/>`,
        );
    });
  });
  body.push(
    `<line x1="${left}" y1="${top + plotH}" x2="${left + plotW}" y2="${top + plotH}" stroke="#999"/>`,
    text(
      16,
      top + plotH / 2,
      'end-to-end latency (modelled s, log)',
      `transform="rotate(-90 16 ${top + plotH / 2})" text-anchor="middle" fill="#444"`,
    ),
  );
  return svgDoc(width, height, body);
};

export interface TraceSeries {
  name: string;
  points: readonly (readonly [number, number])[];
  color?: string;
  dashed?: boolean;
  /** Step after each point (a rate that holds until the next change). */
  step?: boolean;
  width?: number;
}

/** Lines over time (modelled minutes on x), e.g. the effective rate of each preset against the hidden limit. */
export const traceChart = (opts: {
  title: string;
  yLabel: string;
  xMaxMs: number;
  series: readonly TraceSeries[];
  /** Shaded spans (e.g. while the upstream is constrained). */
  spans?: readonly { from: number; to: number; label: string }[];
  height?: number;
}): string => {
  const width = 960;
  const height = opts.height ?? 360;
  const left = 56;
  const right = 16;
  const top = 56;
  const bottom = 40;
  const plotW = width - left - right;
  const plotH = height - top - bottom;
  const ymaxRaw = Math.max(1, ...opts.series.flatMap((s) => s.points.map((p) => p[1])));
  const { max, step } = niceMax(ymaxRaw * 1.05);
  const x = (t: number) => left + (Math.max(0, Math.min(t, opts.xMaxMs)) / opts.xMaxMs) * plotW;
  const y = (v: number) => top + plotH - (Math.min(v, max) / max) * plotH;
  const body: string[] = [text(left, 20, opts.title, 'font-size="15" font-weight="600"')];
  for (const s of opts.spans ?? []) {
    body.push(
      `<rect x="${f(x(s.from))}" y="${top}" width="${f(x(s.to) - x(s.from))}" height="${plotH}" fill="#f3f3f3"/>`,
      text((x(s.from) + x(s.to)) / 2, top + 14, s.label, 'text-anchor="middle" fill="#777" font-size="11"'),
    );
  }
  for (let v = 0; v <= max + 1e-9; v += step) {
    body.push(
      `<line x1="${left}" y1="${f(y(v))}" x2="${left + plotW}" y2="${f(y(v))}" stroke="#eee"/>`,
      text(left - 6, y(v) + 4, String(Number(v.toFixed(2))), 'text-anchor="end" fill="#666" font-size="10"'),
    );
  }
  for (let m = 0; m <= opts.xMaxMs / 60_000 + 1e-9; m++) {
    body.push(
      text(x(m * 60_000), top + plotH + 14, `${m}`, 'text-anchor="middle" fill="#666" font-size="10"'),
    );
  }
  let lx = left;
  opts.series.forEach((s, i) => {
    const color = s.color ?? PALETTE[i % PALETTE.length];
    const pts: string[] = [];
    s.points.forEach(([t, v], j) => {
      pts.push(`${f(x(t))},${f(y(v))}`);
      const nextT = s.points[j + 1]?.[0];
      if (s.step && nextT !== undefined) pts.push(`${f(x(nextT))},${f(y(v))}`);
    });
    body.push(
      `<polyline points="${pts.join(' ')}" fill="none" stroke="${color}" stroke-width="${s.width ?? 2}"${s.dashed ? ' stroke-dasharray="6 3"' : ''}/>`,
      `<line x1="${lx}" y1="36" x2="${lx + 20}" y2="36" stroke="${color}" stroke-width="${s.width ?? 2}"${s.dashed ? ' stroke-dasharray="6 3"' : ''}/>`,
      text(lx + 24, 40, s.name),
    );
    lx += 36 + s.name.length * 6.6;
  });
  body.push(
    `<line x1="${left}" y1="${top + plotH}" x2="${left + plotW}" y2="${top + plotH}" stroke="#999"/>`,
    text(left + plotW / 2, height - 6, 'time (modelled minutes)', 'text-anchor="middle" fill="#444"'),
    text(
      16,
      top + plotH / 2,
      opts.yLabel,
      `transform="rotate(-90 16 ${top + plotH / 2})" text-anchor="middle" fill="#444"`,
    ),
  );
  return svgDoc(width, height, body);
};
