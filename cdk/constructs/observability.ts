// CDK construct: the CloudWatch dashboard of the gateway and its alarms (optionally mailed through SNS).
import { Duration } from 'aws-cdk-lib';
import type { RestApi } from 'aws-cdk-lib/aws-apigateway';
import {
  Alarm,
  ComparisonOperator,
  Dashboard,
  GraphWidget,
  type HorizontalAnnotation,
  type IMetric,
  MathExpression,
  Metric,
  SearchExpression,
  Stats,
  TreatMissingData,
} from 'aws-cdk-lib/aws-cloudwatch';
import { SnsAction } from 'aws-cdk-lib/aws-cloudwatch-actions';
import { Topic } from 'aws-cdk-lib/aws-sns';
import { EmailSubscription } from 'aws-cdk-lib/aws-sns-subscriptions';
import { Construct } from 'constructs';
import { PRIORITIES } from '../../lib/domain/priority.js';
import { RETREAT_STATES } from '../../lib/domain/retreat.js';
import type { PriorityQueues } from './priority-queues.js';
import { METRICS_NAMESPACE, type SluiceFunction } from './sluice-function.js';

export interface ObservabilityProps {
  api: RestApi;
  ingress: SluiceFunction;
  dispatcher: SluiceFunction;
  status: SluiceFunction;
  queues: PriorityQueues;
  /** The retreat floor the functions start with (the alarm's threshold). */
  retreatFloorRpm: number;
  /** How long at the floor before alarming. */
  retreatFloorAlarmMinutes: number;
  /** Mail alarms here (creates an SNS topic). */
  alarmEmail?: string;
}

const MINUTE = Duration.minutes(1);
const FIVE_MINUTES = Duration.minutes(5);

/** A metric the functions emit (EMF, Powertools): `service` is always a dimension. */
const sluiceMetric = (
  metricName: string,
  service: 'ingress' | 'dispatcher',
  statistic: string,
  extraDimensions: Record<string, string> = {},
  label?: string,
): Metric =>
  new Metric({
    namespace: METRICS_NAMESPACE,
    metricName,
    dimensionsMap: { service, ...extraDimensions },
    statistic,
    period: MINUTE,
    ...(label ? { label } : {}),
  });

/** Every series of a metric whose extra dimensions take values we do not want to list (priority, status class). */
const searchAll = (
  metricName: string,
  dimensions: string[],
  statistic: string,
  label: string,
): SearchExpression =>
  new SearchExpression({
    expression: `SEARCH('{${METRICS_NAMESPACE},${['service', ...dimensions].sort().join(',')}} MetricName="${metricName}"', '${statistic}', 60)`,
    label,
    period: MINUTE,
  });

/**
 * One CloudWatch dashboard — requests by priority and status class, effective vs base rate, retreat state,
 * dispatcher grants, upstream outcomes, 429 rate and latency percentiles, queue and DLQ depth, API and function
 * health — and the alarms an operator must hear about: a dead letter in any DLQ, the rate stuck at the retreat
 * floor, dispatcher errors, and the API's 5xx rate.
 */
export class Observability extends Construct {
  readonly dashboard: Dashboard;
  readonly alarms: Alarm[] = [];
  readonly alarmTopic: Topic | undefined;

  constructor(scope: Construct, id: string, props: ObservabilityProps) {
    super(scope, id);
    this.dashboard = new Dashboard(this, 'Dashboard', { defaultInterval: Duration.hours(3) });
    this.addWidgets(props);
    this.addAlarms(props);
    if (props.alarmEmail) {
      // SSE with the AWS-managed key would stop CloudWatch from publishing; the mails carry nothing sensitive.
      const topic = new Topic(this, 'AlarmTopic', { displayName: 'sluice alarms', enforceSSL: true });
      topic.addSubscription(new EmailSubscription(props.alarmEmail));
      for (const alarm of this.alarms) alarm.addAlarmAction(new SnsAction(topic));
      this.alarmTopic = topic;
    } else {
      this.alarmTopic = undefined;
    }
  }

