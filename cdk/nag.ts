// CDK support: cdk-nag acknowledgements, always one rule (or one finding) on one CloudFormation resource, with a reason.
import { CfnResource, Validations } from 'aws-cdk-lib';
import type { IConstruct } from 'constructs';

/**
 * Acknowledges one cdk-nag rule on one resource: an L1 resource, or an L2 construct whose default child is one.
 * Never call it on a stack or a construct holding several resources: the acknowledgement would cover them all.
 * @param resource - the resource the finding is about
 * @param ruleId - one rule, or one finding of it, e.g. `AwsSolutions-IAM5[Resource::*]`
 * @param reason - why the finding is acceptable here
 */
export const acknowledgeNagRule = (resource: IConstruct, ruleId: string, reason: string): void => {
  const target = CfnResource.isCfnResource(resource) ? resource : resource.node.defaultChild;
  if (!target || !CfnResource.isCfnResource(target)) {
    throw new Error(`${resource.node.path} is not a CloudFormation resource: acknowledge ${ruleId} on one`);
  }
  if (reason.trim().length < 20) throw new Error(`${ruleId} on ${target.node.path}: give a real reason`);
  Validations.of(target).acknowledge({ id: ruleId, reason });
};
