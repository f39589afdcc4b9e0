// Stack tests (CDK Template assertions): API streaming, functions, dispatcher wake-ups, state, queues, secrets, outputs.
import { Match } from 'aws-cdk-lib/assertions';
import type { IConstruct } from 'constructs';
import { describe, expect, it } from 'vitest';
import { API_STAGE_NAME, GATEWAY_ERRORS } from '../../cdk/constructs/gateway-api.js';
import { UPSTREAM_KEY_PLACEHOLDER } from '../../cdk/constructs/gateway-secrets.js';
import { configFromEnv } from '../../lib/domain/config.js';
import { PRIORITIES } from '../../lib/domain/priority.js';
import { PRIORITY_QUEUES, TABLES } from '../../lib/infra/definitions.js';
import { readRuntimeEnv } from '../../lib/runtime/env.js';
import { flatten, lambdaFunctions, logicalId, sluice } from './stack.js';

const OPEN_KEY_ARN = 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:open-key-XyZ123';
const IMPORTED_KEY_ARN = 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:nvidia-key-AbCdEf';

/** A function's environment with every intrinsic replaced by a stand-in string, as Lambda would see it. */
const resolvedEnvironment = (variables: Record<string, unknown>): Record<string, string> =>
  Object.fromEntries(
    Object.entries(variables).map(([k, v]) => [k, typeof v === 'string' ? v : `resolved:${flatten(v)}`]),
  );

describe('API', () => {
  it('streams /v1/{proxy+} from the ingress through a Regional REST API with a 15-minute integration timeout', () => {
    // Prepare
    const { stack, template } = sluice();
    const ingress = logicalId(stack.ingress.fn);

    // Assess
    template.hasResourceProperties('AWS::ApiGateway::RestApi', {
      EndpointConfiguration: { Types: ['REGIONAL'] },
    });
    template.hasResourceProperties('AWS::ApiGateway::Resource', { PathPart: '{proxy+}' });
    const v1 = template.findResources('AWS::ApiGateway::Method', {
      Properties: { Integration: { ResponseTransferMode: 'STREAM' } },
    });
    expect(Object.keys(v1)).toHaveLength(1);
    const [method] = Object.values(v1) as {
      Properties: { HttpMethod: string; Integration: Record<string, unknown> };
    }[];
    expect(method?.Properties.HttpMethod).toBe('ANY');
    expect(method?.Properties.Integration).toMatchObject({
      Type: 'AWS_PROXY',
      IntegrationHttpMethod: 'POST',
      ResponseTransferMode: 'STREAM',
      TimeoutInMillis: 900_000,
    });
    const uri = flatten(method?.Properties.Integration.Uri);
    expect(uri).toContain(`/2021-11-15/functions/<${ingress}.Arn>/response-streaming-invocations`);
  });

  it('sends /status, /health, /health/ready and /admin/{proxy+} to the status function, buffered', () => {
    // Prepare
    const { stack, template } = sluice();
    const status = logicalId(stack.status.fn);

    // Act
    const methods = Object.values(template.findResources('AWS::ApiGateway::Method')) as {
      Properties: { Integration: { Uri: unknown; ResponseTransferMode?: string } };
    }[];
    const toStatus = methods.filter((m) => flatten(m.Properties.Integration.Uri).includes(`<${status}.Arn>`));

    // Assess
    expect(toStatus).toHaveLength(4);
    for (const m of toStatus) expect(m.Properties.Integration.ResponseTransferMode).toBeUndefined();
    const paths = stack.api.api.methods.map((m) => `${m.httpMethod} ${m.resource.path}`).sort();
    expect(paths).toEqual([
      'ANY /admin/{proxy+}',
      'ANY /health',
      'ANY /health/ready',
      'ANY /status',
      'ANY /v1/{proxy+}',
    ]);
  });

  it.each([...GATEWAY_ERRORS.entries()].map(([type, shape]) => [type.responseType, shape.status]))(
    'answers %s (status %s) in the OpenAI error shape, readable by the dashboard',
    (responseType, status) => {
      // Prepare
      const { stack, template } = sluice();
      const distribution = logicalId(stack.dashboardHosting!.distribution);

      // Act
      const [response] = Object.values(
        template.findResources('AWS::ApiGateway::GatewayResponse', {
          Properties: { ResponseType: responseType },
        }),
      ) as { Properties: Record<string, unknown> }[];
      const props = response!.Properties as {
        StatusCode?: string;
        ResponseTemplates: Record<string, string>;
        ResponseParameters: Record<string, unknown>;
      };
      const body = JSON.parse(
        props.ResponseTemplates['application/json']!.replace('$context.error.messageString', '"a message"'),
      );

      // Assess
      expect(props.StatusCode).toBe(status === undefined ? undefined : String(status));
      expect(body).toEqual({
        error: {
          message: expect.any(String),
          type: expect.any(String),
          param: null,
          code: expect.any(String),
        },
      });
      expect(flatten(props.ResponseParameters['gatewayresponse.header.Access-Control-Allow-Origin'])).toBe(
        `'https://<${distribution}.DomainName>'`,
      );
    },
  );

  it('has 413, DEFAULT_4XX and DEFAULT_5XX among the gateway responses', () => {
    const { template } = sluice();
    for (const responseType of ['REQUEST_TOO_LARGE', 'DEFAULT_4XX', 'DEFAULT_5XX']) {
      template.hasResourceProperties('AWS::ApiGateway::GatewayResponse', { ResponseType: responseType });
    }
    template.hasResourceProperties('AWS::ApiGateway::GatewayResponse', {
      ResponseType: 'REQUEST_TOO_LARGE',
      StatusCode: '413',
    });
  });

  it('logs access to its own log group, logs errors, traces, and throttles the stage', () => {
    const { stack, template } = sluice();
    template.hasResourceProperties('AWS::ApiGateway::Stage', {
      StageName: API_STAGE_NAME,
      TracingEnabled: true,
      AccessLogSetting: {
        DestinationArn: { 'Fn::GetAtt': [logicalId(stack.api.accessLogGroup), 'Arn'] },
        Format: Match.stringLikeRegexp('\\$context.requestId'),
      },
      MethodSettings: [
        Match.objectLike({
          LoggingLevel: 'ERROR',
          DataTraceEnabled: false,
          ThrottlingRateLimit: 50,
          ThrottlingBurstLimit: 100,
        }),
      ],
    });
  });
});