  private addWidgets(props: ObservabilityProps): void {
    const { api, queues } = props;
    const upstreamLatency = (stat: string) =>
      sluiceMetric('upstream_latency', 'ingress', stat, { outcome: 'ok' }, `${stat} (ok)`);
    const throttled = sluiceMetric('upstream_latency', 'ingress', Stats.SAMPLE_COUNT, {
      outcome: 'throttled',
    });
    const functions = [props.ingress, props.dispatcher, props.status];

    this.dashboard.addWidgets(
      new GraphWidget({
        title: 'Requests by priority and status class (per minute)',
        left: [searchAll('requests', ['priority', 'status_class'], 'Sum', '')],
        width: 12,
        stacked: true,
      }),
      new GraphWidget({
        title: 'API requests and errors',
        left: [
          api.metricCount({ period: MINUTE, label: 'requests' }),
          api.metricClientError({ period: MINUTE, label: '4xx' }),
          api.metricServerError({ period: MINUTE, label: '5xx' }),
        ],
        width: 12,
      }),
    );
    this.dashboard.addWidgets(
      new GraphWidget({
        title: 'Effective vs base rate (rpm)',
        left: [
          sluiceMetric('effective_rpm', 'dispatcher', Stats.MINIMUM, {}, 'effective'),
          sluiceMetric('base_rpm', 'dispatcher', Stats.MAXIMUM, {}, 'base'),
        ],
        leftAnnotations: [{ value: props.retreatFloorRpm, label: 'retreat floor' }],
        leftYAxis: { min: 0 },
        width: 8,
      }),
      new GraphWidget({
        title: 'Retreat state',
        left: [sluiceMetric('retreat_state', 'dispatcher', Stats.MAXIMUM, {}, 'state')],
        leftAnnotations: RETREAT_STATES.map(
          (state, value): HorizontalAnnotation => ({ value, label: state, visible: true }),
        ),
        leftYAxis: { min: 0, max: RETREAT_STATES.length - 1, showUnits: false },
        width: 8,
      }),
      new GraphWidget({
        title: 'Dispatcher outcomes (per minute)',
        left: ['granted', 'expired', 'rejected', 'swept'].map((name) =>
          sluiceMetric(name, 'dispatcher', Stats.SUM, {}, name),
        ),
        width: 8,
      }),
    );
    this.dashboard.addWidgets(
      new GraphWidget({
        title: 'Upstream outcomes (calls per minute)',
        left: [searchAll('upstream_latency', ['outcome'], 'SampleCount', '')],
        width: 8,
        stacked: true,
      }),
      new GraphWidget({
        title: 'Upstream 429 rate (%)',
        left: [
          new MathExpression({
            expression: `100 * FILL(throttled, 0) / SUM(SEARCH('{${METRICS_NAMESPACE},outcome,service} MetricName="upstream_latency"', 'SampleCount', 60))`,
            usingMetrics: { throttled },
            label: '429 %',
            period: MINUTE,
          }),
        ],
        leftYAxis: { min: 0 },
        width: 8,
      }),
      new GraphWidget({
        title: 'Upstream latency, successful calls (ms)',
        left: [Stats.p(50), Stats.p(90), Stats.p(99)].map(upstreamLatency),
        width: 8,
      }),
    );
    this.dashboard.addWidgets(
      new GraphWidget({
        title: 'Queue depth (visible + in flight)',
        left: PRIORITIES.map(
          (priority): IMetric =>
            new MathExpression({
              expression: `visible_${priority} + inflight_${priority}`,
              usingMetrics: {
                [`visible_${priority}`]: queues.queues[priority].metricApproximateNumberOfMessagesVisible({
                  statistic: Stats.MAXIMUM,
                }),
                [`inflight_${priority}`]: queues.queues[priority].metricApproximateNumberOfMessagesNotVisible(
                  {
                    statistic: Stats.MAXIMUM,
                  },
                ),
              },
              label: priority,
              period: MINUTE,
            }),
        ),
        width: 8,
      }),
      new GraphWidget({
        title: 'Dead-letter queue depth',
        left: PRIORITIES.map((priority) =>
          queues.deadLetterQueues[priority].metricApproximateNumberOfMessagesVisible({
            statistic: Stats.MAXIMUM,
            period: MINUTE,
            label: priority,
          }),
        ),
        width: 8,
      }),
      new GraphWidget({
        title: 'Function errors and throttles',
        left: functions.map((fn) => fn.metricErrors({ period: MINUTE, label: `${fn.serviceName} errors` })),
        right: functions.map((fn) =>
          fn.metricThrottles({ period: MINUTE, label: `${fn.serviceName} throttles` }),
        ),
        width: 8,
      }),
    );
    this.dashboard.addWidgets(
      new GraphWidget({
        title: 'API latency (ms)',
        left: [
          api.metricLatency({ period: MINUTE, statistic: Stats.p(50), label: 'p50' }),
          api.metricLatency({ period: MINUTE, statistic: Stats.p(99), label: 'p99' }),
        ],
        width: 12,
      }),
      new GraphWidget({
        title: 'Function concurrency',
        left: functions.map((fn) =>
          fn.metric('ConcurrentExecutions', {
            statistic: Stats.MAXIMUM,
            period: MINUTE,
            label: fn.serviceName,
          }),
        ),
        width: 12,
      }),
    );
  }

