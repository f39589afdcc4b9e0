// CLI (`npm run keys -- …`): create, list, enable, disable agent keys in the local system or in AWS.
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { DynamoKeyStore } from '../lib/adapters/dynamo/key-store.js';
import { parseBudgetLimit } from '../lib/domain/agent-budget.js';
import { systemClock } from '../lib/domain/clock.js';
import { GatewayError } from '../lib/domain/errors.js';
import { KeyAdmin } from '../lib/domain/key-admin.js';
import type { AgentKey } from '../lib/domain/ports.js';

const USAGE = `usage: npm run keys -- <create|rotate|list|budget|enable|disable> [--agent NAME] [options]
  create  --agent NAME [--max-priority urgent|high|normal|low (default normal)] [--quota-rpm N] [--quota-share F]
          [--budget-requests-day N] [--budget-tokens-day N]
          [--cache-ttl-s N]  this agent's response cache default TTL (over the config's cache_ttl_s; 0 = off)
  rotate  --agent NAME [--overlap-hours H]   new key (same cap, quota, budgets); old ones work for H hours (default 24)
  list    [--agent NAME]                     never shows keys: agent, cap, quota, budgets, created, last used
  budget  --agent NAME | --key-id ID  [--budget-requests-day N|off] [--budget-tokens-day N|off]
          sets (N) or clears (off) daily budgets on every key of the agent, or on one key; others stay
  enable | disable --key-id ID              one key (ID: the key_id prefix that list shows)
  enable | disable --agent NAME              every key of the agent

Daily budgets count per agent (all its keys together) per UTC day: requests admitted, and the tokens the answers
report (usage.total_tokens). At a limit the gateway answers 429 agent_budget_exceeded until 00:00 UTC; the
tokens budget is checked before each request, so the request that crosses it may overshoot.

Targets the running local system (its .local/runtime.json), or AWS when SLUICE_KEYS_TABLE is set
(with the usual AWS credentials and AWS_REGION). Keys are printed once and stored only as SHA-256 hashes.`;

/** Where the keys live: AWS (env) or the local runtime started by `npm start`. */
const target = (): { table: string; client: DynamoDBClient } => {
  if (process.env.SLUICE_KEYS_TABLE) {
    return { table: process.env.SLUICE_KEYS_TABLE, client: new DynamoDBClient({}) };
  }
  let local: { keysTable: string; dynamoEndpoint: string };
  try {
    local = JSON.parse(readFileSync(join(process.env.SLUICE_LOCAL_DIR ?? '.local', 'runtime.json'), 'utf8'));
  } catch {
    throw new Error(
      'No local system found (.local/runtime.json). Start it with `npm start`, or set SLUICE_KEYS_TABLE for AWS.',
    );
  }
  return {
    table: local.keysTable,
    client: new DynamoDBClient({
      endpoint: local.dynamoEndpoint,
      region: 'us-east-1',
      credentials: { accessKeyId: 'local', secretAccessKey: 'local' },
    }),
  };
};

/** `500 req/day, 1000000 tok/day`, or `-` for none. */
const budgetText = (k: AgentKey): string =>
  [
    k.budgetRequestsDay ? `${k.budgetRequestsDay} req/day` : '',
    k.budgetTokensDay ? `${k.budgetTokensDay} tok/day` : '',
  ]
    .filter(Boolean)
    .join(', ') || '-';

