// The upstream relay on stub stores and an upstream giving a fixed answer: for the relay's ordering and header tests.
import type { Admission } from '../../lib/domain/admission.js';
import type { TokenBucket } from '../../lib/domain/bucket.js';
import { FakeClock } from '../../lib/domain/clock.js';
import type { OutcomeStore } from '../../lib/domain/ports.js';
import type { Ticket } from '../../lib/domain/tickets.js';
import type { UpstreamClient } from '../../lib/domain/upstream-port.js';
import { UpstreamRelay } from '../../lib/ingress/upstream-relay.js';

/** A ticket claimed for its call, as the relay gets it. */
export const claimedTicket = (over: Partial<Ticket> = {}): Ticket => ({
  id: 't1',
  agent: 'a',
  priority: 'normal',
  model: 'm',
  stream: false,
  status: 'claimed',
  attempt: 0,
  enqueuedAt: 0,
  deadline: 60_000,
  ...over,
});

/** An upstream that answers every call with a fresh `answer()`. */
export const upstreamAnswering = (answer: () => Response): UpstreamClient => ({
  call: async () => {
    const res = answer();
    return { status: res.status, headers: res.headers, body: res.body };
  },
});

/** A relay whose stores are the given stubs (the ticket's end, the outcome count, the bucket's holds). */
export const stubRelay = (o: {
  answer: () => Response;
  admission: Partial<Admission>;
  record: OutcomeStore['record'];
  bucket?: Partial<TokenBucket>;
  clock?: FakeClock;
}) =>
  new UpstreamRelay({
    upstream: upstreamAnswering(o.answer),
    upstreamKey: async () => 'k',
    admission: o.admission as Admission,
    outcomes: { record: o.record } as unknown as OutcomeStore,
    bucket: (o.bucket ?? {}) as TokenBucket,
    clock: o.clock ?? new FakeClock(0),
    telemetry: { upstream: () => {} },
    log: { warn: () => {}, error: () => {} },
  });
