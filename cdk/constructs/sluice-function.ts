// CDK construct: the one shape of every sluice Lambda — Node 24 on ARM64, minified ESM bundle, own log group and role.
import { Duration, RemovalPolicy } from 'aws-cdk-lib';
import { Role, ServicePrincipal } from 'aws-cdk-lib/aws-iam';
import { Architecture, Runtime, Tracing } from 'aws-cdk-lib/aws-lambda';
import { LogLevel, NodejsFunction, OutputFormat } from 'aws-cdk-lib/aws-lambda-nodejs';
import { LogGroup, type RetentionDays } from 'aws-cdk-lib/aws-logs';
import type { Construct } from 'constructs';
import { acknowledgeNagRule } from '../nag.js';
import { LOCK_FILE, PROJECT_ROOT } from '../project-paths.js';

/** CloudWatch namespace of the functions' EMF metrics (Powertools Metrics). */
export const METRICS_NAMESPACE = 'sluice';

/** ESM bundles still meet CommonJS dependencies that call `require`: give them one. */
const CREATE_REQUIRE_BANNER =
  "import { createRequire as __sluiceCreateRequire } from 'node:module';const require = __sluiceCreateRequire(import.meta.url);";

export interface SluiceFunctionProps {
  /** Powertools service name: the `service` metric dimension and log field. */
  serviceName: string;
  /** Absolute path of the entry module; it exports `handler`. */
  entry: string;
  description: string;
  /** @default Duration.seconds(30) */
  timeout?: Duration;
  /** @default 256 */
  memorySize?: number;
  logRetention: RetentionDays;
  /** Variables beyond the Powertools ones; components add theirs with their grants. */
  environment?: Record<string, string>;
  /** @default none (unreserved) */
  reservedConcurrentExecutions?: number;
  /** Physical name, only when something must know it before the function exists. @default generated */
  functionName?: string;
}

/**
 * A `NodejsFunction` with everything sluice fixes once: runtime `nodejs24.x` on ARM64, active tracing, an ESM
 * bundle (minified, source maps, AWS SDK bundled so the tested version runs), Powertools settings, a log group
 * with retention, and its own role that may write only to that log group. Components grant the rest.
 *
 * @example
 * const fn = new SluiceFunction(this, 'Ingress', {
 *   serviceName: 'ingress', entry: FUNCTION_ENTRIES.ingress, description: 'Agent requests',
 *   logRetention: RetentionDays.ONE_MONTH,
 * });
 * queues.bindSender(fn);
 */
export class SluiceFunction extends NodejsFunction {
  /** The function's log group (also exposed by `logGroup`, typed as the concrete class here). */
  readonly functionLogGroup: LogGroup;
  readonly serviceRole: Role;
  readonly serviceName: string;

  constructor(scope: Construct, id: string, props: SluiceFunctionProps) {
    const logGroup = new LogGroup(scope, `${id}LogGroup`, {
      retention: props.logRetention,
      removalPolicy: RemovalPolicy.DESTROY,
    });
    const role = new Role(scope, `${id}Role`, {
      assumedBy: new ServicePrincipal('lambda.amazonaws.com'),
      description: `sluice ${props.serviceName} function`,
    });
    super(scope, id, {
      entry: props.entry,
      handler: 'handler',
      description: props.description,
      runtime: Runtime.NODEJS_24_X,
      architecture: Architecture.ARM_64,
      memorySize: props.memorySize ?? 256,
      timeout: props.timeout ?? Duration.seconds(30),
      tracing: Tracing.ACTIVE,
      role,
      logGroup,
      projectRoot: PROJECT_ROOT,
      depsLockFilePath: LOCK_FILE,
      ...(props.functionName ? { functionName: props.functionName } : {}),
      ...(props.reservedConcurrentExecutions !== undefined
        ? { reservedConcurrentExecutions: props.reservedConcurrentExecutions }
        : {}),
      environment: {
        NODE_OPTIONS: '--enable-source-maps',
        POWERTOOLS_SERVICE_NAME: props.serviceName,
        POWERTOOLS_METRICS_NAMESPACE: METRICS_NAMESPACE,
        POWERTOOLS_LOG_LEVEL: 'INFO',
        LOG_LEVEL: 'INFO',
        ...props.environment,
      },
      bundling: {
        format: OutputFormat.ESM,
        target: 'node24',
        mainFields: ['module', 'main'],
        banner: CREATE_REQUIRE_BANNER,
        minify: true,
        sourceMap: true,
        sourcesContent: false,
        bundleAwsSDK: true,
        logLevel: LogLevel.WARNING,
      },
    });
    logGroup.grantWrite(role);
    const tracingPolicy = role.node.tryFindChild('DefaultPolicy');
    if (tracingPolicy) {
      acknowledgeNagRule(
        tracingPolicy.node.defaultChild ?? tracingPolicy,
        'AwsSolutions-IAM5[Resource::*]',
        'X-Ray PutTraceSegments/PutTelemetryRecords support no resource-level permissions; added by active tracing.',
      );
    }
    this.functionLogGroup = logGroup;
    this.serviceRole = role;
    this.serviceName = props.serviceName;
  }
}
