// /status's upstream rows and tokens per minute (memory stores, fake clock): an upstream with tpm shows the tokens
// its grants hold in the current window, read from its bucket item once (not at all for the first upstream when
// the snapshot read its item already); one without tpm shows null and its bucket item is never read.
import { describe, expect, it } from 'vitest';
import { MemoryOutcomeStore, MemoryRetreatStore } from '../../lib/adapters/memory/stores.js';
import { FakeClock } from '../../lib/domain/clock.js';
import { configFromEnv } from '../../lib/domain/config.js';
import type { BucketState } from '../../lib/domain/gcra.js';
import { type UpstreamRowSource, upstreamRows } from '../../lib/status/upstream-rows.js';

const clock = new FakeClock();
const now = clock.now();
const config = configFromEnv({
  SLUICE_UPSTREAMS: JSON.stringify([
    { name: 'a', url: 'http://a.test/v1', limit: 40, window_s: 60, tpm: 5_000 },
    { name: 'b', url: 'http://b.test/v1', limit: 40, window_s: 60, models: ['b/'] },
    { name: 'c', url: 'http://c.test/v1', limit: 40, window_s: 60, tpm: 2_000, models: ['c/'] },
  ]),
});
const item = (entries: { at: number; tokens: number }[]): BucketState => ({
  intervalMs: 1_500,
  burst: 2,
  tokens: { entries, version: 3 },
});

describe('upstream rows: tokens in the window of each upstream with tpm', () => {
  it('reads the bucket item of a tpm upstream once, the first one from the snapshot, none without tpm', async () => {
    const reads: string[] = [];
    const source = (name: string, state: BucketState): UpstreamRowSource => ({
      name,
      retreat: new MemoryRetreatStore(),
      outcomes: new MemoryOutcomeStore(),
      inFlight: async () => 0,
      bucket: {
        get: async () => {
          reads.push(name);
          return state;
        },
      },
    });
    const rows = await upstreamRows(
      [
        source('a', item([])),
        source('b', item([{ at: now, tokens: 99 }])),
        // An entry that has left the window (61 s and more ago) no longer counts; a reservation ahead does.
        source(
          'c',
          item([
            { at: now - 70_000, tokens: 500 },
            { at: now - 10_000, tokens: 300 },
            { at: now + 1_000, tokens: 200 },
          ]),
        ),
      ],
      new Map(),
      config,
      clock,
      item([{ at: now - 1_000, tokens: 1_234 }]),
    );
    expect(rows.map((r) => [r.name, r.tpm, r.tokensInWindow])).toEqual([
      ['a', 5_000, 1_234],
      ['b', 0, null],
      ['c', 2_000, 500],
    ]);
    expect(reads).toEqual(['c']);
  });
});
