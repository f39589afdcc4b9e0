// Adapter helper: adds an initialize-step middleware to an AWS SDK v3 client once, however many stores share it.

/** Any AWS SDK v3 client (DynamoDBClient, SQSClient): its middleware stack takes an initialize-step middleware. */
export interface WithMiddlewareStack {
  middlewareStack: { add(...args: never[]): void };
}

type Next<A> = (args: A) => Promise<object>;
/** An initialize-step middleware: sees the command's input before it is serialized, and every error after. */
export type InitializeMiddleware<A> = (next: Next<A>, context: { commandName?: string }) => Next<A>;

const added = new WeakMap<object, Set<string>>();

/**
 * Adds `middleware` under `name` at the initialize step, unless `client` has it already. Among initialize-step
 * middlewares a `high` one runs outside a `normal` one (it sees what the inner one finally throws).
 */
export const addInitializeMiddlewareOnce = <A>(
  client: WithMiddlewareStack,
  name: string,
  priority: 'high' | 'normal',
  middleware: InitializeMiddleware<A>,
): void => {
  const names = added.get(client) ?? new Set<string>();
  if (names.has(name)) return;
  names.add(name);
  added.set(client, names);
  const add = client.middlewareStack.add as unknown as (
    m: InitializeMiddleware<A>,
    options: { step: 'initialize'; name: string; priority: 'high' | 'normal' },
  ) => void;
  add.call(client.middlewareStack, middleware, { step: 'initialize', name, priority });
};
