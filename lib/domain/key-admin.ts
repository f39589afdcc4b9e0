// Domain use case: issuing and managing agent keys (the key is shown once; only its hash is stored).
import { formatKey, hashKey } from './auth.js';
import type { Clock } from './clock.js';
import { ValidationError } from './errors.js';
import type { AgentKey, KeyStore } from './ports.js';
import { isPriority, type Priority } from './priority.js';

export const AGENT_NAME = /^[A-Za-z0-9._-]{1,64}$/;

export class KeyAdmin {
  constructor(
    private readonly store: KeyStore,
    private readonly clock: Clock,
    private readonly random: (n: number) => Uint8Array,
  ) {}

  /** Issues a key for `agent`; returns the key (print it once) and the stored record. */
  async create(agent: string, maxPriority: string = 'high'): Promise<{ key: string; record: AgentKey }> {
    if (!AGENT_NAME.test(agent)) throw new ValidationError('agent must be 1-64 of [A-Za-z0-9._-]', 'agent');
    if (!isPriority(maxPriority))
      throw new ValidationError('max priority must be urgent, high, normal or low', 'max-priority');
    const key = formatKey(this.random(32));
    const record: AgentKey = {
      keyHash: hashKey(key),
      agent,
      maxPriority: maxPriority as Priority,
      enabled: true,
      createdAt: this.clock.now(),
    };
    await this.store.put(record);
    return { key, record };
  }

  /** Keys of one agent (or all), never the keys themselves. */
  async list(agent?: string): Promise<AgentKey[]> {
    const all = await this.store.list();
    return agent ? all.filter((k) => k.agent === agent) : all;
  }

  /** Enables or disables every key of `agent`; returns how many changed. */
  async setEnabled(agent: string, enabled: boolean): Promise<number> {
    const keys = await this.list(agent);
    if (keys.length === 0) throw new ValidationError(`no keys for agent ${agent}`, 'agent');
    for (const k of keys) await this.store.setEnabled(k.keyHash, enabled);
    return keys.length;
  }
}
