// The dashboard in a real browser (Debian's Chromium via playwright-core) against the local runtime while a
// known load runs through the real API: tiles show the load's counts, charts fill, queue bars move, the admin
// panel changes the rate, and the page says so when the backend goes away.

import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { copyFile, mkdir } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import OpenAI from 'openai';
import { type Browser, chromium, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildDashboard } from '../../dashboard/build.js';
import { KeyAdmin } from '../../lib/domain/key-admin.js';
import { PRIORITIES, type Priority } from '../../lib/domain/priority.js';
import type { StatusSnapshot } from '../../lib/status/snapshot.js';
import type { UpstreamRow } from '../../lib/status/upstream-rows.js';
import type { LocalSystem } from '../../local/runtime.js';
import { allTickets, countByStatus } from '../support/system.js';
import { ADMIN_TOKEN, call, startStatusSystem, VIEWER_TOKEN } from './support.js';

const CHROMIUM = '/usr/bin/chromium';
const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const SCREENSHOT = join(ROOT, 'test-artifacts', 'dashboard.png');
const README_SHOT = join(ROOT, 'docs', 'dashboard.png');
/** The load: this many chat completions per priority, all at once. */
const PER_PRIORITY = 3;
const LOAD = PER_PRIORITY * PRIORITIES.length;
/** A second, smaller load that is still queued when the screenshot is taken. */
const WAVE = 8;

let system: LocalSystem | undefined;
let browser: Browser | undefined;
let page: Page;
let agentKey: string;

const tileValue = (name: string) => page.locator(`[data-testid="tile-${name}"] .value`).textContent();
const isVisible = (testId: string) => page.locator(`[data-testid="${testId}"]`).isVisible();
const poll = { timeout: 40_000, interval: 250 };

/** Samples the queue bars and the title in the page every 150 ms (what a person watching would see). */
const startSampling = () =>
  page.evaluate(() => {
    const w = globalThis as unknown as { samples: { bars: number[]; height: string[]; title: string }[] };
    w.samples = [];
    setInterval(() => {
      const bars = [...document.querySelectorAll<HTMLElement>('.bar')];
      w.samples.push({
        bars: bars.map((b) => Number(b.dataset.count ?? 0)),
        height: bars.map((b) => getComputedStyle(b).height),
        title: document.title,
      });
    }, 150);
  });

const samples = () =>
  page.evaluate(
    () =>
      (globalThis as unknown as { samples: { bars: number[]; height: string[]; title: string }[] }).samples,
  );

beforeAll(async () => {
  // Fail, never skip: CI installs Chromium (.ci/run); a missing browser is a broken environment.
  if (!existsSync(CHROMIUM)) {
    throw new Error(`Chromium not found at ${CHROMIUM}: apt-get install -y chromium`);
  }
  await buildDashboard();
  system = await startStatusSystem('status-dashboard', {
    // No hidden upstream limit: every request of the load succeeds, so the counts are exact.
    fakeUpstream: { limit: null, firstByteDelayMs: 20, tokenDelayMs: 10 },
    // LOW waits in line like the rest instead of being refused after 2 s (the default timeout).
    env: { SLUICE_LOW_TIMEOUT_S: '600' },
  });
  agentKey = await system.createKey('dashboard-load', 'urgent');
  // A daily budget far above the loads: the top-agents table shows what is left of it.
  await new KeyAdmin(system.stores.keys, system.stores.clock, (n) => randomBytes(n)).setBudget(
    { agent: 'dashboard-load' },
    { budgetRequestsDay: 100_000 },
  );
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
    ],
  });
  page = await browser.newPage({ viewport: { width: 1440, height: 1000 }, deviceScaleFactor: 1 });
}, 120_000);

afterAll(async () => {
  await browser?.close();
  await system?.stop();
});

