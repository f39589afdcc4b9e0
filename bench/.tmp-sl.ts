import { startEmulators } from '../lib/local/emulators.js';
import { tagCalls } from './support/analysis.js';
import { sluiceSetup } from './support/setups.js';
import { timeScale } from './support/sim.js';
import { agentPriorities, runWorkload } from './support/workload.js';

process.env.POWERTOOLS_LOG_LEVEL = 'ERROR';
process.env.LOG_LEVEL = 'ERROR';
const scale = timeScale(Number(process.env.K ?? 10));
const emulators = await startEmulators();
const priorities = agentPriorities(40);
const running = await sluiceSetup('sluice').start({
  scale,
  priorities,
  limit: { requests: 40, windowMs: 60000 },
  upstream: {
    limit: { requests: 40, windowMs: scale.real(60000) },
    maxConcurrency: 32,
    firstByteDelayMs: scale.real(1000),
    tokenDelayMs: scale.real(250),
    tokensPerResponse: 12,
    retryAfterSeconds: null,
  },
  emulators,
  redis: undefined,
  runId: 'dbg' + Date.now().toString(36),
});
const run = await runWorkload(
  {
    kind: 'closed',
    agents: 40,
    durationMs: 120000,
    streamFraction: 0.5,
    seed: 42,
    thinkMs: (r) => r.uniform(0, 1000),
  },
  running.send,
  scale,
  (recs, c) => console.log(Math.round(c.now() / 1000), recs.length, recs.filter((r) => r.ok).length),
);
const calls = tagCalls(running.upstream.calls, run.clock);
console.log(
  calls.map((c) => `${(c.at / 1000).toFixed(1)}:${c.priority?.[0]}${c.accepted ? '' : '!'}`).join(' '),
);
const fails: Record<string, number> = {};
for (const r of run.records) if (!r.ok) fails[r.error ?? 'x'] = (fails[r.error ?? 'x'] ?? 0) + 1;
console.log(fails, run.records.length);
console.log(
  run.records
    .filter((r) => r.ok)
    .slice(0, 30)
    .map((r) => `${r.priority[0]} ${(r.start / 1000).toFixed(1)}→${((r.end ?? 0) / 1000).toFixed(1)}`)
    .join(', '),
);
await running.stop();
await emulators.stop();
