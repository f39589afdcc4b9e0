// Dashboard: turns one status snapshot into the page — tiles, upstreams table, token gauge, queue bars, latency
// table, transitions, config changes and the title.
import type { StatusSnapshot } from '../../lib/status/snapshot.js';
import type { UpstreamRow } from '../../lib/status/upstream-rows.js';
import { fmtAgo, fmtInt, fmtMs, fmtNum, fmtPct, fmtTime, fmtUsdPerHour, fmtValue } from './format.js';

const PRIORITIES = ['urgent', 'high', 'normal', 'low'] as const;

const $ = <T extends HTMLElement = HTMLElement>(id: string): T => {
  const el = document.getElementById(id);
  if (!el) throw new Error(`#${id} missing from the page`);
  return el as T;
};

const tile = (name: string, value: string, sub: string, tone?: 'good' | 'warn' | 'bad'): void => {
  const el = document.querySelector<HTMLElement>(`[data-testid="tile-${name}"]`);
  if (!el) return;
  const v = el.querySelector<HTMLElement>('.value');
  if (v) v.textContent = value;
  const s = el.querySelector<HTMLElement>('.sub');
  if (s) s.textContent = sub;
  el.classList.remove('good', 'warn', 'bad');
  if (tone) el.classList.add(tone);
};

const facts = (el: HTMLElement, rows: [string, string][]): void => {
  el.replaceChildren(
    ...rows.flatMap(([k, v]) => {
      const dt = document.createElement('dt');
      dt.textContent = k;
      const dd = document.createElement('dd');
      dd.textContent = v;
      return [dt, dd];
    }),
  );
};

const li = (...parts: [string, string][]): HTMLLIElement => {
  const item = document.createElement('li');
  for (const [cls, text] of parts) {
    const span = document.createElement('span');
    span.className = cls;
    span.textContent = text;
    item.append(span);
  }
  return item;
};

type Tone = 'good' | 'warn' | 'bad' | undefined;

const upstreamRow = (u: UpstreamRow, inPool: boolean): HTMLTableRowElement => {
  const row = document.createElement('tr');
  row.dataset.upstream = u.name;
  row.dataset.pool = u.pool.join(',');
  if (inPool) row.className = 'in-pool';
  const baseRpm = u.windowMs > 0 ? (u.limit * 60_000) / u.windowMs : 0;
  const share = u.answers > 0 ? u.throttled / u.answers : 0;
  const cells: [string, Tone][] = [
    [u.name, undefined],
    [
      `${fmtInt(u.limit)} per ${fmtNum(u.windowMs / 1000)} s${u.tpm > 0 ? ` · ${fmtInt(u.tpm)} tpm` : ''}`,
      undefined,
    ],
    [`${fmtNum(u.rpm)} / ${fmtNum(baseRpm)}`, u.rpm < baseRpm ? 'warn' : undefined],
    // Tokens per minute: what its grants hold in the current token window, of its tpm (– without tpm).
    u.tpm > 0 && typeof u.tokensInWindow === 'number'
      ? [
          `${fmtInt(u.tokensInWindow)} / ${fmtInt(u.tpm)}`,
          u.tokensInWindow >= u.tpm ? 'bad' : u.tokensInWindow >= 0.8 * u.tpm ? 'warn' : undefined,
        ]
      : ['–', undefined],
    [u.retreatState, u.retreatState === 'normal' ? 'good' : u.retreatState === 'retreat' ? 'bad' : 'warn'],
    [`${fmtInt(u.inFlight)}${u.maxInflight > 0 ? ` of ${fmtInt(u.maxInflight)}` : ''}`, undefined],
    [fmtInt(u.answers), undefined],
    [
      `${fmtInt(u.throttled)}${u.answers > 0 ? ` (${fmtPct(share)})` : ''}`,
      share >= 0.05 ? 'bad' : share > 0 ? 'warn' : undefined,
    ],
  ];
  for (const [text, tone] of cells) {
    const td = document.createElement('td');
    td.textContent = text;
    if (tone) td.className = tone;
    row.append(td);
  }
  return row;
};

/**
 * A row per limited upstream, those of one pool together under a label naming it (in the order the first of them
 * comes); hidden when the snapshot has no rows (a single upstream: the tiles say it all).
 */
