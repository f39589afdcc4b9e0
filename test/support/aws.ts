// Test helpers: isolated tables and queues (unique prefix) in the emulators started by test/setup/global-setup.ts.
import { randomUUID } from 'node:crypto';
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { SQSClient } from '@aws-sdk/client-sqs';
import { inject } from 'vitest';
import type { Priority } from '../../lib/domain/priority.js';
import type { ResourceNames } from '../../lib/infra/definitions.js';
import { localAwsConfig, provisionResources } from '../../local/emulators.js';
import type { EmulatorEndpoints } from '../setup/global-setup.js';

/** One test file's private resources in the shared emulators. */
export interface TestResources {
  dynamo: DynamoDBClient;
  sqs: SQSClient;
  /** The prefix every table and queue name starts with. */
  prefix: string;
  names: ResourceNames;
  dlqUrls: Record<Priority, string>;
  endpoints: EmulatorEndpoints;
  /** Closes the SDK clients' sockets (the resources stay until the emulators stop). */
  close(): void;
}

/** Retries stay low so a broken emulator fails a test quickly instead of backing off. */
const MAX_ATTEMPTS = 2;

/** Builds a DynamoDB client for the shared DynamoDB Local. */
export const testDynamoClient = (endpoints: EmulatorEndpoints = inject('emulators')): DynamoDBClient =>
  new DynamoDBClient({ ...localAwsConfig(endpoints.dynamoEndpoint), maxAttempts: MAX_ATTEMPTS });

/** Builds an SQS client for the shared fauxqs. */
export const testSqsClient = (endpoints: EmulatorEndpoints = inject('emulators')): SQSClient =>
  new SQSClient({ ...localAwsConfig(endpoints.sqsEndpoint), maxAttempts: MAX_ATTEMPTS });

/** A unique, name-safe prefix such as `t-dispatcher-1a2b3c4d`. */
export const uniquePrefix = (name: string): string => {
  const slug = name
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, '-')
    .replace(/^-+|-+$/g, '')
    .slice(0, 24);
  return `t-${slug || 'x'}-${randomUUID().slice(0, 8)}`;
};

/**
 * Creates all sluice tables and queues under a fresh prefix derived from `name`, so test files sharing the
 * emulators never see each other's data.
 */
export const testResources = async (name: string): Promise<TestResources> => {
  const endpoints = inject('emulators');
  const dynamo = testDynamoClient(endpoints);
  const sqs = testSqsClient(endpoints);
  const prefix = uniquePrefix(name);
  const { dlqUrls, ...names } = await provisionResources({ dynamo, sqs }, prefix);
  return {
    dynamo,
    sqs,
    prefix,
    names,
    dlqUrls,
    endpoints,
    close: () => {
      dynamo.destroy();
      sqs.destroy();
    },
  };
};
