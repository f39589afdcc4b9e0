// CDK construct (stateless): the status function — /status snapshot, health probes and the admin config API.
import { Duration } from 'aws-cdk-lib';
import type { RetentionDays } from 'aws-cdk-lib/aws-logs';
import { Construct } from 'constructs';
import { FUNCTION_ENTRIES } from '../project-paths.js';
import type { GatewaySecrets } from './gateway-secrets.js';
import type { PriorityQueues } from './priority-queues.js';
import { SluiceFunction } from './sluice-function.js';
import type { StateTables } from './state-tables.js';

export interface StatusServiceProps {
  tables: StateTables;
  queues: PriorityQueues;
  secrets: GatewaySecrets;
  /** `SLUICE_*` config variables shared by all functions. */
  configEnvironment: Record<string, string>;
  /** The dashboard's origin for CORS; none = no CORS headers. */
  allowedOrigin?: string;
  /** The ingress function's memory (MB), for the waiting-cost figure. */
  ingressMemoryMb: number;
  logRetention: RetentionDays;
}

/**
 * The status function with exactly its access: state items read and written (config changes, retreat reset),
 * tickets read, keys read (and `lastUsedAt` touched), queue depth (GetQueueAttributes) and nothing else on the
 * queues, and the admin and viewer tokens (the readiness probe calls the upstream's /v1/models without a key).
 */
export class StatusService extends Construct {
  readonly fn: SluiceFunction;

  constructor(scope: Construct, id: string, props: StatusServiceProps) {
    super(scope, id);
    this.fn = new SluiceFunction(this, 'Function', {
      serviceName: 'status',
      entry: FUNCTION_ENTRIES.status,
      description: 'sluice status: /status snapshot, /health, /health/ready and /admin/config',
      // Below API Gateway's 29 s default integration timeout, with room for the readiness probe.
      timeout: Duration.seconds(20),
      memorySize: 256,
      logRetention: props.logRetention,
      environment: {
        ...props.configEnvironment,
        ...(props.allowedOrigin ? { SLUICE_ALLOWED_ORIGIN: props.allowedOrigin } : {}),
        SLUICE_INGRESS_MEMORY_MB: String(props.ingressMemoryMb),
      },
    });
    // The cache only to empty it (DELETE /admin/cache): Scan and batch deletes, no item reads.
    props.tables.bind(this.fn, { state: 'readWrite', tickets: 'read', keys: 'readTouch', cache: 'purge' });
    props.queues.bindDepthReader(this.fn);
    props.secrets.bindAdminToken(this.fn);
    props.secrets.bindViewerToken(this.fn);
  }
}
