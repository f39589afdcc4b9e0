// Tests for local/emulators.ts: the emulators support what sluice relies on, and provisioning matches definitions.
import {
  ConditionalCheckFailedException,
  DescribeTableCommand,
  DescribeTimeToLiveCommand,
  PutItemCommand,
  QueryCommand,
  TransactionCanceledException,
  TransactWriteItemsCommand,
  UpdateItemCommand,
} from '@aws-sdk/client-dynamodb';
import {
  ChangeMessageVisibilityCommand,
  DeleteMessageCommand,
  GetQueueAttributesCommand,
  type Message,
  ReceiveMessageCommand,
  SendMessageCommand,
} from '@aws-sdk/client-sqs';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { PRIORITIES } from '../../lib/domain/priority.js';
import { PRIORITY_QUEUES, TABLES } from '../../lib/infra/definitions.js';
import {
  acceptsConnection,
  createQueues,
  createTables,
  nonLoopbackAddresses,
} from '../../local/emulators.js';
import { type TestResources, testResources } from '../support/aws.js';

let res: TestResources;

beforeAll(async () => {
  res = await testResources('emulators');
});

afterAll(() => {
  res?.close();
});

/** Runs `fn` and returns the error it rejects with, failing the test if it resolves. */
const rejectionOf = async (fn: () => Promise<unknown>): Promise<unknown> => {
  try {
    await fn();
  } catch (err) {
    return err;
  }
  throw new Error('expected a rejection');
};

const queueDef = (priority: (typeof PRIORITIES)[number]) => {
  const def = PRIORITY_QUEUES.find((q) => q.priority === priority);
  if (!def) throw new Error(`no queue for ${priority}`);
  return def;
};

const receiveOne = async (queueUrl: string, waitTimeSeconds = 0): Promise<Message | undefined> => {
  const out = await res.sqs.send(
    new ReceiveMessageCommand({
      QueueUrl: queueUrl,
      MaxNumberOfMessages: 1,
      WaitTimeSeconds: waitTimeSeconds,
      MessageSystemAttributeNames: ['ApproximateReceiveCount'],
    }),
  );
  return out.Messages?.[0];
};

