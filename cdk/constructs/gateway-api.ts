// CDK construct (stateless): the REST API — streaming proxy to the ingress, status/admin routes, OpenAI-shaped gateway errors.
import { RemovalPolicy } from 'aws-cdk-lib';
import {
  AccessLogField,
  AccessLogFormat,
  EndpointType,
  LambdaIntegration,
  LogGroupLogDestination,
  MethodLoggingLevel,
  ResponseTransferMode,
  ResponseType,
  RestApi,
} from 'aws-cdk-lib/aws-apigateway';
import { LogGroup, type RetentionDays } from 'aws-cdk-lib/aws-logs';
import { Construct } from 'constructs';
import type { OpenAiErrorType } from '../../lib/domain/errors.js';
import { acknowledgeNagRule } from '../nag.js';
import { INGRESS_TIMEOUT } from './ingress.js';
import type { SluiceFunction } from './sluice-function.js';

/** The stage in every URL: `https://{id}.execute-api.{region}.amazonaws.com/prod/v1/...`. */
export const API_STAGE_NAME = 'prod';

export interface GatewayApiProps {
  ingress: SluiceFunction;
  status: SluiceFunction;
  /** The dashboard's origin: gateway errors carry it so the browser can read them. */
  allowedOrigin?: string;
  logRetention: RetentionDays;
  /** Stage throttling: steady requests per second. */
  rateLimit: number;
  /** Stage throttling: burst. */
  burstLimit: number;
}

interface GatewayErrorShape {
  status?: number;
  type: OpenAiErrorType;
  code: string;
  /** A JSON string literal, or `$context.error.messageString` (API Gateway's message, already quoted). */
  message?: string;
  retryAfterSeconds?: number;
}

/**
 * What API Gateway answers itself, before or instead of the Lambda, in the OpenAI error shape the agents'
 * clients parse. A REST API answers an unknown route with MISSING_AUTHENTICATION_TOKEN (403): it is a 404 here.
 */
export const GATEWAY_ERRORS: ReadonlyMap<ResponseType, GatewayErrorShape> = new Map([
  [ResponseType.DEFAULT_4XX, { type: 'invalid_request_error', code: 'gateway_client_error' }],
  [ResponseType.DEFAULT_5XX, { type: 'server_error', code: 'gateway_error' }],
  [ResponseType.REQUEST_TOO_LARGE, { status: 413, type: 'invalid_request_error', code: 'request_too_large' }],
  [ResponseType.BAD_REQUEST_BODY, { status: 400, type: 'invalid_request_error', code: 'invalid_body' }],
  [
    ResponseType.UNSUPPORTED_MEDIA_TYPE,
    { status: 415, type: 'invalid_request_error', code: 'unsupported_media_type' },
  ],
  [ResponseType.ACCESS_DENIED, { status: 403, type: 'permission_error', code: 'permission_denied' }],
  [ResponseType.UNAUTHORIZED, { status: 401, type: 'authentication_error', code: 'invalid_api_key' }],
  [
    ResponseType.MISSING_AUTHENTICATION_TOKEN,
    {
      status: 404,
      type: 'not_found_error',
      code: 'not_found',
      message: '"No such route: agents call the API under /v1/."',
    },
  ],
  [ResponseType.RESOURCE_NOT_FOUND, { status: 404, type: 'not_found_error', code: 'not_found' }],
  [
    ResponseType.THROTTLED,
    { status: 429, type: 'rate_limit_error', code: 'gateway_throttled', retryAfterSeconds: 1 },
  ],
  [
    ResponseType.QUOTA_EXCEEDED,
    { status: 429, type: 'rate_limit_error', code: 'quota_exceeded', retryAfterSeconds: 60 },
  ],
  [ResponseType.INTEGRATION_FAILURE, { status: 502, type: 'api_error', code: 'integration_failure' }],
  [ResponseType.INTEGRATION_TIMEOUT, { status: 504, type: 'api_error', code: 'integration_timeout' }],
]);

const errorTemplate = (e: GatewayErrorShape): string =>
  `{"error":{"message":${e.message ?? '$context.error.messageString'},"type":"${e.type}","param":null,"code":"${e.code}"}}`;

/**
 * A Regional REST API (edge-optimised endpoints drop idle connections after 30 s):
 * `/v1/{proxy+}` streams from the ingress with a 15-minute integration timeout (the 29 s default cuts streams);
 * `/status`, `/health`, `/health/ready` and `/admin/{proxy+}` go to the status function. Methods are ANY so
 * CORS preflights reach the Lambdas, which answer them (proxy integrations own their CORS headers). Access
 * logs go to a log group; the stage is throttled.
 */
