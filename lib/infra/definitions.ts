// Single source of truth for tables and queues: used by the CDK stack, the local runtime and the tests.
import type { Priority } from '../domain/priority.js';

export interface AttributeDef {
  name: string;
  type: 'S' | 'N';
}

export interface IndexDef {
  name: string;
  partitionKey: AttributeDef;
  sortKey?: AttributeDef;
}

export interface TableDef {
  /** Logical id; the physical name is `${prefix}-${id}` locally and CDK-generated in AWS. */
  id: 'state' | 'tickets' | 'keys' | 'cache';
  partitionKey: AttributeDef;
  sortKey?: AttributeDef;
  ttlAttribute?: string;
  indexes: IndexDef[];
}

/** Bucket, retreat record, config (+ history), lease, admission counter, outcome slots. */
export const STATE_TABLE: TableDef = {
  id: 'state',
  partitionKey: { name: 'pk', type: 'S' },
  sortKey: { name: 'sk', type: 'S' },
  ttlAttribute: 'expiresAt',
  indexes: [],
};

/** One item per request; `phase`/`phaseAt` form a sparse index of the non-terminal ones. */
export const TICKETS_TABLE: TableDef = {
  id: 'tickets',
  partitionKey: { name: 'id', type: 'S' },
  ttlAttribute: 'expiresAt',
  indexes: [
    {
      name: 'byPhase',
      partitionKey: { name: 'phase', type: 'S' },
      sortKey: { name: 'phaseAt', type: 'N' },
    },
  ],
};

/** SHA-256 of an agent key → agent, priority cap, enabled. */
export const KEYS_TABLE: TableDef = {
  id: 'keys',
  partitionKey: { name: 'keyHash', type: 'S' },
  indexes: [],
};

/**
 * The response cache (lib/domain/response-cache.ts): one item per `<scope>#<hash>` key, an answer (gzip) or a
 * pending mark; `expiresAt` (seconds) lets DynamoDB delete expired ones, readers judge exact expiry themselves.
 */
export const CACHE_TABLE: TableDef = {
  id: 'cache',
  partitionKey: { name: 'key', type: 'S' },
  ttlAttribute: 'expiresAt',
  indexes: [],
};

export const TABLES: readonly TableDef[] = [STATE_TABLE, TICKETS_TABLE, KEYS_TABLE, CACHE_TABLE];

export interface QueueDef {
  priority: Priority;
  /** Logical id; physical names get a prefix. */
  id: string;
  dlqId: string;
  /** Receives before a message goes to its DLQ (poison messages); each dispatcher hand-over adds one. */
  maxReceiveCount: number;
  /** Long enough for the dispatcher to buffer a message and extend it while it waits. */
  visibilityTimeoutSeconds: number;
}

const queueDef = (priority: Priority): QueueDef => ({
  priority,
  id: `queue-${priority}`,
  dlqId: `queue-${priority}-dlq`,
  maxReceiveCount: 20,
  visibilityTimeoutSeconds: 30,
});

export const PRIORITY_QUEUES: readonly QueueDef[] = [
  queueDef('urgent'),
  queueDef('high'),
  queueDef('normal'),
  queueDef('low'),
];

/** Physical resource names of one deployment (local or AWS). */
export interface ResourceNames {
  stateTable: string;
  ticketsTable: string;
  keysTable: string;
  cacheTable: string;
  queueUrls: Record<Priority, string>;
}

/** Secrets created by the stack hold a value starting with this until an operator puts the real one. */
export const SECRET_PLACEHOLDER_PREFIX = 'PLACEHOLDER-';