describe('DynamoDB Local', () => {
  it('creates every table with its keys, GSIs (projection ALL) and TTL where defined', async () => {
    const physical = {
      state: res.names.stateTable,
      tickets: res.names.ticketsTable,
      keys: res.names.keysTable,
      cache: res.names.cacheTable,
    };
    for (const def of TABLES) {
      expect(physical[def.id]).toBe(`${res.prefix}-${def.id}`);
      const { Table } = await res.dynamo.send(new DescribeTableCommand({ TableName: physical[def.id] }));
      expect(Table?.TableStatus).toBe('ACTIVE');
      expect(Table?.KeySchema).toEqual([
        { AttributeName: def.partitionKey.name, KeyType: 'HASH' },
        ...(def.sortKey ? [{ AttributeName: def.sortKey.name, KeyType: 'RANGE' }] : []),
      ]);
      expect(Table?.GlobalSecondaryIndexes ?? []).toHaveLength(def.indexes.length);
      for (const index of def.indexes) {
        const gsi = Table?.GlobalSecondaryIndexes?.find((g) => g.IndexName === index.name);
        expect(gsi?.KeySchema).toEqual([
          { AttributeName: index.partitionKey.name, KeyType: 'HASH' },
          ...(index.sortKey ? [{ AttributeName: index.sortKey.name, KeyType: 'RANGE' }] : []),
        ]);
        expect(gsi?.Projection?.ProjectionType).toBe('ALL');
      }
      const ttl = await res.dynamo.send(new DescribeTimeToLiveCommand({ TableName: physical[def.id] }));
      // TTL is on exactly where the definition names an attribute (the keys table keeps its items).
      expect(ttl.TimeToLiveDescription).toEqual(
        def.ttlAttribute
          ? { TimeToLiveStatus: 'ENABLED', AttributeName: def.ttlAttribute }
          : { TimeToLiveStatus: 'DISABLED' },
      );
    }
  });

  it('provisioning is idempotent', async () => {
    await expect(createTables(res.dynamo, res.prefix)).resolves.toEqual({
      stateTable: res.names.stateTable,
      ticketsTable: res.names.ticketsTable,
      keysTable: res.names.keysTable,
      cacheTable: res.names.cacheTable,
    });
    await expect(createQueues(res.sqs, res.prefix)).resolves.toEqual({
      queueUrls: res.names.queueUrls,
      dlqUrls: res.dlqUrls,
    });
  });

  it('queries the sparse byPhase index', async () => {
    const put = (id: string, extra: Record<string, { S: string } | { N: string }>) =>
      res.dynamo.send(
        new PutItemCommand({ TableName: res.names.ticketsTable, Item: { id: { S: id }, ...extra } }),
      );
    await put('t1', { phase: { S: 'queued' }, phaseAt: { N: '200' } });
    await put('t2', { phase: { S: 'queued' }, phaseAt: { N: '100' } });
    await put('t3', {}); // terminal: no phase, not in the index
    const out = await res.dynamo.send(
      new QueryCommand({
        TableName: res.names.ticketsTable,
        IndexName: 'byPhase',
        KeyConditionExpression: 'phase = :p',
        ExpressionAttributeValues: { ':p': { S: 'queued' } },
      }),
    );
    expect(out.Items?.map((i) => i.id?.S)).toEqual(['t2', 't1']);
  });

  it('returns the old item on a failed conditional update (ReturnValuesOnConditionCheckFailure ALL_OLD)', async () => {
    const key = { pk: { S: 'bucket#a' }, sk: { S: 'bucket' } };
    await res.dynamo.send(
      new PutItemCommand({ TableName: res.names.stateTable, Item: { ...key, version: { N: '1' } } }),
    );
    const err = await rejectionOf(() =>
      res.dynamo.send(
        new UpdateItemCommand({
          TableName: res.names.stateTable,
          Key: key,
          UpdateExpression: 'SET version = :next',
          ConditionExpression: 'version = :expected',
          ExpressionAttributeValues: { ':expected': { N: '7' }, ':next': { N: '8' } },
          ReturnValuesOnConditionCheckFailure: 'ALL_OLD',
        }),
      ),
    );
    expect(err).toBeInstanceOf(ConditionalCheckFailedException);
    expect((err as ConditionalCheckFailedException).Item).toEqual({ ...key, version: { N: '1' } });
  });

  it('cancels a transaction whose condition fails and reports the item in CancellationReasons', async () => {
    const key = { pk: { S: 'counter#a' }, sk: { S: 'counter' } };
    await res.dynamo.send(
      new PutItemCommand({ TableName: res.names.stateTable, Item: { ...key, n: { N: '3' } } }),
    );
    const err = await rejectionOf(() =>
      res.dynamo.send(
        new TransactWriteItemsCommand({
          TransactItems: [
            { Put: { TableName: res.names.ticketsTable, Item: { id: { S: 'tx-ticket' } } } },
            {
              Update: {
                TableName: res.names.stateTable,
                Key: key,
                UpdateExpression: 'SET n = n + :one',
                ConditionExpression: 'n < :max',
                ExpressionAttributeValues: { ':one': { N: '1' }, ':max': { N: '3' } },
                ReturnValuesOnConditionCheckFailure: 'ALL_OLD',
              },
            },
          ],
        }),
      ),
    );
    expect(err).toBeInstanceOf(TransactionCanceledException);
    const reasons = (err as TransactionCanceledException).CancellationReasons;
    expect(reasons?.map((r) => r.Code)).toEqual(['None', 'ConditionalCheckFailed']);
    expect(reasons?.[1]?.Item).toEqual({ ...key, n: { N: '3' } });
    // Nothing of the cancelled transaction was written.
    const ticket = await res.dynamo.send(
      new QueryCommand({
        TableName: res.names.ticketsTable,
        KeyConditionExpression: 'id = :id',
        ExpressionAttributeValues: { ':id': { S: 'tx-ticket' } },
      }),
    );
    expect(ticket.Count).toBe(0);
  });
});

