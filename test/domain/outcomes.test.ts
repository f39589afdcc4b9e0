// Outcome slots: the shards of one slot sum to what one item would have held.
import { describe, expect, it } from 'vitest';
import { emptySlot, mergeSlots, SLOT_MS, type SlotCounters } from '../../lib/domain/outcomes.js';

const slotWith = (
  slot: number,
  counts: Partial<SlotCounters['counts']>,
  upstreamHigh: number[] = [],
  upstreamHighSum = 0,
): SlotCounters => {
  const s = emptySlot(slot);
  Object.assign(s.counts, counts);
  upstreamHigh.forEach((n, i) => {
    s.hist.upstream.high[i] = n;
  });
  s.sums.upstream.high = upstreamHighSum;
  return s;
};

describe('mergeSlots', () => {
  it.each([
    ['nothing', [], []],
    ['one slot stays as it is', [slotWith(0, { ok: 2 })], [{ slot: 0, ok: 2 }]],
    [
      'shards of one slot add up',
      [slotWith(0, { ok: 2, throttled: 1 }), slotWith(0, { ok: 3 }), slotWith(0, { refused: 4 })],
      [{ slot: 0, ok: 5, throttled: 1, refused: 4 }],
    ],
    [
      'slots out of order come back in time order, each summed',
      [slotWith(SLOT_MS, { ok: 1 }), slotWith(0, { ok: 2 }), slotWith(SLOT_MS, { granted: 7 })],
      [
        { slot: 0, ok: 2 },
        { slot: SLOT_MS, ok: 1, granted: 7 },
      ],
    ],
  ])('%s', (_name, slots, expected) => {
    // Act
    const merged = mergeSlots(slots);

    // Assess
    expect(merged.map((s) => s.slot)).toEqual(expected.map((e) => e.slot));
    merged.forEach((s, i) => {
      const { slot: _slot, ...counts } = expected[i]!;
      expect(s.counts).toMatchObject(counts);
    });
  });

  it('adds histograms bucket by bucket and their sums', () => {
    // Prepare
    const shards = [slotWith(0, {}, [1, 0, 2], 300), slotWith(0, {}, [0, 4, 1, 1], 1_200)];

    // Act
    const [merged] = mergeSlots(shards);

    // Assess
    expect(merged?.hist.upstream.high.slice(0, 4)).toEqual([1, 4, 3, 1]);
    expect(merged?.sums.upstream.high).toBe(1_500);
    expect(merged?.hist.upstream.low.every((n) => n === 0)).toBe(true);
  });
});
