// IAM tests (CDK Template): each function's permissions, exactly — least privilege, no wildcard actions on data.
import { describe, expect, it } from 'vitest';
import type { SluiceFunction } from '../../cdk/constructs/sluice-function.js';
import { PRIORITIES } from '../../lib/domain/priority.js';
import { flatten, logicalId, permissionsOf, sluice } from './stack.js';

// Spelled out, not imported from the construct: a widened grant must fail here. No Scan, no batch, no delete.
const READ = ['dynamodb:ConditionCheckItem', 'dynamodb:DescribeTable', 'dynamodb:GetItem', 'dynamodb:Query'];
const READ_TOUCH = [...READ, 'dynamodb:UpdateItem'].sort();
const READ_WRITE = [...READ, 'dynamodb:PutItem', 'dynamodb:UpdateItem'].sort();
// The one exception: the status function may list and batch-delete the response cache (DELETE /admin/cache).
const PURGE = ['dynamodb:BatchWriteItem', 'dynamodb:Scan'];
const SECRET_READ = ['secretsmanager:DescribeSecret', 'secretsmanager:GetSecretValue'];
const XRAY = ['xray:PutTelemetryRecords', 'xray:PutTraceSegments'];
const LOG_WRITE = ['logs:CreateLogStream', 'logs:PutLogEvents'];

const { stack, template } = sluice();
const arn = (construct: Parameters<typeof logicalId>[0]): string => `<${logicalId(construct)}.Arn>`;
const ref = (construct: Parameters<typeof logicalId>[0]): string => `<${logicalId(construct)}>`;
const tables = stack.tables.tables;
const ticketsIndex = `${arn(tables.tickets)}/index/byPhase`;
const queues = (actions: string[]): Record<string, string[]> =>
  Object.fromEntries(PRIORITIES.map((p) => [arn(stack.queues.queues[p]), actions]));
const permissions = (fn: SluiceFunction) => permissionsOf(template, logicalId(fn.serviceRole));
const basics = (fn: SluiceFunction): Record<string, string[]> => ({
  '*': XRAY,
  [arn(fn.functionLogGroup)]: LOG_WRITE,
});

describe('function permissions, exactly', () => {
  it('ingress: state and tickets items (with the phase index), keys read and touched, cache items, send to the queues, upstream key, doorbell', () => {
    expect(permissions(stack.ingress.fn)).toEqual({
      ...basics(stack.ingress.fn),
      [arn(tables.state)]: READ_WRITE,
      [arn(tables.tickets)]: READ_WRITE,
      [ticketsIndex]: READ_WRITE,
      [arn(tables.keys)]: READ_TOUCH,
      [arn(tables.cache)]: READ_WRITE,
      ...queues(['sqs:GetQueueAttributes', 'sqs:GetQueueUrl', 'sqs:SendMessage']),
      [ref(stack.secrets.upstreamKey)]: SECRET_READ,
      [arn(stack.dispatcher.fn)]: ['lambda:InvokeFunction'],
    });
  });

  it('dispatcher: state and tickets items, consume the queues, invoke itself only; no keys, no secrets, no send', () => {
    expect(permissions(stack.dispatcher.fn)).toEqual({
      ...basics(stack.dispatcher.fn),
      [arn(tables.state)]: READ_WRITE,
      [arn(tables.tickets)]: READ_WRITE,
      [ticketsIndex]: READ_WRITE,
      ...queues([
        'sqs:ChangeMessageVisibility',
        'sqs:DeleteMessage',
        'sqs:GetQueueAttributes',
        'sqs:GetQueueUrl',
        'sqs:ReceiveMessage',
      ]),
      'arn:<AWS::Partition>:lambda:<AWS::Region>:<AWS::AccountId>:function:Sluice-dispatcher': [
        'lambda:InvokeFunction',
      ],
    });
  });

  it('status: state items, tickets read, keys read and touched, cache emptied only, queue depth only, the tokens (no upstream key)', () => {
    expect(permissions(stack.status.fn)).toEqual({
      ...basics(stack.status.fn),
      [arn(tables.state)]: READ_WRITE,
      [arn(tables.tickets)]: READ,
      [ticketsIndex]: READ,
      [arn(tables.keys)]: READ_TOUCH,
      [arn(tables.cache)]: PURGE,
      ...queues(['sqs:GetQueueAttributes']),
      [ref(stack.secrets.adminToken)]: SECRET_READ,
      [ref(stack.secrets.viewerToken)]: SECRET_READ,
    });
  });
});

