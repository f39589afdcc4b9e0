// Local runtime: a minimal Lambda Invoke endpoint so the doorbell's real SDK call reaches the local dispatcher,
// which runs with reserved-concurrency-1 semantics (one run at a time; a throttled async invoke waits its turn).
import { randomUUID } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Context } from 'aws-lambda';

export type LocalLambdaHandler = (event: unknown, context: Context) => Promise<unknown>;

export interface LocalLambdaService {
  endpoint: string;
  /** Invokes the function asynchronously, as an `Event` invoke would. */
  invokeAsync(name: string, event?: unknown): void;
  /** Resolves when no run is active or pending. */
  idle(): Promise<void>;
  runs: number;
  /** Starts no more runs (invokes are still answered, and dropped) and resolves when the current one ended. */
  quiesce(): Promise<void>;
  stop(): Promise<void>;
}

/** A queued async invoke is dropped after this (the stack sets MaximumEventAgeInSeconds the same). */
const MAX_EVENT_AGE_MS = 60_000;

interface Fn {
  handler: LocalLambdaHandler;
  timeoutMs: number;
  running: Promise<void> | undefined;
  pendingSince: number | undefined;
}

export const startLocalLambda = async (
  functions: Record<string, { handler: LocalLambdaHandler; timeoutMs: number }>,
  log: (line: string) => void = () => {},
): Promise<LocalLambdaService> => {
  const fns = new Map<string, Fn>(
    Object.entries(functions).map(([name, f]) => [
      name,
      { ...f, running: undefined, pendingSince: undefined },
    ]),
  );
  let stopped = false;
  const service: LocalLambdaService = {
    endpoint: '',
    runs: 0,
    invokeAsync(name, event = {}) {
      const fn = fns.get(name);
      if (!fn || stopped) return;
      if (fn.running) {
        // Reserved concurrency 1: the invoke is throttled and retried when the current run ends.
        fn.pendingSince ??= Date.now();
        return;
      }
      const start = (): Promise<void> => {
        service.runs++;
        const deadline = Date.now() + fn.timeoutMs;
        const context = {
          awsRequestId: randomUUID(),
          functionName: name,
          functionVersion: '$LATEST',
          invokedFunctionArn: `arn:aws:lambda:local:000000000000:function:${name}`,
          memoryLimitInMB: '256',
          logGroupName: `/aws/lambda/${name}`,
          logStreamName: 'local',
          callbackWaitsForEmptyEventLoop: false,
          getRemainingTimeInMillis: () => Math.max(0, deadline - Date.now()),
          done: () => {},
          fail: () => {},
          succeed: () => {},
        } as Context;
        return fn.handler(event, context).then(
          () => undefined,
          (err: unknown) => log(`${name} failed: ${(err as Error).stack ?? err}`),
        );
      };
      const loop = async () => {
        await start();
        while (fn.pendingSince !== undefined && !stopped) {
          const fresh = Date.now() - fn.pendingSince < MAX_EVENT_AGE_MS;
          fn.pendingSince = undefined;
          if (fresh) await start();
        }
        fn.running = undefined;
      };
      fn.running = loop();
    },
    async idle() {
      await Promise.all([...fns.values()].map((f) => f.running));
    },
    async quiesce() {
      stopped = true;
      await service.idle();
    },
    async stop() {
      stopped = true;
      await new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeAllConnections();
    },
  };
  const server: Server = createServer((req, res) => {
    const m = /^\/2015-03-31\/functions\/([^/]+)\/invocations/.exec(req.url ?? '');
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const name = m ? decodeURIComponent(m[1] ?? '') : '';
      if (!m || !fns.has(name)) {
        res
          .writeHead(404, { 'content-type': 'application/json' })
          .end(JSON.stringify({ Type: 'User', Message: 'Function not found' }));
        return;
      }
      let event: unknown = {};
      try {
        event = JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}');
      } catch {
        // An unparseable payload still wakes the dispatcher, whose event is not read.
      }
      service.invokeAsync(name, event);
      res.writeHead(202, { 'content-type': 'application/json' }).end('');
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  service.endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return service;
};
