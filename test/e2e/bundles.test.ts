// What deploys is what is tested (issue 13.9): the stack is synthesized with bundling, and the exact `asset.*`
// code `cdk deploy` uploads — each function's index.mjs, not the TypeScript sources — runs behind the local API
// Gateway and Lambda endpoints against the emulators, through an e2e smoke: non-streaming, streaming, status,
// admin. An ESM/CJS, shim or missing-dependency problem in a bundle fails here, not in AWS.
import '../../local/awslambda-shim.js';
import { randomBytes } from 'node:crypto';
import { cpSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { SQSClient } from '@aws-sdk/client-sqs';
import type { Context } from 'aws-lambda';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { DynamoKeyStore } from '../../lib/adapters/dynamo/key-store.js';
import { systemClock } from '../../lib/domain/clock.js';
import { KeyAdmin } from '../../lib/domain/key-admin.js';
import { type LocalApiGateway, startApiGateway } from '../../local/apigw/adapter.js';
import { localAwsConfig, provisionResources, resourceEnvironment } from '../../local/emulators.js';
import { type FakeUpstream, startFakeUpstream } from '../../local/fake-upstream.js';
import { type LocalLambdaService, startLocalLambda } from '../../local/lambda-service.js';
import { lambdaFunctions, logicalId, sluice } from '../cdk/stack.js';
import { uniquePrefix } from '../support/aws.js';

const UPSTREAM_KEY = 'nvapi-bundle-smoke';
const ADMIN = randomBytes(24).toString('base64url');
const VIEWER = randomBytes(24).toString('base64url');
const DISPATCHER = 'sluice-dispatcher';

type Handler = (event: unknown, context: Context) => Promise<unknown>;
const hostDir = mkdtempSync(join(tmpdir(), 'sluice-bundles-'));

let api: LocalApiGateway;
let lambda: LocalLambdaService;
let upstream: FakeUpstream;
let agentKey: string;
let keysClient: DynamoDBClient;
const saved = { ...process.env };

beforeAll(async () => {
  // The exact code CDK uploads: one asset directory per function.
  const { stack, template, assemblyDir } = sluice({ bundle: true });
  const bundle = async (fn: Parameters<typeof logicalId>[0]): Promise<Handler> => {
    const metadata = (lambdaFunctions(template)[logicalId(fn)] as { Metadata?: Record<string, string> })
      .Metadata;
    const path = metadata?.['aws:asset:path'];
    if (!path) throw new Error('no asset metadata');
    // Loaded by Node itself, as in Lambda: vitest hands files under a `node_modules` folder to Node's loader, and
    // this one lies outside the repository, so a bare import the bundle does not contain cannot resolve.
    const dir = join(hostDir, 'node_modules', `sluice-${fn.node.scope?.node.id ?? logicalId(fn)}`);
    cpSync(join(assemblyDir, path), dir, { recursive: true });
    const mod = (await import(pathToFileURL(join(dir, 'index.mjs')).href)) as { handler: Handler };
    return mod.handler;
  };

  const emulators = inject('emulators');
  const dynamo = new DynamoDBClient(localAwsConfig(emulators.dynamoEndpoint));
  const sqs = new SQSClient(localAwsConfig(emulators.sqsEndpoint));
  const names = await provisionResources({ dynamo, sqs }, uniquePrefix('bundles'));
  dynamo.destroy();
  sqs.destroy();
  upstream = await startFakeUpstream({
    apiKey: UPSTREAM_KEY,
    tokenDelayMs: 1,
    firstByteDelayMs: 1,
    limit: null,
  });

  const dispatcherRef: { handler?: Handler } = {};
  lambda = await startLocalLambda({
    [DISPATCHER]: { handler: (e, c) => dispatcherRef.handler!(e, c), timeoutMs: 60_000 },
  });
  // A Lambda function reads its environment at cold start: the bundles are imported after it is set.
  Object.assign(process.env, {
    ...resourceEnvironment(names, emulators),
    POWERTOOLS_METRICS_DISABLED: 'true',
    POWERTOOLS_LOG_LEVEL: 'WARN',
    LOG_LEVEL: 'WARN',
    SLUICE_LAMBDA_ENDPOINT: lambda.endpoint,
    SLUICE_DISPATCHER_FUNCTION: DISPATCHER,
    SLUICE_UPSTREAM_URL: `${upstream.url}/v1`,
    UPSTREAM_API_KEY: UPSTREAM_KEY,
    SLUICE_ADMIN_TOKEN: ADMIN,
    SLUICE_VIEWER_TOKEN: VIEWER,
    SLUICE_UPSTREAM_LIMIT: '600',
    SLUICE_BUCKET_BURST: '5',
  });
  const [ingress, dispatcher, status] = await Promise.all([
    bundle(stack.ingress.fn),
    bundle(stack.dispatcher.fn),
    bundle(stack.status.fn),
  ]);
  dispatcherRef.handler = dispatcher;
  const statusRoute = { handler: status, functionName: 'sluice-status', timeoutMs: 30_000 };
  api = await startApiGateway({
    routes: [
      { method: 'ANY', path: '/v1/{proxy+}', handler: ingress, functionName: 'sluice-ingress' },
      { method: 'ANY', path: '/status', ...statusRoute },
      { method: 'ANY', path: '/health/ready', ...statusRoute },
      { method: 'ANY', path: '/admin/{proxy+}', ...statusRoute },
    ],
  });
  keysClient = new DynamoDBClient(localAwsConfig(emulators.dynamoEndpoint));
  agentKey = (
    await new KeyAdmin(new DynamoKeyStore(keysClient, names.keysTable), systemClock, (n) =>
      randomBytes(n),
    ).create('bundle-smoke', 'urgent')
  ).key;
}, 180_000);

afterAll(async () => {
  await api?.stop();
  await lambda?.stop();
  await lambda?.idle();
  await upstream?.stop();
  keysClient?.destroy();
  rmSync(hostDir, { recursive: true, force: true });
  for (const k of Object.keys(process.env)) if (!(k in saved)) delete process.env[k];
  Object.assign(process.env, saved);
});

const post = (body: Record<string, unknown>) =>
  fetch(`${api.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${agentKey}`, 'content-type': 'application/json' },
    body: JSON.stringify({
      model: 'meta/llama-3.1-8b-instruct',
      messages: [{ role: 'user', content: 'hi' }],
      ...body,
    }),
  });

