// Dashboard: the two time charts (uPlot, canvas) — throughput by outcome, and effective vs base rate with the
// retreat transitions marked.
import uPlot from 'uplot';
import type { StatusSnapshot } from '../../lib/status/snapshot.js';

const COLORS = {
  granted: '#4cc3ff',
  ok: '#3ddc97',
  throttled: '#ffb547',
  refused: '#ff6b6b',
  abandoned: '#9aa5b8',
  effective: '#4cc3ff',
  base: '#8b97ad',
  bucket: '#b39cff',
  grid: '#2a3750',
  axis: '#8b97ad',
} as const;

const STATE_COLORS: Record<string, string> = { retreat: '#ffb547', recover: '#4cc3ff', normal: '#3ddc97' };

/** Ten minutes, in uPlot's time unit (seconds). */
const SPAN_S = 600;
const HEIGHT = 220;

/** Time ticks as 24-hour clock times; seconds too when the visible span is short. */
const timeTicks = (u: uPlot, splits: number[]): string[] => {
  const span = (u.scales.x?.max ?? 0) - (u.scales.x?.min ?? 0);
  const opts: Intl.DateTimeFormatOptions = {
    hour: '2-digit',
    minute: '2-digit',
    ...(span < 300 ? { second: '2-digit' } : {}),
  };
  return splits.map((v) => new Date(v * 1000).toLocaleTimeString('en-GB', opts));
};

const axes = (yLabel: string): uPlot.Axis[] => [
  {
    stroke: COLORS.axis,
    grid: { stroke: COLORS.grid, width: 1 },
    ticks: { stroke: COLORS.grid, width: 1 },
    values: timeTicks,
  },
  {
    stroke: COLORS.axis,
    grid: { stroke: COLORS.grid, width: 1 },
    ticks: { stroke: COLORS.grid, width: 1 },
    label: yLabel,
    labelSize: 18,
    size: 44,
  },
];

const widthOf = (el: HTMLElement): number => Math.max(280, Math.floor(el.clientWidth));

/** Keeps a chart as wide as its card. */
const followWidth = (el: HTMLElement, chart: uPlot): void => {
  new ResizeObserver(() => chart.setSize({ width: widthOf(el), height: HEIGHT })).observe(el);
};

const line = (label: string, stroke: string, extra: Partial<uPlot.Series> = {}): uPlot.Series => ({
  label,
  stroke,
  width: 2,
  points: { show: false },
  ...extra,
});

/** Outcomes per 10-second slot over the snapshot's window. */
export class ThroughputChart {
  private readonly chart: uPlot;

  constructor(private readonly el: HTMLElement) {
    this.chart = new uPlot(
      {
        width: widthOf(el),
        height: HEIGHT,
        scales: {
          x: { time: true },
          y: { range: (_u, _min, max) => [0, Math.max(4, Math.ceil(max * 1.15))] },
        },
        axes: axes('requests / 10 s'),
        series: [
          {},
          line('granted', COLORS.granted, { fill: 'rgba(76, 195, 255, 0.10)' }),
          line('completed ok', COLORS.ok),
          line('upstream 429', COLORS.throttled),
          line('refused', COLORS.refused),
          line('abandoned / expired', COLORS.abandoned, { dash: [4, 4] }),
        ],
        legend: { live: false },
        cursor: { drag: { x: false, y: false } },
      },
      [[], [], [], [], [], []],
      el,
    );
    followWidth(el, this.chart);
  }

  update(s: StatusSnapshot): void {
    const { t, series } = s.throughput;
    const sum = (...cols: number[][]) => t.map((_, i) => cols.reduce((a, c) => a + (c[i] ?? 0), 0));
    const data: uPlot.AlignedData = [
      t.map((ms) => ms / 1000),
      series.granted,
      series.ok,
      sum(series.throttled, series.capacity),
      sum(series.refused, series.dropped),
      sum(series.abandoned, series.expired),
    ];
    this.chart.setData(data);
    // Slots with any traffic: lets people (and the browser test) see that the chart has filled.
    const busy = t.filter((_, i) => data.slice(1).some((col) => ((col[i] as number | null) ?? 0) > 0)).length;
    this.el.dataset.points = String(busy);
  }
}

interface RatePoint {
  t: number;
  effective: number;
  base: number;
  bucket: number;
}

/**
 * Effective and base rate as polled (one point per snapshot, ten minutes kept), plus the bucket's own rate;
 * retreat transitions in view are drawn as labelled vertical lines. The view spans what the page has seen
 * (at least a minute, at most ten), so a freshly opened page is not a mostly empty chart.
 */
export class RateChart {
  private readonly chart: uPlot;
  private readonly points: RatePoint[] = [];
  private transitions: StatusSnapshot['retreat']['transitions'] = [];
  private now = Date.now() / 1000;

  constructor(private readonly el: HTMLElement) {
    this.chart = new uPlot(
      {
        width: widthOf(el),
        height: HEIGHT,
        scales: {
          x: { time: true, range: () => [this.now - this.span(), this.now] },
          y: { range: (_u, _min, max) => [0, Math.max(10, Math.ceil(max * 1.2))] },
        },
        axes: axes('requests / min'),
        series: [
          {},
          line('effective', COLORS.effective, { paths: uPlot.paths.stepped?.({ align: 1 }) }),
          line('base', COLORS.base, { dash: [6, 4] }),
          line('bucket', COLORS.bucket, { width: 1 }),
        ],
        legend: { live: false },
        cursor: { drag: { x: false, y: false } },
        hooks: { draw: [(u) => this.drawTransitions(u)] },
      },
      [[], [], [], []],
      el,
    );
    followWidth(el, this.chart);
  }

  push(s: StatusSnapshot): void {
    this.now = s.at / 1000;
    this.points.push({
      t: this.now,
      effective: s.retreat.effectiveRpm,
      base: s.retreat.baseRpm,
      bucket: s.bucket.rpm,
    });
    while (this.points.length > 0 && (this.points[0]?.t ?? 0) < this.now - SPAN_S) this.points.shift();
    this.transitions = s.retreat.transitions;
    this.chart.setData([
      this.points.map((p) => p.t),
      this.points.map((p) => p.effective),
      this.points.map((p) => p.base),
      this.points.map((p) => p.bucket),
    ]);
    this.el.dataset.points = String(this.points.length);
  }

  /** Seconds of history in view: what the page has polled, between one and ten minutes. */
  private span(): number {
    const first = this.points[0]?.t ?? this.now;
    return Math.min(SPAN_S, Math.max(60, this.now - first));
  }

  private drawTransitions(u: uPlot): void {
    const { ctx, bbox } = u;
    ctx.save();
    ctx.font = `${Math.round(11 * uPlot.pxRatio)}px system-ui, sans-serif`;
    ctx.setLineDash([4 * uPlot.pxRatio, 3 * uPlot.pxRatio]);
    ctx.lineWidth = uPlot.pxRatio;
    for (const tr of this.transitions) {
      const t = tr.at / 1000;
      if (t < this.now - this.span() || t > this.now) continue;
      const x = Math.round(u.valToPos(t, 'x', true));
      const color = STATE_COLORS[tr.to] ?? COLORS.axis;
      ctx.strokeStyle = color;
      ctx.fillStyle = color;
      ctx.beginPath();
      ctx.moveTo(x, bbox.top);
      ctx.lineTo(x, bbox.top + bbox.height);
      ctx.stroke();
      ctx.fillText(`→ ${tr.to} ${Math.round(tr.rpm)}`, x + 4 * uPlot.pxRatio, bbox.top + 12 * uPlot.pxRatio);
    }
    ctx.restore();
  }
}