describe('functions', () => {
  it('all run nodejs24.x on arm64 with tracing, their own log group with retention, and Powertools settings', () => {
    // Prepare
    const { stack, template } = sluice();
    const fns = [stack.ingress.fn, stack.dispatcher.fn, stack.status.fn];

    // Assess
    for (const fn of fns) {
      const props = lambdaFunctions(template)[logicalId(fn)]!.Properties;
      expect(props).toMatchObject({
        Runtime: 'nodejs24.x',
        Architectures: ['arm64'],
        Handler: 'index.handler',
        TracingConfig: { Mode: 'Active' },
        LoggingConfig: { LogGroup: { Ref: logicalId(fn.functionLogGroup) } },
      });
      expect((props.Environment as { Variables: Record<string, unknown> }).Variables).toMatchObject({
        NODE_OPTIONS: '--enable-source-maps',
        POWERTOOLS_SERVICE_NAME: fn.serviceName,
        POWERTOOLS_METRICS_NAMESPACE: 'sluice',
      });
      template.hasResourceProperties('AWS::Logs::LogGroup', {
        RetentionInDays: 30,
      });
    }
    const groups = template.findResources('AWS::Logs::LogGroup');
    for (const [id, group] of Object.entries(groups)) {
      expect((group as { Properties: { RetentionInDays?: number } }).Properties.RetentionInDays, id).toBe(30);
    }
  });

  it('gives the ingress 15 minutes, matching the streaming integration', () => {
    const { stack, template } = sluice();
    const props = lambdaFunctions(template)[logicalId(stack.ingress.fn)]!.Properties;
    expect(props.Timeout).toBe(900);
    expect(props.ReservedConcurrentExecutions).toBeUndefined();
  });

  it.each(['ingress', 'dispatcher', 'status'] as const)(
    'gives the %s function every variable of its environment contract (readRuntimeEnv accepts it)',
    (name) => {
      // Prepare
      const { stack, template } = sluice();
      const fn = { ingress: stack.ingress.fn, dispatcher: stack.dispatcher.fn, status: stack.status.fn }[
        name
      ];
      const variables = (
        lambdaFunctions(template)[logicalId(fn)]!.Properties.Environment as {
          Variables: Record<string, unknown>;
        }
      ).Variables;

      // Act
      const env = resolvedEnvironment(variables);

      // Assess
      expect(() => readRuntimeEnv(env)).not.toThrow();
      expect(configFromEnv(env).upstreamLimit).toBe(40);
      expect(env.SLUICE_UPSTREAM_URL).toBe('https://integrate.api.nvidia.com/v1');
    },
  );

  it('passes the CloudFront origin to the ingress and status functions for CORS', () => {
    const { stack, template } = sluice();
    const origin = `https://<${logicalId(stack.dashboardHosting!.distribution)}.DomainName>`;
    for (const fn of [stack.ingress.fn, stack.status.fn]) {
      const variables = (
        lambdaFunctions(template)[logicalId(fn)]!.Properties.Environment as {
          Variables: Record<string, unknown>;
        }
      ).Variables;
      expect(flatten(variables.SLUICE_ALLOWED_ORIGIN)).toBe(origin);
    }
  });

  it('never puts a secret value in an environment variable: secrets travel as ARNs (Refs)', () => {
    // Prepare
    const { template } = sluice();
    const secretIds = new Set(Object.keys(template.findResources('AWS::SecretsManager::Secret')));

    // Assess
    for (const [id, fn] of Object.entries(lambdaFunctions(template))) {
      const variables = (fn.Properties.Environment as { Variables?: Record<string, unknown> } | undefined)
        ?.Variables;
      for (const [name, value] of Object.entries(variables ?? {})) {
        const text = JSON.stringify(value);
        expect(text, `${id} ${name}`).not.toContain(UPSTREAM_KEY_PLACEHOLDER);
        expect(text, `${id} ${name}`).not.toMatch(/resolve:secretsmanager|SecretString/);
        if (name.endsWith('_SECRET')) {
          const ref = (value as { Ref?: string }).Ref;
          expect(ref && secretIds.has(ref), `${id} ${name} is a Ref to a secret`).toBe(true);
        }
      }
      expect(
        Object.keys(variables ?? {}).filter((n) => /KEY$|TOKEN$/.test(n)),
        id,
      ).toEqual([]);
    }
  });
});

