// Bench and test support: an HTTP proxy in front of an emulator (DynamoDB Local, fauxqs) that injects AWS-shaped
// faults — throttling, 5xx, timeouts, connection resets — into chosen calls, so the rest still runs on the emulator.
import { createServer, request, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

/** One AWS API call as the proxy sees it: the action (`GetItem`, `SendMessage`, …) and the raw JSON body. */
export interface AwsCall {
  action: string;
  body: string;
  /** The body parsed (AWS JSON protocols), or undefined. */
  json: () => Record<string, unknown> | undefined;
}

/**
 * What a matching call gets instead of (or after) the emulator's answer.
 * - `throttle`: 400 with an AWS throttling error type (the SDK retries it with backoff).
 * - `status`: that HTTP status with an AWS error type (5xx: the SDK retries it).
 * - `hang`: never answers; the client's request timeout must fire.
 * - `reset`: the connection is destroyed without an answer.
 * - `delay`: forwarded after `ms` (slow but successful).
 */
export type Fault =
  | { kind: 'throttle'; type?: string }
  | { kind: 'status'; status: number; type?: string }
  | { kind: 'hang' }
  | { kind: 'reset' }
  | { kind: 'delay'; ms: number };

export interface FaultRule {
  /** Shown in `injected` counts. */
  name: string;
  match: (call: AwsCall) => boolean;
  fault: Fault;
  /** Applies to this many matching calls, then lets them through. @default Infinity */
  times?: number;
  /**
   * Forward the call first and replace only its answer (the write happened, the caller never learns it): an
   * ambiguous failure, as when DynamoDB commits and the response is lost. Not for `delay`.
   * @default false
   */
  afterForward?: boolean;
}

export interface FaultProxy {
  endpoint: string;
  /** Calls seen, by action. */
  counts: Map<string, number>;
  /** Faults injected, by rule name. */
  injected: Map<string, number>;
  /** Adds a rule (first matching rule wins); returns its removal. */
  add(rule: FaultRule): () => void;
  /** Removes every rule (hung calls stay hung until their client gives up). */
  clear(): void;
  total(): number;
  stop(): Promise<void>;
}

/** The AWS action of a request: JSON protocols name it in X-Amz-Target, the query protocol in the body. */
const actionOf = (headers: Record<string, string | string[] | undefined>, body: string): string => {
  const target = headers['x-amz-target'];
  if (typeof target === 'string') return target.split('.').pop() ?? target;
  const m = /(?:^|&)Action=([A-Za-z]+)/.exec(body);
  return m?.[1] ?? 'unknown';
};

/** An AWS JSON-protocol error answer (`__type` names the error the SDK raises). */
const sendAwsError = (res: ServerResponse, status: number, type: string, message: string): void => {
  const body = JSON.stringify({ __type: type, message });
  res.writeHead(status, {
    'content-type': 'application/x-amz-json-1.0',
    'x-amzn-errortype': type,
    'content-length': Buffer.byteLength(body),
  });
  res.end(body);
};

const answerWithFault = (res: ServerResponse, fault: Exclude<Fault, { kind: 'delay' }>): void => {
  switch (fault.kind) {
    case 'throttle':
      sendAwsError(
        res,
        400,
        fault.type ?? 'ThrottlingException',
        'Rate of requests exceeds the allowed throughput (injected).',
      );
      return;
    case 'status':
      sendAwsError(
        res,
        fault.status,
        fault.type ?? (fault.status >= 500 ? 'InternalServerError' : 'ValidationException'),
        `Injected ${fault.status}.`,
      );
      return;
    case 'reset':
      res.socket?.destroy();
      return;
    case 'hang':
      // Nothing is sent: the client times out (or the proxy stops).
      return;
  }
};

/**
 * Starts a proxy to `upstream` (an emulator endpoint). Rules decide per call; without a matching rule the call
 * goes through unchanged.
 */
export const startFaultProxy = async (upstream: string): Promise<FaultProxy> => {
  const target = new URL(upstream);
  const counts = new Map<string, number>();
  const injected = new Map<string, number>();
  const rules: { rule: FaultRule; left: number }[] = [];

  const pick = (call: AwsCall): FaultRule | undefined => {
    for (const entry of rules) {
      if (entry.left <= 0 || !entry.rule.match(call)) continue;
      entry.left--;
      injected.set(entry.rule.name, (injected.get(entry.rule.name) ?? 0) + 1);
      return entry.rule;
    }
    return undefined;
  };

  const forward = (
    req: { method?: string; url?: string; headers: Record<string, string | string[] | undefined> },
    body: Buffer,
    res: ServerResponse,
    replace?: Exclude<Fault, { kind: 'delay' }>,
  ): void => {
    const fwd = request(
      { host: target.hostname, port: target.port, method: req.method, path: req.url, headers: req.headers },
      (up) => {
        if (replace) {
          up.resume();
          up.on('end', () => answerWithFault(res, replace));
          return;
        }
        res.writeHead(up.statusCode ?? 502, up.headers);
        up.pipe(res);
      },
    );
    fwd.on('error', () => res.destroy());
    // The client went away before the answer (an aborted long poll, a timeout): stop forwarding too.
    res.on('close', () => {
      if (!res.writableFinished) fwd.destroy();
    });
    fwd.end(body);
  };

  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      const text = body.toString('utf8');
      const action = actionOf(req.headers, text);
      counts.set(action, (counts.get(action) ?? 0) + 1);
      let parsed: Record<string, unknown> | undefined | null = null;
      const call: AwsCall = {
        action,
        body: text,
        json: () => {
          if (parsed === null) {
            try {
              parsed = JSON.parse(text) as Record<string, unknown>;
            } catch {
              parsed = undefined;
            }
          }
          return parsed;
        },
      };
      const rule = pick(call);
      if (!rule) return forward(req, body, res);
      const { fault } = rule;
      if (fault.kind === 'delay') {
        setTimeout(() => forward(req, body, res), fault.ms);
        return;
      }
      if (rule.afterForward) return forward(req, body, res, fault);
      answerWithFault(res, fault);
    });
  });
  server.keepAliveTimeout = 5_000;
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    counts,
    injected,
    add(rule) {
      const entry = { rule, left: rule.times ?? Number.POSITIVE_INFINITY };
      rules.push(entry);
      return () => {
        const i = rules.indexOf(entry);
        if (i >= 0) rules.splice(i, 1);
      };
    },
    clear() {
      rules.length = 0;
    },
    total: () => [...counts.values()].reduce((a, b) => a + b, 0),
    stop: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
};

/** Call matchers for sluice's DynamoDB call sites (by action and what the body names). */
export const dynamoCalls = {
  /** Any call on a table whose name ends with `suffix` (`-keys`, `-tickets`, `-state`). */
  onTable: (suffix: string) => (c: AwsCall) => {
    const j = c.json();
    const tables = [
      j?.TableName,
      ...((j?.TransactItems as Record<string, { TableName?: string }>[]) ?? []).map(
        (i) => Object.values(i)[0]?.TableName,
      ),
    ];
    return tables.some((t) => typeof t === 'string' && t.endsWith(suffix));
  },
  /** A call whose body mentions this state-table partition (`"S":"bucket"`, `"S":"lease"`, …). */
  partition: (pk: string) => (c: AwsCall) => c.body.includes(`"pk":{"S":"${pk}"}`),
  /** A ticket move to `status` (the `:to` value of a transition). */
  ticketMoveTo: (status: string) => (c: AwsCall) => c.body.includes(`":to":{"S":"${status}"}`),
} as const;
