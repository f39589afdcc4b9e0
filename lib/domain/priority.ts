// Domain: the four priorities, their order and parsing.

export const PRIORITIES = ['urgent', 'high', 'normal', 'low'] as const;
export type Priority = (typeof PRIORITIES)[number];

/** 0 = most important. */
export const priorityRank = (p: Priority): number => PRIORITIES.indexOf(p);

export const isPriority = (value: unknown): value is Priority =>
  typeof value === 'string' && (PRIORITIES as readonly string[]).includes(value);

/** Parses an `X-Priority` header value; undefined when absent, null when invalid. */
export const parsePriority = (raw: string | undefined): Priority | undefined | null => {
  if (raw === undefined || raw.trim() === '') return undefined;
  const value = raw.trim().toLowerCase();
  return isPriority(value) ? value : null;
};

/** The less important of the two: a request's priority capped at the key's maximum. */
export const capPriority = (requested: Priority, max: Priority): Priority =>
  priorityRank(requested) < priorityRank(max) ? max : requested;
