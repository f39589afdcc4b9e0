// Dashboard entry: finds the API, signs in (token kept in sessionStorage only), polls /status about once a
// second, renders it, and shows a "disconnected" overlay after 5 s without a successful poll.
import 'uplot/dist/uPlot.min.css';
import './styles.css';
import { AdminPanel } from './admin.js';
import { Api, ApiError, loadApiUrl } from './api.js';
import { RateChart, ThroughputChart } from './charts.js';
import { $, renderConnection, renderSnapshot } from './render.js';

const TOKEN_KEY = 'sluice.token';
const POLL_MS = 1_000;
/** Without a successful poll for this long the page says it is disconnected. */
const LOST_AFTER_MS = 5_000;

/**
 * `#token=…` in the URL (what `npm start` prints) signs in: a fragment never reaches the server. The token moves to
 * sessionStorage and leaves the address bar, so it is not kept in the history or shared with a copied link.
 */
const takeTokenFromFragment = (): void => {
  const token = new URLSearchParams(location.hash.slice(1)).get('token');
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  history.replaceState(null, '', `${location.pathname}${location.search}`);
};

class Dashboard {
  private readonly api: Api;
  private readonly admin: AdminPanel;
  private readonly throughput = new ThroughputChart($('chart-throughput'));
  private readonly rate = new RateChart($('chart-rate'));
  private readonly openedAt = Date.now();
  private lastOkAt: number | undefined;
  private polling = false;
  private timer: ReturnType<typeof setTimeout> | undefined;

  constructor(apiUrl: string) {
    takeTokenFromFragment();
    this.api = new Api(apiUrl, sessionStorage.getItem(TOKEN_KEY) ?? undefined);
    this.admin = new AdminPanel(this.api, () => this.pollSoon());
    $<HTMLFormElement>('token-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      void this.submitToken($<HTMLInputElement>('token-input').value.trim());
    });
    // The dialog is the way in: Escape does not dismiss it.
    $<HTMLDialogElement>('token-dialog').addEventListener('cancel', (ev) => ev.preventDefault());
    $('change-token').addEventListener('click', () => this.askToken());
    setInterval(() => this.watch(), 500);
  }

  async start(): Promise<void> {
    if (sessionStorage.getItem(TOKEN_KEY)) {
      await this.signedIn();
      return;
    }
    // Maybe /status is public (status_public): then nobody needs to sign in to watch.
    try {
      await this.api.status();
      this.setRole('public');
      this.startPolling();
    } catch (err) {
      if (err instanceof ApiError && err.auth) this.askToken();
      else this.startPolling();
    }
  }

  private askToken(message = ''): void {
    const dialog = $<HTMLDialogElement>('token-dialog');
    $('token-error').textContent = message;
    $<HTMLInputElement>('token-input').value = '';
    if (!dialog.open) dialog.showModal();
  }

  private async submitToken(token: string): Promise<void> {
    if (!token) {
      $('token-error').textContent = 'Paste a token first.';
      return;
    }
    const button = $<HTMLButtonElement>('token-submit');
    button.disabled = true;
    this.api.setToken(token);
    try {
      await this.api.status();
    } catch (err) {
      if (err instanceof ApiError && err.auth) {
        this.api.setToken(sessionStorage.getItem(TOKEN_KEY) ?? undefined);
        $('token-error').textContent = `Token refused: ${err.message}`;
        return;
      }
      // Unreachable now: keep the token; the overlay tells the rest.
    } finally {
      button.disabled = false;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    $<HTMLDialogElement>('token-dialog').close();
    await this.signedIn();
  }

  /** With a token: find out whether it is the admin's (the admin API answers) and start polling. */
  private async signedIn(): Promise<void> {
    this.startPolling();
    try {
      await this.api.config();
      this.setRole('admin');
      await this.admin.open();
    } catch {
      this.setRole('viewer');
      this.admin.close();
    }
  }

  private setRole(role: 'admin' | 'viewer' | 'public'): void {
    const pill = $('role');
    pill.hidden = false;
    pill.textContent = role === 'admin' ? 'admin' : role === 'viewer' ? 'read only' : 'public';
    pill.className = `pill ${role === 'admin' ? 'pill-wait' : ''}`;
    $('change-token').textContent = role === 'public' ? 'Sign in' : 'Change token';
  }

  private startPolling(): void {
    if (this.polling) return;
    this.polling = true;
    void this.poll();
  }

  private pollSoon(): void {
    if (!this.polling) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.poll(), 50);
  }

  private async poll(): Promise<void> {
    clearTimeout(this.timer);
    try {
      const snapshot = await this.api.status();
      this.lastOkAt = Date.now();
      renderSnapshot(snapshot);
      this.throughput.update(snapshot);
      this.rate.push(snapshot);
      this.watch();
    } catch (err) {
      if (err instanceof ApiError && err.auth) {
        // The token stopped working (rotated, disabled): ask again rather than look disconnected.
        this.polling = false;
        sessionStorage.removeItem(TOKEN_KEY);
        this.api.setToken(undefined);
        this.admin.close();
        this.askToken(`Signed out: ${err.message}`);
        return;
      }
    }
    if (this.polling) this.timer = setTimeout(() => void this.poll(), POLL_MS);
  }

  /** Connection state from the age of the last good poll; the overlay goes away on the next success. */
  private watch(): void {
    const since = this.lastOkAt ?? this.openedAt;
    const lost = this.polling && Date.now() - since > LOST_AFTER_MS;
    renderConnection(lost ? 'lost' : this.lastOkAt ? 'ok' : 'connecting', this.lastOkAt);
  }
}

const main = async (): Promise<void> => {
  const dashboard = new Dashboard(await loadApiUrl());
  await dashboard.start();
};

void main();
