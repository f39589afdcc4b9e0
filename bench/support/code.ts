// Bench support: which code a result came from (commit, and whether the tree had uncommitted changes).
import { execFileSync } from 'node:child_process';

export const codeVersion = (): { commit: string; dirty: boolean } => {
  try {
    const commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).trim();
    const status = execFileSync('git', ['status', '--porcelain', '--untracked-files=no'], {
      encoding: 'utf8',
    });
    return { commit, dirty: status.trim() !== '' };
  } catch {
    return { commit: 'unknown', dirty: false };
  }
};
