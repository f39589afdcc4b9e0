// Bench support: a fleet of agents with a priority mix, driven in a closed loop or by an open-loop schedule,
// each request recorded with its modelled start and end.
import OpenAI from 'openai';
import { PRIORITIES, type Priority } from '../../lib/domain/priority.js';
import { type Prng, prng, type SimClock, simClock, sleep, type TimeScale } from './sim.js';

/** Share of agents per priority (the issue's mix). */
export const PRIORITY_MIX: Readonly<Record<Priority, number>> = {
  urgent: 0.1,
  high: 0.2,
  normal: 0.5,
  low: 0.2,
};

export const BENCH_MODEL = 'meta/llama-3.1-8b-instruct';

/** Priorities of `m` agents in the mix's proportions (largest remainder), most urgent first. */
export const agentPriorities = (m: number): Priority[] => {
  const exact = PRIORITIES.map((p) => ({ p, n: PRIORITY_MIX[p] * m }));
  const counts = exact.map((e) => ({ p: e.p, n: Math.floor(e.n), rest: e.n - Math.floor(e.n) }));
  let left = m - counts.reduce((a, c) => a + c.n, 0);
  for (const c of [...counts].sort((a, b) => b.rest - a.rest)) {
    if (left-- <= 0) break;
    c.n++;
  }
  return counts.flatMap((c) => Array.from({ length: c.n }, () => c.p));
};

/** One agent request as the bench saw it (modelled ms since the run started). */
export interface RequestRecord {
  id: string;
  agent: number;
  priority: Priority;
  stream: boolean;
  start: number;
  end?: number;
  ok: boolean;
  /** Why it failed at the agent (after the client's own retries). */
  error?: string;
  /**
   * Still waiting in the queue or running when the run ended: *unserved* — counted per priority in every table
   * (a request nobody answered within the run is no success, whatever it would have become later).
   */
  cut: boolean;
  /** Every HTTP attempt the agent's client made for it (modelled ms): its retries and their answers. */
  attempts?: AttemptRecord[];
}

/** One HTTP attempt of a request: when it was sent, when its answer's headers came, status and error code. */
export interface AttemptRecord {
  start: number;
  end: number;
  status: number;
  code?: string;
  /** sluice's `x-sluice-queue-ms` (enqueue → grant) on an answer, when its headers came after the grant. */
  queueMs?: number;
}

/** Attempts seen by the bench clients' fetch, by request id (real ms), until the run picks them up. */
const attemptLog = new Map<string, AttemptRecord[]>();

const requestIdOf = (init: RequestInit | undefined): string | undefined =>
  parseBenchUserAgent(new Headers(init?.headers).get('user-agent'))?.id;

export interface SendRequest {
  id: string;
  agent: number;
  priority: Priority;
  stream: boolean;
  signal: AbortSignal;
  /** The user message; unset = one of its own (`bench <id>`). Shared prompts repeat across agents. */
  prompt?: string;
}
export type Send = (req: SendRequest) => Promise<void>;

interface WorkloadBase {
  agents: number;
  /** Modelled run length. */
  durationMs: number;
  streamFraction: number;
  seed: number;
  /**
   * Share of requests that repeat a prompt: drawn from a pool of `repeatPool` prompts shared by every agent (the
   * response cache's bench); the others are unique. Drawn from its own seeded stream, so think times and streaming
   * stay those of the same workload without repeats. @default 0
   */
  repeatFraction?: number;
  /** @default 10 */
  repeatPool?: number;
}
export interface ClosedLoopWorkload extends WorkloadBase {
  kind: 'closed';
  /** Think time before each request (modelled ms). */
  thinkMs: (rng: Prng) => number;
}
export interface OpenLoopWorkload extends WorkloadBase {
  kind: 'open';
  /** Arrivals (modelled ms, ascending) and the agent that sends each. */
  arrivals: { at: number; agent: number }[];
}
export type Workload = ClosedLoopWorkload | OpenLoopWorkload;

export interface WorkloadRun {
  records: RequestRecord[];
  clock: SimClock;
}

export interface RunOptions {
  /** Called about every `tickMs` real ms with the records so far (progress line). */
  onTick?: (records: readonly RequestRecord[], clock: SimClock) => void;
  /** @default 5000 */
  tickMs?: number;
  /** Share a modelled clock with other runs (side-by-side runs). @default a new clock started now */
  clock?: SimClock;
}

