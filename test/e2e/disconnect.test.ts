// An agent that disconnects while queued costs no token and leaves its ticket `abandoned`.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LocalSystem } from '../../local/runtime.js';
import { auditTickets, eventually, startTestSystem } from '../support/system.js';

let system: LocalSystem;
let key: string;

beforeAll(async () => {
  // One token per ~10 s: the second and third requests must wait.
  system = await startTestSystem('e2e-disconnect', {
    fakeUpstream: { tokenDelayMs: 5, firstByteDelayMs: 5, limit: null },
    env: { SLUICE_UPSTREAM_LIMIT: '2', SLUICE_UPSTREAM_WINDOW_S: '10', SLUICE_BUCKET_BURST: '1' },
  });
  key = await system.createKey('leaver', 'urgent');
});

afterAll(async () => {
  const audit = await auditTickets(system);
  expect(audit.stuck).toEqual([]);
  await system?.stop();
});

const chat = (signal?: AbortSignal, stream = false) =>
  fetch(`${system.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: JSON.stringify({
      model: 'meta/llama-3.1-8b-instruct',
      stream,
      messages: [{ role: 'user', content: 'x' }],
    }),
    ...(signal ? { signal } : {}),
  });

describe('agent disconnect while queued', () => {
  it.each([false, true])(
    'abandons the ticket and spends no token (stream: %s)',
    async (stream) => {
      // Take the token that is free now, so the next request has to queue.
      await (await chat()).text();
      const callsBefore = system.upstream!.calls.length;
      const ac = new AbortController();
      const pending = chat(ac.signal, stream).catch((e: unknown) => e);
      const ticket = await eventually(
        async () => {
          const all = await auditTickets(system);
          return all.tickets.find((t) => t.status === 'queued');
        },
        10_000,
        50,
      );
      ac.abort();
      await pending;
      const ended = await eventually(
        async () => {
          const t = await system.stores.tickets.get(ticket.id);
          return t && t.status !== 'queued' ? t : undefined;
        },
        15_000,
        100,
      );
      expect(ended).toMatchObject({ status: 'abandoned', reason: 'client_disconnected' });
      // Wait until the next token is free (and a little more), so a grant for the leaver could happen: the bucket
      // must not move, the ticket must stay as it ended, and nothing reaches the upstream on its behalf.
      const bucketBefore = await system.stores.bucket.refresh();
      const nextTokenInMs = Math.max(0, (bucketBefore?.tat ?? 0) - Date.now());
      await new Promise((r) => setTimeout(r, nextTokenInMs + 2_000));
      expect(await system.stores.bucket.refresh()).toEqual(bucketBefore);
      expect(await system.stores.tickets.get(ticket.id)).toEqual(ended);
      expect(system.upstream!.calls.length).toBe(callsBefore);
    },
    60_000,
  );
});
