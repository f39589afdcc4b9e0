// Function entry (ingress): the Lambda handler, composed from the environment at cold start.
import { buildIngressService, makeIngressHandler } from './app.js';

const built = buildIngressService();
export const handler = makeIngressHandler(
  built.service,
  built.env.allowedOrigin ? { allowedOrigin: built.env.allowedOrigin } : {},
);
