// cdk-nag tests: AwsSolutions finds nothing unacknowledged; every acknowledgement is one rule on one resource, needed, documented.
import { readFileSync } from 'node:fs';
import { CfnResource, Stack, Validations } from 'aws-cdk-lib';
import { AwsSolutionsChecks } from 'cdk-nag';
import type { IConstruct } from 'constructs';
import { describe, expect, it } from 'vitest';
import { PROJECT_ROOT } from '../../cdk/project-paths.js';
import { sluice } from './stack.js';

interface Acknowledgement {
  path: string;
  ruleId: string;
  reason: string;
  onCfnResource: boolean;
}

/** Every acknowledgement recorded in the construct tree (what cdk-nag reads). */
const acknowledgementsIn = (root: IConstruct): Acknowledgement[] =>
  root.node.findAll().flatMap((construct) =>
    construct.node.metadata
      .filter((entry) => entry.type === Validations.ACKNOWLEDGED_RULES_METADATA_KEY)
      .flatMap((entry) =>
        Object.entries(entry.data as Record<string, string>)
          // Only cdk-nag's: CDK acknowledges some of its own template-validation warnings too.
          .filter(([id]) => id.includes('AwsSolutions-'))
          .map(([id, reason]) => ({
            path: construct.node.path,
            ruleId: id.replace(/^annotation::/i, ''),
            reason,
            onCfnResource: CfnResource.isCfnResource(construct),
          })),
      ),
  );

/** Findings as `path ruleId`, optionally as if nothing had been acknowledged. */
const findings = (
  root: IConstruct,
  ignoringAcknowledgements = false,
): { key: string; severity: string | undefined }[] => {
  const pack = new AwsSolutionsChecks();
  if (ignoringAcknowledgements) Object.defineProperty(pack, 'isAcknowledged', { value: () => false });
  return pack
    .validateScope(root)
    .violations.flatMap((v) =>
      v.violatingResources.map((r) => ({ key: `${r.constructPath} ${v.ruleName}`, severity: v.severity })),
    );
};

const variants = {
  default: () => sluice(),
  'no dashboard': () => sluice({ context: { createDashboard: 'false' } }),
  'alarm e-mail, imported key': () =>
    sluice({
      context: {
        alarmEmail: 'ops@example.com',
        upstreamKeySecretArn: 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:nvidia-key-AbCdEf',
      },
    }),
};

describe('cdk-nag AwsSolutions', () => {
  it.each(Object.entries(variants))('finds nothing unacknowledged (%s)', (_name, synth) => {
    const { stack } = synth();
    const open = findings(stack);
    if (open.length > 0) console.log(open.map((f) => `${f.severity} ${f.key}`).join('\n'));
    expect(open).toEqual([]);
  });

  it.each(Object.entries(variants))(
    'acknowledges only real findings, one rule on one resource, with a reason (%s)',
    (_name, synth) => {
      // Prepare
      const { stack } = synth();

      // Act
      const acknowledged = acknowledgementsIn(stack.node.root);
      const raw = new Set(findings(stack, true).map((f) => f.key));

      // Assess
      for (const ack of acknowledged) {
        expect(ack.onCfnResource, `${ack.path}: acknowledge on a resource, not a scope`).toBe(true);
        expect(ack.path).not.toBe(Stack.of(stack).node.path);
        expect(ack.ruleId).toMatch(/^AwsSolutions-[A-Z]+\d+(\[.+\])?$/);
        expect(ack.reason.length).toBeGreaterThanOrEqual(20);
        expect(raw.has(`${ack.path} ${ack.ruleId}`), `${ack.path} ${ack.ruleId} is a real finding`).toBe(
          true,
        );
      }
    },
  );

  it('lists every acknowledged rule in docs/deploy.md', () => {
    // Prepare
    const { stack } = sluice({ context: { alarmEmail: 'ops@example.com' } });
    const docs = readFileSync(`${PROJECT_ROOT}/docs/deploy.md`, 'utf8');

    // Act
    const acknowledged = acknowledgementsIn(stack.node.root);
    console.log(
      acknowledged
        .map((a) => `${a.ruleId.padEnd(40)} ${a.path.replace(/^Sluice\//, '')}\n    ${a.reason}`)
        .join('\n'),
    );

    // Assess
    for (const ruleId of new Set(acknowledged.map((a) => a.ruleId.replace(/\[.*$/, '')))) {
      expect(docs, `${ruleId} documented`).toContain(ruleId);
    }
  });
});
