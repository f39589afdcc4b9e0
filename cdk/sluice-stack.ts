// CDK stack: the whole gateway — state, queues, secrets, functions, API, dashboard, observability — wired in one place.
import { Aws, CfnOutput, Stack, type StackProps } from 'aws-cdk-lib';
import type { Construct } from 'constructs';
import { ApiFirewall } from './constructs/api-firewall.js';
import { DashboardContent, DashboardHosting } from './constructs/dashboard-site.js';
import { Dispatcher } from './constructs/dispatcher.js';
import { GatewayApi } from './constructs/gateway-api.js';
import { GatewaySecrets } from './constructs/gateway-secrets.js';
import { INGRESS_MEMORY_MB, Ingress } from './constructs/ingress.js';
import { Observability } from './constructs/observability.js';
import { PriorityQueues } from './constructs/priority-queues.js';
import { StateTables } from './constructs/state-tables.js';
import { StatusService } from './constructs/status-service.js';
import { acknowledgeNagRule } from './nag.js';
import {
  gatewayConfig,
  gatewayConfigEnvironment,
  type SluiceSettings,
  settingsUpstreams,
} from './settings.js';

export interface SluiceStackProps extends StackProps {
  settings: SluiceSettings;
  /** The built dashboard (`dashboard/dist`); none = a placeholder page (only if the build was impossible). */
  dashboardAssetsDir?: string;
}

/**
 * One `cdk deploy` of sluice. Environment-agnostic (no account/region, no lookups), so it synthesizes offline.
 *
 * Order matters only for one dependency chain: the dashboard's hosting comes first because its CloudFront origin
 * goes into the functions' CORS setting; the API then depends on the functions; the dashboard's content
 * (`config.json` with the API URL) comes last. Hosting → functions → API → content: no cycle.
 */
export class SluiceStack extends Stack {
  readonly tables: StateTables;
  readonly queues: PriorityQueues;
  readonly secrets: GatewaySecrets;
  /** The WAF web ACL on the API (unless the `waf` setting is off). */
  readonly firewall: ApiFirewall | undefined;
  readonly dispatcher: Dispatcher;
  readonly ingress: Ingress;
  readonly status: StatusService;
  readonly api: GatewayApi;
  readonly dashboardHosting: DashboardHosting | undefined;
  readonly dashboardContent: DashboardContent | undefined;
  readonly observability: Observability;

  constructor(scope: Construct, id: string, props: SluiceStackProps) {
    super(scope, id, {
      description: 'sluice: many AI agents sharing one rate-limited LLM API key',
      ...props,
    });
    // S3 server access logs are delivered under a bucket policy, not the deprecated LogDeliveryWrite ACL.
    this.node.setContext('@aws-cdk/aws-s3:serverAccessLogsUseBucketPolicy', true);
    const { settings } = props;
    const config = gatewayConfig(settings);
    const configEnvironment = gatewayConfigEnvironment(settings);
    const { logRetention } = settings;

    // Stateful.
    this.tables = new StateTables(this, 'State', { deletionProtection: settings.deletionProtection });
    this.queues = new PriorityQueues(this, 'Queues');
    this.secrets = new GatewaySecrets(this, 'Secrets', {
      ...(settings.upstreamKeySecretArn ? { upstreamKeySecretArn: settings.upstreamKeySecretArn } : {}),
      ...(settings.openUpstreamKeySecretArn
        ? { openUpstreamKeySecretArn: settings.openUpstreamKeySecretArn }
        : {}),
      ...(settings.upstreams ? { upstreams: settingsUpstreams(settings.upstreams) } : {}),
    });

    // Stateless.
    this.dashboardHosting = settings.createDashboard
      ? new DashboardHosting(this, 'DashboardHosting')
      : undefined;
    const allowedOrigin = this.dashboardHosting?.origin ?? settings.allowedOrigin;
    const functionProps = {
      tables: this.tables,
      queues: this.queues,
      configEnvironment,
      logRetention,
      ...(allowedOrigin ? { allowedOrigin } : {}),
    };
    this.dispatcher = new Dispatcher(this, 'Dispatcher', functionProps);
    this.ingress = new Ingress(this, 'Ingress', {
      ...functionProps,
      secrets: this.secrets,
      dispatcher: this.dispatcher,
    });
    this.status = new StatusService(this, 'Status', {
      ...functionProps,
      secrets: this.secrets,
      ingressMemoryMb: INGRESS_MEMORY_MB,
    });
    this.api = new GatewayApi(this, 'Api', {
      ingress: this.ingress.fn,
      status: this.status.fn,
      logRetention,
      rateLimit: settings.apiRateLimit,
      burstLimit: settings.apiBurstLimit,
      ...(allowedOrigin ? { allowedOrigin } : {}),
    });
    this.firewall = settings.waf
      ? new ApiFirewall(this, 'Firewall', {
          api: this.api,
          requestsPer5MinPerIp: settings.wafRequestsPer5MinPerIp,
        })
      : undefined;
    if (!this.firewall) {
      acknowledgeNagRule(
        this.api.api.deploymentStage,
        'AwsSolutions-APIG3',
        'WAF turned off (waf=false): stage throttling and per-key admission control bound the load.',
      );
    }
    this.dashboardContent = this.dashboardHosting
      ? new DashboardContent(this, 'DashboardContent', {
          hosting: this.dashboardHosting,
          assetsDir: props.dashboardAssetsDir,
          apiUrl: this.api.url,
          logRetention,
        })
      : undefined;
    this.observability = new Observability(this, 'Observability', {
      api: this.api.api,
      ingress: this.ingress.fn,
      dispatcher: this.dispatcher.fn,
      status: this.status.fn,
      queues: this.queues,
      retreatFloorRpm: config.retreatFloorRpm,
      retreatFloorAlarmMinutes: settings.retreatFloorAlarmMinutes,
      ...(settings.alarmEmail ? { alarmEmail: settings.alarmEmail } : {}),
    });
    this.addOutputs();
  }

