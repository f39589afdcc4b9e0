// Adding a middleware once per client, and the order of high and normal ones: no network (a build-step stub answers).
import { DynamoDBClient, ListTablesCommand } from '@aws-sdk/client-dynamodb';
import { describe, expect, it } from 'vitest';
import { translateStoreErrors } from '../../lib/adapters/aws-errors.js';
import { retryTransactionConflicts } from '../../lib/adapters/dynamo/transaction-conflicts.js';
import { addInitializeMiddlewareOnce } from '../../lib/adapters/sdk-middleware.js';
import { StoreUnavailableError } from '../../lib/domain/errors.js';

/** A client whose calls never leave: the build step answers (or throws what `fail` gives). */
const offlineClient = (fail?: () => Error) => {
  const client = new DynamoDBClient({
    region: 'us-east-1',
    endpoint: 'http://127.0.0.1:9',
    credentials: { accessKeyId: 'x', secretAccessKey: 'x' },
  });
  client.middlewareStack.add(
    () => async () => {
      if (fail) throw fail();
      return { output: { $metadata: {}, TableNames: [] }, response: {} };
    },
    { step: 'build' },
  );
  return client;
};

describe('addInitializeMiddlewareOnce', () => {
  it('adds a middleware once per client and name, however often it is asked to', async () => {
    // Prepare
    const client = offlineClient();
    const seen: string[] = [];
    const tracing = (label: string) => () =>
      addInitializeMiddlewareOnce<object>(client, label, 'normal', (next) => async (args) => {
        seen.push(label);
        return next(args);
      });

    // Act
    tracing('a')();
    tracing('a')();
    tracing('b')();
    await client.send(new ListTablesCommand({}));

    // Assess
    expect(seen.sort()).toEqual(['a', 'b']);
  });

  it('runs a high one outside a normal one: it sees what the inner one throws', async () => {
    // Prepare
    const client = offlineClient();
    const order: string[] = [];
    addInitializeMiddlewareOnce<object>(client, 'inner', 'normal', (next) => async (args) => {
      order.push('inner');
      await next(args);
      throw new Error('from inner');
    });
    addInitializeMiddlewareOnce<object>(client, 'outer', 'high', (next) => async (args) => {
      order.push('outer');
      try {
        return await next(args);
      } catch (err) {
        throw new Error(`outer saw: ${(err as Error).message}`);
      }
    });

    // Act
    const sent = client.send(new ListTablesCommand({}));

    // Assess
    await expect(sent).rejects.toThrow('outer saw: from inner');
    expect(order).toEqual(['outer', 'inner']);
  });

  it("the stores' two: an unavailable service becomes StoreUnavailableError, installed twice or not", async () => {
    // Prepare
    const client = offlineClient(() =>
      Object.assign(new Error('busy'), { name: 'ThrottlingException', $metadata: { httpStatusCode: 400 } }),
    );
    for (let i = 0; i < 2; i++) {
      translateStoreErrors(client, 'DynamoDB');
      retryTransactionConflicts(client);
    }

    // Act
    const sent = client.send(new ListTablesCommand({}));

    // Assess
    await expect(sent).rejects.toBeInstanceOf(StoreUnavailableError);
    await expect(sent).rejects.toThrow('DynamoDB ListTablesCommand unavailable: ThrottlingException');
  });
});
