// `npm start` as a user runs it, twice and three times over one data directory: keys, tokens and the demo key
// survive a restart; Ctrl-C after traffic stops in order, quickly and quietly; after `kill -9` of the whole system
// under load, a fresh start ends every old ticket in one terminal state without overspending the window.
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DynamoDBClient, ScanCommand } from '@aws-sdk/client-dynamodb';
import { unmarshall } from '@aws-sdk/util-dynamodb';
import { afterAll, describe, expect, it } from 'vitest';
import { DynamoTicketStore } from '../../lib/adapters/dynamo/ticket-store.js';
import { isTerminal, type Ticket } from '../../lib/domain/tickets.js';
import { acceptsConnection, findFreePort, localAwsConfig } from '../../local/emulators.js';
import { eventually } from '../support/system.js';

const ROOT = new URL('../..', import.meta.url).pathname;
const localDir = mkdtempSync(join(tmpdir(), 'sluice-start-'));
// A small window, so that grants on both sides of a crash could overspend it if the bucket were not kept.
const LIMIT = { requests: 4, windowMs: 10_000 };

interface Run {
  child: ChildProcess;
  url: string;
  stdout: () => string;
  stderr: () => string;
  /** Resolves with how `npm start` ended (npm itself ends by the signal a terminal sends the group). */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Where this run's DynamoDB Local listens (from .local/runtime.json). */
  dynamoEndpoint: string;
}

const runs: Run[] = [];

/**
 * `npm start` in its own process group (as a terminal runs it), waiting until it says it is ready. A port found free
 * can be taken by another process before npm start binds it (a parallel run on the same machine): npm start then
 * says so and exits, and the run starts again on another free port.
 */
const start = async (port: number): Promise<Run> => {
  for (let attempt = 0; ; attempt++) {
    try {
      return await startOn(attempt === 0 ? port : await findFreePort());
    } catch (err) {
      if (attempt >= 2 || !/is already in use/.test((err as Error).message)) throw err;
    }
  }
};

