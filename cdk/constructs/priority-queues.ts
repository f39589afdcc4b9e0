// CDK construct (stateful): the four priority queues and their dead-letter queues, from lib/infra/definitions.ts.
import { Duration } from 'aws-cdk-lib';
import { Queue, QueueEncryption } from 'aws-cdk-lib/aws-sqs';
import { Construct } from 'constructs';
import type { Priority } from '../../lib/domain/priority.js';
import { PRIORITY_QUEUES } from '../../lib/infra/definitions.js';
import type { SluiceFunction } from './sluice-function.js';

/**
 * A ticket's deadline is at most the ingress timeout (15 min); a message older than an hour can only be expired.
 * Keeping it short keeps a stalled dispatcher from leaving a day of dead tickets behind.
 */
const MESSAGE_RETENTION = Duration.hours(1);
/** Dead letters are for people to read: keep them as long as SQS allows. */
const DEAD_LETTER_RETENTION = Duration.days(14);

const capitalised = (p: Priority): string => `${p[0]?.toUpperCase()}${p.slice(1)}`;

/**
 * One standard queue per priority (URGENT → LOW), each with a DLQ behind a redrive policy, SQS-managed
 * encryption and TLS-only access. The visibility timeout comes from the shared definitions: the dispatcher
 * buffers received messages and extends their visibility every 20 s to 30 s while they wait for a token.
 * Functions get the queue URLs and exactly one of three access levels through the `bind*` methods.
 */
export class PriorityQueues extends Construct {
  readonly queues: Readonly<Record<Priority, Queue>>;
  readonly deadLetterQueues: Readonly<Record<Priority, Queue>>;

  constructor(scope: Construct, id: string) {
    super(scope, id);
    const queues = {} as Record<Priority, Queue>;
    const deadLetterQueues = {} as Record<Priority, Queue>;
    for (const def of PRIORITY_QUEUES) {
      const name = capitalised(def.priority);
      const deadLetterQueue = new Queue(this, `${name}DeadLetterQueue`, {
        encryption: QueueEncryption.SQS_MANAGED,
        enforceSSL: true,
        retentionPeriod: DEAD_LETTER_RETENTION,
      });
      queues[def.priority] = new Queue(this, `${name}Queue`, {
        encryption: QueueEncryption.SQS_MANAGED,
        enforceSSL: true,
        visibilityTimeout: Duration.seconds(def.visibilityTimeoutSeconds),
        retentionPeriod: MESSAGE_RETENTION,
        // Long polling for any consumer; the dispatcher also asks for it on every receive.
        receiveMessageWaitTime: Duration.seconds(20),
        deadLetterQueue: { queue: deadLetterQueue, maxReceiveCount: def.maxReceiveCount },
      });
      deadLetterQueues[def.priority] = deadLetterQueue;
    }
    this.queues = queues;
    this.deadLetterQueues = deadLetterQueues;
  }

  /** Queue URLs plus SendMessage (the ingress enqueues and requeues tickets). */
  bindSender(fn: SluiceFunction): void {
    this.addUrls(fn);
    for (const queue of Object.values(this.queues)) queue.grantSendMessages(fn);
  }

  /** Queue URLs plus receive, delete, change visibility and attributes — not send (the dispatcher). */
  bindConsumer(fn: SluiceFunction): void {
    this.addUrls(fn);
    for (const queue of Object.values(this.queues)) queue.grantConsumeMessages(fn);
  }

  /** Queue URLs plus GetQueueAttributes only (the status snapshot's queue depth). */
  bindDepthReader(fn: SluiceFunction): void {
    this.addUrls(fn);
    for (const queue of Object.values(this.queues)) queue.grant(fn, 'sqs:GetQueueAttributes');
  }

  private addUrls(fn: SluiceFunction): void {
    for (const [priority, queue] of Object.entries(this.queues) as [Priority, Queue][]) {
      fn.addEnvironment(`SLUICE_QUEUE_${priority.toUpperCase()}_URL`, queue.queueUrl);
    }
  }
}
