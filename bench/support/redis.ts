// Bench support: a throwaway redis-server on a free port (no persistence), or why there is none.
import { spawn } from 'node:child_process';
import { createServer, Socket } from 'node:net';

export interface RedisServer {
  host: string;
  port: number;
  version: string;
  stop(): Promise<void>;
}

export const INSTALL_HINT =
  'redis-server not found: install it (Debian/Ubuntu: `apt-get install redis-server`)';

const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as { port: number };
      srv.close(() => resolve(port));
    });
  });

const canConnect = (port: number): Promise<boolean> =>
  new Promise((resolve) => {
    const s = new Socket();
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
    s.connect(port, '127.0.0.1');
  });

/** Starts `redis-server --save '' --appendonly no` on a free port; `{ missing }` if it is not installed. */
export const startRedis = async (): Promise<RedisServer | { missing: string }> => {
  const port = await freePort();
  const child = spawn(
    'redis-server',
    ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
    { stdio: ['ignore', 'pipe', 'ignore'] },
  );
  let version = 'unknown';
  child.stdout?.on('data', (b: Buffer) => {
    const m = /(?:Redis version|v)=(\d+\.\d+\.\d+)/.exec(b.toString());
    if (m?.[1]) version = m[1];
  });
  const spawned = await new Promise<boolean>((resolve) => {
    child.once('spawn', () => resolve(true));
    child.once('error', () => resolve(false));
  });
  if (!spawned) return { missing: INSTALL_HINT };
  for (let i = 0; i < 100 && !(await canConnect(port)); i++) await new Promise((r) => setTimeout(r, 50));
  return {
    host: '127.0.0.1',
    port,
    get version() {
      return version;
    },
    stop: async () => {
      if (child.exitCode !== null) return;
      const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
      child.kill('SIGTERM');
      await exited;
    },
  };
};