const renderUpstreams = (rows: UpstreamRow[] | undefined): void => {
  const card = $('upstreams');
  card.hidden = !rows?.length;
  if (!rows?.length) return;
  const placed = new Set<string>();
  const out: HTMLTableRowElement[] = [];
  for (const u of rows) {
    if (placed.has(u.name)) continue;
    const members = rows.filter((m) => m.name === u.name || u.pool.includes(m.name));
    const inPool = members.length > 1;
    if (inPool) {
      const label = document.createElement('tr');
      label.className = 'pool';
      label.dataset.pool = u.pool.join(',');
      const th = document.createElement('th');
      th.colSpan = 8;
      th.textContent = `pool ${members.map((m) => m.name).join(' · ')}`;
      label.append(th);
      out.push(label);
    }
    for (const m of members) {
      placed.add(m.name);
      out.push(upstreamRow(m, inPool));
    }
  }
  $('upstreams-body').replaceChildren(...out);
};

/** Largest bar so far: the scale only grows while the page is open, so bars compare across time. */
let barScale = 5;

export const renderSnapshot = (s: StatusSnapshot): void => {
  const tot = s.throughput.totals;
  const upstreamAnswers = tot.ok + tot.throttled + tot.capacity + tot.upstreamError;
  tile('requests', fmtInt(tot.requests), `${fmtInt(tot.requeued)} requeued after 429`);
  tile('granted', fmtInt(tot.granted), `${fmtInt(s.queue.inFlight.calling)} calling upstream now`);
  tile('ok', fmtInt(tot.ok), `${fmtInt(tot.upstreamError)} upstream errors`);
  const refused = tot.refused + tot.dropped;
  tile(
    'refused',
    fmtInt(refused),
    `dropped ${fmtInt(tot.dropped)} · expired ${fmtInt(tot.expired)} · abandoned ${fmtInt(tot.abandoned)}`,
    refused > 0 ? 'warn' : undefined,
  );
  const r = s.retreat;
  tile(
    'rate',
    `${fmtNum(r.effectiveRpm)} / ${fmtNum(r.baseRpm)}`,
    `effective / base · limit ${fmtInt(s.limits.upstreamLimit)} per ${fmtNum(s.limits.upstreamWindowMs / 1000)} s`,
    r.effectiveRpm < r.baseRpm ? 'warn' : undefined,
  );
  tile(
    '429',
    fmtPct(r.throttleRate),
    `${fmtInt(r.window.throttled)} of ${fmtInt(r.window.total)} in ${fmtNum(r.windowMs / 1000)} s · ${fmtInt(upstreamAnswers)} answers in 10 min`,
    r.throttleRate >= 0.05 ? 'bad' : r.throttleRate > 0 ? 'warn' : undefined,
  );
  tile(
    'retreat',
    r.state,
    `since ${fmtTime(r.since)}`,
    r.state === 'normal' ? 'good' : r.state === 'retreat' ? 'bad' : 'warn',
  );
  tile(
    'queue',
    fmtInt(s.queue.total),
    `of ${fmtInt(s.queue.maxSize)} · full: ${s.queue.policy} · order: ${
      s.queue.order.policy === 'weighted' ? `weighted ${s.queue.order.weights}` : 'strict'
    }`,
    s.queue.total >= s.queue.maxSize ? 'bad' : undefined,
  );

  const c = s.cost;
  tile(
    'cost',
    fmtUsdPerHour(c.usdPerHour),
    `${fmtNum(c.waitingSeconds)} s waited · ${fmtNum(c.gbSeconds)} GB-s at ${fmtInt(c.memoryMb)} MB`,
  );
  // Older status functions (before the response cache) send no cache figures.
  const k = s.cache;
  if (k) {
    tile(
      'cache',
      fmtInt(k.hits),
      `${fmtInt(k.misses)} misses · ${fmtPct(k.hitRate)} hit rate · saved ${fmtInt(k.tokensSaved)} tokens, ${fmtInt(Math.round(k.bytesSaved / 1024))} KiB`,
      k.hits > 0 ? 'good' : undefined,
    );
  }
  renderUpstreams(s.upstreams);

  const mode = $('mode');
  mode.hidden = !s.mode.paused && !s.mode.draining;
  mode.textContent = s.mode.paused ? 'PAUSED' : s.mode.draining ? 'DRAINING' : '';

  // Token gauge: fill level of the burst, continuous (the next token grows in).
  const b = s.bucket;
  const share = b.burst > 0 ? b.level / b.burst : 0;
  const fill = $('gauge-fill');
  fill.style.strokeDashoffset = String(100 - Math.round(share * 100));
  fill.style.stroke = b.holdUntil ? 'var(--bad)' : share < 0.34 ? 'var(--warn)' : 'var(--good)';
  $('gauge-text').textContent = `${fmtNum(b.level)} / ${fmtInt(b.burst)}`;
  facts($('bucket-facts'), [
    ['bucket rate', `${fmtNum(b.rpm)} rpm (one per ${fmtInt(b.intervalMs)} ms)`],
    ['by priority', PRIORITIES.map((p) => `${p} ${b.tokensByPriority[p]}`).join(' · ')],
    ['hold', b.holdUntil ? `until ${fmtTime(b.holdUntil)} (upstream Retry-After)` : 'none'],
    ...(b.tokensPerMinute
      ? ([
          [
            'tokens',
            `${fmtInt(b.tokensPerMinute.inWindow)} of ${fmtInt(b.tokensPerMinute.tpm)} per minute held`,
          ],
        ] as [string, string][])
      : []),
  ]);

  // Queue bars (heights animate in CSS).
  const depths = PRIORITIES.map((p) => s.queue.byPriority[p].waiting + s.queue.byPriority[p].buffered);
  barScale = Math.max(barScale, ...depths);
  PRIORITIES.forEach((p, i) => {
    const n = depths[i] ?? 0;
    const bar = document.querySelector<HTMLElement>(`.bar[data-priority="${p}"]`);
    if (bar) {
      bar.style.height = `${Math.round((n / barScale) * 100)}%`;
      bar.dataset.count = String(n);
    }
    $(`count-${p}`).textContent = fmtInt(n);
  });
  $('queue-title').textContent = `Queue by priority — ${fmtInt(s.queue.total)} waiting`;
  const f = s.queue.inFlight;
  $('inflight').textContent =
    `Upstream calls in progress: ${fmtInt(f.calling)}${f.capped ? '+' : ''} · granted, not yet claimed: ${fmtInt(f.granted)} · in flight ${fmtInt(f.counter)}${f.max > 0 ? ` of max ${fmtInt(f.max)}` : ''}`;

  // Latency table.
  $('latency-body').replaceChildren(
    ...PRIORITIES.map((p) => {
      const q = s.latency.queueWait[p];
      const u = s.latency.upstream[p];
      const row = document.createElement('tr');
      row.dataset.priority = p;
      const cells = [
        p,
        fmtInt(q.count),
        fmtMs(q.p50),
        fmtMs(q.p95),
        fmtMs(q.p99),
        fmtMs(u.p50),
        fmtMs(u.p95),
      ];
      cells.forEach((text, i) => {
        const td = document.createElement('td');
        if (i === 0) {
          const dot = document.createElement('span');
          dot.className = 'dot';
          dot.style.background = `var(--${p})`;
          td.append(dot);
        }
        td.append(text);
        row.append(td);
      });
      return row;
    }),
  );

  // Retreat transitions and config changes.
  const transitions = r.transitions.slice(0, 5);
  $('transitions').replaceChildren(
    ...(transitions.length
      ? transitions.map((t) =>
          li(
            ['when', fmtTime(t.at)],
            ['', `${t.from} → ${t.to} at ${fmtNum(t.rpm)} rpm`],
            ['muted', t.reason],
          ),
        )
      : [li(['muted', 'No retreat transitions yet.'])]),
  );
  $('changes').replaceChildren(
    ...(s.configChanges.length
      ? s.configChanges.map((c) =>
          li(
            ['when', fmtTime(c.at)],
            ['field', c.field],
            ['', `${fmtValue(c.from)} → ${fmtValue(c.to)}`],
            ['muted', `by ${c.by}`],
          ),
        )
      : [li(['muted', 'No changes recorded.'])]),
  );

  // Dispatcher lease and the page title.
  const d = s.dispatcher;
  const pill = $('dispatcher');
  pill.textContent = `dispatcher ${d.state}`;
  pill.className = `pill ${d.state === 'running' ? 'pill-ok' : ''}`;
  pill.title = `${d.state} since ${fmtTime(d.since ?? d.observedSince)}`;
  document.title = `${fmtInt(s.queue.total)} queued · sluice`;
};

/** Connection state in the top bar. */
export const renderConnection = (state: 'ok' | 'lost' | 'connecting', lastOkAt: number | undefined): void => {
  const pill = $('conn');
  pill.className = `pill ${state === 'ok' ? 'pill-ok' : state === 'lost' ? 'pill-bad' : 'pill-wait'}`;
  pill.textContent = state === 'ok' ? 'live' : state === 'lost' ? 'disconnected' : 'connecting…';
  if (lastOkAt) pill.dataset.lastOk = String(lastOkAt);
  $('updated').textContent = lastOkAt ? `updated ${fmtTime(lastOkAt)}` : '';
  const overlay = $('overlay');
  overlay.hidden = state !== 'lost';
  if (state === 'lost') {
    $('overlay-detail').textContent = lastOkAt
      ? `No answer from the gateway since ${fmtTime(lastOkAt)} (${fmtAgo(Date.now() - lastOkAt)}). Retrying every second…`
      : 'The gateway does not answer. Retrying every second…';
  }
};

export { $ };