  private addOutputs(): void {
    const keysTable = this.tables.tables.keys.tableName;
    new CfnOutput(this, 'ApiUrl', { value: this.api.url, description: 'The API stage URL' });
    new CfnOutput(this, 'OpenAiBaseUrl', {
      value: `${this.api.url}v1`,
      description: 'baseURL for OpenAI clients (with an agent key as apiKey)',
    });
    if (this.dashboardHosting) {
      new CfnOutput(this, 'DashboardUrl', {
        value: `${this.dashboardHosting.origin}/`,
        description: 'The dashboard (asks once for the viewer or admin token)',
      });
    }
    new CfnOutput(this, 'CloudWatchDashboardUrl', {
      value: `https://${Aws.REGION}.console.aws.amazon.com/cloudwatch/home?region=${Aws.REGION}#dashboards/dashboard/${this.observability.dashboard.dashboardName}`,
    });
    new CfnOutput(this, 'UpstreamKeySecretArn', { value: this.secrets.upstreamKey.secretArn });
    if (this.secrets.upstreamKeyCreated) {
      new CfnOutput(this, 'PutUpstreamKeyCommand', {
        value: `aws secretsmanager put-secret-value --region ${Aws.REGION} --secret-id ${this.secrets.upstreamKey.secretArn} --secret-string "$UPSTREAM_API_KEY"`,
        description: 'Run once after the first deploy, with the real key in $UPSTREAM_API_KEY',
      });
    }
    for (const [name, key] of this.secrets.otherUpstreamKeys) {
      if (!key.created) continue;
      new CfnOutput(this, `PutUpstreamKeyCommand${name.replace(/[^A-Za-z0-9]/g, '')}`, {
        value: `aws secretsmanager put-secret-value --region ${Aws.REGION} --secret-id ${key.secret.secretArn} --secret-string "$KEY"`,
        description: `Run once after the first deploy, with upstream ${name}'s real key in $KEY`,
      });
    }
    new CfnOutput(this, 'AdminTokenSecretArn', { value: this.secrets.adminToken.secretArn });
    new CfnOutput(this, 'ViewerTokenSecretArn', { value: this.secrets.viewerToken.secretArn });
    new CfnOutput(this, 'KeysTableName', { value: keysTable });
    new CfnOutput(this, 'CreateAgentKeyCommand', {
      value: `SLUICE_KEYS_TABLE=${keysTable} AWS_REGION=${Aws.REGION} npm run keys -- create --agent NAME --max-priority high`,
      description: 'Creates an agent key (needs AWS credentials); the key is printed once',
    });
    new CfnOutput(this, 'DispatcherFunctionName', { value: this.dispatcher.functionName });
  }
}
