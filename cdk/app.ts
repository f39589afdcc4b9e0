// CDK app entry (`cdk.json`: `tsx cdk/app.ts`): reads the settings from context, prepares the dashboard, runs cdk-nag.
import { App, Validations } from 'aws-cdk-lib';
import { AwsSolutionsChecks } from 'cdk-nag';
import { prepareDashboardAssets } from './dashboard-assets.js';
import { assertEntriesExist } from './project-paths.js';
import { settingsFromContext } from './settings.js';
import { SluiceStack } from './sluice-stack.js';

const app = new App();
const stackName = (app.node.tryGetContext('stackName') as string | undefined) ?? 'Sluice';
if (!/^[A-Za-z][A-Za-z0-9-]{0,50}$/.test(stackName))
  throw new Error(`context stackName: ${stackName} is not a stack name`);
const settings = settingsFromContext((key) => app.node.tryGetContext(key));
assertEntriesExist();
const dashboard = settings.createDashboard ? await prepareDashboardAssets({ rebuild: true }) : undefined;
if (dashboard?.source === 'missing') {
  console.warn('sluice: dashboard/dist is missing and could not be built: deploying a placeholder page');
}
new SluiceStack(app, stackName, {
  settings,
  ...(dashboard?.dir ? { dashboardAssetsDir: dashboard.dir } : {}),
});
// Synth fails on any unacknowledged AwsSolutions finding (test/cdk/nag.test.ts checks the same offline).
Validations.of(app).addPlugins(new AwsSolutionsChecks(app));