const main = async (): Promise<number> => {
  const { positionals, values } = parseArgs({
    allowPositionals: true,
    options: {
      agent: { type: 'string' },
      'key-id': { type: 'string' },
      'max-priority': { type: 'string' },
      'quota-rpm': { type: 'string' },
      'quota-share': { type: 'string' },
      'overlap-hours': { type: 'string' },
      'budget-requests-day': { type: 'string' },
      'budget-tokens-day': { type: 'string' },
      'cache-ttl-s': { type: 'string' },
      help: { type: 'boolean' },
    },
  });
  const [command] = positionals;
  if (values.help || !command) {
    console.log(USAGE);
    return command ? 0 : 2;
  }
  // A budget flag: N sets it, off (or 0) clears it; left out = unchanged.
  const budgetFlag = (name: 'budget-requests-day' | 'budget-tokens-day') => {
    const v = values[name];
    return v === undefined ? undefined : parseBudgetLimit(v, name);
  };
  const budget = {
    ...(budgetFlag('budget-requests-day') !== undefined
      ? { budgetRequestsDay: budgetFlag('budget-requests-day') }
      : {}),
    ...(budgetFlag('budget-tokens-day') !== undefined
      ? { budgetTokensDay: budgetFlag('budget-tokens-day') }
      : {}),
  };
  const { table, client } = target();
  const admin = new KeyAdmin(new DynamoKeyStore(client, table), systemClock, (n) => randomBytes(n));
  try {
    switch (command) {
      case 'create': {
        if (!values.agent) throw new Error('create needs --agent NAME');
        const { key, record } = await admin.create(
          values.agent,
          values['max-priority'] ?? 'normal',
          {
            ...(values['quota-rpm'] ? { rpm: Number(values['quota-rpm']) } : {}),
            ...(values['quota-share'] ? { share: Number(values['quota-share']) } : {}),
          },
          {
            ...(budget.budgetRequestsDay ? { budgetRequestsDay: budget.budgetRequestsDay } : {}),
            ...(budget.budgetTokensDay ? { budgetTokensDay: budget.budgetTokensDay } : {}),
          },
          values['cache-ttl-s'] !== undefined ? { ttlS: Number(values['cache-ttl-s']) } : {},
        );
        console.error(
          `created key for agent ${record.agent} (max priority ${record.maxPriority}, budgets ${budgetText(record)}); it is shown once:`,
        );
        console.log(key);
        return 0;
      }
      case 'rotate': {
        if (!values.agent) throw new Error('rotate needs --agent NAME');
        const hours = Number(values['overlap-hours'] ?? 24);
        if (!(hours >= 0)) throw new Error('--overlap-hours must be a number ≥ 0');
        const { key, expiring } = await admin.rotate(values.agent, hours * 3_600_000);
        console.error(
          `rotated ${values.agent}: ${expiring} old key(s) stop working in ${hours} h; the new key is shown once:`,
        );
        console.log(key);
        return 0;
      }
      case 'budget': {
        if (!values.agent === !values['key-id']) throw new Error('budget takes --agent NAME or --key-id ID');
        const changed = await admin.setBudget(
          values.agent ? { agent: values.agent } : { keyId: values['key-id']! },
          budget,
        );
        for (const k of changed)
          console.log(`key ${k.keyHash.slice(0, 12)} of ${k.agent}: budgets ${budgetText(k)}`);
        console.log('(cached key lookups expire within 10 s)');
        return 0;
      }
      case 'list': {
        const keys = await admin.list(values.agent);
        const iso = (t?: number) => (t === undefined ? '-' : new Date(t).toISOString());
        console.log(
          [
            'agent',
            'max_priority',
            'enabled',
            'quota',
            'budgets',
            'created',
            'last_used',
            'expires',
            'key_id',
          ].join('\t'),
        );
        for (const k of keys) {
          const quota =
            [k.quotaRpm ? `${k.quotaRpm} rpm` : '', k.quotaShare ? `${k.quotaShare * 100}%` : '']
              .filter(Boolean)
              .join(', ') || '-';
          // The hash prefix identifies a key without revealing it.
          console.log(
            [
              k.agent,
              k.maxPriority,
              k.enabled,
              quota,
              budgetText(k),
              iso(k.createdAt),
              iso(k.lastUsedAt),
              iso(k.expiresAt),
              k.keyHash.slice(0, 12),
            ].join('\t'),
          );
        }
        return 0;
      }
      case 'enable':
      case 'disable': {
        if (values['key-id'] !== undefined) {
          if (values.agent) throw new Error(`${command} takes --key-id or --agent, not both`);
          const k = await admin.setEnabledById(values['key-id'], command === 'enable');
          console.log(
            `${command}d key ${k.keyHash.slice(0, 12)} of ${k.agent} (cached lookups expire within 10 s)`,
          );
          return 0;
        }
        if (!values.agent) throw new Error(`${command} needs --key-id ID or --agent NAME`);
        const n = await admin.setEnabled(values.agent, command === 'enable');
        console.log(`${command}d ${n} key(s) of ${values.agent} (cached lookups expire within 10 s)`);
        return 0;
      }
      default:
        console.error(USAGE);
        return 2;
    }
  } finally {
    client.destroy();
  }
};

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(err instanceof GatewayError || err instanceof Error ? `error: ${err.message}` : err);
    process.exit(1);
  },
);
