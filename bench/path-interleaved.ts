// Fast-path overhead judged on a shared machine (npx tsx bench/path-interleaved.ts [n]): one direct request, then one
// through the gateway, n times each (non-streaming, then streaming time to first byte), so both see the same load.
import OpenAI from 'openai';
import { startEmulators } from '../local/emulators.js';
import { startFakeUpstream } from '../local/fake-upstream.js';
import { startLocalSystem } from '../local/runtime.js';

const MODEL = 'meta/llama-3.1-8b-instruct';
const chat = async (c: OpenAI) => {
  const t = performance.now();
  await c.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'x' }] });
  return performance.now() - t;
};
const ttfb = async (c: OpenAI) => {
  const t = performance.now();
  const s = await c.chat.completions.create({
    model: MODEL,
    stream: true,
    messages: [{ role: 'user', content: 'x' }],
  });
  let first = 0;
  for await (const _ of s) {
    if (!first) first = performance.now() - t;
  }
  return first;
};
const p50 = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
};
const em = await startEmulators();
const up = await startFakeUpstream({
  apiKey: 'k',
  limit: null,
  maxConcurrency: null,
  tokenDelayMs: 25,
  firstByteDelayMs: 40,
});
const sys = await startLocalSystem({
  port: 0,
  prefix: 'inter',
  emulators: { dynamoEndpoint: em.dynamoEndpoint, sqsEndpoint: em.sqsEndpoint },
  upstreamUrl: `${up.url}/v1`,
  upstreamApiKey: 'k',
  scheduleMs: 0,
  env: {
    POWERTOOLS_METRICS_DISABLED: 'true',
    LOG_LEVEL: 'ERROR',
    POWERTOOLS_LOG_LEVEL: 'ERROR',
    SLUICE_UPSTREAM_LIMIT: '100000',
    SLUICE_BUCKET_BURST: '50',
  },
});
const direct = new OpenAI({ baseURL: `${up.url}/v1`, apiKey: 'k', maxRetries: 0 });
const gw = new OpenAI({
  baseURL: `${sys.url}/v1`,
  apiKey: await sys.createKey('b', 'urgent'),
  maxRetries: 0,
});
for (let i = 0; i < 5; i++) {
  await chat(direct);
  await chat(gw);
}
await sys.settled();
const n = Number(process.argv[2] ?? 30);
const d: number[] = [],
  g: number[] = [],
  dt: number[] = [],
  gt: number[] = [],
  added: number[] = [],
  addedT: number[] = [];
for (let i = 0; i < n; i++) {
  const a = await chat(direct);
  const b = await chat(gw);
  d.push(a);
  g.push(b);
  added.push(b - a);
  await sys.settled();
}
for (let i = 0; i < n; i++) {
  const a = await ttfb(direct);
  const b = await ttfb(gw);
  dt.push(a);
  gt.push(b);
  addedT.push(b - a);
  await sys.settled();
}
console.log(
  JSON.stringify({
    n,
    directP50: p50(d),
    gatewayP50: p50(g),
    addedP50: p50(added),
    directTtfbP50: p50(dt),
    gatewayTtfbP50: p50(gt),
    addedTtfbP50: p50(addedT),
  }),
);
await sys.stop();
await up.stop();
await em.stop();
