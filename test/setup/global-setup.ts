// Vitest globalSetup: starts DynamoDB Local and fauxqs once per test run and hands their endpoints to tests.
import type { TestProject } from 'vitest/node';
import { startEmulators } from '../../local/emulators.js';

/** Endpoints of the emulators shared by every test file of a run. */
export interface EmulatorEndpoints {
  dynamoEndpoint: string;
  sqsEndpoint: string;
}

declare module 'vitest' {
  export interface ProvidedContext {
    /** Read in tests with `inject('emulators')` (see test/support/aws.ts). */
    emulators: EmulatorEndpoints;
  }
}

/** Starts both emulators, provides their endpoints, and returns the teardown that stops them. */
export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const emulators = await startEmulators();
  project.provide('emulators', {
    dynamoEndpoint: emulators.dynamoEndpoint,
    sqsEndpoint: emulators.sqsEndpoint,
  });
  return () => emulators.stop();
}
