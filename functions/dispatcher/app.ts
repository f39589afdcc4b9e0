// Function app (dispatcher): the reserved-concurrency-1 singleton, woken by the doorbell and a 1-minute schedule.
import { injectLambdaContext } from '@aws-lambda-powertools/logger/middleware';
import { MetricUnit } from '@aws-lambda-powertools/metrics';
import { logMetrics } from '@aws-lambda-powertools/metrics/middleware';
import middy from '@middy/core';
import type { Context } from 'aws-lambda';
import { DynamoLeaseStore } from '../../lib/adapters/dynamo/lease-store.js';
import { SqsTicketQueue } from '../../lib/adapters/sqs/ticket-queue.js';
import { systemClock } from '../../lib/domain/clock.js';
import {
  Dispatcher,
  type DispatcherDeps,
  type DispatcherTimings,
  type RunSummary,
} from '../../lib/domain/dispatcher.js';
import { RETREAT_STATES } from '../../lib/domain/retreat.js';
import { agentBuckets } from '../../lib/runtime/agent-buckets.js';
import { type Clients, dispatcherWaker, makeClients } from '../../lib/runtime/clients.js';
import { readRuntimeEnv } from '../../lib/runtime/env.js';
import { primaryUpstreamState, ticketStore, upstreamLanes } from '../../lib/runtime/lanes.js';
import { liveConfig } from '../../lib/runtime/live-config.js';
import { makeLogger, makeMetrics } from '../shared/observability.js';

/** Time kept free before the function's hard stop, to release the lease and hand over. */
const STOP_MARGIN_MS = 10_000;

/** Everything the dispatcher handler needs, built once per container (or by a test): its stores and doorbell. */
export interface DispatcherHandlerDeps
  extends Omit<DispatcherDeps, 'owner' | 'log' | 'onRetreat' | 'onUpstreamRetreat' | 'onTokens'> {
  timings?: Partial<DispatcherTimings>;
  /** Ends a run early, releasing the lease (the local runtime's clean stop). */
  stopSignal?: AbortSignal;
}

export const makeDispatcherHandler = (deps: DispatcherHandlerDeps) => {
  const logger = makeLogger('dispatcher');
  const metrics = makeMetrics('dispatcher');
  const { timings, stopSignal, ...stores } = deps;
  const run = async (_event: unknown, context: Context): Promise<RunSummary> => {
    const dispatcher = new Dispatcher(
      {
        ...stores,
        owner: context.awsRequestId,
        log: {
          info: (m, e) => logger.info(m, e ?? {}),
          warn: (m, e) => logger.warn(m, e ?? {}),
          error: (m, e) => logger.error(m, e ?? {}),
        },
        onRetreat: (record) => {
          metrics.addMetric('effective_rpm', MetricUnit.Count, record.effectiveRpm);
          metrics.addMetric('base_rpm', MetricUnit.Count, record.baseRpm);
          metrics.addMetric('retreat_state', MetricUnit.Count, RETREAT_STATES.indexOf(record.state));
          metrics.publishStoredMetrics();
        },
        // Several upstreams: the same figures per upstream, its name a dimension (at most 16 of them).
        onUpstreamRetreat: (upstream, record) => {
          const single = metrics.singleMetric();
          single.addDimension('upstream', upstream);
          single.addMetric('upstream_effective_rpm', MetricUnit.Count, record.effectiveRpm);
          const state = metrics.singleMetric();
          state.addDimension('upstream', upstream);
          state.addMetric('upstream_retreat_state', MetricUnit.Count, RETREAT_STATES.indexOf(record.state));
        },
        // Tokens per minute: the tokens held in each tpm upstream's window (per upstream when several).
        onTokens: (upstream, inWindow) => {
          // A metric of its own: published at once (the retreat figures were published before it).
          const single = metrics.singleMetric();
          if (upstream === undefined) {
            single.addMetric('tokens_in_window', MetricUnit.Count, inWindow);
            return;
          }
          single.addDimension('upstream', upstream);
          single.addMetric('upstream_tokens_in_window', MetricUnit.Count, inWindow);
        },
      },
      timings,
    );
    const summary = await dispatcher.run(
      stores.clock.now() + context.getRemainingTimeInMillis() - STOP_MARGIN_MS,
      stopSignal,
    );
    metrics.addMetric('granted', MetricUnit.Count, summary.granted);
    metrics.addMetric('expired', MetricUnit.Count, summary.expired);
    metrics.addMetric('rejected', MetricUnit.Count, summary.rejected);
    metrics.addMetric('swept', MetricUnit.Count, summary.swept);
    logger.info('dispatcher run ended', { ...summary });
    return summary;
  };
  return middy(run).use(injectLambdaContext(logger)).use(logMetrics(metrics));
};

/**
 * Composition root: the stores, the live config and the doorbell, built once per container; the env is validated
 * at cold start.
 * @param clients the container's SDK clients @default built from the env
 */
export const buildDispatcherDeps = (
  processEnv: Record<string, string | undefined> = process.env,
  clients?: Clients,
): DispatcherHandlerDeps => {
  const env = readRuntimeEnv(processEnv);
  const sdk = clients ?? makeClients(env);
  const clock = systemClock;
  const config = liveConfig(env, sdk, processEnv, clock);
  const primary = primaryUpstreamState(env, sdk, clock, config.defaults);
  const lanes = upstreamLanes(env, sdk, clock, primary, config.defaults);
  return {
    tickets: ticketStore(env, sdk),
    queue: new SqsTicketQueue(sdk.sqs, env.queueUrls),
    lease: new DynamoLeaseStore(sdk.dynamo, env.stateTable),
    bucket: primary.bucket,
    retreat: primary.retreat,
    outcomes: primary.outcomes,
    ...(lanes ? { lanes } : {}),
    config: config.service,
    clock,
    agentBucket: agentBuckets(env, sdk, clock),
    wakeSuccessor: dispatcherWaker(env, sdk),
  };
};
