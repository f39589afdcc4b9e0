// A transaction that conflicts with another on a hot item (which DynamoDB Local never does: injected here) is
// sent again under a new token, up to CONFLICT_RETRIES times; a condition failure never is.
import { randomUUID } from 'node:crypto';
import { TransactionCanceledException } from '@aws-sdk/client-dynamodb';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DynamoTicketStore } from '../../lib/adapters/dynamo/ticket-store.js';
import {
  CONFLICT_BACKOFF_MS,
  CONFLICT_RETRIES,
  cancelledByConflictsOnly,
  conflictBackoffMs,
} from '../../lib/adapters/dynamo/transaction-conflicts.js';
import { StoreUnavailableError } from '../../lib/domain/errors.js';
import type { Ticket } from '../../lib/domain/tickets.js';
import { type TestResources, testDynamoClient, testResources } from '../support/aws.js';
import { claimedTicket } from '../support/relay.js';

const cancelled = (...codes: string[]) =>
  new TransactionCanceledException({
    message: 'Transaction cancelled',
    $metadata: {},
    CancellationReasons: codes.map((Code) => ({ Code })),
  });

describe('cancelledByConflictsOnly', () => {
  it.each([
    ['one conflict among untouched items', cancelled('None', 'TransactionConflict', 'None'), true],
    ['conflicts only', cancelled('TransactionConflict', 'TransactionConflict'), true],
    [
      'a failed condition beside a conflict',
      cancelled('ConditionalCheckFailed', 'TransactionConflict'),
      false,
    ],
    ['a failed condition', cancelled('None', 'ConditionalCheckFailed'), false],
    ['throttled (the SDK and the caller back off longer)', cancelled('ThrottlingError'), false],
    ['no reasons', cancelled(), false],
    ['another error', new Error('TransactionConflict'), false],
  ])('%s → %s', (_name, err, expected) => {
    expect(cancelledByConflictsOnly(err)).toBe(expected);
  });
});

describe('conflictBackoffMs', () => {
  it.each([
    [0, 0, 0],
    [0, 0.999, CONFLICT_BACKOFF_MS * 0.999],
    [1, 0.5, CONFLICT_BACKOFF_MS],
    [1, 0.999, 2 * CONFLICT_BACKOFF_MS * 0.999],
  ])('retry %i with random %f → %f ms', (retry, random, expected) => {
    expect(conflictBackoffMs(retry, () => random)).toBeCloseTo(expected, 6);
  });
});

describe('DynamoTicketStore.create under transaction conflicts', () => {
  let res: TestResources;
  beforeAll(async () => {
    res = await testResources('tx-conflicts');
  });
  afterAll(() => res?.close());

  /** A ticket store whose first `conflicts` transactions are cancelled by a conflict before they reach the emulator. */
  const storeWithConflicts = (conflicts: number) => {
    const client = testDynamoClient(res.endpoints);
    const tokens: (string | undefined)[] = [];
    client.middlewareStack.add(
      (next, context) => async (args) => {
        if (context.commandName === 'TransactWriteItemsCommand') {
          tokens.push((args.input as { ClientRequestToken?: string }).ClientRequestToken);
          if (tokens.length <= conflicts)
            throw cancelled('TransactionConflict', 'None', 'None', 'None', 'None');
        }
        return next(args);
      },
      { step: 'build' },
    );
    const tickets = new DynamoTicketStore(client, {
      ticketsTable: res.names.ticketsTable,
      stateTable: res.names.stateTable,
    });
    return { client, tickets, tokens };
  };
  const queued = (): Ticket =>
    claimedTicket({
      id: `tk-${randomUUID()}`,
      status: 'queued',
      enqueuedAt: Date.now(),
      deadline: Date.now() + 240_000,
    });

  it(`writes the ticket once after ${CONFLICT_RETRIES} conflicts, each try under its own token`, async () => {
    // Prepare
    const { client, tickets, tokens } = storeWithConflicts(CONFLICT_RETRIES);
    const before = await tickets.admissionCount();
    const ticket = queued();

    try {
      // Act
      await tickets.create(ticket, { queueMaxSize: 1_000_000 });

      // Assess
      expect(tokens).toHaveLength(CONFLICT_RETRIES + 1);
      expect(new Set(tokens).size).toBe(CONFLICT_RETRIES + 1);
      expect(await tickets.get(ticket.id)).toMatchObject({ id: ticket.id, status: 'queued' });
      expect(await tickets.admissionCount()).toBe(before + 1);
    } finally {
      client.destroy();
    }
  });

  it('gives up after the last retry as the store being unavailable, and nothing is written', async () => {
    // Prepare
    const { client, tickets, tokens } = storeWithConflicts(CONFLICT_RETRIES + 1);
    const before = await tickets.admissionCount();
    const ticket = queued();

    try {
      // Act
      const created = tickets.create(ticket, { queueMaxSize: 1_000_000 });

      // Assess
      await expect(created).rejects.toBeInstanceOf(StoreUnavailableError);
      expect(tokens).toHaveLength(CONFLICT_RETRIES + 1);
      expect(await tickets.get(ticket.id)).toBeUndefined();
      expect(await tickets.admissionCount()).toBe(before);
    } finally {
      client.destroy();
    }
  });
});