  private addAlarms(props: ObservabilityProps): void {
    for (const priority of PRIORITIES) {
      this.alarms.push(
        new Alarm(this, `${priority[0]?.toUpperCase()}${priority.slice(1)}DeadLetterAlarm`, {
          alarmDescription: `sluice: ${priority} tickets reached the dead-letter queue (poison or repeatedly failed messages)`,
          metric: props.queues.deadLetterQueues[priority].metricApproximateNumberOfMessagesVisible({
            statistic: Stats.MAXIMUM,
            period: FIVE_MINUTES,
          }),
          threshold: 1,
          comparisonOperator: ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
          evaluationPeriods: 1,
          treatMissingData: TreatMissingData.NOT_BREACHING,
        }),
      );
    }
    const minutes = props.retreatFloorAlarmMinutes;
    this.alarms.push(
      new Alarm(this, 'RetreatAtFloorAlarm', {
        alarmDescription: `sluice: the effective rate has sat at the retreat floor (${props.retreatFloorRpm} rpm) for ${minutes} minutes: the upstream keeps answering 429`,
        metric: sluiceMetric('effective_rpm', 'dispatcher', Stats.MAXIMUM),
        threshold: props.retreatFloorRpm,
        comparisonOperator: ComparisonOperator.LESS_THAN_OR_EQUAL_TO_THRESHOLD,
        evaluationPeriods: minutes,
        datapointsToAlarm: minutes,
        // The dispatcher reports only while it runs; silence is not retreat.
        treatMissingData: TreatMissingData.NOT_BREACHING,
      }),
      new Alarm(this, 'DispatcherErrorsAlarm', {
        alarmDescription: 'sluice: the dispatcher failed (grants stop until the next wake-up)',
        metric: props.dispatcher.metricErrors({ period: FIVE_MINUTES, statistic: Stats.SUM }),
        threshold: 1,
        comparisonOperator: ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
        evaluationPeriods: 1,
        treatMissingData: TreatMissingData.NOT_BREACHING,
      }),
      new Alarm(this, 'ApiServerErrorRateAlarm', {
        alarmDescription:
          'sluice: more than 5% of API requests answered 5xx over 5 minutes (at least 20 requests)',
        metric: new MathExpression({
          expression: 'IF(requests >= 20, 100 * errors / requests, 0)',
          usingMetrics: {
            errors: props.api.metricServerError({ statistic: Stats.SUM }),
            requests: props.api.metricCount({ statistic: Stats.SUM }),
          },
          label: '5xx %',
          period: FIVE_MINUTES,
        }),
        threshold: 5,
        comparisonOperator: ComparisonOperator.GREATER_THAN_THRESHOLD,
        evaluationPeriods: 1,
        treatMissingData: TreatMissingData.NOT_BREACHING,
      }),
    );
  }
}
