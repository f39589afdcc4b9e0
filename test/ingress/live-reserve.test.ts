// The reserve is live config in the ingress: a PATCH of reserve_fraction reaches the bucket of every upstream the
// fast path meters with (each lane's, not only the first upstream's), from the same cached config.
import { describe, expect, it } from 'vitest';
import { MemoryBucketStore } from '../../lib/adapters/memory/stores.js';
import type { Admission } from '../../lib/domain/admission.js';
import type { KeyAuthenticator } from '../../lib/domain/auth.js';
import { TokenBucket } from '../../lib/domain/bucket.js';
import { FakeClock } from '../../lib/domain/clock.js';
import { DEFAULT_CONFIG } from '../../lib/domain/config.js';
import type { ConfigService } from '../../lib/domain/config-service.js';
import type { OutcomeStore } from '../../lib/domain/ports.js';
import type { RetreatController } from '../../lib/domain/retreat-controller.js';
import type { UpstreamLane } from '../../lib/domain/upstream-lanes.js';
import type { UpstreamClient } from '../../lib/domain/upstream-port.js';
import { IngressService } from '../../lib/ingress/service.js';

const BURST = 4;

/** A bucket whose state is known (burst 4), with the cold-start reserve 0.5: LOW may take 2 of the 4. */
const knownBucket = async (clock: FakeClock) => {
  const store = new MemoryBucketStore();
  store.state = { intervalMs: 1_000, burst: BURST };
  const bucket = new TokenBucket(store, clock, { fraction: 0.5, forNormal: false });
  await bucket.refresh();
  return bucket;
};

describe('ingress: live reserve on every lane', () => {
  it.each([
    [0, BURST],
    [0.25, 3],
    [0.5, 2],
  ])(
    'reserve_fraction %s: LOW may take %i of the burst on the first upstream and on the second',
    async (fraction, low) => {
      // Prepare: two lanes built with the cold-start reserve; the cached config says `fraction`.
      const clock = new FakeClock(0);
      const first = await knownBucket(clock);
      const second = await knownBucket(clock);
      const lane = (name: string, bucket: TokenBucket, primary: boolean): UpstreamLane => ({
        name,
        primary,
        bucket,
        retreat: {} as RetreatController,
        outcomes: {} as OutcomeStore,
      });
      const service = new IngressService({
        auth: {
          authenticate: async () => ({
            keyHash: 'h',
            agent: 'a',
            maxPriority: 'urgent',
            enabled: true,
            createdAt: 0,
          }),
        } as unknown as KeyAuthenticator,
        config: { config: async () => ({ ...DEFAULT_CONFIG, reserveFraction: fraction }) } as ConfigService,
        admission: {} as Admission,
        bucket: first,
        outcomes: {} as OutcomeStore,
        upstream: {} as UpstreamClient,
        upstreamKey: async () => undefined,
        routes: [],
        upstreams: new Map(),
        lanes: [lane('one', first, true), lane('two', second, false)],
        clock,
        telemetry: { request: () => {}, upstream: () => {} },
        log: { warn: () => {}, error: () => {} },
      });

      // Act: any request that reads the config (this path is not forwarded: a 404 before any store is touched).
      const reply = await service.handle({
        requestId: 'r',
        method: 'GET',
        path: '/v1/not-forwarded',
        headers: { authorization: 'Bearer k' },
        body: null,
        isBase64Encoded: false,
        signal: new AbortController().signal,
        remainingMs: 60_000,
      });

      // Assess
      expect(reply.status).toBe(404);
      expect(first.burstFor('low')).toBe(low);
      expect(second.burstFor('low')).toBe(low);
    },
  );
});
