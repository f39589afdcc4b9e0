// Domain: the dispatcher's bookkeeping taken off the grant's critical path — queue-message deletes in batches,
// outcome counters merged per slot — both flushed in the background and at the end of a run, never dropped.
import type { OutcomeEvent } from './outcomes.js';
import { slotOf } from './outcomes.js';
import type { OutcomeStore, TicketQueue } from './ports.js';
import type { Priority } from './priority.js';

interface Log {
  warn(message: string, extra?: Record<string, unknown>): void;
}

/** SQS takes at most this many entries per DeleteMessageBatch. */
const SQS_BATCH = 10;
/** A receipt that keeps failing is dropped after this many tries: its message comes back and is skipped then. */
const DELETE_TRIES = 3;

/**
 * Deletes of handled messages, sent as DeleteMessageBatch calls of up to ten. A grant no longer waits for its
 * delete; a delete that fails is retried, and one lost for good only brings the message back, when the
 * ticket's condition (no longer queued) makes it a skip.
 */
export class MessageDeletes {
  private readonly pending = new Map<Priority, { receipt: string; tries: number }[]>();
  private flushing: Promise<void> | undefined;
  /** DeleteMessageBatch calls made (for the benchmark). */
  calls = 0;

  constructor(
    private readonly queue: TicketQueue,
    private readonly log: Log,
  ) {}

  add(priority: Priority, receipt: string): void {
    const list = this.pending.get(priority) ?? [];
    list.push({ receipt, tries: 0 });
    this.pending.set(priority, list);
    // A full batch goes at once (in the background); smaller ones wait for the next flush.
    if (list.length >= SQS_BATCH && !this.flushing) void this.flush();
  }

  get size(): number {
    let n = 0;
    for (const l of this.pending.values()) n += l.length;
    return n;
  }

  /** Sends everything pending; resolves when done (a flush already running is awaited, then another runs). */
  async flush(): Promise<void> {
    while (this.flushing) await this.flushing;
    if (this.size === 0) return;
    this.flushing = this.send().finally(() => {
      this.flushing = undefined;
    });
    await this.flushing;
  }

  private async send(): Promise<void> {
    const work: Promise<void>[] = [];
    for (const [priority, list] of this.pending) {
      this.pending.set(priority, []);
      for (let i = 0; i < list.length; i += SQS_BATCH) {
        const batch = list.slice(i, i + SQS_BATCH);
        work.push(this.sendBatch(priority, batch));
      }
    }
    await Promise.all(work);
  }

  private async sendBatch(priority: Priority, batch: { receipt: string; tries: number }[]): Promise<void> {
    this.calls++;
    let failed: string[];
    try {
      failed = await this.queue.deleteBatch(
        priority,
        batch.map((b) => b.receipt),
      );
    } catch (err) {
      this.log.warn('delete batch failed', { error: (err as Error).message });
      failed = batch.map((b) => b.receipt);
    }
    const retry = batch.filter((b) => failed.includes(b.receipt) && ++b.tries < DELETE_TRIES);
    if (retry.length) this.pending.get(priority)!.push(...retry);
  }
}

/** Outcome events merged per 10-s slot: one write per slot and flush instead of one per grant. */
export class BufferedOutcomes {
  private readonly pending = new Map<number, OutcomeEvent[]>();
  private flushing: Promise<void> | undefined;
  /** Slot writes made (for the benchmark). */
  writes = 0;

  constructor(
    private readonly store: OutcomeStore,
    private readonly log: Log,
  ) {}

  record(now: number, event: OutcomeEvent): void {
    const slot = slotOf(now);
    const list = this.pending.get(slot) ?? [];
    list.push(event);
    this.pending.set(slot, list);
  }

  async flush(): Promise<void> {
    while (this.flushing) await this.flushing;
    if (this.pending.size === 0) return;
    this.flushing = this.send().finally(() => {
      this.flushing = undefined;
    });
    await this.flushing;
  }

  private async send(): Promise<void> {
    const slots = [...this.pending.entries()];
    this.pending.clear();
    await Promise.all(
      slots.map(async ([slot, events]) => {
        const merged = mergeEvents(events);
        this.writes++;
        try {
          await this.store.record(slot, merged);
        } catch (err) {
          // Kept for the next flush: counters are never dropped on a store hiccup.
          this.log.warn('outcome not recorded, kept for the next flush', { error: (err as Error).message });
          this.pending.set(slot, [merged, ...(this.pending.get(slot) ?? [])]);
        }
      }),
    );
  }
}

/** One event with the counts summed and the latencies of all (the store adds them per histogram bucket). */
export const mergeEvents = (events: readonly OutcomeEvent[]): OutcomeEvent => {
  const counts: Record<string, number> = {};
  const latencies: NonNullable<OutcomeEvent['latencies']> = [];
  for (const e of events) {
    for (const [k, v] of Object.entries(e.counts)) if (v) counts[k] = (counts[k] ?? 0) + v;
    if (e.latencies) latencies.push(...e.latencies);
  }
  return { counts, ...(latencies.length ? { latencies } : {}) };
};