const startOn = async (port: number): Promise<Run> => {
  let out = '';
  let err = '';
  const child = spawn('npm', ['start'], {
    cwd: ROOT,
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: {
      ...process.env,
      PORT: String(port),
      SLUICE_LOCAL_DIR: localDir,
      SLUICE_ADMIN_TOKEN: '',
      SLUICE_VIEWER_TOKEN: '',
      // Short waits and a frequent schedule: the sweep after a crash comes within seconds, not minutes.
      // Long enough that fail-fast admission (wait estimate > max wait → 429 at once) still queues several.
      SLUICE_MAX_WAIT_S: '15',
      SLUICE_STREAM_MAX_WAIT_S: '15',
      // A call in flight at the crash is swept once its time budget (request timeout + margin) has passed.
      SLUICE_REQUEST_TIMEOUT_S: '10',
      SLUICE_LOCAL_SCHEDULE_S: '2',
      SLUICE_UPSTREAM_LIMIT: String(LIMIT.requests),
      SLUICE_UPSTREAM_WINDOW_S: String(LIMIT.windowMs / 1000),
    },
  });
  child.stdout?.setEncoding('utf8').on('data', (c: string) => {
    out += c;
  });
  child.stderr?.setEncoding('utf8').on('data', (c: string) => {
    err += c;
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  const run = {
    child,
    url: `http://127.0.0.1:${port}`,
    stdout: () => out,
    stderr: () => err,
    exited,
    dynamoEndpoint: '',
  };
  runs.push(run);
  await eventually(() => out.includes('sluice ready at') || child.exitCode !== null, 120_000, 200);
  if (!out.includes('sluice ready at')) throw new Error(`npm start failed:\n${out}\n${err}`);
  run.dynamoEndpoint = JSON.parse(readFileSync(join(localDir, 'runtime.json'), 'utf8')).dynamoEndpoint;
  return run;
};

const chat = (url: string, key: string, priority = 'high') =>
  fetch(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json', 'x-priority': priority },
    body: JSON.stringify({
      model: 'meta/llama-3.1-8b-instruct',
      messages: [{ role: 'user', content: 'hi' }],
    }),
  }).then(
    async (res) => ({ status: res.status, body: await res.text() }),
    () => ({ status: 0, body: 'connection lost' }),
  );

const listModels = (url: string, key: string) =>
  fetch(`${url}/v1/models`, { headers: { authorization: `Bearer ${key}` } });

const printed = (out: string, label: string): string | undefined =>
  new RegExp(`${label}:\\s+(\\S+)`).exec(out)?.[1];

const tickets = async (endpoint: string): Promise<Ticket[]> => {
  const client = new DynamoDBClient(localAwsConfig(endpoint));
  try {
    const items: Ticket[] = [];
    let start: Record<string, import('@aws-sdk/client-dynamodb').AttributeValue> | undefined;
    do {
      const res = await client.send(
        new ScanCommand({ TableName: 'sluice-tickets', ConsistentRead: true, ExclusiveStartKey: start }),
      );
      for (const item of res.Items ?? []) items.push(unmarshall(item) as Ticket);
      start = res.LastEvaluatedKey;
    } while (start);
    return items;
  } finally {
    client.destroy();
  }
};

const admissionCounts = async (endpoint: string) => {
  const client = new DynamoDBClient(localAwsConfig(endpoint));
  try {
    return await new DynamoTicketStore(client, {
      stateTable: 'sluice-state',
      ticketsTable: 'sluice-tickets',
    }).counts();
  } finally {
    client.destroy();
  }
};

/** The most grants (ticket grant times) inside any window of `windowMs`. */
const maxGrantsInWindow = (all: readonly Ticket[], windowMs: number): number => {
  const times = all.flatMap((t) => (t.grantedAt === undefined ? [] : [t.grantedAt])).sort((a, b) => a - b);
  let most = 0;
  let first = 0;
  for (let last = 0; last < times.length; last++) {
    while ((times[last] ?? 0) - (times[first] ?? 0) >= windowMs) first++;
    most = Math.max(most, last - first + 1);
  }
  return most;
};

afterAll(async () => {
  for (const run of runs) {
    if (run.child.exitCode === null && run.child.signalCode === null) {
      try {
        process.kill(-(run.child.pid ?? 0), 'SIGKILL');
      } catch {
        // Already gone.
      }
    }
  }
  rmSync(localDir, { recursive: true, force: true });
});

describe('npm start over one data directory', { timeout: 300_000 }, () => {
  let port = 0;
  let adminToken = '';
  let viewerToken = '';
  let fleetKey = '';

  it('first run: generates and prints the tokens and the demo key once; Ctrl-C after traffic stops in order within 3 s, without warnings', async () => {
    port = await findFreePort();
    const run = await start(port);
    port = Number(new URL(run.url).port);
    adminToken = printed(run.stdout(), 'admin token') ?? '';
    viewerToken = printed(run.stdout(), 'viewer token') ?? '';
    const demoKey = printed(run.stdout(), 'demo agent key') ?? '';
    expect(demoKey).toMatch(/^sk-sluice-/);
    expect(adminToken.length).toBeGreaterThan(20);
    expect(run.stdout()).toContain(`dashboard:               ${run.url}/#token=${viewerToken}`);

    const created = spawnSync('npm', ['run', '--silent', 'keys', '--', 'create', '--agent', 'fleet'], {
      cwd: ROOT,
      env: { ...process.env, SLUICE_LOCAL_DIR: localDir },
      encoding: 'utf8',
    });
    fleetKey = /sk-sluice-\S+/.exec(created.stdout)?.[0] ?? '';
    expect(fleetKey, created.stderr).not.toBe('');

    // Traffic, some of it still waiting for a token when Ctrl-C comes.
    const replies = Array.from({ length: 6 }, () => chat(run.url, demoKey));
    await replies[0];
    const signalledAt = performance.now();
    process.kill(-(run.child.pid ?? 0), 'SIGINT');
    await run.exited;
    const stopMs = performance.now() - signalledAt;
    await Promise.all(replies);

    expect(run.stderr()).not.toMatch(/store unavailable|hand-over failed|failed|WARN|ERROR/);
    const reported = Number(/stopped in ([\d.]+) s/.exec(run.stderr())?.[1]);
    expect(reported, run.stderr()).toBeLessThanOrEqual(3);
    // npm's own exit adds to it; still far from the 12-18 s of emulators dying first.
    expect(stopMs).toBeLessThan(8_000);
    // The emulators went last, and went.
    expect(await acceptsConnection('127.0.0.1', Number(new URL(run.dynamoEndpoint).port))).toBe(false);
  });

  it('restart: the same tokens and demo key, not printed again; a key created in the first run still works', async () => {
    const run = await start(port);
    const out = run.stdout();
    expect(out).not.toContain(adminToken);
    expect(out).not.toContain(viewerToken);
    expect(out).not.toMatch(/sk-sluice-/);
    expect(out).toContain('(unchanged: in');
    try {
      // The models list queues like any forwarded call, and the first run's traffic may still hold this window's
      // slots: a 429 names its wait, and the agent comes back after it, as a client would. A key the restart
      // forgot would get 401 on the first try.
      let models = await listModels(run.url, fleetKey);
      for (let attempt = 0; models.status === 429 && attempt < 3; attempt++) {
        const retryAfterS = Number(models.headers.get('retry-after') ?? '1');
        await new Promise((r) => setTimeout(r, Math.min(30, Math.max(1, retryAfterS)) * 1000));
        models = await listModels(run.url, fleetKey);
      }
      expect(models.status, await models.clone().text()).toBe(200);
      const status = await fetch(`${run.url}/status`, { headers: { authorization: `Bearer ${adminToken}` } });
      expect(status.status).toBe(200);
    } finally {
      process.kill(-(run.child.pid ?? 0), 'SIGINT');
      await run.exited;
    }
    expect(run.stderr()).toMatch(/stopped in [\d.]+ s/);
  });

  it('crash: after kill -9 of the whole system under load, a fresh start sweeps every old ticket to one terminal state, counters agree, and no window is overspent', async () => {
    const run = await start(port);
    // Far more than the bucket gives: tickets queued, granted and in flight when the system dies (those whose
    // wait could not fit in max_wait_s are refused at admission and leave no ticket).
    const load = Array.from({ length: 24 }, (_, i) =>
      chat(run.url, fleetKey, i % 2 === 0 ? 'high' : 'normal'),
    );
    // Killed while tickets are still queued (others granted, claimed or done by then).
    await eventually(
      async () => {
        const all = await tickets(run.dynamoEndpoint);
        return all.length >= 6 && all.some((t) => t.status === 'queued');
      },
      30_000,
      100,
    );
    process.kill(-(run.child.pid ?? 0), 'SIGKILL');
    await run.exited;
    await Promise.all(load);
    // DynamoDB Local (its own process group) halts when its parent is gone.
    await eventually(
      async () => !(await acceptsConnection('127.0.0.1', Number(new URL(run.dynamoEndpoint).port))),
      10_000,
      100,
    );

    const next = await start(port);
    const before = await tickets(next.dynamoEndpoint);
    expect(before.length).toBeGreaterThanOrEqual(6);
    expect(before.map((t) => t.status)).toContain('queued');
    let open: unknown[] = [];
    const after = await eventually(
      async () => {
        const all = await tickets(next.dynamoEndpoint);
        open = all.filter((t) => !isTerminal(t.status));
        return open.length === 0 ? all : undefined;
      },
      90_000,
      500,
    ).catch((err: Error) => {
      throw new Error(`${err.message}; still open: ${JSON.stringify(open)}`);
    });
    expect(after.map((t) => t.id).sort()).toEqual(before.map((t) => t.id).sort());
    const counts = await admissionCounts(next.dynamoEndpoint);
    expect(counts).toEqual({
      queued: after.filter((t) => t.status === 'queued').length,
      inflight: after.filter((t) => t.status === 'granted' || t.status === 'claimed').length,
    });
    expect(maxGrantsInWindow(after, LIMIT.windowMs)).toBeLessThanOrEqual(LIMIT.requests);
    // The restarted system serves again (a 429 only while the window's allowance is spent).
    await eventually(async () => (await chat(next.url, fleetKey)).status === 200, 60_000, 1_000);
    process.kill(-(next.child.pid ?? 0), 'SIGINT');
    await next.exited;
    expect(next.stderr()).toMatch(/stopped in [\d.]+ s/);
    expect(next.stderr()).not.toMatch(/store unavailable|hand-over failed/);
  });
});

describe('npm start on a busy port', () => {
  it('says which port is taken and how to choose another, without a stack', async () => {
    const blocker = createServer();
    const port = await findFreePort();
    await new Promise<void>((resolve) => blocker.listen(port, '127.0.0.1', resolve));
    try {
      const res = spawnSync('npm', ['start'], {
        cwd: ROOT,
        env: { ...process.env, PORT: String(port), SLUICE_LOCAL_DIR: localDir },
        encoding: 'utf8',
        timeout: 60_000,
      });
      expect(res.status).toBe(1);
      expect(res.stderr).toContain(`Port ${port} is already in use`);
      expect(res.stderr).toContain(`PORT=${port + 1} npm start`);
      expect(res.stderr).not.toMatch(/EADDRINUSE|\n\s+at /);
    } finally {
      blocker.close();
    }
  }, 90_000);
});