/** Runs a workload against one setup. Requests still waiting or running at the end are aborted, marked `cut`. */
export const runWorkload = async (
  w: Workload,
  send: Send,
  scale: TimeScale,
  opts: RunOptions = {},
): Promise<WorkloadRun> => {
  const { onTick, tickMs = 5_000 } = opts;
  const priorities = agentPriorities(w.agents);
  const records: RequestRecord[] = [];
  attemptLog.clear();
  const stop = new AbortController();
  const clock = opts.clock ?? simClock(scale);
  const ticker = onTick ? setInterval(() => onTick(records, clock), tickMs) : undefined;
  const endTimer = setTimeout(() => stop.abort(), scale.real(w.durationMs - clock.now()));
  const inFlight = new Set<Promise<void>>();

  const promptRngs = new Map<number, Prng>();
  const promptOf = (agent: number): string | undefined => {
    if (!w.repeatFraction) return undefined;
    let rng = promptRngs.get(agent);
    if (!rng) {
      rng = prng(w.seed * 104_729 + agent);
      promptRngs.set(agent, rng);
    }
    return rng.chance(w.repeatFraction) ? `bench shared ${rng.int(w.repeatPool ?? 10)}` : undefined;
  };

  const one = async (agent: number, n: number, stream: boolean): Promise<void> => {
    const rec: RequestRecord = {
      id: `${agent}-${n}`,
      agent,
      priority: priorities[agent] ?? 'normal',
      stream,
      start: clock.now(),
      ok: false,
      cut: false,
    };
    records.push(rec);
    try {
      const prompt = promptOf(agent);
      await send({
        id: rec.id,
        agent,
        priority: rec.priority,
        stream,
        signal: stop.signal,
        ...(prompt !== undefined ? { prompt } : {}),
      });
      rec.ok = true;
    } catch (err) {
      rec.error = errorKind(err);
    }
    rec.end = clock.now();
    if (stop.signal.aborted && !rec.ok && rec.end >= w.durationMs - 1) rec.cut = true;
    const attempts = attemptLog.get(rec.id);
    attemptLog.delete(rec.id);
    if (attempts)
      rec.attempts = attempts.map((a) => ({
        ...a,
        start: clock.at(a.start),
        end: clock.at(a.end),
        ...(a.queueMs !== undefined ? { queueMs: scale.sim(a.queueMs) } : {}),
      }));
  };

  if (w.kind === 'closed') {
    await Promise.all(
      priorities.map(async (_, agent) => {
        const rng = prng(w.seed * 7_919 + agent);
        // Agents start spread over one think time, not in lockstep.
        await sleep(scale.real(rng.next() * w.thinkMs(rng)), stop.signal);
        for (let n = 0; !stop.signal.aborted; n++) {
          const stream = rng.chance(w.streamFraction);
          const think = w.thinkMs(rng);
          if (clock.now() >= w.durationMs) break;
          await one(agent, n, stream);
          await sleep(scale.real(think), stop.signal);
        }
      }),
    );
  } else {
    const rng = prng(w.seed);
    const counters = new Array(w.agents).fill(0) as number[];
    for (const a of w.arrivals) {
      await sleep(scale.real(a.at) - (Date.now() - clock.startReal), stop.signal);
      if (stop.signal.aborted) break;
      const n = counters[a.agent] ?? 0;
      counters[a.agent] = n + 1;
      const p = one(a.agent, n, rng.chance(w.streamFraction)).finally(() => inFlight.delete(p));
      inFlight.add(p);
    }
    await new Promise<void>((resolve) => {
      if (stop.signal.aborted) resolve();
      else stop.signal.addEventListener('abort', () => resolve(), { once: true });
    });
    await Promise.all([...inFlight]);
  }
  clearTimeout(endTimer);
  clearInterval(ticker);
  return { records, clock };
};

/** Poisson arrivals at `rpm` plus a burst of `burst.size` every `burst.everyMs`, spread over `burst.spreadMs`. */
export const burstyArrivals = (opts: {
  agents: number;
  durationMs: number;
  rpm: number;
  burst: { size: number; everyMs: number; spreadMs: number };
  seed: number;
}): { at: number; agent: number }[] => {
  const rng = prng(opts.seed * 31 + 1);
  const out: { at: number; agent: number }[] = [];
  for (
    let t = rng.exponential(60_000 / opts.rpm);
    t < opts.durationMs;
    t += rng.exponential(60_000 / opts.rpm)
  ) {
    out.push({ at: t, agent: rng.int(opts.agents) });
  }
  for (let b = opts.burst.everyMs / 2; b < opts.durationMs; b += opts.burst.everyMs) {
    for (let i = 0; i < opts.burst.size; i++)
      out.push({ at: b + rng.next() * opts.burst.spreadMs, agent: rng.int(opts.agents) });
  }
  return out.sort((a, b) => a.at - b.at);
};

