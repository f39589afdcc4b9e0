// Bench support: requests timed from a worker thread, as an agent in its own process sees them. A client on the
// gateway's own event loop would also wait for whatever the gateway runs right after its reply (the ticket end's
// SDK work), which no agent ever does: the reply has already left through the socket.
import { isMainThread, parentPort, Worker } from 'node:worker_threads';
import OpenAI from 'openai';

export const MODEL = 'meta/llama-3.1-8b-instruct';
const MESSAGES = [{ role: 'user' as const, content: 'bench' }];

export interface StreamTiming {
  ttfb: number;
  gaps: number[];
  total: number;
}

/** One non-streaming request, timed from the call to the parsed answer. */
export const timeChat = async (client: OpenAI, tag?: string): Promise<number> => {
  const t0 = performance.now();
  // A tag rides on a header the gateway forwards, so the simulated upstream's record names the request.
  await client.chat.completions.create(
    { model: MODEL, messages: MESSAGES },
    tag ? { headers: { 'openai-beta': tag } } : undefined,
  );
  return performance.now() - t0;
};

/** One streaming request: time to the first chunk and the gaps between chunks. */
export const timeStream = async (client: OpenAI): Promise<StreamTiming> => {
  const t0 = performance.now();
  const stream = await client.chat.completions.create({ model: MODEL, messages: MESSAGES, stream: true });
  let last = 0;
  let ttfb = 0;
  const gaps: number[] = [];
  for await (const _chunk of stream) {
    const now = performance.now();
    if (!ttfb) ttfb = now - t0;
    else gaps.push(now - last);
    last = now;
  }
  return { ttfb, gaps, total: performance.now() - t0 };
};

type Request =
  | { id: number; kind: 'client'; name: string; baseURL: string; apiKey: string }
  | { id: number; kind: 'chat' | 'stream'; name: string };
type Reply = { id: number; result?: number | StreamTiming; error?: string };
type Unsent = Request extends infer R ? (R extends unknown ? Omit<R, 'id'> : never) : never;

if (!isMainThread && parentPort) {
  const port = parentPort;
  const clients = new Map<string, OpenAI>();
  port.on('message', (m: Request) => {
    const run = async (): Promise<number | StreamTiming | undefined> => {
      if (m.kind === 'client') {
        clients.set(m.name, new OpenAI({ baseURL: m.baseURL, apiKey: m.apiKey, maxRetries: 0 }));
        return undefined;
      }
      const client = clients.get(m.name);
      if (!client) throw new Error(`no client ${m.name}`);
      return m.kind === 'chat' ? timeChat(client) : timeStream(client);
    };
    run().then(
      (result) => port.postMessage({ id: m.id, ...(result !== undefined ? { result } : {}) } satisfies Reply),
      (err: unknown) => port.postMessage({ id: m.id, error: (err as Error).message } satisfies Reply),
    );
  });
}

/** Named OpenAI clients living on a worker thread (its own event loop); each call is one timed request. */
export class TimingClient {
  private readonly worker = new Worker(new URL(import.meta.url));
  private readonly pending = new Map<number, { resolve: (r: Reply) => void }>();
  private next = 0;

  constructor() {
    this.worker.on('message', (r: Reply) => {
      this.pending.get(r.id)?.resolve(r);
      this.pending.delete(r.id);
    });
  }

  private async send(m: Unsent): Promise<Reply['result']> {
    const id = this.next++;
    const reply = await new Promise<Reply>((resolve) => {
      this.pending.set(id, { resolve });
      this.worker.postMessage({ ...m, id });
    });
    if (reply.error !== undefined) throw new Error(reply.error);
    return reply.result;
  }

  async client(name: string, baseURL: string, apiKey: string): Promise<void> {
    await this.send({ kind: 'client', name, baseURL, apiKey });
  }

  async chat(name: string): Promise<number> {
    return (await this.send({ kind: 'chat', name })) as number;
  }

  async stream(name: string): Promise<StreamTiming> {
    return (await this.send({ kind: 'stream', name })) as StreamTiming;
  }

  async stop(): Promise<void> {
    await this.worker.terminate();
  }
}
