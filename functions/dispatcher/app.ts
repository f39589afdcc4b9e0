// Function app (dispatcher): the reserved-concurrency-1 singleton, woken by the doorbell and a 1-minute schedule.
import { injectLambdaContext } from '@aws-lambda-powertools/logger/middleware';
import { MetricUnit } from '@aws-lambda-powertools/metrics';
import { logMetrics } from '@aws-lambda-powertools/metrics/middleware';
import middy from '@middy/core';
import type { Context } from 'aws-lambda';
import { Dispatcher, type DispatcherTimings, type RunSummary } from '../../lib/domain/dispatcher.js';
import { RETREAT_STATES } from '../../lib/domain/retreat.js';
import { readRuntimeEnv } from '../../lib/runtime/env.js';
import { dispatcherWaker, makeClients, makeStores, type Stores } from '../../lib/runtime/wiring.js';
import { makeLogger, makeMetrics } from '../shared/observability.js';

/** Time kept free before the function's hard stop, to release the lease and hand over. */
const STOP_MARGIN_MS = 10_000;

export interface DispatcherHandlerDeps {
  stores: Stores;
  wakeSuccessor: () => Promise<void>;
  timings?: Partial<DispatcherTimings>;
  /** Ends a run early, releasing the lease (the local runtime's clean stop). */
  stopSignal?: AbortSignal;
}

export const makeDispatcherHandler = (deps: DispatcherHandlerDeps) => {
  const logger = makeLogger('dispatcher');
  const metrics = makeMetrics('dispatcher');
  const run = async (_event: unknown, context: Context): Promise<RunSummary> => {
    const { stores } = deps;
    const dispatcher = new Dispatcher(
      {
        tickets: stores.tickets,
        queue: stores.queue,
        lease: stores.lease,
        bucket: stores.bucket,
        retreat: stores.retreat,
        ...(stores.lanes ? { lanes: stores.lanes } : {}),
        config: stores.config,
        outcomes: stores.outcomes,
        clock: stores.clock,
        wakeSuccessor: deps.wakeSuccessor,
        agentBucket: stores.agentBucket,
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
      deps.timings,
    );
    const summary = await dispatcher.run(
      stores.clock.now() + context.getRemainingTimeInMillis() - STOP_MARGIN_MS,
      deps.stopSignal,
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

/** Composition root: clients and stores once per container; the env is validated at cold start. */
export const buildDispatcherDeps = (processEnv: Record<string, string | undefined> = process.env) => {
  const env = readRuntimeEnv(processEnv);
  const clients = makeClients(env);
  const stores = makeStores(env, clients, processEnv);
  const deps: DispatcherHandlerDeps = { stores, wakeSuccessor: dispatcherWaker(env, clients) };
  return { deps, env, clients, stores };
};
