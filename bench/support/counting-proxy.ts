// Bench support: an HTTP proxy in front of an emulator that counts AWS API calls by action.
import { createServer, request, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface CountingProxy {
  endpoint: string;
  counts: Map<string, number>;
  /**
   * DynamoDB reads and writes by what they touch: `action table key` (the table's last name part, the item's
   * partition key up to its first `#`, a Query's index and key value), to attribute calls to their source.
   */
  tags: Map<string, number>;
  total(): number;
  reset(): void;
  stop(): Promise<void>;
}

/** The AWS action of a request: JSON protocols name it in X-Amz-Target, query protocol in the body. */
const actionOf = (headers: Record<string, string | string[] | undefined>, body: string): string => {
  const target = headers['x-amz-target'];
  if (typeof target === 'string') return target.split('.').pop() ?? target;
  const m = /(?:^|&)Action=([A-Za-z]+)/.exec(body);
  return m?.[1] ?? 'unknown';
};

/** A DynamoDB call's item or query, for {@link CountingProxy.tags}; undefined for other services. */
const itemOf = (action: string, body: string): string | undefined => {
  if (!body.startsWith('{')) return undefined;
  try {
    const req = JSON.parse(body) as {
      TableName?: string;
      IndexName?: string;
      Key?: Record<string, { S?: string }>;
      ExpressionAttributeValues?: Record<string, { S?: string; N?: string }>;
      TransactItems?: Record<string, { TableName?: string; Key?: Record<string, { S?: string }> }>[];
    };
    const table = (name?: string) => name?.split('-').pop() ?? '?';
    const key = (k?: Record<string, { S?: string }>) => {
      const pk = k?.pk?.S ?? (k?.id ? 'ticket' : k?.keyHash ? 'key' : Object.keys(k ?? {})[0]);
      return pk?.split('#')[0] ?? '?';
    };
    if (action === 'Query') {
      const pk = req.ExpressionAttributeValues?.[':pk'];
      return `${table(req.TableName)} ${req.IndexName ?? ''}:${(pk?.S ?? pk?.N ?? '?').split('#')[0]}`;
    }
    if (action === 'TransactWriteItems') {
      const parts = (req.TransactItems ?? []).map((t) => {
        const [op, item] = Object.entries(t)[0] ?? ['?', {}];
        return `${op}:${key(item.Key ?? (item as { Item?: Record<string, { S?: string }> }).Item)}`;
      });
      return parts.join(',');
    }
    if (req.Key) return `${table(req.TableName)} ${key(req.Key)}`;
    return table(req.TableName);
  } catch {
    return undefined;
  }
};

/**
 * @param onRequest sees each request's action and body (e.g. which tickets were sent to the queue)
 */
export const startCountingProxy = async (
  upstream: string,
  onRequest?: (action: string, body: string) => void,
): Promise<CountingProxy> => {
  const target = new URL(upstream);
  const counts = new Map<string, number>();
  const tags = new Map<string, number>();
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      const action = actionOf(req.headers, body.toString('utf8'));
      counts.set(action, (counts.get(action) ?? 0) + 1);
      onRequest?.(action, body.toString('utf8'));
      const item = itemOf(action, body.toString('utf8'));
      if (item !== undefined) tags.set(`${action} ${item}`, (tags.get(`${action} ${item}`) ?? 0) + 1);
      const fwd = request(
        { host: target.hostname, port: target.port, method: req.method, path: req.url, headers: req.headers },
        (up) => {
          res.writeHead(up.statusCode ?? 502, up.headers);
          up.pipe(res);
        },
      );
      fwd.on('error', () => res.destroy());
      // The client went away before the answer (an aborted long poll): stop forwarding too.
      res.on('close', () => {
        if (!res.writableFinished) fwd.destroy();
      });
      fwd.end(body);
    });
  });
  server.keepAliveTimeout = 5_000;
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    counts,
    tags,
    total: () => [...counts.values()].reduce((a, b) => a + b, 0),
    reset: () => {
      counts.clear();
      tags.clear();
    },
    stop: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
};
