// Function entry (dispatcher): the Lambda handler, composed from the environment at cold start.
import { buildDispatcherDeps, makeDispatcherHandler } from './app.js';

export const handler = makeDispatcherHandler(buildDispatcherDeps());
