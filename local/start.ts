// Local runtime CLI (`npm start`): starts everything, prints how to use it, stops cleanly on Ctrl-C.
// Keeps its data and tokens under .local/ (SLUICE_LOCAL_DIR) so agent keys survive a restart; SLUICE_IN_MEMORY=1
// (or --in-memory) runs on a throw-away database instead.
import { writeFileSync } from 'node:fs';
import { buildDashboard } from '../dashboard/build.js';
import { hashKey } from '../lib/domain/auth.js';
import {
  assertPortFree,
  ensureDir,
  localPaths,
  PortInUseError,
  readSecrets,
  removeFile,
  resolveToken,
  type SecretOrigin,
  writeSecrets,
} from './local-state.js';
import { type LocalSystem, startLocalSystem } from './runtime.js';
import { statusRoutes } from './status-routes.js';

const HOST = '127.0.0.1';
const port = Number(process.env.PORT ?? 8787);
const inMemory = process.env.SLUICE_IN_MEMORY === '1' || process.argv.includes('--in-memory');
const paths = localPaths(process.env.SLUICE_LOCAL_DIR ?? '.local');
/** How often the safety-net schedule wakes the dispatcher (as EventBridge does every minute in AWS). */
const scheduleMs = Number(process.env.SLUICE_LOCAL_SCHEDULE_S ?? 60) * 1000;

const fail = (message: string): never => {
  console.error(`\nsluice: ${message}`);
  process.exit(1);
};

try {
  await assertPortFree(port, HOST);
} catch (err) {
  fail((err as Error).message);
}
ensureDir(paths.dir);
const secrets = readSecrets(paths.secrets);
// Given through the env: used, never printed or stored. Generated: stored and printed once.
const admin = resolveToken(process.env.SLUICE_ADMIN_TOKEN, secrets.adminToken, 24);
const viewer = resolveToken(process.env.SLUICE_VIEWER_TOKEN, secrets.viewerToken, 18);
if (admin.origin === 'generated') secrets.adminToken = admin.value;
if (viewer.origin === 'generated') secrets.viewerToken = viewer.value;
writeSecrets(paths.secrets, secrets);
// The functions read the viewer token from the env, like SLUICE_ADMIN_TOKEN.
process.env.SLUICE_VIEWER_TOKEN = viewer.value;

await buildDashboard();
let system: LocalSystem;
try {
  system = await startLocalSystem({
    port,
    host: HOST,
    ...(inMemory ? {} : { dataDir: paths.dynamoData }),
    ...(process.env.UPSTREAM_URL ? { upstreamUrl: process.env.UPSTREAM_URL } : {}),
    ...(process.env.UPSTREAM_API_KEY ? { upstreamApiKey: process.env.UPSTREAM_API_KEY } : {}),
    adminToken: admin.value,
    scheduleMs,
    env: process.env,
    extraRoutes: statusRoutes,
    log: (line) => console.error(line),
  });
} catch (err) {
  if ((err as NodeJS.ErrnoException).code === 'EADDRINUSE') fail(new PortInUseError(port).message);
  throw err;
}

// The demo key lives in the kept database: reuse it while that still knows it, else create (and print) a new one.
let demoOrigin: SecretOrigin = 'stored';
let demoKey = inMemory ? undefined : secrets.demoKey;
if (demoKey === undefined || (await system.stores.keys.get(hashKey(demoKey))) === undefined) {
  demoKey = await system.createKey('demo', 'urgent');
  demoOrigin = 'generated';
  if (!inMemory) writeSecrets(paths.secrets, { ...secrets, demoKey });
}
// Lets `npm run keys` find this running system's key table.
writeFileSync(
  paths.runtime,
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

const shown = (what: SecretOrigin, value: string, envName: string): string =>
  what === 'generated' ? value : what === 'env' ? `(from ${envName})` : `(unchanged: in ${paths.secrets})`;
const base = `${system.url}/v1`;
// A fragment never reaches the server: the dashboard reads the token from it and forgets it.
const dashboard = viewer.origin === 'generated' ? `${system.url}/#token=${viewer.value}` : `${system.url}/`;
const key = demoOrigin === 'generated' ? demoKey : '$SLUICE_KEY';
console.log(`
sluice local system
  API (OpenAI-compatible): ${base}
  upstream:                ${system.upstream ? `simulated NVIDIA-like upstream at ${system.upstreamUrl}` : system.upstreamUrl}
  data:                    ${inMemory ? 'in memory (lost when stopped)' : `${paths.dynamoData} (kept across restarts)`}
  dashboard:               ${dashboard}  (sign in with the viewer or the admin token)
  viewer token:            ${shown(viewer.origin, viewer.value, 'SLUICE_VIEWER_TOKEN')}
  admin token:             ${shown(admin.origin, admin.value, 'SLUICE_ADMIN_TOKEN')}
  demo agent key:          ${shown(demoOrigin, demoKey, '')}

  curl ${base}/chat/completions -H "Authorization: Bearer ${key}" -H "Content-Type: application/json" \\
    -H "X-Priority: high" -d '{"model":"meta/llama-3.1-8b-instruct","messages":[{"role":"user","content":"hi"}]}'

  node -e 'const O=require("openai");new O({baseURL:"${base}",apiKey:${demoOrigin === 'generated' ? `"${key}"` : 'process.env.SLUICE_KEY'}}).chat.completions.create({model:"meta/llama-3.1-8b-instruct",messages:[{role:"user",content:"hi"}]}).then(r=>console.log(r.choices[0].message.content))'

sluice ready at ${system.url}
`);

let stopping = false;
const shutdown = async (signal: string) => {
  if (stopping) return;
  stopping = true;
  const started = Date.now();
  console.error(`\n${signal}: stopping…`);
  removeFile(paths.runtime);
  await system.stop();
  console.error(`stopped in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  process.exit(0);
};
process.on('SIGINT', () => void shutdown('SIGINT'));
process.on('SIGTERM', () => void shutdown('SIGTERM'));
process.on('SIGHUP', () => void shutdown('SIGHUP'));
