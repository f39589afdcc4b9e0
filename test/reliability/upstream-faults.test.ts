// Upstream faults through the whole local system (the simulated upstream's `setFault`): slow first byte, a cut
// mid-stream, a connection reset, 5xx, 429 storms, worker-capacity errors, a hang past the request timeout and an
// error embedded in a 200. The agent gets a clear OpenAI error (an SSE error event once a stream started), the
// outcome is counted, and the ticket ends `failed` with its reason — or `completed` where the call itself worked.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CONFIG_CACHE_MS } from '../../lib/domain/config-service.js';
import type { CounterName } from '../../lib/domain/outcomes.js';
import type { Ticket } from '../../lib/domain/tickets.js';
import { capacityBody, RATE_LIMIT_BODY, type UpstreamFault } from '../../local/fake-upstream.js';
import type { LocalSystem } from '../../local/runtime.js';
import { allTickets, startTestSystem } from '../support/system.js';
import { type AgentReply, call, chatBody, expectInvariants, report, sleep } from './support.js';

let system: LocalSystem;
let key: string;

beforeAll(async () => {
  process.env.LOG_LEVEL ??= 'ERROR';
  system = await startTestSystem('rel-upstream', {
    fakeUpstream: { tokenDelayMs: 20, firstByteDelayMs: 5, limit: null, maxConcurrency: null },
    env: {
      SLUICE_UPSTREAM_LIMIT: '600',
      SLUICE_BUCKET_BURST: '5',
      SLUICE_FIRST_BYTE_TIMEOUT_S: '1',
      SLUICE_REQUEST_TIMEOUT_S: '2',
      SLUICE_MAX_REQUEUES: '2',
      // Retreat would slow the bucket after the storms; these tests are about each answer.
      SLUICE_RETREAT_MIN_SAMPLE: '100000',
    },
  });
  key = await system.createKey('upstream-faults', 'urgent');
});

afterAll(async () => {
  try {
    await expectInvariants(system, expect);
  } finally {
    await system?.stop();
  }
});

const counters = async (): Promise<Record<CounterName, number>> => {
  await system.settled();
  const slots = await system.stores.outcomes.read(Date.now() - 120_000, Date.now() + 10_000);
  const out = {} as Record<CounterName, number>;
  for (const s of slots)
    for (const [k, v] of Object.entries(s.counts)) out[k as CounterName] = (out[k as CounterName] ?? 0) + v;
  return out;
};

/** Runs one request under `fault`; returns the reply, the ticket it left and the counter deltas. */
const underFault = async (fault: UpstreamFault, stream: boolean, times = 1) => {
  const before = new Set((await allTickets(system)).map((t) => t.id));
  const countsBefore = await counters();
  const callsBefore = system.upstream!.calls.length;
  system.upstream!.setFault(fault, times);
  let reply: AgentReply;
  try {
    reply = await call(system, key, { body: chatBody({ stream }) });
  } finally {
    system.upstream!.setFault({ kind: 'none' });
  }
  const ticket = await eventuallyEnded(before);
  const countsAfter = await counters();
  const delta: Partial<Record<CounterName, number>> = {};
  for (const [k, v] of Object.entries(countsAfter)) {
    const d = v - (countsBefore[k as CounterName] ?? 0);
    if (d) delta[k as CounterName] = d;
  }
  return { reply, ticket, delta, upstreamCalls: system.upstream!.calls.length - callsBefore };
};

const eventuallyEnded = async (before: Set<string>): Promise<Ticket> => {
  for (let i = 0; i < 100; i++) {
    const mine = (await allTickets(system)).filter((t) => !before.has(t.id));
    const t = mine[0];
    if (t && !['queued', 'granted', 'claimed'].includes(t.status)) return t;
    await sleep(100);
  }
  throw new Error('ticket did not end');
};

