// Test support (CDK): synthesizes the sluice stack offline (no credentials, no lookups) and reads its template.
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { App, type CfnElement, type IResource, Stack } from 'aws-cdk-lib';
import { Template } from 'aws-cdk-lib/assertions';
import type { IConstruct } from 'constructs';
import { type ContextKey, settingsFromContext } from '../../cdk/settings.js';
import { SluiceStack } from '../../cdk/sluice-stack.js';

export interface SynthesizedSluice {
  stack: SluiceStack;
  template: Template;
  /** The cloud assembly directory (bundled function code lives in its `asset.*` directories). */
  assemblyDir: string;
}

export interface SynthOptions {
  /** Context as on the command line (`-c key=value`); values may be strings, as the CLI passes them. */
  context?: Partial<Record<ContextKey, unknown>>;
  /** Run esbuild for the three functions (slower); otherwise CDK skips bundling. @default false */
  bundle?: boolean;
}

/** Synthesizes a fresh app with one SluiceStack. The dashboard is a placeholder page: tests never build it. */
export const synthSluice = (opts: SynthOptions = {}): SynthesizedSluice => {
  const outdir = mkdtempSync(join(tmpdir(), 'sluice-cdk-'));
  const app = new App({
    outdir,
    context: {
      ...opts.context,
      ...(opts.bundle ? {} : { 'aws:cdk:bundling-stacks': [] }),
      'aws:cdk:enable-asset-metadata': true,
    },
  });
  const settings = settingsFromContext((key) => app.node.tryGetContext(key));
  const stack = new SluiceStack(app, 'Sluice', { settings });
  const assembly = app.synth();
  return {
    stack,
    template: Template.fromJSON(assembly.getStackArtifact(stack.artifactId).template),
    assemblyDir: assembly.directory,
  };
};

const cache = new Map<string, SynthesizedSluice>();

/** `synthSluice` memoised per options within one test file (vitest runs each file in its own process). */
export const sluice = (opts: SynthOptions = {}): SynthesizedSluice => {
  const key = JSON.stringify(opts);
  let hit = cache.get(key);
  if (!hit) {
    hit = synthSluice(opts);
    cache.set(key, hit);
  }
  return hit;
};

/** The CloudFormation logical id of an L1, or of an L2's default child. */
export const logicalId = (construct: IConstruct | IResource): string => {
  const element = (construct.node.defaultChild ?? construct) as CfnElement;
  return Stack.of(construct).getLogicalId(element);
};

/**
 * A CloudFormation value as a flat string, in cdk-nag's notation: `{ "Fn::GetAtt": [id, "Arn"] }` → `<id.Arn>`,
 * `{ Ref: id }` → `<id>`, joins concatenated.
 */
export const flatten = (value: unknown): string => {
  if (typeof value === 'string') return value;
  if (Array.isArray(value)) return value.map(flatten).join(',');
  if (value && typeof value === 'object') {
    const o = value as Record<string, unknown>;
    if ('Ref' in o) return `<${String(o.Ref)}>`;
    if ('Fn::GetAtt' in o) {
      const [id, attribute] = o['Fn::GetAtt'] as [string, string];
      return `<${id}.${attribute}>`;
    }
    if ('Fn::Join' in o) {
      const [delimiter, parts] = o['Fn::Join'] as [string, unknown[]];
      return parts.map(flatten).join(delimiter);
    }
    if ('Fn::Sub' in o) return flatten(o['Fn::Sub']);
  }
  return JSON.stringify(value);
};

const asArray = <T>(v: T | T[]): T[] => (Array.isArray(v) ? v : [v]);

interface PolicyStatementJson {
  Effect: string;
  Action: string | string[];
  Resource: unknown;
}

/**
 * Everything a role may do, as `resource → sorted actions` (resources flattened with `flatten`), gathered from
 * every AWS::IAM::Policy attached to it. The role's own trust policy is not a permission and is left out.
 */
export const permissionsOf = (template: Template, roleLogicalId: string): Record<string, string[]> => {
  const out: Record<string, Set<string>> = {};
  for (const policy of Object.values(template.findResources('AWS::IAM::Policy'))) {
    const props = policy.Properties as {
      Roles: unknown[];
      PolicyDocument: { Statement: PolicyStatementJson[] };
    };
    if (!props.Roles.some((r) => flatten(r) === `<${roleLogicalId}>`)) continue;
    for (const statement of props.PolicyDocument.Statement) {
      if (statement.Effect !== 'Allow') continue;
      for (const resource of asArray(statement.Resource)) {
        const key = flatten(resource);
        out[key] ??= new Set();
        for (const action of asArray(statement.Action)) out[key].add(action);
      }
    }
  }
  return Object.fromEntries(Object.entries(out).map(([k, v]) => [k, [...v].sort()]));
};

/** The Lambda function resources of the template by logical id. */
export const lambdaFunctions = (
  template: Template,
): Record<string, { Properties: Record<string, unknown> }> =>
  template.findResources('AWS::Lambda::Function') as Record<string, { Properties: Record<string, unknown> }>;
