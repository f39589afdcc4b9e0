// Dashboard: the admin panel — loads the current config when opened, applies changes to the rate, queue size
// and queue-full policy, shows the server's answer (or its validation error), resets retreat.
import type { AdminConfigView, AgentBudgetView } from '../../lib/status/admin.js';
import { type Api, ApiError } from './api.js';
import { fmtNum, fmtValue } from './format.js';
import { $ } from './render.js';

const NUMBER_FIELDS = ['upstream_limit', 'queue_max_size'] as const;
/** Fields chosen from the values the server lists. */
const CHOICE_FIELDS = ['queue_full_policy', 'priority_policy'] as const;
const TEXT_FIELDS = ['priority_weights'] as const;
/** The top-agents table refreshes this often while the admin panel is open. */
const USAGE_EVERY_MS = 10_000;

/** `3 of 500 req · 12k of 100k tok`, or `—` for an agent without a budget counted today. */
const budgetLeft = (b: AgentBudgetView | undefined): string => {
  if (!b) return '—';
  const parts = [
    b.requestsLimit !== undefined
      ? `${fmtNum(b.requestsRemaining ?? 0)} of ${fmtNum(b.requestsLimit)} req`
      : '',
    b.tokensLimit !== undefined ? `${fmtNum(b.tokensRemaining ?? 0)} of ${fmtNum(b.tokensLimit)} tok` : '',
  ].filter(Boolean);
  return parts.join(' · ') || '—';
};

export class AdminPanel {
  private loaded: AdminConfigView | undefined;

