// Domain: which `/v1/*` paths the gateway forwards with the shared key (`forward_paths`), and nothing else.

/**
 * True when `path` (with or without query string) is one of `allowed`: an entry names a path below `/v1/`
 * exactly; one ending in `/*` also covers every path below it (`models/*` → `/v1/models/meta/llama…`).
 * @example isForwardedPath('/v1/chat/completions?x=1', ['chat/completions']) // true
 * @example isForwardedPath('/v1/chat/completions/abc', ['chat/completions']) // false: a stored completion
 */
export const isForwardedPath = (path: string, allowed: readonly string[]): boolean => {
  const pathname = (path.split('?')[0] ?? '').replace(/\/+$/, '');
  if (!pathname.startsWith('/v1/')) return false;
  const rest = pathname.slice(4);
  return allowed.some((entry) =>
    entry.endsWith('/*')
      ? rest.startsWith(entry.slice(0, -1)) && rest.length > entry.length - 1
      : rest === entry,
  );
};
