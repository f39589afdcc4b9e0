// DynamoDB Local's own ceiling on this machine (npx tsx bench/ddb-ceiling.ts): ops/s and latency of GetItem, UpdateItem
// and small/large TransactWriteItems at 1, 10 and 40 concurrent callers, on an empty table of its own.
import {
  CreateTableCommand,
  DynamoDBClient,
  GetItemCommand,
  TransactWriteItemsCommand,
  UpdateItemCommand,
} from '@aws-sdk/client-dynamodb';
import { startEmulators } from '../local/emulators.js';

const em = await startEmulators();
const c = new DynamoDBClient({
  endpoint: em.dynamoEndpoint,
  region: 'us-east-1',
  credentials: { accessKeyId: 'l', secretAccessKey: 'l' },
});
await c.send(
  new CreateTableCommand({
    TableName: 'ceiling',
    KeySchema: [{ AttributeName: 'pk', KeyType: 'HASH' }],
    AttributeDefinitions: [{ AttributeName: 'pk', AttributeType: 'S' }],
    BillingMode: 'PAY_PER_REQUEST',
  }),
);
const run = async (
  name: string,
  conc: number,
  ms: number,
  op: (w: number, i: number) => Promise<unknown>,
) => {
  const lat: number[] = [];
  const end = Date.now() + ms;
  let n = 0;
  await Promise.all(
    Array.from({ length: conc }, async (_, w) => {
      for (let i = 0; Date.now() < end; i++) {
        const t = performance.now();
        await op(w, i);
        lat.push(performance.now() - t);
        n++;
      }
    }),
  );
  lat.sort((a, b) => a - b);
  console.log(
    name,
    'conc',
    conc,
    'ops/s',
    (n / (ms / 1000)).toFixed(0),
    'p50',
    lat[Math.floor(lat.length / 2)]!.toFixed(1),
    'p90',
    lat[Math.floor(lat.length * 0.9)]!.toFixed(1),
  );
};
const upd = (pk: string) => ({
  Update: {
    TableName: 'ceiling',
    Key: { pk: { S: pk } },
    UpdateExpression: 'ADD n :one',
    ExpressionAttributeValues: { ':one': { N: '1' } },
  },
});
for (const conc of [1, 10, 40]) {
  await run('GetItem', conc, 3000, () =>
    c.send(new GetItemCommand({ TableName: 'ceiling', Key: { pk: { S: 'x' } }, ConsistentRead: true })),
  );
  await run('UpdateItem', conc, 3000, (w) =>
    c.send(
      new UpdateItemCommand({
        TableName: 'ceiling',
        Key: { pk: { S: `u${w}` } },
        UpdateExpression: 'ADD n :one',
        ExpressionAttributeValues: { ':one': { N: '1' } },
      }),
    ),
  );
  await run('Txn hot+own (2)', conc, 3000, (w, i) =>
    c.send(new TransactWriteItemsCommand({ TransactItems: [upd('hot'), upd(`o${w}-${i}`)] })),
  );
  await run('Txn 6 items', conc, 3000, (w, i) =>
    c.send(
      new TransactWriteItemsCommand({
        TransactItems: [upd('hot'), upd('hot2'), upd(`o${w}-${i}`), upd('q1'), upd('q2'), upd('q3')].map(
          (x, k) =>
            k >= 3
              ? {
                  ConditionCheck: {
                    TableName: 'ceiling',
                    Key: x.Update.Key,
                    ConditionExpression: 'attribute_not_exists(zz)',
                  },
                }
              : x,
        ),
      }),
    ),
  );
}
await run('Txn 25 items', 1, 3000, (_w, i) =>
  c.send(
    new TransactWriteItemsCommand({
      TransactItems: Array.from({ length: 25 }, (_, k) => upd(k === 0 ? 'hot' : `b${i}-${k}`)),
    }),
  ),
);
c.destroy();
await em.stop();
