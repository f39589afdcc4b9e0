// Function entry (status): the Lambda handler, composed from the environment at cold start.
import { buildStatusDeps, makeStatusHandler } from './app.js';

export const handler = makeStatusHandler(buildStatusDeps());