const errorKind = (err: unknown): string => {
  if (err instanceof OpenAI.APIError) {
    const code = (err.error as { code?: unknown } | undefined)?.code;
    return `${err.status ?? 'error'}${typeof code === 'string' ? ` ${code}` : ''}`;
  }
  return (err as Error).name === 'AbortError' ? 'aborted' : ((err as Error).message ?? 'error').slice(0, 60);
};

/** The User-Agent that tags a request at the upstream (sluice forwards it): `sluice-bench/<id>/<priority>`. */
export const benchUserAgent = (id: string, priority: Priority) => `sluice-bench/${id}/${priority}`;

export const parseBenchUserAgent = (ua: unknown): { id: string; priority: Priority } | undefined => {
  const m = typeof ua === 'string' ? /^sluice-bench\/([^/]+)\/(urgent|high|normal|low)$/.exec(ua) : null;
  return m ? { id: m[1] as string, priority: m[2] as Priority } : undefined;
};

/**
 * An `openai` client for the bench: default retries, with its backoff and the server's retry hints
 * (`retry-after-ms`, `retry-after`) divided by the time scale, so waiting keeps its modelled length.
 */
export const benchClient = (opts: {
  baseURL: string;
  apiKey: string;
  scale: TimeScale;
  /** Wraps every HTTP attempt (client-side limiters). */
  fetch?: (url: string | URL | Request, init?: RequestInit) => Promise<Response>;
}): OpenAI => {
  const inner = opts.fetch ?? ((url, init) => fetch(url, init));
  const k = opts.scale.factor;
  const client = new OpenAI({
    baseURL: opts.baseURL,
    apiKey: opts.apiKey,
    fetch: async (url: string | URL | Request, init?: RequestInit) => {
      const sent = Date.now();
      const res = await inner(url, init);
      const id = requestIdOf(init);
      if (id) {
        // The error code of a refusal (small JSON bodies): time to refusal is reported per code and priority.
        let code: string | undefined;
        if (res.status >= 400) {
          try {
            const body = JSON.parse(await res.clone().text()) as { error?: { code?: unknown } };
            if (typeof body.error?.code === 'string') code = body.error.code;
          } catch {
            // Not JSON: the status alone.
          }
        }
        const queued = Number(res.headers.get('x-sluice-queue-ms') ?? Number.NaN);
        const list = attemptLog.get(id) ?? [];
        list.push({
          start: sent,
          end: Date.now(),
          status: res.status,
          ...(code ? { code } : {}),
          ...(Number.isFinite(queued) ? { queueMs: queued } : {}),
        });
        attemptLog.set(id, list);
      }
      const ms = res.headers.get('retry-after-ms');
      const s = res.headers.get('retry-after');
      if (k === 1 || (ms === null && s === null)) return res;
      const headers = new Headers(res.headers);
      if (ms !== null && Number.isFinite(Number(ms))) headers.set('retry-after-ms', String(Number(ms) / k));
      if (s !== null && Number.isFinite(Number(s))) {
        headers.delete('retry-after');
        if (ms === null) headers.set('retry-after-ms', String((Number(s) * 1000) / k));
      }
      return new Response(res.body, { status: res.status, statusText: res.statusText, headers });
    },
  });
  // The client's own backoff (0.5 s doubling to 8 s, jittered) is modelled time too.
  const c = client as unknown as { calculateDefaultRetryTimeoutMillis(r: number, m: number): number };
  const backoff = c.calculateDefaultRetryTimeoutMillis.bind(client);
  c.calculateDefaultRetryTimeoutMillis = (r, m) => backoff(r, m) / k;
  return client;
};

/** One chat completion, streamed or not, tagged for the upstream; throws if the agent did not get an answer. */
export const chatRequest = async (client: OpenAI, r: SendRequest): Promise<void> => {
  const headers = { 'User-Agent': benchUserAgent(r.id, r.priority), 'X-Priority': r.priority };
  const body = {
    model: BENCH_MODEL,
    messages: [{ role: 'user' as const, content: r.prompt ?? `bench ${r.id}` }],
  };
  if (!r.stream) {
    await client.chat.completions.create(body, { headers, signal: r.signal });
    return;
  }
  const stream = await client.chat.completions.create(
    { ...body, stream: true },
    { headers, signal: r.signal },
  );
  let finished = false;
  for await (const chunk of stream) if (chunk.choices[0]?.finish_reason) finished = true;
  if (!finished) throw new Error('stream ended without a finish_reason');
};