describe('the keys table', () => {
  /** Every Allow statement of a function's policies that names `action` on `resource`. */
  const statementsFor = (fn: SluiceFunction, action: string, resource: string) =>
    Object.values(template.findResources('AWS::IAM::Policy'))
      .filter((p) =>
        (p.Properties.Roles as unknown[]).some((r) => flatten(r) === `<${logicalId(fn.serviceRole)}>`),
      )
      .flatMap((p) => p.Properties.PolicyDocument.Statement as Record<string, unknown>[])
      .filter(
        (st) =>
          [st.Action].flat().includes(action) && [st.Resource].flat().some((r) => flatten(r) === resource),
      );

  it.each([stack.ingress.fn, stack.status.fn].map((fn) => [fn.serviceName, fn] as const))(
    '%s may update lastUsedAt on a key and nothing else',
    (_name, fn) => {
      expect(statementsFor(fn, 'dynamodb:UpdateItem', arn(tables.keys))).toEqual([
        {
          Effect: 'Allow',
          Action: 'dynamodb:UpdateItem',
          Resource: expect.anything(),
          Condition: {
            'ForAllValues:StringEquals': { 'dynamodb:Attributes': ['keyHash', 'lastUsedAt'] },
            StringEqualsIfExists: { 'dynamodb:ReturnValues': ['NONE', 'UPDATED_NEW'] },
          },
        },
      ]);
    },
  );

  it('the dispatcher has no access to keys at all', () => {
    expect(permissions(stack.dispatcher.fn)[arn(tables.keys)]).toBeUndefined();
  });
});

describe('what no function may do', () => {
  const fns = [stack.ingress.fn, stack.dispatcher.fn, stack.status.fn];
  const allActions = (fn: SluiceFunction) => Object.values(permissions(fn)).flat();

  it.each(fns.map((fn) => [fn.serviceName, fn] as const))('%s has no wildcard action', (_name, fn) => {
    expect(allActions(fn).filter((a) => a.includes('*'))).toEqual([]);
  });

  it.each(fns.map((fn) => [fn.serviceName, fn] as const))(
    '%s uses the wildcard resource for X-Ray only',
    (_name, fn) => {
      expect(permissions(fn)['*']).toEqual(XRAY);
    },
  );

  it.each(fns.map((fn) => [fn.serviceName, fn] as const))(
    '%s cannot manage tables, queues or secrets',
    (_name, fn) => {
      const forbidden =
        /^(dynamodb:(Create|Delete|Update)Table|dynamodb:UpdateTimeToLive|sqs:(DeleteQueue|PurgeQueue|SetQueueAttributes|CreateQueue)|secretsmanager:(Put|Update|Delete|Create))/;
      expect(allActions(fn).filter((a) => forbidden.test(a))).toEqual([]);
    },
  );

  it('the ingress cannot delete messages, the status cannot send them, the dispatcher cannot read secrets', () => {
    expect(allActions(stack.ingress.fn)).not.toContain('sqs:DeleteMessage');
    expect(allActions(stack.ingress.fn)).not.toContain('sqs:ReceiveMessage');
    expect(allActions(stack.status.fn)).not.toContain('sqs:SendMessage');
    expect(allActions(stack.dispatcher.fn).filter((a) => a.startsWith('secretsmanager:'))).toEqual([]);
    expect(allActions(stack.dispatcher.fn)).not.toContain('sqs:SendMessage');
    expect(allActions(stack.status.fn)).not.toContain('lambda:InvokeFunction');
  });

  it('no function touches a dead-letter queue', () => {
    const dlqs = PRIORITIES.map((p) => arn(stack.queues.deadLetterQueues[p]));
    for (const fn of fns) {
      expect(Object.keys(permissions(fn)).filter((r) => dlqs.includes(r))).toEqual([]);
    }
  });

  it('the function roles carry no managed policies (no AWSLambdaBasicExecutionRole: logs go to their own group)', () => {
    for (const fn of fns) {
      const role = template.findResources('AWS::IAM::Role')[logicalId(fn.serviceRole)];
      expect(role?.Properties.ManagedPolicyArns).toBeUndefined();
    }
  });

  it('the schedule may invoke only the dispatcher', () => {
    const scheduleRole = template.findResources('AWS::IAM::Role', {
      Properties: {
        AssumeRolePolicyDocument: { Statement: [{ Principal: { Service: 'scheduler.amazonaws.com' } }] },
      },
    });
    const [roleId] = Object.keys(scheduleRole);
    expect(permissionsOf(template, roleId!)).toEqual({
      [arn(stack.dispatcher.fn)]: ['lambda:InvokeFunction'],
      [`${arn(stack.dispatcher.fn)}:*`]: ['lambda:InvokeFunction'],
    });
  });
});