describe('dispatcher', () => {
  it('is a singleton: reserved concurrency 1, 15-minute timeout', () => {
    const { stack, template } = sluice();
    const props = lambdaFunctions(template)[logicalId(stack.dispatcher.fn)]!.Properties;
    expect(props.ReservedConcurrentExecutions).toBe(1);
    expect(props.Timeout).toBe(900);
    expect(props.FunctionName).toBe('Sluice-dispatcher');
  });

  it('drops asynchronous invokes after 60 s and never retries them (doorbell, hand-off, schedule)', () => {
    const { stack, template } = sluice();
    template.resourceCountIs('AWS::Lambda::EventInvokeConfig', 1);
    template.hasResourceProperties('AWS::Lambda::EventInvokeConfig', {
      FunctionName: { Ref: logicalId(stack.dispatcher.fn) },
      Qualifier: '$LATEST',
      MaximumEventAgeInSeconds: 60,
      MaximumRetryAttempts: 0,
    });
  });

  it('is woken every minute by EventBridge Scheduler, without retries', () => {
    const { stack, template } = sluice();
    template.hasResourceProperties('AWS::Scheduler::Schedule', {
      ScheduleExpression: 'rate(1 minute)',
      State: 'ENABLED',
      Target: {
        Arn: { 'Fn::GetAtt': [logicalId(stack.dispatcher.fn), 'Arn'] },
        RetryPolicy: { MaximumRetryAttempts: 0, MaximumEventAgeInSeconds: 60 },
      },
    });
  });
});