describe('the deployed bundles, end to end', () => {
  it('answer a non-streaming chat completion through the queue and the dispatcher', async () => {
    const res = await post({});
    const json = (await res.json()) as { choices?: { message?: { content?: string } }[] };
    expect(res.status).toBe(200);
    expect(json.choices?.[0]?.message?.content).toBeTruthy();
    expect(upstream.calls.at(-1)?.headers.authorization).toBe(`Bearer ${UPSTREAM_KEY}`);
  });

  it('stream a chat completion as SSE to [DONE]', async () => {
    const res = await post({ stream: true });
    const text = await res.text();
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toContain('text/event-stream');
    expect(text).toContain('data: [DONE]');
  });

  it('serve /status to the viewer and /admin/config to the admin, refusing the agent key', async () => {
    const status = await fetch(`${api.url}/status`, { headers: { authorization: `Bearer ${VIEWER}` } });
    expect(status.status).toBe(200);
    expect(await status.json()).toMatchObject({ bucket: expect.anything() });
    const admin = await fetch(`${api.url}/admin/config`, { headers: { authorization: `Bearer ${ADMIN}` } });
    expect(admin.status).toBe(200);
    expect(((await admin.json()) as { config?: unknown }).config).toBeDefined();
    const refused = await fetch(`${api.url}/admin/config`, {
      headers: { authorization: `Bearer ${agentKey}` },
    });
    expect(refused.status).toBe(403);
  });
});
