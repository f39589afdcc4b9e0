// Bench analysis: time to refusal, backlogged share of time and the work-conserving weighted share check.
import { describe, expect, it } from 'vitest';
import {
  backloggedShare,
  refusalsOf,
  type TaggedCall,
  weightedShareCheck,
} from '../../bench/support/analysis.js';
import type { RequestRecord } from '../../bench/support/workload.js';

const rec = (r: Partial<RequestRecord> & Pick<RequestRecord, 'id' | 'start'>): RequestRecord => ({
  agent: 0,
  priority: 'normal',
  stream: false,
  ok: false,
  cut: false,
  ...r,
});

describe('refusalsOf', () => {
  it('times every 429 / 503 attempt from its send, and a stream refused in its events to the request end', () => {
    const records = [
      rec({
        id: 'a',
        start: 0,
        end: 9_000,
        error: '429 queue_wait_exceeded',
        attempts: [
          { start: 0, end: 40, status: 429, code: 'queue_wait_exceeded' },
          { start: 3_000, end: 3_050, status: 429, code: 'queue_wait_exceeded' },
          { start: 8_000, end: 9_000, status: 429, code: 'queue_wait_exceeded' },
        ],
      }),
      rec({
        id: 'b',
        priority: 'low',
        start: 0,
        end: 30_000,
        error: '429 queue_wait_exceeded',
        attempts: [{ start: 100, end: 200, status: 200 }],
      }),
      // Answered: nothing refused. Cut at the end: not a refusal either.
      rec({ id: 'c', start: 0, end: 5_000, ok: true, attempts: [{ start: 0, end: 1_000, status: 200 }] }),
      rec({ id: 'd', start: 0, end: 360_000, cut: true, attempts: [{ start: 0, end: 10, status: 200 }] }),
    ];
    expect(refusalsOf(records).map((r) => [r.priority, r.ms])).toEqual([
      ['normal', 40],
      ['normal', 50],
      ['normal', 1_000],
      ['low', 29_900],
    ]);
  });
});

describe('backloggedShare', () => {
  it('the union of waiting spans (send → accepted upstream, or end) over the steady state, per priority', () => {
    const records = [
      rec({ id: 'a', start: 0, end: 50_000, ok: true }),
      rec({ id: 'b', start: 30_000, end: 80_000, ok: true }),
      rec({ id: 'u', priority: 'urgent', start: 60_000, end: 70_000, error: '429 x' }),
    ];
    const calls: TaggedCall[] = [
      { at: 40_000, accepted: true, kind: 'ok', id: 'a', priority: 'normal' },
      { at: 75_000, accepted: true, kind: 'ok', id: 'b', priority: 'normal' },
    ];
    // Steady state 0–100 s: normal waits 0–40 and 30–75 → 75 %; urgent 60–70 → 10 %.
    expect(backloggedShare(records, calls, 0, 100_000)).toMatchObject({ normal: 75, urgent: 10, low: 0 });
  });
});

describe('weightedShareCheck', () => {
  const weights = { urgent: 8, high: 4, normal: 2, low: 1 };
  it.each([
    {
      name: 'all backlogged: shares by weight',
      measured: { urgent: 21, high: 10.7, normal: 5.3, low: 3 },
      waiting: { urgent: 99, high: 99, normal: 100, low: 100 },
      want: { urgent: [21.3, true], high: [10.7, true], normal: [5.3, true], low: [2.7, true] },
    },
    {
      name: 'urgent asks for less than its share: the rest flows to the others',
      measured: { urgent: 14, high: 15, normal: 7.5, low: 3.5 },
      waiting: { urgent: 80, high: 100, normal: 100, low: 100 },
      want: { urgent: [14, null], high: [14.9, true], normal: [7.4, true], low: [3.7, true] },
    },
    {
      name: 'a backlogged priority far under its share is reported, not explained away',
      measured: { urgent: 14, high: 15, normal: 7.5, low: 3.5 },
      waiting: { urgent: 99, high: 100, normal: 100, low: 100 },
      want: { urgent: [21.3, false], high: [10.7, false], normal: [5.3, false], low: [2.7, false] },
    },
  ])('$name', ({ measured, waiting, want }) => {
    const total = Object.values(measured).reduce((a, b) => a + b, 0);
    const got = weightedShareCheck({
      weights,
      measuredRpm: measured,
      backloggedPct: waiting,
      totalRpm: total,
    });
    expect(Object.fromEntries(got.map((c) => [c.priority, [c.expectedRpm, c.withinTolerance]]))).toEqual(
      want,
    );
  });
});