interface Row {
  name: string;
  fault: UpstreamFault;
  stream: boolean;
  times?: number;
  /** What the agent sees: status, and the error code (in JSON or in an SSE error event). */
  status: number;
  code?: string;
  /** The ticket's end. */
  ticket: [Ticket['status'], string | undefined];
  counter: CounterName;
}

const ROWS: Row[] = [
  {
    name: 'slow first byte (past first_byte_timeout_s)',
    fault: { kind: 'slow_first_byte', delayMs: 3_000 },
    stream: false,
    status: 504,
    code: 'upstream_first_byte_timeout',
    ticket: ['failed', 'upstream_first_byte_timeout'],
    counter: 'upstreamError',
  },
  {
    name: 'slow first byte, streaming',
    fault: { kind: 'slow_first_byte', delayMs: 3_000 },
    stream: true,
    status: 504,
    code: 'upstream_first_byte_timeout',
    ticket: ['failed', 'upstream_first_byte_timeout'],
    counter: 'upstreamError',
  },
  {
    name: 'cut mid-stream',
    fault: { kind: 'cut_mid_stream', afterChunks: 3 },
    stream: true,
    status: 200,
    code: 'upstream_cut',
    ticket: ['failed', 'upstream_cut'],
    counter: 'upstreamError',
  },
  {
    name: 'cut mid-body (non-streaming)',
    fault: { kind: 'cut_mid_stream', afterChunks: 3 },
    stream: false,
    status: 502,
    code: 'upstream_cut',
    ticket: ['failed', 'upstream_cut'],
    counter: 'upstreamError',
  },
  {
    name: 'connection reset',
    fault: { kind: 'reset' },
    stream: false,
    status: 502,
    code: 'upstream_connection',
    ticket: ['failed', 'upstream_connection'],
    counter: 'upstreamError',
  },
  {
    name: 'connection reset, streaming',
    fault: { kind: 'reset' },
    stream: true,
    status: 502,
    code: 'upstream_connection',
    ticket: ['failed', 'upstream_connection'],
    counter: 'upstreamError',
  },
  {
    name: '500',
    fault: { kind: 'status', status: 500 },
    stream: false,
    status: 502,
    code: 'upstream_error',
    ticket: ['failed', 'upstream_5xx'],
    counter: 'upstreamError',
  },
  {
    name: '503, streaming',
    fault: { kind: 'status', status: 503 },
    stream: true,
    status: 502,
    code: 'upstream_error',
    ticket: ['failed', 'upstream_5xx'],
    counter: 'upstreamError',
  },
  {
    name: '429 storm (every try refused: 1 + 2 requeues)',
    fault: { kind: 'status', status: 429, body: RATE_LIMIT_BODY },
    stream: false,
    times: 10,
    status: 429,
    code: 'upstream_rate_limited',
    ticket: ['failed', 'upstream_throttled'],
    counter: 'throttled',
  },
  {
    name: 'worker-capacity errors',
    fault: { kind: 'status', status: 429, body: capacityBody(33, 32) },
    stream: true,
    times: 10,
    status: 429,
    code: 'upstream_capacity',
    ticket: ['failed', 'upstream_capacity'],
    counter: 'capacity',
  },
  {
    name: 'error embedded in a 200 stream',
    fault: { kind: 'embedded_error' },
    stream: true,
    status: 200,
    ticket: ['failed', 'embedded_error'],
    counter: 'upstreamError',
  },
  {
    name: 'error embedded in a 200 JSON answer',
    fault: { kind: 'embedded_error' },
    stream: false,
    status: 502,
    code: 'upstream_error',
    ticket: ['failed', 'embedded_error'],
    counter: 'upstreamError',
  },
  {
    name: "upstream 400 (the agent's own mistake): passed through",
    fault: {
      kind: 'status',
      status: 400,
      body: '{"error":{"message":"bad","type":"invalid_request_error"}}',
    },
    stream: false,
    status: 400,
    ticket: ['completed', 'upstream_client_error'],
    counter: 'ok',
  },
];

