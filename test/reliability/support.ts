// Test support for the reliability suite: a local system behind fault proxies, agent calls, and the invariants
// every scenario ends with (all tickets terminal, counters consistent, the upstream window never overspent).
import { appendFileSync } from 'node:fs';
import { inject } from 'vitest';
import { type FaultProxy, startFaultProxy } from '../../bench/support/fault-proxy.js';
import { isTerminal } from '../../lib/domain/tickets.js';
import type { LocalSystem, LocalSystemOptions } from '../../local/runtime.js';
import { allTickets, countByStatus, eventually, startTestSystem } from '../support/system.js';

export const MODEL = 'meta/llama-3.1-8b-instruct';

export const chatBody = (extra: Record<string, unknown> = {}) =>
  JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'x' }], ...extra });

/** A local system whose DynamoDB and SQS traffic goes through fault proxies. */
export interface FaultySystem {
  system: LocalSystem;
  dynamo: FaultProxy;
  sqs: FaultProxy;
  stop(): Promise<void>;
}

export const startFaultySystem = async (
  name: string,
  opts: LocalSystemOptions = {},
): Promise<FaultySystem> => {
  const real = inject('emulators');
  const dynamo = await startFaultProxy(real.dynamoEndpoint);
  const sqs = await startFaultProxy(real.sqsEndpoint);
  const system = await startTestSystem(name, {
    ...opts,
    emulators: { dynamoEndpoint: dynamo.endpoint, sqsEndpoint: sqs.endpoint },
  });
  return {
    system,
    dynamo,
    sqs,
    stop: async () => {
      dynamo.clear();
      sqs.clear();
      await system.stop();
      await dynamo.stop();
      await sqs.stop();
    },
  };
};

/**
 * The system the DynamoDB fault tests share: a fast bucket, short waits and timeouts (a hung call fails after
 * 1 s per attempt), quick sweeps, and the safety-net schedule every 2 s (every minute in AWS).
 */
export const startStoreFaultSystem = (name: string): Promise<FaultySystem> =>
  startFaultySystem(name, {
    fakeUpstream: { tokenDelayMs: 5, firstByteDelayMs: 5, limit: null },
    env: {
      SLUICE_UPSTREAM_LIMIT: '600',
      SLUICE_BUCKET_BURST: '5',
      SLUICE_MAX_WAIT_S: '4',
      SLUICE_STREAM_MAX_WAIT_S: '4',
      SLUICE_REQUEST_TIMEOUT_S: '2',
      SLUICE_AWS_REQUEST_TIMEOUT_MS: '1000',
    },
    dispatcherTimings: { sweepEveryMs: 500, claimWindowMs: 4_000, leaseMs: 3_000, pollWaitSeconds: 1 },
    scheduleMs: 2_000,
  });

export interface AgentReply {
  status: number;
  headers: Headers;
  text: string;
  /** The OpenAI error object when the reply is one (JSON body or an SSE error event). */
  error?: { message: string; type: string; code: string; param: unknown };
}

/** One agent request; the whole body is read (SSE included). Never throws on HTTP errors. */
export const call = async (
  system: LocalSystem,
  key: string | undefined,
  init: {
    path?: string;
    method?: string;
    body?: string;
    headers?: Record<string, string>;
    signal?: AbortSignal;
  } = {},
): Promise<AgentReply> => {
  const res = await fetch(`${system.url}${init.path ?? '/v1/chat/completions'}`, {
    method: init.method ?? 'POST',
    headers: {
      ...(key ? { authorization: `Bearer ${key}` } : {}),
      'content-type': 'application/json',
      ...init.headers,
    },
    ...(init.body !== undefined
      ? { body: init.body }
      : init.method === undefined
        ? { body: chatBody() }
        : {}),
    ...(init.signal ? { signal: init.signal } : {}),
  });
  const text = await res.text();
  return { status: res.status, headers: res.headers, text, ...parseError(text) };
};

/** The OpenAI error in a JSON body, or in the last `data:` event of an SSE body. */
export const parseError = (text: string): { error?: AgentReply['error'] } => {
  const candidates = [
    text,
    ...text
      .split('\n')
      .filter((l) => l.startsWith('data: '))
      .map((l) => l.slice(6)),
  ];
  for (const c of candidates.reverse()) {
    try {
      const v = JSON.parse(c) as { error?: AgentReply['error'] };
      if (v && typeof v === 'object' && v.error && typeof v.error === 'object') return { error: v.error };
    } catch {
      // not JSON
    }
  }
  return {};
};

/** Waits until every ticket is terminal; returns the counts per status. */
export const settle = async (system: LocalSystem, timeoutMs = 30_000): Promise<Record<string, number>> => {
  const tickets = await eventually(
    async () => {
      const all = await allTickets(system);
      return all.every((t) => isTerminal(t.status)) ? all : undefined;
    },
    timeoutMs,
    250,
  );
  return countByStatus(tickets);
};

/**
 * The end-of-scenario invariants: every ticket terminal, both counters equal to the tickets they count, and no
 * window of the upstream saw more calls than its limit.
 */
export const expectInvariants = async (
  system: LocalSystem,
  expect: typeof import('vitest').expect,
  limit?: { requests: number; windowMs: number },
) => {
  const counts = await settle(system);
  const tickets = await allTickets(system);
  const stored = await system.stores.tickets.counts();
  expect(stored.queued).toBe(tickets.filter((t) => t.status === 'queued').length);
  expect(stored.inflight).toBe(
    tickets.filter((t) => t.status === 'granted' || t.status === 'claimed').length,
  );
  if (limit && system.upstream)
    expect(system.upstream.maxInWindow(limit.windowMs)).toBeLessThanOrEqual(limit.requests);
  return { counts, tickets };
};

/**
 * Measured figures for docs/reliability.md: appended as one JSON line per call to the file named by
 * SLUICE_REL_REPORT (unset in CI: nothing is written).
 */
export const report = (scenario: string, figures: Record<string, unknown>): void => {
  const file = process.env.SLUICE_REL_REPORT;
  if (file) appendFileSync(file, `${JSON.stringify({ scenario, ...figures })}\n`);
};

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