describe('state and queues', () => {
  it.each(TABLES.map((t) => [t.id, t] as const))(
    'creates the %s table from the shared definition: on demand, PITR, TTL when defined, deletion protection',
    (_id, def) => {
      const { stack, template } = sluice();
      const table = template.findResources('AWS::DynamoDB::Table')[logicalId(stack.tables.tables[def.id])];
      expect(table?.Properties.TimeToLiveSpecification).toEqual(
        def.ttlAttribute ? { AttributeName: def.ttlAttribute, Enabled: true } : undefined,
      );
      template.hasResourceProperties('AWS::DynamoDB::Table', {
        KeySchema: [
          { AttributeName: def.partitionKey.name, KeyType: 'HASH' },
          ...(def.sortKey ? [{ AttributeName: def.sortKey.name, KeyType: 'RANGE' }] : []),
        ],
        BillingMode: 'PAY_PER_REQUEST',
        PointInTimeRecoverySpecification: { PointInTimeRecoveryEnabled: true },
        DeletionProtectionEnabled: true,
        ...(def.indexes.length > 0
          ? {
              GlobalSecondaryIndexes: def.indexes.map((index) =>
                Match.objectLike({ IndexName: index.name, Projection: { ProjectionType: 'ALL' } }),
              ),
            }
          : {}),
      });
    },
  );

  it('retains the tables with deletion protection, and lets them go without it', () => {
    const { template: kept } = sluice();
    const { template: dropped } = sluice({ context: { deletionProtection: 'false' } });
    for (const table of Object.values(kept.findResources('AWS::DynamoDB::Table'))) {
      expect(table).toMatchObject({ DeletionPolicy: 'Retain', UpdateReplacePolicy: 'Retain' });
    }
    for (const table of Object.values(dropped.findResources('AWS::DynamoDB::Table'))) {
      expect(table).toMatchObject({
        DeletionPolicy: 'Delete',
        Properties: { DeletionProtectionEnabled: false },
      });
    }
  });

  it.each(PRIORITY_QUEUES.map((q) => [q.priority, q] as const))(
    'gives the %s queue a DLQ (redrive), SQS-managed encryption and the shared visibility timeout',
    (priority, def) => {
      // Prepare
      const { stack, template } = sluice();
      const queue = template.findResources('AWS::SQS::Queue')[logicalId(stack.queues.queues[priority])];
      const dlqId = logicalId(stack.queues.deadLetterQueues[priority]);

      // Assess
      expect(queue?.Properties).toMatchObject({
        SqsManagedSseEnabled: true,
        VisibilityTimeout: def.visibilityTimeoutSeconds,
        RedrivePolicy: {
          deadLetterTargetArn: { 'Fn::GetAtt': [dlqId, 'Arn'] },
          maxReceiveCount: def.maxReceiveCount,
        },
      });
      // The dispatcher extends a buffered message's visibility every 20 s to 30 s: the timeout must cover a tick.
      expect(def.visibilityTimeoutSeconds).toBeGreaterThan(20);
      expect(template.findResources('AWS::SQS::Queue')[dlqId]?.Properties).toMatchObject({
        SqsManagedSseEnabled: true,
        MessageRetentionPeriod: 14 * 24 * 3600,
      });
    },
  );

  it('has exactly one DLQ per priority queue and no queue without a redrive policy', () => {
    const { template } = sluice();
    const queues = Object.values(template.findResources('AWS::SQS::Queue')) as {
      Properties: { RedrivePolicy?: { deadLetterTargetArn: unknown } };
    }[];
    const withRedrive = queues.filter((q) => q.Properties.RedrivePolicy);
    const targets = new Set(withRedrive.map((q) => flatten(q.Properties.RedrivePolicy!.deadLetterTargetArn)));
    expect(withRedrive).toHaveLength(PRIORITIES.length);
    expect(targets.size).toBe(PRIORITIES.length);
    expect(queues).toHaveLength(2 * PRIORITIES.length);
  });
});

