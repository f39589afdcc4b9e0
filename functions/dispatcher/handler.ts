// Function entry (dispatcher): the Lambda handler, composed from the environment at cold start.
import { readRuntimeEnv } from '../../lib/runtime/env.js';
import { dispatcherWaker, makeClients, makeStores } from '../../lib/runtime/wiring.js';
import { makeDispatcherHandler } from './app.js';

const buildDefault = () => {
  const env = readRuntimeEnv(process.env);
  const clients = makeClients(env);
  return makeDispatcherHandler({
    stores: makeStores(env, clients, process.env),
    wakeSuccessor: dispatcherWaker(env, clients),
  });
};

export const handler = buildDefault();
