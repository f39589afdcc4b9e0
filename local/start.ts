// Local runtime CLI (`npm start`): starts everything, prints how to use it, stops cleanly on Ctrl-C.
import { startLocalSystem } from './runtime.js';

const port = Number(process.env.PORT ?? 8787);
const system = await startLocalSystem({
  port,
  ...(process.env.UPSTREAM_URL ? { upstreamUrl: process.env.UPSTREAM_URL } : {}),
  ...(process.env.UPSTREAM_API_KEY ? { upstreamApiKey: process.env.UPSTREAM_API_KEY } : {}),
  ...(process.env.SLUICE_ADMIN_TOKEN ? { adminToken: process.env.SLUICE_ADMIN_TOKEN } : {}),
  env: process.env,
  log: (line) => console.error(line),
});
const key = await system.createKey('demo', 'urgent');
const base = `${system.url}/v1`;
console.log(`
sluice local system
  API (OpenAI-compatible): ${base}
  upstream:                ${system.upstream ? `simulated NVIDIA-like upstream at ${system.upstreamUrl}` : system.upstreamUrl}
  admin token:             ${system.adminToken}
  demo agent key:          ${key}

  curl ${base}/chat/completions -H "Authorization: Bearer ${key}" -H "Content-Type: application/json" \\
    -H "X-Priority: high" -d '{"model":"meta/llama-3.1-8b-instruct","messages":[{"role":"user","content":"hi"}]}'

  node -e 'const O=require("openai");new O({baseURL:"${base}",apiKey:"${key}"}).chat.completions.create({model:"meta/llama-3.1-8b-instruct",messages:[{role:"user",content:"hi"}]}).then(r=>console.log(r.choices[0].message.content))'

sluice ready at ${system.url}
`);

let stopping = false;
const shutdown = async (signal: string) => {
  if (stopping) return;
  stopping = true;
  console.error(`\n${signal}: stopping…`);
  await system.stop();
  process.exit(0);
};
process.on('SIGINT', () => void shutdown('SIGINT'));
process.on('SIGTERM', () => void shutdown('SIGTERM'));