describe('secrets', () => {
  it('creates the upstream key with a constant placeholder and generates the admin and viewer tokens', () => {
    const { template } = sluice();
    template.resourceCountIs('AWS::SecretsManager::Secret', 3);
    template.hasResourceProperties('AWS::SecretsManager::Secret', { SecretString: UPSTREAM_KEY_PLACEHOLDER });
    const generated = template.findResources('AWS::SecretsManager::Secret', {
      Properties: { GenerateSecretString: Match.objectLike({ PasswordLength: 48 }) },
    });
    expect(Object.keys(generated)).toHaveLength(2);
  });

  it('imports an existing upstream key by ARN instead of creating one', () => {
    // Prepare
    const { stack, template } = sluice({ context: { upstreamKeySecretArn: IMPORTED_KEY_ARN } });

    // Assess
    template.resourceCountIs('AWS::SecretsManager::Secret', 2);
    const variables = (
      lambdaFunctions(template)[logicalId(stack.ingress.fn)]!.Properties.Environment as {
        Variables: Record<string, unknown>;
      }
    ).Variables;
    expect(variables.SLUICE_UPSTREAM_KEY_SECRET).toBe(IMPORTED_KEY_ARN);
    expect(JSON.stringify(template.toJSON())).not.toContain(UPSTREAM_KEY_PLACEHOLDER);
  });

  it.each([
    ['without its own key, the open upstream gets none', undefined],
    ['with its own key, the open upstream gets only that', OPEN_KEY_ARN],
  ])('%s', (_name, openKeyArn) => {
    // Prepare
    const { stack, template } = sluice({
      context: {
        openUpstreamUrl: 'https://open.example/v1',
        ...(openKeyArn ? { openUpstreamKeySecretArn: openKeyArn } : {}),
      },
    });

    // Assess
    const variables = (
      lambdaFunctions(template)[logicalId(stack.ingress.fn)]!.Properties.Environment as {
        Variables: Record<string, unknown>;
      }
    ).Variables;
    expect(variables.SLUICE_OPEN_UPSTREAM_KEY_SECRET).toBe(openKeyArn);
    expect(variables.SLUICE_UPSTREAM_KEY_SECRET).not.toBe(openKeyArn);
  });
});

describe('several upstreams: one secret each', () => {
  const ACME_KEY_ARN = 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:acme-key-AbCdEf';
  const upstreams = [
    { name: 'nv-a', limit: 40 },
    { name: 'nv-b', limit: 40 },
    {
      name: 'acme',
      url: 'https://api.acme.example/v1',
      limit: 500,
      key_secret: ACME_KEY_ARN,
      models: ['acme/'],
    },
  ];

  it('creates a secret for each limited upstream after the first (imports a given key_secret) and names it in the ingress list only', () => {
    // Prepare
    const { stack, template } = sluice({ context: { upstreams } });
    const env = (fn: IConstruct) =>
      (
        lambdaFunctions(template)[logicalId(fn)]!.Properties.Environment as {
          Variables: Record<string, unknown>;
        }
      ).Variables;

    // Assess: the first upstream's key, nv-b's key, admin and viewer tokens; acme's key is imported.
    template.resourceCountIs('AWS::SecretsManager::Secret', 4);
    const nvB = stack.secrets.otherUpstreamKeys.get('nv-b');
    expect(nvB?.created).toBe(true);
    const ingressList = JSON.stringify(stack.resolve(env(stack.ingress.fn).SLUICE_UPSTREAMS));
    expect(ingressList).toContain(logicalId(nvB!.secret));
    expect(ingressList).toContain(ACME_KEY_ARN);
    expect(env(stack.ingress.fn).SLUICE_UPSTREAM_LIMIT).toBeUndefined();
    // The dispatcher needs the limits only: the list as given, no secret of its own.
    expect(env(stack.dispatcher.fn).SLUICE_UPSTREAMS).toBe(JSON.stringify(upstreams));
  });
});

