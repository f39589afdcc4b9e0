// DynamoDB Local's own ceiling on this machine (`npx tsx bench/ddb-ceiling.ts`): for each call shape of the
// request path, on sluice's own tables, calls/s at 10 concurrent callers, p50 latency and the JVM's CPU per call,
// cold (first pass) and warm (after four passes of every shape). The full path's rate on one machine is bounded
// by the sum of these per request (bench/results/throughput.md gives its calls per request).
import {
  type AttributeValue,
  BatchGetItemCommand,
  DynamoDBClient,
  GetItemCommand,
  PutItemCommand,
  type TransactWriteItem,
  TransactWriteItemsCommand,
  UpdateItemCommand,
} from '@aws-sdk/client-dynamodb';
import { createTables, localAwsConfig, startEmulators } from '../local/emulators.js';
import { processCpuS } from './support/process-cpu.js';
import { percentile, round } from './support/stats.js';

const CALLERS = 10;
const WARM_PASSES = 4;

const em = await startEmulators();
const client = new DynamoDBClient(localAwsConfig(em.dynamoEndpoint));
const { stateTable, ticketsTable } = await createTables(client, 'ceiling');
const jvmCpuS = () => (em.dynamoPid === undefined ? Number.NaN : (processCpuS(em.dynamoPid) ?? Number.NaN));

const S = (s: string): AttributeValue => ({ S: s });
const N = (n: number): AttributeValue => ({ N: String(n) });
/** A queued ticket about the size of sluice's (~1 KB, in the byPhase index). */
const ticket = (id: string): Record<string, AttributeValue> => {
  const item: Record<string, AttributeValue> = {
    id: S(id),
    phase: S('queued#normal'),
    phaseAt: N(Date.now()),
    status: S('queued'),
    priority: S('normal'),
    agent: S('agent-17'),
    model: S('meta/llama-3.1-8b-instruct'),
    enqueuedAt: N(Date.now()),
    expiresAt: N(Math.floor(Date.now() / 1000) + 86_400),
  };
  for (let i = 0; i < 16; i++) item[`f${i}`] = S('v'.repeat(40));
  return item;
};
const add = (pk: string, sk: string): TransactWriteItem => ({
  Update: {
    TableName: stateTable,
    Key: { pk: S(pk), sk: S(sk) },
    UpdateExpression: 'ADD n :one',
    ExpressionAttributeValues: { ':one': N(1) },
  },
});
/** A ticket's status move (`:v` the new status; `:now` given too, for expressions that stamp the phase). */
const setStatus = (id: string, expression: string, status: string): TransactWriteItem => ({
  Update: {
    TableName: ticketsTable,
    Key: { id: S(id) },
    UpdateExpression: expression,
    ExpressionAttributeNames: { '#s': 'status' },
    ExpressionAttributeValues: {
      ':v': S(status),
      ...(expression.includes(':now') ? { ':now': N(Date.now()) } : {}),
    },
  },
});
/** The outcome slot's ADD of a few counters and histogram buckets. */
const outcomeAdd = (i: number) => {
  const names: Record<string, string> = {};
  const values: Record<string, AttributeValue> = {};
  for (let k = 0; k < 8; k++) {
    names[`#a${k}`] = `h_wait_normal_${(i + k) % 20}`;
    values[`:v${k}`] = N(1);
  }
  return new UpdateItemCommand({
    TableName: stateTable,
    Key: { pk: S('outcomes'), sk: S('slot') },
    UpdateExpression: `ADD ${Object.keys(names)
      .map((n, k) => `${n} :v${k}`)
      .join(', ')}`,
    ExpressionAttributeNames: names,
    ExpressionAttributeValues: values,
  });
};

