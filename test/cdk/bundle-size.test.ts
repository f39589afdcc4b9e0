// Bundle tests: esbuild output of each function — ESM with the require shim, source map, SDK inside — and its zipped size.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { deflateRawSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { lambdaFunctions, logicalId, sluice } from './stack.js';

/** Lambda's zip of an asset directory: deflate at level 9 plus the zip format's per-entry headers. */
const zippedSize = (dir: string): number => {
  let total = 22; // end of central directory
  for (const name of readdirSync(dir, { recursive: true }) as string[]) {
    const path = join(dir, name);
    if (!statSync(path).isFile()) continue;
    const compressed = deflateRawSync(readFileSync(path), { level: 9 }).length;
    total += compressed + 30 + 46 + 2 * Buffer.byteLength(name);
  }
  return total;
};

const ONE_MIB = 1024 * 1024;
const kib = (bytes: number): string => `${(bytes / 1024).toFixed(0)} KiB`;

const { stack, template, assemblyDir } = sluice({ bundle: true });
const functions = [stack.ingress.fn, stack.dispatcher.fn, stack.status.fn];
const assetDir = (id: string): string => {
  const metadata = (lambdaFunctions(template)[id] as { Metadata?: Record<string, string> }).Metadata;
  const path = metadata?.['aws:asset:path'];
  if (!path) throw new Error(`${id} has no asset metadata`);
  return join(assemblyDir, path);
};

describe('function bundles', () => {
  it.each(functions.map((fn) => [fn.serviceName, fn] as const))(
    '%s is a minified ESM bundle with the createRequire shim, a source map and the AWS SDK inside',
    (_name, fn) => {
      // Prepare
      const dir = assetDir(logicalId(fn));

      // Act
      const code = readFileSync(join(dir, 'index.mjs'), 'utf8');

      // Assess
      expect(readdirSync(dir).sort()).toEqual(['index.mjs', 'index.mjs.map']);
      expect(code.startsWith('import { createRequire as __sluiceCreateRequire }')).toBe(true);
      expect(code).toMatch(/export\s*\{[^}]*as handler/);
      expect(code).not.toMatch(/from\s*["']@aws-sdk\//);
      expect(code).toContain('//# sourceMappingURL=index.mjs.map');
    },
  );

  it('stays under 1 MiB zipped per function (measured and logged)', () => {
    // Act
    const sizes = functions.map((fn) => {
      const dir = assetDir(logicalId(fn));
      const raw = readdirSync(dir).reduce((sum, name) => sum + statSync(join(dir, name)).size, 0);
      return { fn: fn.serviceName, raw, zipped: zippedSize(dir) };
    });
    console.log(
      sizes
        .map(
          (s) => `${s.fn.padEnd(10)} ${kib(s.raw).padStart(9)} unzipped ${kib(s.zipped).padStart(8)} zipped`,
        )
        .join('\n'),
    );

    // Assess
    for (const s of sizes) expect(s.zipped, s.fn).toBeLessThan(ONE_MIB);
  });
});