  constructor(
    private readonly api: Api,
    /** Called after a change, so the page refreshes at once. */
    private readonly changed: () => void,
  ) {
    $<HTMLFormElement>('admin-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      void this.apply();
    });
    $('retreat-reset').addEventListener('click', () => void this.resetRetreat());
    for (const mode of ['pause', 'drain', 'resume'] as const) {
      $(`mode-${mode}`).addEventListener('click', () => void this.setMode(mode));
    }
  }

  private usageTimer: ReturnType<typeof setInterval> | undefined;

  /** Shows the panel, loads the current config into the form and keeps the top-agents table fresh. */
  async open(): Promise<void> {
    $('admin').hidden = false;
    try {
      this.fill(await this.api.config());
    } catch (err) {
      this.say('error', `Could not load the config: ${(err as Error).message}`);
    }
    await this.loadUsage();
    clearInterval(this.usageTimer);
    this.usageTimer = setInterval(() => void this.loadUsage(), USAGE_EVERY_MS);
  }

  close(): void {
    $('admin').hidden = true;
    this.loaded = undefined;
    clearInterval(this.usageTimer);
  }

  /** Top agents by requests over the last hour, with their day totals. */
  private async loadUsage(): Promise<void> {
    try {
      const usage = await this.api.usage();
      const day = new Map(usage.day.map((u) => [u.agent, u]));
      const budgets = new Map((usage.budgets ?? []).map((b) => [b.agent, b]));
      const rows = usage.hour.length ? usage.hour : usage.day;
      $('agents-body').replaceChildren(
        ...rows.slice(0, 10).map((u) => {
          const d = day.get(u.agent);
          const tr = document.createElement('tr');
          const hour = usage.hour.includes(u);
          for (const text of [
            u.agent,
            hour ? fmtNum(u.requests) : '0',
            hour ? fmtNum(u.tokens) : '0',
            hour ? fmtNum(u.throttled) : '0',
            hour ? `${fmtNum(u.avgQueueMs)} ms` : '—',
            fmtNum(d?.requests ?? 0),
            fmtNum(d?.tokens ?? 0),
            budgetLeft(budgets.get(u.agent)),
          ]) {
            const td = document.createElement('td');
            td.textContent = text;
            tr.append(td);
          }
          return tr;
        }),
      );
    } catch (err) {
      this.say('error', `Could not load usage: ${(err as Error).message}`);
    }
  }

  private async setMode(mode: 'pause' | 'drain' | 'resume'): Promise<void> {
    await this.busy(async () => {
      try {
        const res = await this.api.setMode(mode);
        this.say(
          'ok',
          `${mode === 'pause' ? 'Paused' : mode === 'drain' ? 'Draining' : 'Resumed'} (config v${res.version}).`,
        );
        this.fill(await this.api.config());
        this.changed();
      } catch (err) {
        this.say('error', `${mode} failed: ${(err as Error).message}`);
      }
    });
  }

  private fill(view: AdminConfigView): void {
    this.loaded = view;
    for (const name of NUMBER_FIELDS) {
      const input = $<HTMLInputElement>(`cfg-${name}`);
      input.value = String(view.config[name] ?? '');
      const field = view.fields.find((f) => f.name === name);
      if (field?.min !== undefined) input.min = String(field.min);
      if (field?.max !== undefined) input.max = String(field.max);
    }
    for (const name of CHOICE_FIELDS) {
      const select = $<HTMLSelectElement>(`cfg-${name}`);
      const values = view.fields.find((f) => f.name === name)?.values ?? [];
      select.replaceChildren(
        ...values.map((v) => {
          const option = document.createElement('option');
          option.value = v;
          option.textContent = v;
          return option;
        }),
      );
      select.value = String(view.config[name] ?? '');
    }
    for (const name of TEXT_FIELDS)
      $<HTMLInputElement>(`cfg-${name}`).value = String(view.config[name] ?? '');
    $('window-hint').textContent = `calls per ${fmtNum(Number(view.config.upstream_window_s))} s`;
    $('admin-version').textContent = `config v${view.version}, last changed by ${view.updatedBy}`;
  }

  /** The fields that differ from the loaded config, as the user typed them (the server validates). */
  private patch(): Record<string, unknown> {
    const out: Record<string, unknown> = {};
    const current = this.loaded?.config ?? {};
    for (const name of NUMBER_FIELDS) {
      const raw = $<HTMLInputElement>(`cfg-${name}`).value.trim();
      const value = raw === '' ? raw : Number(raw);
      if (value !== current[name]) out[name] = value;
    }
    for (const name of [...CHOICE_FIELDS, ...TEXT_FIELDS]) {
      const value = $<HTMLInputElement | HTMLSelectElement>(`cfg-${name}`).value.trim();
      if (value !== current[name]) out[name] = value;
    }
    return out;
  }

  private async apply(): Promise<void> {
    this.clearInvalid();
    const patch = this.patch();
    if (Object.keys(patch).length === 0) {
      this.say('ok', 'Nothing to apply: the form matches the current config.');
      return;
    }
    await this.busy(async () => {
      try {
        const res = await this.api.patchConfig(patch);
        const what = res.changes.map((c) => `${c.field} ${fmtValue(c.from)} → ${fmtValue(c.to)}`).join(', ');
        this.say(
          'ok',
          `Applied (config v${res.version}): ${what || 'no change'}. Live within 2 s everywhere.`,
        );
        this.fill(await this.api.config());
        this.changed();
      } catch (err) {
        if (err instanceof ApiError && err.param) {
          document.getElementById(`cfg-${err.param}`)?.classList.add('invalid');
        }
        this.say('error', `Refused: ${(err as Error).message}`);
      }
    });
  }

  private async resetRetreat(): Promise<void> {
    await this.busy(async () => {
      try {
        const { retreat } = await this.api.resetRetreat();
        this.say('ok', `Retreat reset: ${retreat.state} at ${fmtNum(retreat.effectiveRpm)} rpm.`);
        this.changed();
      } catch (err) {
        this.say('error', `Reset failed: ${(err as Error).message}`);
      }
    });
  }

  private async busy(fn: () => Promise<void>): Promise<void> {
    const buttons = ['apply', 'retreat-reset', 'mode-pause', 'mode-drain', 'mode-resume'].map((id) =>
      $<HTMLButtonElement>(id),
    );
    for (const b of buttons) b.disabled = true;
    try {
      await fn();
    } finally {
      for (const b of buttons) b.disabled = false;
    }
  }

  private clearInvalid(): void {
    for (const el of document.querySelectorAll('#admin .invalid')) el.classList.remove('invalid');
  }

  private say(kind: 'ok' | 'error', text: string): void {
    const el = $('admin-message');
    el.className = `message ${kind}`;
    el.textContent = text;
  }
}
