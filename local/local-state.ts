// Local runtime CLI support: what `npm start` keeps under .local/ between runs (tokens, the demo key, where its data
// lives), and the checks it makes before starting anything.
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';

/** Tokens and the demo key `npm start` generated once and reuses on every later start. */
export interface LocalSecrets {
  adminToken?: string;
  viewerToken?: string;
  /** The demo agent key; valid as long as the data directory it was created in is kept. */
  demoKey?: string;
}

/** Where one secret came from this run: given through the env, generated now, or kept from an earlier run. */
export type SecretOrigin = 'env' | 'generated' | 'stored';

/** The files of the local state directory (default `.local/`, ignored by git; `SLUICE_LOCAL_DIR` moves it). */
export const localPaths = (dir: string) => ({
  dir,
  secrets: join(dir, 'secrets.json'),
  runtime: join(dir, 'runtime.json'),
  /** DynamoDB Local's database (keys, config, tickets, bucket). */
  dynamoData: join(dir, 'dynamodb'),
});

export const readSecrets = (file: string): LocalSecrets => {
  if (!existsSync(file)) return {};
  return JSON.parse(readFileSync(file, 'utf8')) as LocalSecrets;
};

/** Written readable by the owner only: the file holds the admin token. */
export const writeSecrets = (file: string, secrets: LocalSecrets): void => {
  writeFileSync(file, `${JSON.stringify(secrets, null, 2)}\n`, { mode: 0o600 });
  chmodSync(file, 0o600);
};

/** A token from the env, else the stored one, else a new one (stored by the caller). */
export const resolveToken = (
  fromEnv: string | undefined,
  stored: string | undefined,
  bytes: number,
): { value: string; origin: SecretOrigin } => {
  if (fromEnv) return { value: fromEnv, origin: 'env' };
  if (stored) return { value: stored, origin: 'stored' };
  return { value: randomBytes(bytes).toString('base64url'), origin: 'generated' };
};

/** Resolves when `port` can be listened on at `host`; rejects with a message naming the port and the way out. */
export const assertPortFree = (port: number, host: string): Promise<void> =>
  new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', (err: NodeJS.ErrnoException) => {
      reject(
        err.code === 'EADDRINUSE'
          ? new PortInUseError(port)
          : new Error(`cannot listen on ${host}:${port}: ${err.message}`),
      );
    });
    server.listen(port, host, () => server.close(() => resolve()));
  });

/** The API port is taken (another sluice, or another program). */
export class PortInUseError extends Error {
  constructor(readonly port: number) {
    super(
      `Port ${port} is already in use (another \`npm start\` still running?). ` +
        `Stop it, or choose another port: PORT=${port + 1} npm start`,
    );
    this.name = 'PortInUseError';
  }
}

export const ensureDir = (dir: string): void => {
  mkdirSync(dir, { recursive: true });
};

export const removeFile = (file: string): void => {
  rmSync(file, { force: true });
};