describe('web application firewall', () => {
  it('puts a per-IP rate-based web ACL on the API stage by default, and keeps the stage throttle', () => {
    const { stack, template } = sluice();
    template.resourceCountIs('AWS::WAFv2::WebACL', 1);
    template.hasResourceProperties('AWS::WAFv2::WebACL', {
      Scope: 'REGIONAL',
      DefaultAction: { Allow: {} },
      Rules: [
        Match.objectLike({
          Statement: { RateBasedStatement: { Limit: 3000, AggregateKeyType: 'IP' } },
          Action: { Block: Match.objectLike({ CustomResponse: Match.objectLike({ ResponseCode: 429 }) }) },
        }),
      ],
    });
    template.resourceCountIs('AWS::WAFv2::WebACLAssociation', 1);
    expect(stack.firewall).toBeDefined();
    template.hasResourceProperties('AWS::ApiGateway::Stage', {
      MethodSettings: Match.arrayWith([
        Match.objectLike({ ThrottlingRateLimit: 50, ThrottlingBurstLimit: 100 }),
      ]),
    });
  });

  it('is off with waf=false, with the stage throttle still there', () => {
    const { template } = sluice({ context: { waf: 'false' } });
    template.resourceCountIs('AWS::WAFv2::WebACL', 0);
    template.resourceCountIs('AWS::WAFv2::WebACLAssociation', 0);
    template.hasResourceProperties('AWS::ApiGateway::Stage', {
      MethodSettings: Match.arrayWith([Match.objectLike({ ThrottlingRateLimit: 50 })]),
    });
  });
});

describe('dashboard', () => {
  it('serves a private bucket through CloudFront with OAC, HTTPS and security headers', () => {
    const { template } = sluice();
    template.hasResourceProperties('AWS::S3::Bucket', {
      PublicAccessBlockConfiguration: {
        BlockPublicAcls: true,
        BlockPublicPolicy: true,
        IgnorePublicAcls: true,
        RestrictPublicBuckets: true,
      },
      LoggingConfiguration: Match.objectLike({ LogFilePrefix: 's3/' }),
    });
    template.resourceCountIs('AWS::CloudFront::OriginAccessControl', 1);
    template.hasResourceProperties('AWS::CloudFront::Distribution', {
      DistributionConfig: Match.objectLike({
        DefaultRootObject: 'index.html',
        DefaultCacheBehavior: Match.objectLike({ ViewerProtocolPolicy: 'redirect-to-https' }),
        Logging: Match.objectLike({ Prefix: 'cloudfront/' }),
      }),
    });
    template.hasResourceProperties('AWS::CloudFront::ResponseHeadersPolicy', {
      ResponseHeadersPolicyConfig: Match.objectLike({
        SecurityHeadersConfig: Match.objectLike({
          StrictTransportSecurity: Match.objectLike({ IncludeSubdomains: true }),
          ContentTypeOptions: { Override: true },
          FrameOptions: { FrameOption: 'DENY', Override: true },
          ContentSecurityPolicy: Match.objectLike({ Override: true }),
        }),
      }),
    });
  });

  it('uploads the page and a config.json holding the API URL, invalidating the distribution', () => {
    const { stack, template } = sluice();
    const [deployment] = Object.values(template.findResources('Custom::CDKBucketDeployment')) as {
      Properties: { SourceMarkers: unknown[]; SourceObjectKeys: unknown[]; DistributionPaths: string[] };
    }[];
    expect(deployment?.Properties.DistributionPaths).toEqual(['/*']);
    expect(deployment?.Properties.SourceObjectKeys).toHaveLength(2);
    // config.json is rendered at deploy time from the API's id, region and stage.
    expect(JSON.stringify(deployment?.Properties.SourceMarkers)).toContain(
      JSON.stringify({ Ref: logicalId(stack.api.api.deploymentStage) }),
    );
  });

  it('can be left out: no bucket, no CloudFront, no CORS origin unless one is given', () => {
    // Prepare
    const { stack, template } = sluice({ context: { createDashboard: 'false' } });
    const { stack: elsewhere, template: withOrigin } = sluice({
      context: { createDashboard: 'false', allowedOrigin: 'https://ops.example.com' },
    });
    const allowedOrigin = (s: typeof stack, t: typeof template) =>
      (
        lambdaFunctions(t)[logicalId(s.ingress.fn)]!.Properties.Environment as {
          Variables: Record<string, unknown>;
        }
      ).Variables.SLUICE_ALLOWED_ORIGIN;

    // Assess
    template.resourceCountIs('AWS::CloudFront::Distribution', 0);
    template.resourceCountIs('AWS::S3::Bucket', 0);
    template.resourceCountIs('Custom::CDKBucketDeployment', 0);
    expect(allowedOrigin(stack, template)).toBeUndefined();
    expect(allowedOrigin(elsewhere, withOrigin)).toBe('https://ops.example.com');
  });
});

