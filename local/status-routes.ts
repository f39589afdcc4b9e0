// Local runtime: the status function (composed like its Lambda, in its own "container") and the dashboard's
// static site with a generated config.json, as extra routes on the local API Gateway.
// The shim first: Powertools' event handler reads the `awslambda` global once, when it is first imported, and the
// ingress (streaming) shares that module; imported without the shim, its replies lose their status and headers.
import './awslambda-shim.js';
import { readFile } from 'node:fs/promises';
import { extname, join, resolve, sep } from 'node:path';
import type { APIGatewayProxyEvent, APIGatewayProxyResult } from 'aws-lambda';
import { DEFAULT_OUT_DIR } from '../dashboard/build.js';
import { buildStatusDeps, makeStatusHandler } from '../functions/status/app.js';
import { NotFoundError } from '../lib/domain/errors.js';
import { errorReply } from '../lib/http/reply.js';
import { closeClients, makeClients } from '../lib/runtime/clients.js';
import { readRuntimeEnv } from '../lib/runtime/env.js';
import type { ApiRoute } from './apigw/adapter.js';
import type { GatewayStores } from './gateway-stores.js';

const CONTENT_TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.map': 'application/json',
  '.json': 'application/json',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.txt': 'text/plain; charset=utf-8',
};
const TEXT = new Set(['.html', '.js', '.css', '.map', '.json', '.svg', '.txt']);

const notFound = (message: string): APIGatewayProxyResult => {
  const reply = errorReply(new NotFoundError(message));
  return { statusCode: reply.status, headers: reply.headers, body: reply.body as string };
};

const header = (event: APIGatewayProxyEvent, name: string): string | undefined =>
  Object.entries(event.headers ?? {}).find(([k]) => k.toLowerCase() === name)?.[1] ?? undefined;

/**
 * A buffered handler serving the built dashboard (`dashboard/dist`), as S3 + CloudFront do in AWS; paths
 * outside the folder are refused.
 * @param root the built site @default dashboard/dist
 */
export const staticSite =
  (root = DEFAULT_OUT_DIR) =>
  async (event: APIGatewayProxyEvent): Promise<APIGatewayProxyResult> => {
    const base = resolve(root);
    const rel =
      event.path === '/' || event.path === '' ? 'index.html' : decodeURIComponent(event.path.slice(1));
    const file = resolve(join(base, rel));
    if (!file.startsWith(base + sep)) return notFound(`No file ${event.path}.`);
    let data: Buffer;
    try {
      data = await readFile(file);
    } catch {
      return notFound(
        rel === 'index.html'
          ? 'The dashboard is not built: run `npx tsx dashboard/build.ts` (npm start builds it).'
          : `No file ${event.path}.`,
      );
    }
    const ext = extname(file);
    const text = TEXT.has(ext);
    return {
      statusCode: 200,
      headers: {
        'content-type': CONTENT_TYPES[ext] ?? 'application/octet-stream',
        // The page and its bundle change with every build: always revalidate locally.
        'cache-control': 'no-cache',
      },
      body: text ? data.toString('utf8') : data.toString('base64'),
      isBase64Encoded: !text,
    };
  };

/**
 * `config.json` for the dashboard: the API is wherever the page was loaded from (in AWS the deployment writes
 * this file with the API Gateway URL).
 */
export const localConfigJson = async (event: APIGatewayProxyEvent): Promise<APIGatewayProxyResult> => {
  const host = header(event, 'host') ?? '127.0.0.1';
  const proto = header(event, 'x-forwarded-proto') ?? 'http';
  return {
    statusCode: 200,
    headers: { 'content-type': 'application/json', 'cache-control': 'no-store' },
    body: JSON.stringify({ apiUrl: `${proto}://${host}` }),
  };
};

/**
 * Routes of the status function and the dashboard for `startLocalSystem({ extraRoutes: statusRoutes })`.
 * The status function gets its own clients and caches, as a separate Lambda would, so an admin change reaches
 * the dispatcher only through the shared config store (≤ 2 s), exactly as in AWS.
 */
export const statusRoutes = (ctx: {
  env: Record<string, string | undefined>;
  stores: GatewayStores;
}): { routes: ApiRoute[]; stop: () => Promise<void> } => {
  const clients = makeClients(readRuntimeEnv(ctx.env));
  const handler = makeStatusHandler(buildStatusDeps(ctx.env, clients));
  const fn = { handler, functionName: 'sluice-status', timeoutMs: 29_000 };
  const site = staticSite();
  return {
    routes: [
      { method: 'ANY', path: '/status', ...fn },
      { method: 'ANY', path: '/health', ...fn },
      { method: 'ANY', path: '/health/ready', ...fn },
      { method: 'ANY', path: '/admin/{proxy+}', ...fn },
      { method: 'GET', path: '/config.json', handler: localConfigJson, functionName: 'sluice-dashboard' },
      { method: 'GET', path: '/', handler: site, functionName: 'sluice-dashboard' },
      { method: 'GET', path: '/{proxy+}', handler: site, functionName: 'sluice-dashboard' },
    ],
    stop: async () => closeClients(clients),
  };
};
