/** Pure parts of @soul/client, no server: retry rules, Retry-After, the SSE parser, webhook verification,
 * and the client's retry loop over a fake fetch (429 with Retry-After, the same Idempotency-Key each time). */

import assert from "node:assert/strict";
import { test } from "node:test";

import { Webhook } from "standardwebhooks";

import { BadRequest, DEFAULT_RETRY, RateLimited, SoulClient, SseParser, TransportError, WebhookVerificationError,
  parseRetryAfter, readEvents, retryDelay, verifyWebhook } from "../src/index.js";

test("retries only what is safe, for busy answers, within the attempts; Retry-After wins", () => {
  assert.equal(retryDelay(DEFAULT_RETRY, 1, 429, 3, true), 3000);
  assert.equal(retryDelay(DEFAULT_RETRY, 1, 429, 3, false), null);
  assert.equal(retryDelay(DEFAULT_RETRY, 1, 400, null, true), null);
  assert.equal(retryDelay(DEFAULT_RETRY, 4, 503, null, true), null);
  assert.equal(retryDelay(DEFAULT_RETRY, 1, 503, 3600, true), null);
  const backoff = retryDelay(DEFAULT_RETRY, 2, null, null, true, () => 1)!;
  assert.equal(backoff, 1000);
  assert.equal(parseRetryAfter("7"), 7);
  assert.equal(parseRetryAfter(new Date(Date.now() + 10000).toUTCString(), Date.now()) ! > 8, true);
  assert.equal(parseRetryAfter("soon"), null);
});

test("the SSE parser joins data lines, skips heartbeats, resets after each event", async () => {
  const parser = new SseParser();
  const lines = [": hb", "retry: 1000", "event: update", "data: {\"a\":", "data: 1}", "", "data: x", ""];
  const events = lines.map((l) => parser.feed(l)).filter(Boolean);
  assert.deepEqual(events, [{ event: "update", data: "{\"a\":\n1}", id: null }, { event: "message", data: "x", id: null }]);
  const body = new Response("event: end\r\ndata: {}\r\n\r\n").body!;
  const read = [];
  for await (const e of readEvents(body)) read.push(e.event);
  assert.deepEqual(read, ["end"]);
});

test("webhooks signed with the tenant's secret verify; others do not", () => {
  const secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
  const body = JSON.stringify({ type: "completed", data: { task_id: "t1" } });
  const now = new Date();
  const signature = new Webhook(secret).sign("msg_1", now, body);
  const headers = { "webhook-id": "msg_1", "webhook-timestamp": String(Math.floor(now.getTime() / 1000)),
    "webhook-signature": signature };
  assert.deepEqual(verifyWebhook(headers, body, secret), JSON.parse(body));
  assert.throws(() => verifyWebhook(headers, body + " ", secret), WebhookVerificationError);
  assert.throws(() => verifyWebhook({ ...headers, "webhook-timestamp": "1" }, body, secret), WebhookVerificationError);
});

test("a 429 is retried after Retry-After with the same Idempotency-Key; a 400 is typed and not retried", async () => {
  const seen: { key: string | null }[] = [];
  const waits: number[] = [];
  const answers = [
    new Response(JSON.stringify({ error: { code: "rate_limited", message: "slow down", field: null } }),
      { status: 429, headers: { "Retry-After": "2", "Content-Type": "application/json" } }),
    new Response(JSON.stringify({ status: "ready", pk_id: "p", variant: {} }), { status: 200 }),
  ];
  const fake = (async (_url: URL, init: RequestInit) => {
    seen.push({ key: (init.headers as Record<string, string>)["Idempotency-Key"] });
    return answers.shift()!;
  }) as unknown as typeof fetch;
  const client = new SoulClient("http://soul.test", { fetch: fake, sleep: async (ms) => { waits.push(ms); } });
  await client.call("image_post", { body: { soul_id: "nova", cue: "penguin", user_id: "u1" } });
  assert.equal(seen.length, 2);
  assert.ok(seen[0].key && seen[0].key === seen[1].key);
  assert.deepEqual(waits, [2000]);

  const bad = (async () => new Response(JSON.stringify({ error: { code: "invalid", message: "no", field: "cue" } }),
    { status: 400 })) as unknown as typeof fetch;
  await assert.rejects(new SoulClient("http://soul.test", { fetch: bad }).call("me", {}),
    (e: unknown) => e instanceof BadRequest && e.field === "cue" && e.code === "invalid");
  let calls = 0;
  const limited = (async () => { calls++; return new Response("{}", { status: 429, headers: { "Retry-After": "1" } }); }) as unknown as typeof fetch;
  await assert.rejects(new SoulClient("http://soul.test", { fetch: limited, sleep: async () => {} })
    .call("mark_seen", { query: { variant_id: "v", user_id: "u" } }), RateLimited);
  assert.equal(calls, 1); // a POST without an idempotency key is never sent twice
  const down = (async () => { throw new Error("ECONNREFUSED"); }) as unknown as typeof fetch;
  await assert.rejects(new SoulClient("http://soul.test", { fetch: down, sleep: async () => {} }).call("me", {}),
    TransportError);
});
