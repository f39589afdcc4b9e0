// CDK construct (stateful): the upstream API key and the admin/viewer tokens in Secrets Manager; functions get ARNs, never values.
import { SecretValue } from 'aws-cdk-lib';
import { type ISecret, Secret } from 'aws-cdk-lib/aws-secretsmanager';
import { Construct } from 'constructs';
import { primaryUpstream, type UpstreamEntry } from '../../lib/domain/upstreams.js';
import { SECRET_PLACEHOLDER_PREFIX } from '../../lib/infra/definitions.js';
import { acknowledgeNagRule } from '../nag.js';
import type { SluiceFunction } from './sluice-function.js';

/**
 * What the created upstream-key secret holds until an operator puts the real key. It is constant on purpose:
 * CloudFormation only rewrites the value when the template's value changes, so redeploys keep the real key.
 */
export const UPSTREAM_KEY_PLACEHOLDER = `${SECRET_PLACEHOLDER_PREFIX}put-the-upstream-api-key-here`;

/** A complete secret ARN ends in the 6-character suffix Secrets Manager adds to the name. */
const COMPLETE_SECRET_ARN = /:secret:.+-[A-Za-z0-9]{6}$/;

export interface GatewaySecretsProps {
  /** Use this existing secret for the upstream key (plain string value) instead of creating one. */
  upstreamKeySecretArn?: string;
  /** The open upstream's own key (an existing secret); without it the open upstream gets no credential. */
  openUpstreamKeySecretArn?: string;
  /**
   * Several upstreams (`SLUICE_UPSTREAMS`): the first limited one keeps the upstream key above; every other
   * limited one gets a secret of its own (created with a placeholder, or its entry's `key_secret`), open ones
   * only their `key_secret`.
   */
  upstreams?: readonly UpstreamEntry[];
}

const GENERATED_TOKEN = { passwordLength: 48, excludePunctuation: true, includeSpace: false };

/**
 * The upstream key (created with a placeholder, or imported by ARN) and two generated tokens: admin (config
 * API) and viewer (read-only /status). Each `bind*` method sets the variable with the secret's ARN and grants
 * read on that secret only; functions read values at run time through Powertools Parameters.
 */
export class GatewaySecrets extends Construct {
  readonly upstreamKey: ISecret;
  /** False when the key secret was imported: nothing to fill in after deploy. */
  readonly upstreamKeyCreated: boolean;
  /** The open upstream's own key, when it has one: never the limited upstream's. */
  readonly openUpstreamKey: ISecret | undefined;
  readonly adminToken: Secret;
  readonly viewerToken: Secret;
  /** The key of each upstream after the first, by name (`SLUICE_UPSTREAMS`). */
  readonly otherUpstreamKeys = new Map<string, { secret: ISecret; created: boolean }>();
  private readonly upstreams: readonly UpstreamEntry[] | undefined;

