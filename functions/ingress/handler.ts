// Function entry (ingress): the Lambda handler, composed from the environment at cold start.
import { buildIngressDeps, makeIngressHandler } from './app.js';

export const handler = makeIngressHandler(buildIngressDeps());