describe('observability', () => {
  it('alarms on every DLQ, the retreat floor, dispatcher errors and the API 5xx rate', () => {
    // Prepare
    const { stack, template } = sluice();

    // Assess
    template.resourceCountIs('AWS::CloudWatch::Alarm', PRIORITIES.length + 3);
    for (const priority of PRIORITIES) {
      template.hasResourceProperties('AWS::CloudWatch::Alarm', {
        MetricName: 'ApproximateNumberOfMessagesVisible',
        Dimensions: [
          {
            Name: 'QueueName',
            Value: { 'Fn::GetAtt': [logicalId(stack.queues.deadLetterQueues[priority]), 'QueueName'] },
          },
        ],
        Threshold: 1,
        ComparisonOperator: 'GreaterThanOrEqualToThreshold',
      });
    }
    template.hasResourceProperties('AWS::CloudWatch::Alarm', {
      Namespace: 'sluice',
      MetricName: 'effective_rpm',
      Dimensions: [{ Name: 'service', Value: 'dispatcher' }],
      Threshold: 5,
      ComparisonOperator: 'LessThanOrEqualToThreshold',
      EvaluationPeriods: 15,
      DatapointsToAlarm: 15,
      Period: 60,
    });
    template.hasResourceProperties('AWS::CloudWatch::Alarm', {
      Namespace: 'AWS/Lambda',
      MetricName: 'Errors',
      Dimensions: [{ Name: 'FunctionName', Value: { Ref: logicalId(stack.dispatcher.fn) } }],
    });
    template.hasResourceProperties('AWS::CloudWatch::Alarm', {
      Metrics: Match.arrayWith([
        Match.objectLike({ Expression: 'IF(requests >= 20, 100 * errors / requests, 0)' }),
      ]),
      Threshold: 5,
    });
    template.resourceCountIs('AWS::SNS::Topic', 0);
  });

  it('mails the alarms through an SNS topic when alarmEmail is set', () => {
    // Prepare
    const { stack, template } = sluice({ context: { alarmEmail: 'ops@example.com' } });
    const topic = logicalId(stack.observability.alarmTopic!);

    // Assess
    template.hasResourceProperties('AWS::SNS::Subscription', {
      Protocol: 'email',
      Endpoint: 'ops@example.com',
    });
    for (const alarm of Object.values(template.findResources('AWS::CloudWatch::Alarm'))) {
      expect((alarm as { Properties: { AlarmActions: unknown } }).Properties.AlarmActions).toEqual([
        { Ref: topic },
      ]);
    }
  });

  it("draws the CloudWatch dashboard from the functions' EMF metrics and the queues", () => {
    const { template } = sluice();
    const [dashboard] = Object.values(template.findResources('AWS::CloudWatch::Dashboard'));
    const body = flatten((dashboard as { Properties: { DashboardBody: unknown } }).Properties.DashboardBody);
    for (const text of [
      'MetricName=\\"requests\\"',
      'effective_rpm',
      'base_rpm',
      'retreat_state',
      'upstream_latency',
      'throttled',
      'ApproximateNumberOfMessagesVisible',
      'p99',
    ]) {
      expect(body).toContain(text);
    }
  });
});

describe('outputs', () => {
  it('prints the URLs, the secret ARNs and the command that creates the first agent key', () => {
    // Prepare
    const { stack, template } = sluice();
    const outputs = template.toJSON().Outputs as Record<string, { Value: unknown }>;

    // Assess
    for (const name of [
      'ApiUrl',
      'OpenAiBaseUrl',
      'DashboardUrl',
      'UpstreamKeySecretArn',
      'AdminTokenSecretArn',
      'ViewerTokenSecretArn',
      'PutUpstreamKeyCommand',
      'KeysTableName',
    ]) {
      expect(outputs[name], name).toBeDefined();
    }
    expect(flatten(outputs.CreateAgentKeyCommand?.Value)).toBe(
      `SLUICE_KEYS_TABLE=<${logicalId(stack.tables.tables.keys)}> AWS_REGION=<AWS::Region> npm run keys -- create --agent NAME --max-priority high`,
    );
    expect(flatten(outputs.OpenAiBaseUrl?.Value)).toMatch(/\/v1$/);
  });
});