describe('dashboard in Chromium', () => {
  it('asks for a token, keeps it in sessionStorage only, and hides the admin panel from a viewer', async () => {
    await page.goto(`${system!.url}/`);
    await expect.poll(() => isVisible('token-dialog'), poll).toBe(true);
    await page.fill('#token-input', 'not-the-token');
    await page.click('#token-submit');
    await expect.poll(() => page.locator('#token-error').textContent(), poll).toMatch(/Token refused/);
    await page.fill('#token-input', VIEWER_TOKEN);
    await page.click('#token-submit');
    await expect.poll(() => page.locator('[data-testid="connection"]').textContent(), poll).toBe('live');
    expect(await isVisible('token-dialog')).toBe(false);
    expect(await page.locator('[data-testid="role"]').textContent()).toBe('read only');
    expect(await isVisible('admin')).toBe(false);
    // One upstream: no upstreams table (the snapshot has no rows).
    expect(await isVisible('upstreams')).toBe(false);
    expect(await tileValue('requests')).toBe('0');
    const stored = await page.evaluate(() => ({
      session: sessionStorage.getItem('sluice.token'),
      local: Object.keys(localStorage).length,
      cookies: document.cookie,
    }));
    expect(stored).toEqual({ session: VIEWER_TOKEN, local: 0, cookies: '' });
  });

  it('signs in as admin and loads the current config into the admin panel', async () => {
    await page.click('#change-token');
    await page.fill('#token-input', ADMIN_TOKEN);
    await page.click('#token-submit');
    await expect.poll(() => isVisible('admin'), poll).toBe(true);
    await expect.poll(() => page.inputValue('#cfg-upstream_limit'), poll).toBe('40');
    expect(await page.inputValue('#cfg-queue_max_size')).toBe('500');
    expect(await page.inputValue('#cfg-queue_full_policy')).toBe('reject');
    expect(await page.locator('[data-testid="role"]').textContent()).toBe('admin');
  });

  it(`shows the counts of a load of ${LOAD} requests, fills the charts and moves the queue bars`, async () => {
    await startSampling();
    const client = new OpenAI({
      baseURL: `${system!.url}/v1`,
      apiKey: agentKey,
      maxRetries: 0,
      timeout: 120_000,
    });
    const load = PRIORITIES.flatMap((priority: Priority) =>
      Array.from({ length: PER_PRIORITY }, (_, i) =>
        client.chat.completions.create(
          { model: 'meta/llama-3.1-8b-instruct', messages: [{ role: 'user', content: `${priority} ${i}` }] },
          { headers: { 'X-Priority': priority } },
        ),
      ),
    );
    const replies = await Promise.all(load);
    expect(replies.every((r) => r.choices[0]?.message.content?.startsWith('tok0'))).toBe(true);

    // Tiles: exactly what the load produced.
    await expect.poll(() => tileValue('requests'), poll).toBe(String(LOAD));
    await expect.poll(() => tileValue('ok'), poll).toBe(String(LOAD));
    // A grant that went stale on a loaded machine is requeued and granted again: each request counts once.
    const { totals } = (await call<StatusSnapshot>(system!, 'GET', '/status', { token: VIEWER_TOKEN })).json
      .throughput;
    expect(totals.granted - totals.requeued).toBe(LOAD);
    expect(Number(await tileValue('granted'))).toBe(totals.granted);
    expect(await tileValue('refused')).toBe('0');
    expect(await tileValue('429')).toBe('0 %');
    expect(await tileValue('retreat')).toBe('normal');
    expect(await tileValue('rate')).toBe('40 / 40');
    await expect.poll(() => tileValue('queue'), poll).toBe('0');
    expect(await page.title()).toBe('0 queued · sluice');

    // Latency table: every priority waited in the queue PER_PRIORITY times.
    for (const p of PRIORITIES) {
      const n = await page.locator(`#latency-body tr[data-priority="${p}"] td`).nth(1).textContent();
      expect(n).toBe(String(PER_PRIORITY));
    }

    // Queue bars moved: the sampled depth rose above zero (the bucket lets 2 through, then one per ~1.6 s)
    // and came back to zero; their rendered height followed; the title counted the queue meanwhile.
    // The bars are SQS's own (approximate) depths, and the dispatcher deletes granted messages in batches off the
    // grant's path: they reach zero a poll or two after the exact queue counter did.
    await expect.poll(async () => (await samples()).at(-1)?.bars, poll).toEqual([0, 0, 0, 0]);
    const seen = await samples();
    const peak = Math.max(...seen.map((s) => s.bars.reduce((a, b) => a + b, 0)));
    expect(peak).toBeGreaterThan(0);
    const heights = new Set(seen.flatMap((s) => s.height));
    expect(heights.size).toBeGreaterThan(2);
    expect(seen.some((s) => /^[1-9]\d* queued · sluice$/.test(s.title))).toBe(true);

    // Charts filled: throughput slots with traffic, rate points from the polls, both drawn on canvas.
    expect(
      Number(await page.getAttribute('[data-testid="chart-throughput"]', 'data-points')),
    ).toBeGreaterThan(0);
    expect(Number(await page.getAttribute('[data-testid="chart-rate"]', 'data-points'))).toBeGreaterThan(5);
    expect(await page.locator('[data-testid="chart-throughput"] canvas').count()).toBe(1);
    expect(await page.locator('[data-testid="chart-rate"] canvas').count()).toBe(1);
    await expect.poll(() => page.locator('#gauge-text').textContent(), poll).toMatch(/^[0-2](\.\d)? \/ 2$/);

    // Every request ended completed (the ticket audit).
    const tickets = await allTickets(system!);
    expect(countByStatus(tickets)).toEqual({ completed: LOAD });
  }, 180_000);

  it('changes the rate from the admin panel, shows validation errors, and /status reflects the change', async () => {
    await page.fill('#cfg-queue_max_size', '0');
    await page.click('#apply');
    await expect
      .poll(() => page.locator('#admin-message').textContent(), poll)
      .toMatch(/Refused: queue_max_size must be between 1 and 1000000/);
    expect(await page.getAttribute('#cfg-queue_max_size', 'class')).toContain('invalid');

    await page.fill('#cfg-queue_max_size', '500');
    await page.fill('#cfg-upstream_limit', '60');
    await page.click('#apply');
    await expect
      .poll(() => page.locator('#admin-message').textContent(), poll)
      .toMatch(/Applied \(config v2\): upstream_limit 40 → 60/);
    const snapshot = (await call<StatusSnapshot>(system!, 'GET', '/status', { token: VIEWER_TOKEN })).json;
    expect(snapshot.limits.upstreamLimit).toBe(60);
    expect(snapshot.retreat.baseRpm).toBe(60);
    await expect.poll(() => tileValue('rate'), poll).toBe('60 / 60');
    await expect
      .poll(() => page.locator('[data-testid="changes"]').textContent(), poll)
      .toMatch(/upstream_limit\s*40 → 60\s*by admin/);
  });

  it('switches the priority order to weighted from the admin panel and shows it on the queue tile', async () => {
    await page.selectOption('#cfg-priority_policy', 'weighted');
    await page.fill('#cfg-priority_weights', '8:4:2');
    await page.click('#apply');
    await expect
      .poll(() => page.locator('#admin-message').textContent(), poll)
      .toMatch(/Refused: priority_weights must be four integers/);
    await page.fill('#cfg-priority_weights', '6:3:2:1');
    await page.click('#apply');
    await expect.poll(() => page.locator('#admin-message').textContent(), poll).toMatch(/Applied/);
    const snapshot = (await call<StatusSnapshot>(system!, 'GET', '/status', { token: VIEWER_TOKEN })).json;
    expect(snapshot.queue.order).toEqual({ policy: 'weighted', weights: '6:3:2:1' });
    await expect
      .poll(() => page.locator('[data-testid="tile-queue"]').textContent(), poll)
      .toMatch(/order: weighted 6:3:2:1/);
    // Back to the default, so the waves below queue in strict order.
    await page.selectOption('#cfg-priority_policy', 'strict');
    await page.click('#apply');
    await expect
      .poll(() => page.locator('[data-testid="tile-queue"]').textContent(), poll)
      .toMatch(/order: strict/);
  });

  it('saves a screenshot for the README while a second wave waits in the queue', async () => {
    const client = new OpenAI({
      baseURL: `${system!.url}/v1`,
      apiKey: agentKey,
      maxRetries: 0,
      timeout: 120_000,
    });
    const wave = Array.from({ length: WAVE }, (_, i) =>
      client.chat.completions.create(
        { model: 'meta/llama-3.1-8b-instruct', messages: [{ role: 'user', content: `wave ${i}` }] },
        { headers: { 'X-Priority': PRIORITIES[i % PRIORITIES.length]! } },
      ),
    );
    // At 60 rpm the bucket lets 2 through, then one a second: the rest is visibly queued for a while.
    await expect.poll(async () => Number(await tileValue('queue')), poll).toBeGreaterThanOrEqual(2);
    await mkdir(dirname(SCREENSHOT), { recursive: true });
    await page.evaluate(() => window.scrollTo(0, 0));
    await page.screenshot({ path: SCREENSHOT, fullPage: true });
    // The README's copy is refreshed on request only, so a test run leaves the work tree clean.
    if (process.env.SLUICE_UPDATE_DOCS === '1') {
      await mkdir(dirname(README_SHOT), { recursive: true });
      await copyFile(SCREENSHOT, README_SHOT);
    }
    await Promise.all(wave);
    await expect.poll(() => tileValue('requests'), poll).toBe(String(LOAD + WAVE));
    expect(countByStatus(await allTickets(system!))).toEqual({ completed: LOAD + WAVE });
  }, 120_000);

  it('signs in from #token= in the URL (then drops it from the address) and every tile fits its grid at 1,400 px', async () => {
    const other = await browser!.newPage({ viewport: { width: 1400, height: 900 }, deviceScaleFactor: 1 });
    try {
      await other.goto(`${system!.url}/#token=${VIEWER_TOKEN}`);
      await expect.poll(() => other.locator('[data-testid="connection"]').textContent(), poll).toBe('live');
      expect(await other.locator('[data-testid="token-dialog"]').isVisible()).toBe(false);
      expect(await other.locator('[data-testid="role"]').textContent()).toBe('read only');
      expect(await other.evaluate(() => location.hash)).toBe('');
      // The load above gave the cost tile its longest figures.
      await expect
        .poll(() => other.locator('[data-testid="tile-cost"] .value').textContent(), poll)
        .toMatch(/\$/);
      const overflowing = await other.evaluate(() =>
        [...document.querySelectorAll<HTMLElement>('.tiles, .tile, .tile .value, .tile .sub, .tile .label')]
          .filter((el) => el.scrollWidth > el.clientWidth + 1)
          .map(
            (el) =>
              `${el.closest('.tile')?.getAttribute('data-testid') ?? 'tiles'} ${el.className}: ${el.scrollWidth} > ${el.clientWidth}`,
          ),
      );
      expect(overflowing).toEqual([]);
    } finally {
      await other.close();
    }
  });

  it('pauses and resumes from the admin panel and lists the load in the top-agents table', async () => {
    await page.click('#mode-pause');
    await expect.poll(() => page.locator('[data-testid="mode"]').textContent(), poll).toBe('PAUSED');
    expect(await page.locator('[data-testid="mode"]').isVisible()).toBe(true);
    const paused = (await call<StatusSnapshot>(system!, 'GET', '/status', { token: VIEWER_TOKEN })).json;
    expect(paused.mode).toEqual({ paused: true, draining: false });
    await page.click('#mode-resume');
    await expect.poll(() => page.locator('[data-testid="mode"]').isVisible(), poll).toBe(false);
    await expect
      .poll(() => page.locator('[data-testid="changes"]').textContent(), poll)
      .toMatch(/paused\s*true → false/);
    // Every request of both loads came from one agent; the table shows its hour counts.
    await expect
      .poll(() => page.locator('[data-testid="top-agents"] tbody tr').first().textContent(), {
        ...poll,
        timeout: 30_000,
      })
      .toMatch(new RegExp(`^dashboard-load${LOAD + WAVE}.*\\d of 100,000 req$`));
  }, 60_000);

  it('shows a row per upstream, a pool together under its label, when /status lists several; hides them again', async () => {
    // The real snapshot with rows added, as a gateway with SLUICE_UPSTREAMS would send: nv-a and nv-b serve the same
    // models (a pool), self-hosted is alone and listed between them.
    const pool = ['nv-a', 'nv-b'];
    const row = (r: Partial<UpstreamRow> & Pick<UpstreamRow, 'name'>): UpstreamRow => ({
      pool: [r.name],
      limit: 40,
      windowMs: 60_000,
      tpm: 0,
      tokensInWindow: null,
      rpm: 40,
      retreatState: 'normal',
      inFlight: 0,
      maxInflight: 0,
      throttled: 0,
      answers: 0,
      ...r,
    });
    const upstreams = [
      row({ name: 'nv-a', pool, inFlight: 2, answers: 38 }),
      row({
        name: 'self-hosted',
        limit: 600,
        rpm: 600,
        tpm: 100_000,
        tokensInWindow: 85_000,
        maxInflight: 8,
        answers: 5,
      }),
      row({ name: 'nv-b', pool, rpm: 32, retreatState: 'retreat', inFlight: 1, throttled: 3, answers: 30 }),
    ];
    await page.setViewportSize({ width: 1400, height: 1000 });
    await page.route('**/status', async (route) => {
      const res = await route.fetch();
      await route.fulfill({ response: res, json: { ...(await res.json()), upstreams } });
    });
    try {
      await expect.poll(() => isVisible('upstreams'), poll).toBe(true);
      const shown = await page.locator('#upstreams-body tr').evaluateAll((trs) =>
        trs.map((tr) => ({
          kind: tr.className,
          pool: (tr as HTMLElement).dataset.pool,
          cells: [...tr.children].map((c) => `${c.textContent}${c.className ? ` [${c.className}]` : ''}`),
        })),
      );
      expect(shown).toEqual([
        { kind: 'pool', pool: 'nv-a,nv-b', cells: ['pool nv-a · nv-b'] },
        {
          kind: 'in-pool',
          pool: 'nv-a,nv-b',
          cells: ['nv-a', '40 per 60 s', '40 / 40', '–', 'normal [good]', '2', '38', '0 (0 %)'],
        },
        {
          kind: 'in-pool',
          pool: 'nv-a,nv-b',
          cells: ['nv-b', '40 per 60 s', '32 / 40 [warn]', '–', 'retreat [bad]', '1', '30', '3 (10 %) [bad]'],
        },
        {
          kind: '',
          pool: 'self-hosted',
          cells: [
            'self-hosted',
            '600 per 60 s · 100,000 tpm',
            '600 / 600',
            // Tokens its grants hold in the window, of its tpm: 85 % is near the limit.
            '85,000 / 100,000 [warn]',
            'normal [good]',
            '0 of 8',
            '5',
            '0 (0 %)',
          ],
        },
      ]);
      // Readable at 1,400 px: the table fits its card, and the tiles still fit theirs.
      const overflowing = await page.evaluate(() =>
        [...document.querySelectorAll<HTMLElement>('#upstreams, #upstreams table, .tiles, .tile')]
          .filter((el) => el.scrollWidth > el.clientWidth + 1)
          .map((el) => `${el.id || el.className}: ${el.scrollWidth} > ${el.clientWidth}`),
      );
      expect(overflowing).toEqual([]);
    } finally {
      await page.unroute('**/status');
      await page.setViewportSize({ width: 1440, height: 1000 });
    }
    // Back to the gateway's own snapshot (one upstream): the table goes away.
    await expect.poll(() => isVisible('upstreams'), poll).toBe(false);
  });

  it('shows the disconnected overlay after 5 s without a successful poll, and recovers by itself', async () => {
    expect(await isVisible('overlay')).toBe(false);
    await page.route('**/status', (route) => route.abort('connectionrefused'));
    await expect.poll(() => isVisible('overlay'), poll).toBe(true);
    // Not before 5 s after the last good poll (same machine, same clock).
    const lastOk = Number(await page.getAttribute('[data-testid="connection"]', 'data-last-ok'));
    expect(Date.now() - lastOk).toBeGreaterThanOrEqual(5_000);
    expect(await page.locator('[data-testid="connection"]').textContent()).toBe('disconnected');
    await page.unroute('**/status');
    await expect.poll(() => isVisible('overlay'), poll).toBe(false);
    expect(await page.locator('[data-testid="connection"]').textContent()).toBe('live');
  });

  it('shows the overlay when the backend stops', async () => {
    await system!.stop();
    system = undefined;
    await expect.poll(() => isVisible('overlay'), poll).toBe(true);
    expect(await page.locator('#overlay-detail').textContent()).toMatch(/No answer from the gateway since/);
  });
});
