// CDK construct (stateless): the ingress function — authenticates, queues, waits for a grant, streams the upstream back.
import { Duration } from 'aws-cdk-lib';
import type { RetentionDays } from 'aws-cdk-lib/aws-logs';
import { Construct } from 'constructs';
import { FUNCTION_ENTRIES } from '../project-paths.js';
import type { Dispatcher } from './dispatcher.js';
import type { GatewaySecrets } from './gateway-secrets.js';
import type { PriorityQueues } from './priority-queues.js';
import { SluiceFunction } from './sluice-function.js';
import type { StateTables } from './state-tables.js';

export interface IngressProps {
  tables: StateTables;
  queues: PriorityQueues;
  secrets: GatewaySecrets;
  dispatcher: Dispatcher;
  /** `SLUICE_*` config variables shared by all functions. */
  configEnvironment: Record<string, string>;
  /** The dashboard's origin for CORS; none = no CORS headers. */
  allowedOrigin?: string;
  logRetention: RetentionDays;
}

/**
 * Lambda's maximum, matched by the API's streaming integration timeout: a streaming request may wait in the
 * queue behind heartbeats and then stream a long completion.
 */
export const INGRESS_TIMEOUT = Duration.minutes(15);
/** Ingress memory (MB): also what a waiting request is billed at (the status cost figure). */
export const INGRESS_MEMORY_MB = 512;

/**
 * The ingress function with exactly its access: items of the state and tickets tables (tickets' phase index
 * included), reads of the keys table, SendMessage on the four queues, the upstream key secret, and the
 * dispatcher's doorbell.
 */
export class Ingress extends Construct {
  readonly fn: SluiceFunction;

  constructor(scope: Construct, id: string, props: IngressProps) {
    super(scope, id);
    this.fn = new SluiceFunction(this, 'Function', {
      serviceName: 'ingress',
      entry: FUNCTION_ENTRIES.ingress,
      description:
        'sluice ingress: OpenAI-compatible endpoint; queues, waits for a token, streams the upstream',
      timeout: INGRESS_TIMEOUT,
      // Mostly waiting, but TLS, JSON and streaming want more than the smallest CPU share.
      memorySize: INGRESS_MEMORY_MB,
      logRetention: props.logRetention,
      environment: {
        ...props.configEnvironment,
        ...(props.allowedOrigin ? { SLUICE_ALLOWED_ORIGIN: props.allowedOrigin } : {}),
      },
    });
    props.tables.bind(this.fn, {
      state: 'readWrite',
      tickets: 'readWrite',
      keys: 'readTouch',
      cache: 'readWrite',
    });
    props.queues.bindSender(this.fn);
    props.secrets.bindUpstreamKey(this.fn);
    props.dispatcher.bindDoorbell(this.fn);
  }
}
