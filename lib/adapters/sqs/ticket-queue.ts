// Adapter: the four SQS priority queues carrying ticket messages.
import {
  ChangeMessageVisibilityCommand,
  DeleteMessageBatchCommand,
  DeleteMessageCommand,
  GetQueueAttributesCommand,
  ReceiveMessageCommand,
  SendMessageCommand,
  type SQSClient,
} from '@aws-sdk/client-sqs';
import type { ReceivedMessage, TicketQueue } from '../../domain/ports.js';
import { isPriority, type Priority } from '../../domain/priority.js';
import type { TicketMessage } from '../../domain/tickets.js';
import { translateStoreErrors } from '../aws-errors.js';

/** A message body that is not a ticket message: left for the redrive policy to move to the DLQ. */
export class PoisonMessageError extends Error {}

export const parseTicketMessage = (body: string | undefined): TicketMessage => {
  let v: unknown;
  try {
    v = JSON.parse(body ?? '');
  } catch {
    throw new PoisonMessageError('message body is not JSON');
  }
  const m = v as Partial<TicketMessage>;
  if (
    typeof m?.ticketId !== 'string' ||
    typeof m.attempt !== 'number' ||
    !isPriority(m.priority) ||
    typeof m.agent !== 'string' ||
    typeof m.enqueuedAt !== 'number' ||
    typeof m.deadline !== 'number'
  ) {
    throw new PoisonMessageError('message is not a ticket message');
  }
  return m as TicketMessage;
};

export class SqsTicketQueue implements TicketQueue {
  constructor(
    private readonly client: SQSClient,
    private readonly urls: Record<Priority, string>,
  ) {
    translateStoreErrors(client, 'SQS');
  }

  async send(message: TicketMessage): Promise<void> {
    await this.client.send(
      new SendMessageCommand({
        QueueUrl: this.urls[message.priority],
        MessageBody: JSON.stringify(message),
        // Fair queues: one noisy agent cannot starve the others inside a priority.
        MessageGroupId: message.agent,
      }),
    );
  }

  /** Poison messages come back with `message` undefined so the caller can leave them to the DLQ. */
  async receiveRaw(
    priority: Priority,
    max: number,
    waitSeconds: number,
    signal?: AbortSignal,
  ): Promise<(ReceivedMessage | { poison: string; receipt: string; receiveCount: number })[]> {
    const res = await this.client.send(
      new ReceiveMessageCommand({
        QueueUrl: this.urls[priority],
        MaxNumberOfMessages: max,
        WaitTimeSeconds: waitSeconds,
        MessageSystemAttributeNames: ['ApproximateReceiveCount'],
      }),
      // A long poll outlasts the client's default request timeout: give it the wait plus a margin.
      { requestTimeout: (waitSeconds + 5) * 1000, ...(signal ? { abortSignal: signal } : {}) },
    );
    return (res.Messages ?? []).map((m) => {
      const receipt = m.ReceiptHandle ?? '';
      const receiveCount = Number(m.Attributes?.ApproximateReceiveCount ?? 1);
      try {
        return { message: parseTicketMessage(m.Body), receipt, receiveCount };
      } catch (err) {
        return { poison: (err as Error).message, receipt, receiveCount };
      }
    });
  }

  async receive(
    priority: Priority,
    max: number,
    waitSeconds: number,
    signal?: AbortSignal,
  ): Promise<ReceivedMessage[]> {
    const all = await this.receiveRaw(priority, max, waitSeconds, signal);
    // Poison is made visible again at once: each receive counts, so the redrive policy moves it to the DLQ
    // after maxReceiveCount quick receives instead of maxReceiveCount visibility timeouts.
    await Promise.allSettled(
      all.filter((m) => 'poison' in m).map((m) => this.extend(priority, m.receipt, 0)),
    );
    return all.filter((m): m is ReceivedMessage => 'message' in m);
  }

  async delete(priority: Priority, receipt: string): Promise<void> {
    await this.client.send(
      new DeleteMessageCommand({ QueueUrl: this.urls[priority], ReceiptHandle: receipt }),
    );
  }

  async deleteBatch(priority: Priority, receipts: readonly string[]): Promise<string[]> {
    if (receipts.length === 0) return [];
    const res = await this.client.send(
      new DeleteMessageBatchCommand({
        QueueUrl: this.urls[priority],
        Entries: receipts.map((ReceiptHandle, i) => ({ Id: String(i), ReceiptHandle })),
      }),
    );
    return (res.Failed ?? []).map((f) => receipts[Number(f.Id)]).filter((r): r is string => r !== undefined);
  }

  async extend(priority: Priority, receipt: string, seconds: number): Promise<void> {
    await this.client.send(
      new ChangeMessageVisibilityCommand({
        QueueUrl: this.urls[priority],
        ReceiptHandle: receipt,
        VisibilityTimeout: seconds,
      }),
    );
  }

  async depth(priority: Priority): Promise<{ visible: number; inFlight: number }> {
    const res = await this.client.send(
      new GetQueueAttributesCommand({
        QueueUrl: this.urls[priority],
        AttributeNames: ['ApproximateNumberOfMessages', 'ApproximateNumberOfMessagesNotVisible'],
      }),
    );
    return {
      visible: Number(res.Attributes?.ApproximateNumberOfMessages ?? 0),
      inFlight: Number(res.Attributes?.ApproximateNumberOfMessagesNotVisible ?? 0),
    };
  }
}