  constructor(scope: Construct, id: string, props: GatewaySecretsProps = {}) {
    super(scope, id);
    const imported = (id: string, secretArn: string) =>
      COMPLETE_SECRET_ARN.test(secretArn)
        ? Secret.fromSecretCompleteArn(this, id, secretArn)
        : Secret.fromSecretPartialArn(this, id, secretArn);
    this.openUpstreamKey = props.openUpstreamKeySecretArn
      ? imported('OpenUpstreamKey', props.openUpstreamKeySecretArn)
      : undefined;
    this.upstreams = props.upstreams;
    const first = props.upstreams ? primaryUpstream(props.upstreams) : undefined;
    for (const e of props.upstreams ?? []) {
      if (e === first) continue;
      if (e.keySecret) {
        this.otherUpstreamKeys.set(e.name, {
          secret: imported(`UpstreamKey-${e.name}`, e.keySecret),
          created: false,
        });
      } else if (e.limits) {
        const created = new Secret(this, `UpstreamKey-${e.name}`, {
          description: `sluice: API key of upstream ${e.name} (put the real key after deploy)`,
          secretStringValue: SecretValue.unsafePlainText(UPSTREAM_KEY_PLACEHOLDER),
        });
        acknowledgeNagRule(
          created,
          'AwsSolutions-SMG4',
          'A third-party API key: it is rotated at the provider, then put here; functions re-read it within 5 minutes.',
        );
        this.otherUpstreamKeys.set(e.name, { secret: created, created: true });
      }
    }
    const arn = props.upstreamKeySecretArn ?? first?.keySecret;
    if (arn) {
      this.upstreamKey = imported('UpstreamKey', arn);
      this.upstreamKeyCreated = false;
    } else {
      const created = new Secret(this, 'UpstreamKey', {
        description: 'sluice: API key of the rate-limited upstream (put the real key after deploy)',
        secretStringValue: SecretValue.unsafePlainText(UPSTREAM_KEY_PLACEHOLDER),
      });
      acknowledgeNagRule(
        created,
        'AwsSolutions-SMG4',
        'A third-party API key: it is rotated at the provider, then put here; functions re-read it within 5 minutes.',
      );
      this.upstreamKey = created;
      this.upstreamKeyCreated = true;
    }
    this.adminToken = new Secret(this, 'AdminToken', {
      description: 'sluice: admin token for /admin/config',
      generateSecretString: GENERATED_TOKEN,
    });
    this.viewerToken = new Secret(this, 'ViewerToken', {
      description: 'sluice: read-only token for /status and the dashboard',
      generateSecretString: GENERATED_TOKEN,
    });
    for (const token of [this.adminToken, this.viewerToken]) {
      acknowledgeNagRule(
        token,
        'AwsSolutions-SMG4',
        'A bearer token people paste into the dashboard; rotation needs no Lambda: put a new value and it applies within 5 minutes.',
      );
    }
  }

  /** Each upstream's own key: `SLUICE_UPSTREAM_KEY_SECRET` (+ `SLUICE_OPEN_UPSTREAM_KEY_SECRET`) and read on each. */
  bindUpstreamKey(fn: SluiceFunction): void {
    fn.addEnvironment('SLUICE_UPSTREAM_KEY_SECRET', this.upstreamKey.secretArn);
    this.upstreamKey.grantRead(fn);
    if (this.openUpstreamKey) {
      fn.addEnvironment('SLUICE_OPEN_UPSTREAM_KEY_SECRET', this.openUpstreamKey.secretArn);
      this.openUpstreamKey.grantRead(fn);
    }
    if (this.upstreams && this.otherUpstreamKeys.size > 0) {
      // The list as deployed, each upstream after the first naming its own secret (read granted on that one).
      const list = this.upstreams.map((e) => {
        const key = this.otherUpstreamKeys.get(e.name);
        key?.secret.grantRead(fn);
        return { ...entryJson(e), ...(key ? { key_secret: key.secret.secretArn } : {}) };
      });
      fn.addEnvironment('SLUICE_UPSTREAMS', JSON.stringify(list));
    }
  }

  /** `SLUICE_ADMIN_TOKEN_SECRET` + read on the admin token. */
  bindAdminToken(fn: SluiceFunction): void {
    fn.addEnvironment('SLUICE_ADMIN_TOKEN_SECRET', this.adminToken.secretArn);
    this.adminToken.grantRead(fn);
  }

  /** `SLUICE_VIEWER_TOKEN_SECRET` + read on the viewer token. */
  bindViewerToken(fn: SluiceFunction): void {
    fn.addEnvironment('SLUICE_VIEWER_TOKEN_SECRET', this.viewerToken.secretArn);
    this.viewerToken.grantRead(fn);
  }
}

/** An entry back in the `SLUICE_UPSTREAMS` form. */
const entryJson = (e: UpstreamEntry): Record<string, unknown> => ({
  name: e.name,
  url: e.url,
  ...(e.keySecret ? { key_secret: e.keySecret } : {}),
  ...(e.limits
    ? {
        limit: e.limits.limit,
        window_s: e.limits.windowMs / 1000,
        ...(e.limitsGiven?.includes('tpm') ? { tpm: e.limits.tpm } : {}),
        ...(e.limitsGiven?.includes('maxInflight') ? { max_inflight: e.limits.maxInflight } : {}),
        ...(e.limitsGiven?.includes('retreatPreset') ? { retreat_preset: e.limits.retreatPreset } : {}),
      }
    : {}),
  ...(e.models ? { models: e.models } : {}),
});