describe('fauxqs', () => {
  it('configures every queue with its visibility timeout and redrive policy', async () => {
    for (const priority of PRIORITIES) {
      const def = queueDef(priority);
      expect(res.names.queueUrls[priority]).toMatch(new RegExp(`/${res.prefix}-${def.id}$`));
      expect(res.dlqUrls[priority]).toMatch(new RegExp(`/${res.prefix}-${def.dlqId}$`));
      const dlq = await res.sqs.send(
        new GetQueueAttributesCommand({ QueueUrl: res.dlqUrls[priority], AttributeNames: ['QueueArn'] }),
      );
      const queue = await res.sqs.send(
        new GetQueueAttributesCommand({ QueueUrl: res.names.queueUrls[priority], AttributeNames: ['All'] }),
      );
      expect(queue.Attributes?.VisibilityTimeout).toBe(String(def.visibilityTimeoutSeconds));
      expect(JSON.parse(queue.Attributes?.RedrivePolicy ?? '{}')).toEqual({
        deadLetterTargetArn: dlq.Attributes?.QueueArn,
        maxReceiveCount: def.maxReceiveCount,
      });
    }
  });

  it.each(PRIORITIES)('sends, receives and deletes on the %s queue', async (priority) => {
    const queueUrl = res.names.queueUrls[priority];
    await res.sqs.send(new SendMessageCommand({ QueueUrl: queueUrl, MessageBody: `hello ${priority}` }));
    const message = await receiveOne(queueUrl);
    expect(message?.Body).toBe(`hello ${priority}`);
    await res.sqs.send(
      new DeleteMessageCommand({ QueueUrl: queueUrl, ReceiptHandle: message?.ReceiptHandle }),
    );
    expect(await receiveOne(queueUrl)).toBeUndefined();
  });

  it('moves a message received more than maxReceiveCount times to its DLQ', async () => {
    const def = queueDef('normal');
    const queueUrl = res.names.queueUrls.normal;
    await res.sqs.send(new SendMessageCommand({ QueueUrl: queueUrl, MessageBody: 'poison' }));
    for (let attempt = 1; attempt <= def.maxReceiveCount; attempt++) {
      const message = await receiveOne(queueUrl);
      expect(message?.Body).toBe('poison');
      expect(message?.Attributes?.ApproximateReceiveCount).toBe(String(attempt));
      // Give up on it at once instead of waiting out the visibility timeout.
      await res.sqs.send(
        new ChangeMessageVisibilityCommand({
          QueueUrl: queueUrl,
          ReceiptHandle: message?.ReceiptHandle,
          VisibilityTimeout: 0,
        }),
      );
    }
    // The next receive exceeds maxReceiveCount: the message is redriven instead of delivered.
    expect(await receiveOne(queueUrl)).toBeUndefined();
    const dead = await receiveOne(res.dlqUrls.normal);
    expect(dead?.Body).toBe('poison');
  });

  it('long polling waits about WaitTimeSeconds on an empty queue', async () => {
    const started = performance.now();
    expect(await receiveOne(res.names.queueUrls.low, 1)).toBeUndefined();
    const elapsed = performance.now() - started;
    expect(elapsed).toBeGreaterThanOrEqual(900);
    // Generous: a loaded 2-core machine can add seconds; an unbounded wait would still fail.
    expect(elapsed).toBeLessThan(6_000);
  });

  it('long polling returns as soon as a message arrives', async () => {
    const queueUrl = res.names.queueUrls.high;
    const started = performance.now();
    const received = receiveOne(queueUrl, 10);
    setTimeout(() => {
      void res.sqs.send(new SendMessageCommand({ QueueUrl: queueUrl, MessageBody: 'late' }));
    }, 200);
    const message = await received;
    expect(message?.Body).toBe('late');
    // Well under the 10 s WaitTimeSeconds it would take if the arrival did not end the poll.
    expect(performance.now() - started).toBeLessThan(7_000);
  });
});

// Issue 13.2: anyone who can reach the machine could rewrite keys and the bucket, or purge the queues.
describe('loopback only', () => {
  const addresses = nonLoopbackAddresses();
  const emulators = inject('emulators');
  const services = [
    ['DynamoDB Local', Number(new URL(emulators.dynamoEndpoint).port)],
    ['fauxqs', Number(new URL(emulators.sqsEndpoint).port)],
  ] as const;

  it.each(services)('%s accepts connections on 127.0.0.1', async (_name, port) => {
    expect(await acceptsConnection('127.0.0.1', port)).toBe(true);
  });

  // A machine with nothing but loopback has no address to try from.
  it.skipIf(addresses.length === 0)(
    `DynamoDB Local and fauxqs refuse connections on every non-loopback address (${addresses.join(', ') || 'none: skipped'})`,
    async () => {
      for (const [name, port] of services) {
        for (const address of addresses) {
          expect({ name, address, accepted: await acceptsConnection(address, port) }).toEqual({
            name,
            address,
            accepted: false,
          });
        }
      }
    },
  );
});
