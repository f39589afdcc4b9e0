// CDK construct (stateless): the singleton dispatcher — reserved concurrency 1, woken by the doorbell and a 1-minute schedule.
import { ArnFormat, Aws, Duration, Stack } from 'aws-cdk-lib';
import { PolicyStatement, Role, ServicePrincipal } from 'aws-cdk-lib/aws-iam';
import type { CfnFunction } from 'aws-cdk-lib/aws-lambda';
import type { RetentionDays } from 'aws-cdk-lib/aws-logs';
import { Schedule, ScheduleExpression, ScheduleTargetInput } from 'aws-cdk-lib/aws-scheduler';
import { LambdaInvoke } from 'aws-cdk-lib/aws-scheduler-targets';
import { Construct } from 'constructs';
import { acknowledgeNagRule } from '../nag.js';
import { FUNCTION_ENTRIES } from '../project-paths.js';
import type { PriorityQueues } from './priority-queues.js';
import { SluiceFunction } from './sluice-function.js';
import type { StateTables } from './state-tables.js';

export interface DispatcherProps {
  tables: StateTables;
  queues: PriorityQueues;
  /** `SLUICE_*` config variables shared by all functions. */
  configEnvironment: Record<string, string>;
  logRetention: RetentionDays;
}

/** Lambda's maximum: the dispatcher keeps its lease and long polls as long as there is work. */
const DISPATCHER_TIMEOUT = Duration.minutes(15);

/**
 * The dispatcher function and what wakes it. Reserved concurrency 1 makes it a singleton (the lease in
 * DynamoDB guards the hand-over). Asynchronous invokes — the ingress's doorbell, the dispatcher's own hand-off
 * to a successor, the schedule — are dropped after 60 s and never retried: a throttled doorbell must not be
 * retried for hours, and the one-minute schedule is the safety net for any lost wake-up.
 *
 * It has a fixed physical name so that it can hand off to itself (`SLUICE_DISPATCHER_FUNCTION` and the
 * invoke permission cannot reference the function's own attributes without a cycle).
 */
export class Dispatcher extends Construct {
  readonly fn: SluiceFunction;
  readonly schedule: Schedule;
  readonly functionName: string;

  constructor(scope: Construct, id: string, props: DispatcherProps) {
    super(scope, id);
    const stack = Stack.of(this);
    this.functionName = `${stack.stackName}-dispatcher`;
    if (this.functionName.length > 64) {
      throw new Error(`stack name ${stack.stackName} is too long for the dispatcher's name (64 characters)`);
    }
    this.fn = new SluiceFunction(this, 'Function', {
      serviceName: 'dispatcher',
      entry: FUNCTION_ENTRIES.dispatcher,
      description: 'sluice dispatcher: grants tokens to queued tickets in priority order (singleton)',
      functionName: this.functionName,
      reservedConcurrentExecutions: 1,
      timeout: DISPATCHER_TIMEOUT,
      memorySize: 512,
      logRetention: props.logRetention,
      environment: { ...props.configEnvironment },
    });
    props.tables.bind(this.fn, { state: 'readWrite', tickets: 'readWrite' });
    props.queues.bindConsumer(this.fn);
    this.bindDoorbell(this.fn);
    this.fn.configureAsyncInvoke({ maxEventAge: Duration.seconds(60), retryAttempts: 0 });

    // Our own role (rather than the shared one LambdaInvoke would create at stack level) to keep it in this component.
    const scheduleRole = new Role(this, 'ScheduleRole', {
      assumedBy: new ServicePrincipal('scheduler.amazonaws.com', {
        conditions: { StringEquals: { 'aws:SourceAccount': Aws.ACCOUNT_ID } },
      }),
      description: 'sluice: lets EventBridge Scheduler invoke the dispatcher',
    });
    const target = new LambdaInvoke(this.fn, {
      role: scheduleRole,
      input: ScheduleTargetInput.fromObject({ source: 'schedule' }),
      maxEventAge: Duration.minutes(1),
      retryAttempts: 0,
    });
    this.schedule = new Schedule(this, 'SafetyNetSchedule', {
      schedule: ScheduleExpression.rate(Duration.minutes(1)),
      target,
      description: 'sluice: wake the dispatcher every minute in case a doorbell was lost',
    });
    const policy = scheduleRole.node.tryFindChild('DefaultPolicy');
    if (policy) {
      const fnLogicalId = stack.getLogicalId(this.fn.node.defaultChild as CfnFunction);
      acknowledgeNagRule(
        policy,
        `AwsSolutions-IAM5[Resource::<${fnLogicalId}.Arn>:*]`,
        'LambdaInvoke grants the function and its versions; the schedule only invokes the unqualified dispatcher.',
      );
    }
  }

  /**
   * The doorbell: `SLUICE_DISPATCHER_FUNCTION` plus `lambda:InvokeFunction` on the unqualified dispatcher only
   * (no versions, no other function).
   */
  bindDoorbell(fn: SluiceFunction): void {
    fn.addEnvironment('SLUICE_DISPATCHER_FUNCTION', this.functionName);
    const dispatcherArn =
      fn === this.fn
        ? Stack.of(this).formatArn({
            service: 'lambda',
            resource: 'function',
            resourceName: this.functionName,
            arnFormat: ArnFormat.COLON_RESOURCE_NAME,
          })
        : this.fn.functionArn;
    fn.addToRolePolicy(
      new PolicyStatement({ actions: ['lambda:InvokeFunction'], resources: [dispatcherArn] }),
    );
  }
}
