// CDK construct (stateless): an AWS WAF web ACL on the API stage with a per-IP rate-based rule — unauthenticated
// floods stop at the edge instead of each costing a Lambda run and a key lookup.
import { CfnWebACL, CfnWebACLAssociation } from 'aws-cdk-lib/aws-wafv2';
import { Construct } from 'constructs';
import type { GatewayApi } from './gateway-api.js';

export interface ApiFirewallProps {
  api: GatewayApi;
  /** Requests one IP may send in any 5-minute window before WAF blocks it (AWS minimum 10). */
  requestsPer5MinPerIp: number;
}

/**
 * A regional web ACL (default allow) whose one rule blocks an IP over `requestsPer5MinPerIp`, answering 429
 * in the OpenAI error shape. Cost (2026 list price): $5/month for the ACL + $1/month for the rule + $0.60 per
 * million requests inspected. Turn it off with the `waf` setting (`-c waf=false`); the stage throttle stays.
 * @example new ApiFirewall(this, 'Firewall', { api, requestsPer5MinPerIp: 2000 });
 */
export class ApiFirewall extends Construct {
  readonly webAcl: CfnWebACL;

  constructor(scope: Construct, id: string, props: ApiFirewallProps) {
    super(scope, id);
    const metric = (name: string) => ({
      cloudWatchMetricsEnabled: true,
      sampledRequestsEnabled: true,
      metricName: `sluice-${name}`,
    });
    this.webAcl = new CfnWebACL(this, 'WebAcl', {
      scope: 'REGIONAL',
      defaultAction: { allow: {} },
      visibilityConfig: metric('waf'),
      customResponseBodies: {
        rateLimited: {
          contentType: 'APPLICATION_JSON',
          content: JSON.stringify({
            error: {
              message: 'Too many requests from this address; slow down.',
              type: 'rate_limit_error',
              param: null,
              code: 'ip_rate_limited',
            },
          }),
        },
      },
      rules: [
        {
          name: 'per-ip-rate',
          priority: 0,
          action: {
            block: {
              customResponse: {
                responseCode: 429,
                customResponseBodyKey: 'rateLimited',
                responseHeaders: [{ name: 'retry-after', value: '60' }],
              },
            },
          },
          statement: {
            rateBasedStatement: { limit: props.requestsPer5MinPerIp, aggregateKeyType: 'IP' },
          },
          visibilityConfig: metric('waf-per-ip-rate'),
        },
      ],
    });
    new CfnWebACLAssociation(this, 'Association', {
      resourceArn: props.api.api.deploymentStage.stageArn,
      webAclArn: this.webAcl.attrArn,
    });
  }
}