/** Call shapes, named as in the throughput bench's "by what they touch"; `id` is unique per call. */
const SHAPES: Record<string, (caller: number, id: string) => Promise<unknown>> = {
  'GetItem ticket': (c) =>
    client.send(
      new GetItemCommand({ TableName: ticketsTable, Key: { id: S(`seed-${c}`) }, ConsistentRead: true }),
    ),
  'GetItem state (small)': () =>
    client.send(
      new GetItemCommand({
        TableName: stateTable,
        Key: { pk: S('admission'), sk: S('x') },
        ConsistentRead: true,
      }),
    ),
  'BatchGetItem 10 tickets': (c) =>
    client.send(
      new BatchGetItemCommand({
        RequestItems: {
          [ticketsTable]: {
            Keys: Array.from({ length: 10 }, (_, k) => ({ id: S(`seed-${(c + k) % CALLERS}`) })),
            ConsistentRead: true,
          },
        },
      }),
    ),
  'UpdateItem lease ring': () =>
    client.send(
      new UpdateItemCommand({
        TableName: stateTable,
        Key: { pk: S('lease'), sk: S('dispatcher') },
        UpdateExpression: 'ADD rings :one',
        ExpressionAttributeValues: { ':one': N(1) },
        ReturnValues: 'ALL_NEW',
      }),
    ),
  'UpdateItem outcomes': (_c, id) => client.send(outcomeAdd(id.length + Number(id.slice(-1)))),
  'PutItem ticket': (_c, id) =>
    client.send(new PutItemCommand({ TableName: ticketsTable, Item: ticket(`p-${id}`) })),
  'Txn create (5 items)': (c, id) =>
    client.send(
      new TransactWriteItemsCommand({
        TransactItems: [
          add('admission', 'counter'),
          {
            Put: {
              TableName: ticketsTable,
              Item: ticket(id),
              ConditionExpression: 'attribute_not_exists(id)',
            },
          },
          { Put: { TableName: stateTable, Item: { pk: S('idem'), sk: S(id) } } },
          add('agentq', `agent-${c}`),
          add('queued', 'normal'),
        ],
      }),
    ),
  'Txn claim (2 items)': (_c, id) =>
    client.send(
      new TransactWriteItemsCommand({
        TransactItems: [
          setStatus(id, 'SET #s = :v, phase = :v, phaseAt = :now', 'claimed'),
          {
            ConditionCheck: {
              TableName: stateTable,
              Key: { pk: S('config'), sk: S('current') },
              ConditionExpression: 'attribute_not_exists(paused)',
            },
          },
        ],
      }),
    ),
  'Txn end (3 items)': (c, id) =>
    client.send(
      new TransactWriteItemsCommand({
        TransactItems: [
          setStatus(id, 'SET #s = :v REMOVE phase, phaseAt', 'done'),
          add('admission', 'counter'),
          add('usage', `agent-${c}`),
        ],
      }),
    ),
};
/** The ticket's own transactions run in this order on the tickets the create wrote. */
const LIFECYCLE = ['Txn create (5 items)', 'Txn claim (2 items)', 'Txn end (3 items)'];

const run = async (name: string, pass: string, ms: number) => {
  const op = SHAPES[name]!;
  const latencies: number[] = [];
  const cpu0 = jvmCpuS();
  const t0 = performance.now();
  const end = Date.now() + ms;
  await Promise.all(
    Array.from({ length: CALLERS }, async (_, c) => {
      for (let i = 0; Date.now() < end; i++) {
        const t = performance.now();
        await op(c, `${pass}-${c}-${i}`);
        latencies.push(performance.now() - t);
      }
    }),
  );
  const seconds = (performance.now() - t0) / 1000;
  return {
    perSecond: Math.round(latencies.length / seconds),
    p50Ms: round(percentile(latencies, 0.5), 1),
    jvmCpuMsPerCall: round(((jvmCpuS() - cpu0) * 1000) / latencies.length, 2),
    jvmCores: round((jvmCpuS() - cpu0) / seconds, 2),
  };
};

/** One pass over every shape; the lifecycle's three run on the same tickets (ids by pass, caller and index). */
const pass = async (label: string, ms: number) => {
  const rows: Record<string, Awaited<ReturnType<typeof run>>> = {};
  for (const name of Object.keys(SHAPES))
    if (!LIFECYCLE.includes(name)) rows[name] = await run(name, label, ms);
  for (const name of LIFECYCLE) rows[name] = await run(name, label, ms);
  return rows;
};

try {
  for (let c = 0; c < CALLERS; c++)
    await client.send(new PutItemCommand({ TableName: ticketsTable, Item: ticket(`seed-${c}`) }));
  console.log(`DynamoDB Local, ${CALLERS} concurrent callers per shape`);
  console.log('cold (the first pass after start):');
  console.table(await pass('cold', 1_500));
  for (let i = 0; i < WARM_PASSES - 1; i++) await pass(`warm${i}`, 1_500);
  console.log(`warm (after ${WARM_PASSES} passes):`);
  console.table(await pass('warm', 3_000));
} finally {
  client.destroy();
  await em.stop();
}
