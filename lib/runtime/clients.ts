// Composition support: the SDK clients of one container (DynamoDB, SQS, Lambda), built once from the runtime env.
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { InvokeCommand, LambdaClient } from '@aws-sdk/client-lambda';
import { SQSClient } from '@aws-sdk/client-sqs';
import type { RuntimeEnv } from './env.js';

const LOCAL_CREDENTIALS = { accessKeyId: 'local', secretAccessKey: 'local' };

/** SDK retries: bounded, with the SDK's jittered backoff. */
const MAX_ATTEMPTS = 3;

/**
 * The clients every function's stores share; pointed at the emulators when the env names their endpoints.
 * @example const clients = makeClients(readRuntimeEnv(process.env));
 */
export const makeClients = (env: RuntimeEnv) => {
  const local = (endpoint: string | undefined) =>
    endpoint ? { endpoint, credentials: LOCAL_CREDENTIALS } : {};
  // Without a request timeout a hung call waits until the function dies; with it, the attempt fails and the
  // SDK retries (SQS long polls set their own, longer timeout per call).
  const requestHandler = {
    connectionTimeout: Math.min(2_000, env.awsRequestTimeoutMs),
    requestTimeout: env.awsRequestTimeoutMs,
    throwOnRequestTimeout: true,
  };
  return {
    dynamo: new DynamoDBClient({
      region: env.region,
      maxAttempts: MAX_ATTEMPTS,
      requestHandler,
      ...local(env.dynamoEndpoint),
    }),
    sqs: new SQSClient({
      region: env.region,
      maxAttempts: MAX_ATTEMPTS,
      requestHandler,
      ...local(env.sqsEndpoint),
    }),
    lambda: new LambdaClient({
      region: env.region,
      maxAttempts: 2,
      requestHandler,
      ...local(env.lambdaEndpoint),
    }),
  };
};

export type Clients = ReturnType<typeof makeClients>;

/** Closes the clients' connection pools (a local "container" ending; Lambda never needs it). */
export const closeClients = (clients: Clients): void => {
  clients.dynamo.destroy();
  clients.sqs.destroy();
  clients.lambda.destroy();
};

/** The doorbell's second half: an asynchronous invoke of the dispatcher (Event: no waiting, no retries here). */
export const dispatcherWaker = (env: RuntimeEnv, clients: Clients) => async (): Promise<void> => {
  await clients.lambda.send(
    new InvokeCommand({
      FunctionName: env.dispatcherFunction,
      InvocationType: 'Event',
      Payload: '{"source":"doorbell"}',
    }),
  );
};
