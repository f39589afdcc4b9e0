// CDK constructs: the dashboard's hosting (private S3 + CloudFront) and its content (static files + config.json).
import { Aws, DefaultStackSynthesizer, Duration, RemovalPolicy, Stack } from 'aws-cdk-lib';
import {
  AllowedMethods,
  CachePolicy,
  Distribution,
  HeadersFrameOption,
  HeadersReferrerPolicy,
  HttpVersion,
  PriceClass,
  ResponseHeadersPolicy,
  ViewerProtocolPolicy,
} from 'aws-cdk-lib/aws-cloudfront';
import { S3BucketOrigin } from 'aws-cdk-lib/aws-cloudfront-origins';
import { Role, ServicePrincipal } from 'aws-cdk-lib/aws-iam';
import { LogGroup, type RetentionDays } from 'aws-cdk-lib/aws-logs';
import {
  BlockPublicAccess,
  Bucket,
  BucketEncryption,
  type CfnBucket,
  ObjectOwnership,
} from 'aws-cdk-lib/aws-s3';
import { BucketDeployment, type ISource, Source } from 'aws-cdk-lib/aws-s3-deployment';
import { Construct, type IConstruct } from 'constructs';
import { acknowledgeNagRule } from '../nag.js';

/**
 * What the page may load: only itself, plus `fetch` to any API Gateway endpoint in this region (naming the
 * API itself would make the distribution depend on the API, which depends on the distribution's origin).
 */
const contentSecurityPolicy = (): string =>
  [
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self' 'unsafe-inline'",
    "img-src 'self' data:",
    `connect-src 'self' https://*.execute-api.${Aws.REGION}.${Aws.URL_SUFFIX}`,
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
  ].join('; ');

/**
 * Where the dashboard lives: a private, encrypted, TLS-only bucket read by CloudFront through Origin Access
 * Control, HTTPS for viewers (HTTP is redirected), security headers on every response, and access logs of both
 * in a log bucket. It knows nothing of the API, so the functions can take `origin` for CORS and the API URL can
 * reach the page later through `DashboardContent` — no cycle.
 */
export class DashboardHosting extends Construct {
  readonly bucket: Bucket;
  readonly logBucket: Bucket;
  readonly distribution: Distribution;

  constructor(scope: Construct, id: string) {
    super(scope, id);
    this.logBucket = new Bucket(this, 'AccessLogBucket', {
      // CloudFront standard logs are written with ACLs.
      objectOwnership: ObjectOwnership.OBJECT_WRITER,
      blockPublicAccess: BlockPublicAccess.BLOCK_ALL,
      encryption: BucketEncryption.S3_MANAGED,
      enforceSSL: true,
      lifecycleRules: [{ expiration: Duration.days(90) }],
      removalPolicy: RemovalPolicy.DESTROY,
      autoDeleteObjects: true,
    });
    this.bucket = new Bucket(this, 'SiteBucket', {
      blockPublicAccess: BlockPublicAccess.BLOCK_ALL,
      encryption: BucketEncryption.S3_MANAGED,
      enforceSSL: true,
      serverAccessLogsBucket: this.logBucket,
      serverAccessLogsPrefix: 's3/',
      // Only generated files: nothing to keep when the stack goes.
      removalPolicy: RemovalPolicy.DESTROY,
      autoDeleteObjects: true,
    });
    const headers = new ResponseHeadersPolicy(this, 'SecurityHeaders', {
      comment: 'sluice dashboard: security headers',
      securityHeadersBehavior: {
        contentSecurityPolicy: { contentSecurityPolicy: contentSecurityPolicy(), override: true },
        strictTransportSecurity: {
          accessControlMaxAge: Duration.days(730),
          includeSubdomains: true,
          preload: false,
          override: true,
        },
        contentTypeOptions: { override: true },
        frameOptions: { frameOption: HeadersFrameOption.DENY, override: true },
        referrerPolicy: { referrerPolicy: HeadersReferrerPolicy.NO_REFERRER, override: true },
        xssProtection: { protection: true, modeBlock: true, override: true },
      },
    });
    this.distribution = new Distribution(this, 'Distribution', {
      comment: 'sluice dashboard',
      defaultRootObject: 'index.html',
      defaultBehavior: {
        origin: S3BucketOrigin.withOriginAccessControl(this.bucket),
        viewerProtocolPolicy: ViewerProtocolPolicy.REDIRECT_TO_HTTPS,
        allowedMethods: AllowedMethods.ALLOW_GET_HEAD,
        cachePolicy: CachePolicy.CACHING_OPTIMIZED,
        responseHeadersPolicy: headers,
        compress: true,
      },
      httpVersion: HttpVersion.HTTP2_AND_3,
      priceClass: PriceClass.PRICE_CLASS_100,
      enableLogging: true,
      logBucket: this.logBucket,
      logFilePrefix: 'cloudfront/',
    });
    acknowledgeNagRule(
      this.distribution,
      'AwsSolutions-CFR1',
      'An operator dashboard for wherever the operators are; it holds no data, the API checks a token.',
    );
    acknowledgeNagRule(
      this.distribution,
      'AwsSolutions-CFR2',
      'Static files only (no API behind this distribution); WAF would cost more than what it protects.',
    );
    acknowledgeNagRule(
      this.distribution,
      'AwsSolutions-CFR4',
      'The default *.cloudfront.net certificate allows no minimum TLS setting; use a custom domain to raise it.',
    );
  }

