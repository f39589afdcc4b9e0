// Test helpers: a whole local system on the shared emulators, and the end-of-run ticket audit.
import { ScanCommand } from '@aws-sdk/client-dynamodb';
import { unmarshall } from '@aws-sdk/util-dynamodb';
import { inject } from 'vitest';
import { isTerminal, type Ticket } from '../../lib/domain/tickets.js';
import { type LocalSystem, type LocalSystemOptions, startLocalSystem } from '../../local/runtime.js';
import { testDynamoClient, uniquePrefix } from './aws.js';

/** Starts the local system on a free port against the shared emulators (no schedule unless asked). */
export const startTestSystem = (name: string, opts: LocalSystemOptions = {}): Promise<LocalSystem> =>
  startLocalSystem({
    port: 0,
    emulators: inject('emulators'),
    prefix: uniquePrefix(name),
    scheduleMs: 0,
    ...opts,
    env: {
      POWERTOOLS_METRICS_DISABLED: 'true',
      POWERTOOLS_LOG_LEVEL: 'WARN',
      LOG_LEVEL: 'WARN',
      ...opts.env,
    },
  });

/**
 * Every ticket of a system (consistent scan of its table), once the requests already answered have recorded
 * their outcome (written right after the reply, before the invocation returns).
 */
export const allTickets = async (system: LocalSystem): Promise<Ticket[]> => {
  await system.settled();
  const client = testDynamoClient();
  const out: Ticket[] = [];
  let start: Record<string, import('@aws-sdk/client-dynamodb').AttributeValue> | undefined;
  try {
    do {
      const res = await client.send(
        new ScanCommand({
          TableName: system.env.SLUICE_TICKETS_TABLE,
          ConsistentRead: true,
          ExclusiveStartKey: start,
        }),
      );
      for (const item of res.Items ?? []) out.push(unmarshall(item) as Ticket);
      start = res.LastEvaluatedKey;
    } while (start);
  } finally {
    client.destroy();
  }
  return out;
};

/** Counts per status. */
export const countByStatus = (tickets: readonly Ticket[]): Record<string, number> => {
  const counts: Record<string, number> = {};
  for (const t of tickets) counts[t.status] = (counts[t.status] ?? 0) + 1;
  return counts;
};

/**
 * The audit after every end-to-end run: no ticket is non-terminal past its deadline, and (when given)
 * all tickets are terminal and their number equals the queued requests sent.
 */
export const auditTickets = async (system: LocalSystem, expectTotal?: number) => {
  const tickets = await allTickets(system);
  const now = Date.now();
  const stuck = tickets.filter((t) => !isTerminal(t.status) && t.deadline < now - 30_000);
  const open = tickets.filter((t) => !isTerminal(t.status));
  return { tickets, stuck, open, counts: countByStatus(tickets), total: tickets.length, expectTotal };
};

/** Polls `check` until it returns a value or the time is up (generous: loaded 2-core machines). */
export const eventually = async <T>(
  check: () => Promise<T | undefined> | T | undefined,
  timeoutMs = 30_000,
  everyMs = 100,
): Promise<T> => {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v !== undefined && v !== false) return v as T;
    if (Date.now() > until) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, everyMs));
  }
};
