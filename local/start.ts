// Local runtime CLI (`npm start`): starts everything, prints how to use it, stops cleanly on Ctrl-C.
import { randomBytes } from 'node:crypto';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { buildDashboard } from '../dashboard/build.js';
import { startLocalSystem } from './runtime.js';
import { statusRoutes } from './status-routes.js';

const port = Number(process.env.PORT ?? 8787);
await buildDashboard();
// The dashboard's read-only token (the functions read it from the env, like SLUICE_ADMIN_TOKEN).
process.env.SLUICE_VIEWER_TOKEN ??= randomBytes(18).toString('base64url');
const system = await startLocalSystem({
  port,
  ...(process.env.UPSTREAM_URL ? { upstreamUrl: process.env.UPSTREAM_URL } : {}),
  ...(process.env.UPSTREAM_API_KEY ? { upstreamApiKey: process.env.UPSTREAM_API_KEY } : {}),
  ...(process.env.SLUICE_ADMIN_TOKEN ? { adminToken: process.env.SLUICE_ADMIN_TOKEN } : {}),
  env: process.env,
  extraRoutes: statusRoutes,
  log: (line) => console.error(line),
});
const key = await system.createKey('demo', 'urgent');
// Lets `npm run keys` find this running system's key table.
mkdirSync('.local', { recursive: true });
writeFileSync(
  '.local/runtime.json',
  JSON.stringify(
    {
      url: system.url,
      keysTable: system.env.SLUICE_KEYS_TABLE,
      dynamoEndpoint: system.env.SLUICE_DYNAMODB_ENDPOINT,
    },
    null,
    2,
  ),
);
const base = `${system.url}/v1`;
console.log(`
sluice local system
  API (OpenAI-compatible): ${base}
  upstream:                ${system.upstream ? `simulated NVIDIA-like upstream at ${system.upstreamUrl}` : system.upstreamUrl}
  dashboard:               ${system.url}/  (sign in with the viewer or the admin token)
  viewer token:            ${process.env.SLUICE_VIEWER_TOKEN}
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
  rmSync('.local/runtime.json', { force: true });
  await system.stop();
  process.exit(0);
};
process.on('SIGINT', () => void shutdown('SIGINT'));
process.on('SIGTERM', () => void shutdown('SIGTERM'));