  /** `https://…cloudfront.net`: the dashboard's origin, for CORS. */
  get origin(): string {
    return `https://${this.distribution.distributionDomainName}`;
  }
}

export interface DashboardContentProps {
  hosting: DashboardHosting;
  /** Directory of the built dashboard (`dashboard/dist`); none = a placeholder page. */
  assetsDir: string | undefined;
  /** The API's invoke URL, written to `config.json` for the page to read. */
  apiUrl: string;
  logRetention: RetentionDays;
}

/** Shown only if the dashboard could not be built at synth. */
const PLACEHOLDER_PAGE =
  '<!doctype html><meta charset="utf-8"><title>sluice</title><p>The dashboard could not be built when this stack was synthesized (see <code>dashboard/build.ts</code>); deploy again once it builds.</p>';

/**
 * Uploads the dashboard and a generated `config.json` (`{ "apiUrl": … }`) to the hosting bucket and invalidates
 * the distribution on every change.
 */
export class DashboardContent extends Construct {
  readonly deployment: BucketDeployment;

  constructor(scope: Construct, id: string, props: DashboardContentProps) {
    super(scope, id);
    const site: ISource = props.assetsDir
      ? Source.asset(props.assetsDir, { exclude: ['config.json'] })
      : Source.data('index.html', PLACEHOLDER_PAGE);
    const logGroup = new LogGroup(this, 'DeploymentLogGroup', {
      retention: props.logRetention,
      removalPolicy: RemovalPolicy.DESTROY,
    });
    // Our own role: CDK's default one carries the AWSLambdaBasicExecutionRole managed policy.
    const role = new Role(this, 'DeploymentRole', {
      assumedBy: new ServicePrincipal('lambda.amazonaws.com'),
      description: 'sluice: uploads the dashboard during deploys',
    });
    logGroup.grantWrite(role);
    this.deployment = new BucketDeployment(this, 'Deployment', {
      sources: [site, Source.jsonData('config.json', { apiUrl: props.apiUrl })],
      destinationBucket: props.hosting.bucket,
      distribution: props.hosting.distribution,
      distributionPaths: ['/*'],
      role,
      logGroup,
    });
    this.acknowledgeDeploymentFindings(role, props.hosting.bucket);
  }

  /**
   * The upload runs in CDK's BucketDeployment Lambda during deploys only. Its grants are CDK's own: read the
   * staged asset in the bootstrap bucket, write and prune the site bucket, invalidate the distribution.
   */
  private acknowledgeDeploymentFindings(role: Role, siteBucket: Bucket): void {
    const stack = Stack.of(this);
    const policy = role.node.findChild('DefaultPolicy');
    const siteBucketArn = `<${stack.getLogicalId(siteBucket.node.defaultChild as CfnBucket)}.Arn>`;
    const qualifier =
      (this.node.tryGetContext('@aws-cdk/core:bootstrapQualifier') as string | undefined) ??
      DefaultStackSynthesizer.DEFAULT_QUALIFIER;
    const assetsBucketArn = `arn:<AWS::Partition>:s3:::cdk-${qualifier}-assets-<AWS::AccountId>-<AWS::Region>`;
    const findings: [string, string][] = [
      [
        'Action::s3:GetObject*',
        'read the staged dashboard asset and the site objects (granted by BucketDeployment)',
      ],
      ['Action::s3:GetBucket*', 'locate the asset and site buckets (granted by BucketDeployment)'],
      ['Action::s3:List*', 'list the site bucket to prune removed files (granted by BucketDeployment)'],
      ['Action::s3:DeleteObject*', 'prune files no longer in the dashboard from the site bucket only'],
      ['Action::s3:Abort*', 'abort failed multipart uploads to the site bucket only'],
      [
        `Resource::${assetsBucketArn}/*`,
        'CDK assets are staged under generated keys in the bootstrap bucket',
      ],
      [`Resource::${siteBucketArn}/*`, 'the dashboard owns every key of its site bucket'],
      [
        'Resource::*',
        'cloudfront:CreateInvalidation/GetInvalidation support no narrower resource in this grant',
      ],
    ];
    for (const [finding, reason] of findings) {
      acknowledgeNagRule(
        policy,
        `AwsSolutions-IAM5[${finding}]`,
        `Dashboard upload at deploy time: ${reason}.`,
      );
    }
    const provider = stack.node.children.find((c: IConstruct) =>
      c.node.id.startsWith('Custom::CDKBucketDeployment'),
    );
    if (provider) {
      acknowledgeNagRule(
        provider.node.findChild('Resource'),
        'AwsSolutions-L1',
        "CDK's BucketDeployment provider picks its own Python runtime; it runs only during deploys.",
      );
    }
  }
}