describe('upstream faults', () => {
  it.each(ROWS)('$name', async (row) => {
    const { reply, ticket, delta, upstreamCalls } = await underFault(row.fault, row.stream, row.times);
    expect(reply.status, reply.text.slice(0, 300)).toBe(row.status);
    if (row.code) expect(reply.error?.code).toBe(row.code);
    if (row.status >= 400 && row.status !== 400) {
      expect(reply.error).toMatchObject({ message: expect.any(String), type: expect.any(String) });
    }
    if (row.status === 429) expect(Number(reply.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    expect([ticket.status, ticket.reason]).toEqual(row.ticket);
    expect(delta[row.counter] ?? 0).toBeGreaterThanOrEqual(1);
    report(`upstream: ${row.name}`, {
      status: reply.status,
      code: reply.error?.code,
      ticket: `${ticket.status} (${ticket.reason})`,
      upstreamCalls,
      counters: delta,
    });
  });

  it('a hang past the request timeout: 504 upstream_timeout, the ticket failed', async () => {
    // The first-byte timeout would fire first; raise it above the request timeout for this case.
    await system.stores.config.update({ first_byte_timeout_s: 10 }, 'test');
    await sleep(2_100);
    try {
      const started = Date.now();
      const { reply, ticket } = await underFault({ kind: 'hang' }, false);
      expect(reply.status).toBe(504);
      expect(reply.error?.code).toBe('upstream_timeout');
      expect(Date.now() - started).toBeLessThan(8_000);
      expect([ticket.status, ticket.reason]).toEqual(['failed', 'upstream_timeout']);
      report('upstream: hang past the request timeout', { status: reply.status, code: reply.error?.code });
    } finally {
      await system.stores.config.update({ first_byte_timeout_s: 1 }, 'test');
    }
  });

  it('a stream that already sent heartbeats gets the upstream failure as an SSE error event', async () => {
    // Hold grants (operator pause) long enough for heartbeats to commit the stream's 200.
    await system.stores.config.update({ heartbeat_s: 0.3, paused: true }, 'test');
    // Every function sees a config change within its cache time.
    await sleep(CONFIG_CACHE_MS + 300);
    try {
      const before = new Set((await allTickets(system)).map((t) => t.id));
      system.upstream!.setFault({ kind: 'status', status: 500 }, 1);
      const pending = call(system, key, { body: chatBody({ stream: true }) });
      await sleep(3_000);
      await system.stores.config.update({ paused: false }, 'test');
      const reply = await pending;
      expect(reply.status).toBe(200);
      expect(reply.headers.get('content-type')).toContain('text/event-stream');
      expect(reply.text).toMatch(/^: queued position=/m);
      expect(reply.error).toMatchObject({ code: 'upstream_error', type: 'api_error' });
      const ticket = await eventuallyEnded(before);
      expect([ticket.status, ticket.reason]).toEqual(['failed', 'upstream_5xx']);
    } finally {
      system.upstream!.setFault({ kind: 'none' });
      await system.stores.config.update({ heartbeat_s: 15, paused: false }, 'test');
    }
  });

  it('a 429 storm never makes the gateway exceed the window: requeues take tokens too', async () => {
    // Every requeue is a new grant: the upstream sees at most the bucket's allowance in any window. (Eight 429s:
    // the probe preset holds the bucket longer along a refusal streak, so a longer storm only takes longer.)
    system.upstream!.setFault({ kind: 'status', status: 429, body: RATE_LIMIT_BODY }, 8);
    try {
      const replies = await Promise.all(Array.from({ length: 10 }, () => call(system, key)));
      expect(replies.every((r) => r.status === 429 || r.status === 200)).toBe(true);
    } finally {
      system.upstream!.setFault({ kind: 'none' });
    }
    expect(system.upstream!.maxInWindow(60_000)).toBeLessThanOrEqual(600);
  }, 90_000);
});
