// CLI (`npm run keys -- …`): create, list, enable, disable agent keys in the local system or in AWS.
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { DynamoKeyStore } from '../lib/adapters/dynamo/key-store.js';
import { systemClock } from '../lib/domain/clock.js';
import { GatewayError } from '../lib/domain/errors.js';
import { KeyAdmin } from '../lib/domain/key-admin.js';

const USAGE = `usage: npm run keys -- <create|list|enable|disable> [--agent NAME] [--max-priority urgent|high|normal|low]

Targets the running local system (its .local/runtime.json), or AWS when SLUICE_KEYS_TABLE is set
(with the usual AWS credentials and AWS_REGION). Keys are printed once and stored only as SHA-256 hashes.`;

/** Where the keys live: AWS (env) or the local runtime started by `npm start`. */
const target = (): { table: string; client: DynamoDBClient } => {
  if (process.env.SLUICE_KEYS_TABLE) {
    return { table: process.env.SLUICE_KEYS_TABLE, client: new DynamoDBClient({}) };
  }
  let local: { keysTable: string; dynamoEndpoint: string };
  try {
    local = JSON.parse(readFileSync('.local/runtime.json', 'utf8'));
  } catch {
    throw new Error('No local system found (.local/runtime.json). Start it with `npm start`, or set SLUICE_KEYS_TABLE for AWS.');
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

const main = async (): Promise<number> => {
  const { positionals, values } = parseArgs({
    allowPositionals: true,
    options: { agent: { type: 'string' }, 'max-priority': { type: 'string' }, help: { type: 'boolean' } },
  });
  const [command] = positionals;
  if (values.help || !command) {
    console.log(USAGE);
    return command ? 0 : 2;
  }
  const { table, client } = target();
  const admin = new KeyAdmin(new DynamoKeyStore(client, table), systemClock, (n) => randomBytes(n));
  try {
    switch (command) {
      case 'create': {
        if (!values.agent) throw new Error('create needs --agent NAME');
        const { key, record } = await admin.create(values.agent, values['max-priority'] ?? 'high');
        console.error(`created key for agent ${record.agent} (max priority ${record.maxPriority}); it is shown once:`);
        console.log(key);
        return 0;
      }
      case 'list': {
        const keys = await admin.list(values.agent);
        console.log(['agent', 'max_priority', 'enabled', 'created', 'key_id'].join('\t'));
        for (const k of keys) {
          // The hash prefix identifies a key without revealing it.
          console.log([k.agent, k.maxPriority, k.enabled, new Date(k.createdAt).toISOString(), k.keyHash.slice(0, 12)].join('\t'));
        }
        return 0;
      }
      case 'enable':
      case 'disable': {
        if (!values.agent) throw new Error(`${command} needs --agent NAME`);
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
