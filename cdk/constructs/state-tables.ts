// CDK construct (stateful): the DynamoDB tables from lib/infra/definitions.ts, and how functions get at them.
import { RemovalPolicy } from 'aws-cdk-lib';
import { AttributeType, BillingMode, Table, TableEncryption } from 'aws-cdk-lib/aws-dynamodb';
import { Grant, type IGrantable, PolicyStatement } from 'aws-cdk-lib/aws-iam';
import { Construct } from 'constructs';
import { type AttributeDef, TABLES, type TableDef } from '../../lib/infra/definitions.js';
import type { SluiceFunction } from './sluice-function.js';

export type TableId = TableDef['id'];
/**
 * `readTouch`: reads plus UpdateItem of `lastUsedAt` only (agent keys; a `dynamodb:Attributes` condition), no
 * puts or deletes. `purge`: Scan and BatchWriteItem only, to empty the table (the response cache's
 * `DELETE /admin/cache`).
 */
export type TableAccess = 'read' | 'readTouch' | 'readWrite' | 'purge';

/** What `purge` allows: list the keys and delete them in batches; no item reads or writes otherwise. */
export const DYNAMODB_PURGE_ACTIONS = ['dynamodb:Scan', 'dynamodb:BatchWriteItem'] as const;

/**
 * Item-level reads the functions make. Queries on an index also need the index ARN, granted alongside. No Scan
 * (only the keys CLI lists keys, with the operator's own credentials) and no batch reads.
 */
export const DYNAMODB_READ_ACTIONS = [
  'dynamodb:GetItem',
  'dynamodb:Query',
  'dynamodb:ConditionCheckItem',
  'dynamodb:DescribeTable',
] as const;

/**
 * Item-level writes. TransactWriteItems has no IAM action of its own: each item in a transaction is
 * authorised as its PutItem / UpdateItem / DeleteItem / ConditionCheckItem. No function deletes an item
 * (tickets, slots and idempotency records expire by TTL) or writes in batches.
 */
export const DYNAMODB_WRITE_ACTIONS = ['dynamodb:PutItem', 'dynamodb:UpdateItem'] as const;

/** What `readTouch` may name in an UpdateItem: the key and the one attribute it sets. */
export const TOUCH_ATTRIBUTES = ['keyHash', 'lastUsedAt'] as const;

/** The environment variable that carries each table's name (lib/runtime/env.ts). */
const TABLE_ENV: Record<TableId, string> = {
  state: 'SLUICE_STATE_TABLE',
  tickets: 'SLUICE_TICKETS_TABLE',
  keys: 'SLUICE_KEYS_TABLE',
  cache: 'SLUICE_CACHE_TABLE',
};

const attribute = (def: AttributeDef) => ({
  name: def.name,
  type: def.type === 'S' ? AttributeType.STRING : AttributeType.NUMBER,
});

export interface StateTablesProps {
  /** Deletion protection on, and the tables kept when the stack is deleted. */
  deletionProtection: boolean;
}

/**
 * The state, tickets and keys tables: on demand, point-in-time recovery, TTL where defined, deletion protection.
 * `bind` is the only way functions reach them: it sets the table-name variables and grants item access on
 * exactly the tables (and indexes) asked for.
 */
export class StateTables extends Construct {
  readonly tables: Readonly<Record<TableId, Table>>;
  private readonly defs: Readonly<Record<TableId, TableDef>>;

  constructor(scope: Construct, id: string, props: StateTablesProps) {
    super(scope, id);
    const tables = {} as Record<TableId, Table>;
    const defs = {} as Record<TableId, TableDef>;
    for (const def of TABLES) {
      const table = new Table(this, `${def.id[0]?.toUpperCase()}${def.id.slice(1)}Table`, {
        partitionKey: attribute(def.partitionKey),
        ...(def.sortKey ? { sortKey: attribute(def.sortKey) } : {}),
        ...(def.ttlAttribute ? { timeToLiveAttribute: def.ttlAttribute } : {}),
        billingMode: BillingMode.PAY_PER_REQUEST,
        pointInTimeRecoverySpecification: { pointInTimeRecoveryEnabled: true },
        // Encrypted at rest with the AWS-owned key: no KMS calls, no key grants.
        encryption: TableEncryption.DEFAULT,
        deletionProtection: props.deletionProtection,
        removalPolicy: props.deletionProtection ? RemovalPolicy.RETAIN : RemovalPolicy.DESTROY,
      });
      for (const index of def.indexes) {
        table.addGlobalSecondaryIndex({
          indexName: index.name,
          partitionKey: attribute(index.partitionKey),
          ...(index.sortKey ? { sortKey: attribute(index.sortKey) } : {}),
        });
      }
      tables[def.id] = table;
      defs[def.id] = def;
    }
    this.tables = tables;
    this.defs = defs;
  }

  /**
   * Gives a function the names of all tables (its environment contract needs them) and item access to the
   * ones in `access`; tables left out are not granted at all.
   * @example tables.bind(ingress, { state: 'readWrite', tickets: 'readWrite', keys: 'read' })
   */
  bind(fn: SluiceFunction, access: Partial<Record<TableId, TableAccess>>): void {
    for (const [tableId, table] of Object.entries(this.tables) as [TableId, Table][]) {
      fn.addEnvironment(TABLE_ENV[tableId], table.tableName);
      const level = access[tableId];
      if (level) this.grantItems(fn, tableId, level);
    }
  }

  private grantItems(grantee: IGrantable, tableId: TableId, level: TableAccess): Grant {
    const table = this.tables[tableId];
    const actions: string[] =
      level === 'purge'
        ? [...DYNAMODB_PURGE_ACTIONS]
        : [...DYNAMODB_READ_ACTIONS, ...(level === 'readWrite' ? DYNAMODB_WRITE_ACTIONS : [])];
    // Named indexes rather than `index/*`: no wildcard resource to acknowledge.
    const indexArns = this.defs[tableId].indexes.map((index) => `${table.tableArn}/index/${index.name}`);
    const grant = Grant.addToPrincipal({ grantee, actions, resourceArns: [table.tableArn, ...indexArns] });
    if (level === 'readTouch') {
      // Recording use may set `lastUsedAt` and nothing else: not `enabled`, `maxPriority` or an expiry.
      grantee.grantPrincipal.addToPrincipalPolicy(
        new PolicyStatement({
          actions: ['dynamodb:UpdateItem'],
          resources: [table.tableArn],
          conditions: {
            'ForAllValues:StringEquals': { 'dynamodb:Attributes': [...TOUCH_ATTRIBUTES] },
            StringEqualsIfExists: { 'dynamodb:ReturnValues': ['NONE', 'UPDATED_NEW'] },
          },
        }),
      );
    }
    return grant;
  }
}