export class GatewayApi extends Construct {
  readonly api: RestApi;
  readonly accessLogGroup: LogGroup;

  constructor(scope: Construct, id: string, props: GatewayApiProps) {
    super(scope, id);
    this.accessLogGroup = new LogGroup(this, 'AccessLogGroup', {
      retention: props.logRetention,
      removalPolicy: RemovalPolicy.DESTROY,
    });
    this.api = new RestApi(this, 'RestApi', {
      description: 'sluice: OpenAI-compatible gateway sharing one rate-limited upstream key',
      endpointConfiguration: { types: [EndpointType.REGIONAL] },
      // Access and execution logging need the account's API Gateway CloudWatch role; keep it if the stack goes.
      cloudWatchRole: true,
      cloudWatchRoleRemovalPolicy: RemovalPolicy.RETAIN,
      deployOptions: {
        stageName: API_STAGE_NAME,
        accessLogDestination: new LogGroupLogDestination(this.accessLogGroup),
        accessLogFormat: AccessLogFormat.custom(
          JSON.stringify({
            requestId: AccessLogField.contextRequestId(),
            ip: AccessLogField.contextIdentitySourceIp(),
            requestTime: AccessLogField.contextRequestTime(),
            method: AccessLogField.contextHttpMethod(),
            path: AccessLogField.contextPath(),
            status: AccessLogField.contextStatus(),
            responseLength: AccessLogField.contextResponseLength(),
            responseLatency: AccessLogField.contextResponseLatency(),
            integrationStatus: AccessLogField.contextIntegrationStatus(),
            integrationLatency: AccessLogField.contextIntegrationLatency(),
            error: AccessLogField.contextErrorMessage(),
            userAgent: AccessLogField.contextIdentityUserAgent(),
          }),
        ),
        loggingLevel: MethodLoggingLevel.ERROR,
        dataTraceEnabled: false,
        metricsEnabled: true,
        tracingEnabled: true,
        throttlingRateLimit: props.rateLimit,
        throttlingBurstLimit: props.burstLimit,
      },
    });

    const streaming = new LambdaIntegration(props.ingress, {
      responseTransferMode: ResponseTransferMode.STREAM,
      timeout: INGRESS_TIMEOUT,
    });
    const status = new LambdaIntegration(props.status);
    const root = this.api.root;
    root.addResource('v1').addProxy({ defaultIntegration: streaming, anyMethod: true });
    root.addResource('status').addMethod('ANY', status);
    const health = root.addResource('health');
    health.addMethod('ANY', status);
    health.addResource('ready').addMethod('ANY', status);
    root.addResource('admin').addProxy({ defaultIntegration: status, anyMethod: true });

    const corsHeaders: Record<string, string> = props.allowedOrigin
      ? { 'Access-Control-Allow-Origin': `'${props.allowedOrigin}'`, Vary: "'Origin'" }
      : {};
    for (const [type, shape] of GATEWAY_ERRORS) {
      this.api.addGatewayResponse(`${type.responseType}Response`, {
        type,
        ...(shape.status ? { statusCode: String(shape.status) } : {}),
        responseHeaders: {
          ...corsHeaders,
          ...(shape.retryAfterSeconds ? { 'Retry-After': `'${shape.retryAfterSeconds}'` } : {}),
        },
        templates: { 'application/json': errorTemplate(shape) },
      });
    }
    this.acknowledgeNagFindings();
  }

  /** The invoke URL of the stage, ending in `/`. */
  get url(): string {
    return this.api.url;
  }

  private acknowledgeNagFindings(): void {
    for (const method of this.api.methods) {
      const route = `${method.httpMethod} ${method.resource.path}`;
      acknowledgeNagRule(
        method,
        'AwsSolutions-APIG4',
        `${route}: the Lambda authenticates every request (agent keys, admin/viewer tokens, OPTIONS preflight is public).`,
      );
      acknowledgeNagRule(
        method,
        'AwsSolutions-COG4',
        `${route}: callers are AI agents with gateway keys, not Cognito users; the Lambda checks the key.`,
      );
    }
    acknowledgeNagRule(
      this.api,
      'AwsSolutions-APIG2',
      'Proxy integrations: bodies are validated by the functions, which answer in the OpenAI error shape.',
    );
    const cloudWatchRole = this.api.node.tryFindChild('CloudWatchRole');
    if (cloudWatchRole) {
      acknowledgeNagRule(
        cloudWatchRole,
        'AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AmazonAPIGatewayPushToCloudWatchLogs]',
        "The account-wide role API Gateway logs with; AWS's managed policy is the documented one for it.",
      );
    }
  }
}
