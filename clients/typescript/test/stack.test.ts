/**
 * @soul/client against the whole stack: started by tests/e2e/test_clients.py, which runs this file with
 * SOUL_API_URL, SOUL_API_KEY (tenant acme), SOUL_TIGHT_KEY (a tenant limited to one request per two seconds) and
 * SOUL_WEBHOOK_SECRET (acme's signing secret) and SOUL_WEBHOOK_PORT (where the stack may deliver webhooks) set. Without them it fails: it is never skipped.
 */

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { createServer, type IncomingHttpHeaders } from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, test } from "node:test";

import { BadRequest, DEFAULT_RETRY, Forbidden, NO_RETRIES, NotFound, OPERATIONS, RateLimited, SoulClient, TaskFailed, Unauthorized,
  WebhookVerificationError, verifyWebhook } from "../src/index.js";

function env(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run this file through tests/e2e/test_clients.py`);
  return value;
}

const base = env("SOUL_API_URL");
const soul = new SoulClient(base, { apiKey: env("SOUL_API_KEY"), timeoutMs: 30000 });
const cue = (label: string) => `${label} ${randomUUID().slice(0, 8)}`;

const deliveries: { headers: IncomingHttpHeaders; body: string }[] = [];
const receiver = createServer((request, response) => {
  const chunks: Buffer[] = [];
  request.on("data", (chunk: Buffer) => chunks.push(chunk));
  request.on("end", () => {
    deliveries.push({ headers: request.headers, body: Buffer.concat(chunks).toString("utf8") });
    response.writeHead(204).end();
  });
});
let hookUrl = "";

before(async () => {
  // The stack delivers local webhooks only to the ports it was told of: SOUL_WEBHOOK_PORT is ours.
  await new Promise<void>((resolve) => receiver.listen(Number(env("SOUL_WEBHOOK_PORT")), "127.0.0.1", resolve));
  hookUrl = `http://127.0.0.1:${(receiver.address() as AddressInfo).port}/hook`;
});
after(() => { receiver.close(); });

test("an image over server-sent events, its progress, a dedup hit, and its verified webhook", async () => {
  const penguin = cue("penguin");
  const handle = await soul.image({ soul_id: "nova", cue: penguin, user_id: "user-ts", webhook: hookUrl });
  assert.ok(handle.taskId);
  const updates = [];
  for await (const update of handle.progress({ timeoutMs: 180000 })) updates.push(update);
  assert.equal(updates.at(-1)?.status, "succeeded");
  assert.ok(updates.some((u) => u.status === "running"));
  const result = await handle.wait();
  assert.ok(result.variant?.url.startsWith("http"));

  const hit = await soul.image({ soul_id: "nova", cue: penguin, user_id: "user-ts2" });
  assert.equal(hit.taskId, null);
  assert.equal((await hit.wait()).variant?.variant_id, result.variant?.variant_id);

  const deadline = Date.now() + 60000;
  let delivery;
  while (!(delivery = deliveries.find((d) => d.body.includes(handle.taskId!) && d.body.includes('"type":"soul.job.succeeded"')))) {
    assert.ok(Date.now() < deadline, "no completed webhook delivery");
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  const payload = verifyWebhook(delivery.headers as Record<string, string>, delivery.body,
    env("SOUL_WEBHOOK_SECRET")) as { type: string; data: { task_id: string } };
  assert.equal(payload.type, "soul.job.succeeded");
  assert.equal(payload.data.task_id, handle.taskId);
  assert.throws(() => verifyWebhook(delivery.headers as Record<string, string>, delivery.body.replace("succeeded",
    "failed"), env("SOUL_WEBHOOK_SECRET")), WebhookVerificationError);
});

test("an image by polling", async () => {
  const handle = await soul.image({ soul_id: "nova", cue: cue("owl"), user_id: "user-ts" });
  const result = await handle.wait({ events: false, pollIntervalMs: 300, timeoutMs: 180000 });
  assert.ok((result.variant?.width ?? 0) > 0);
});

test("cancel, list across pages, typed errors", async () => {
  const handles = [];
  for (let i = 0; i < 3; i++) handles.push(await soul.image({ soul_id: "nova", cue: cue("cat"), user_id: "user-ts-list" }));
  const canceled = await handles[2].cancel();
  assert.ok(canceled.status === "canceled" || canceled.cancel_requested);
  await assert.rejects(handles[2].wait({ timeoutMs: 120000 }), (error: unknown) =>
    error instanceof TaskFailed && (error.task as { status: string }).status === "canceled");

  const listed = [];
  for await (const task of soul.tasks({ user_id: "user-ts-list", page_size: 2 })) listed.push(task.task_id);
  assert.equal(new Set(listed).size, listed.length);
  for (const h of handles) assert.ok(listed.includes(h.taskId!));

  await assert.rejects(soul.call("image_get", { query: { soul_id: "Not A Soul!", cue: "x", user_id: "u1" } }),
    (error: unknown) => error instanceof BadRequest && error.status === 400 && error.field === "soul_id");
  await assert.rejects(soul.call("task_get", { path: { task_id: "img-00000000000000000000000000000000-0" } }),
    NotFound);
  await assert.rejects(new SoulClient(base).call("me", {}), Unauthorized);
  for (const h of handles.slice(0, 2)) await h.wait({ timeoutMs: 180000 });
});

test("a 429 carries Retry-After, and the client retries after it", async () => {
  const strict = new SoulClient(base, { apiKey: env("SOUL_TIGHT_KEY"), retry: NO_RETRIES });
  // The limiter may spread a tenant's burst over shards: ask until it says no.
  let limited: unknown = null;
  for (let i = 0; i < 30 && !limited; i++) {
    try { await strict.call("me", {}); } catch (error) { limited = error; }
  }
  assert.ok(limited instanceof RateLimited && (limited.retryAfter ?? 0) > 0 && limited.status === 429, String(limited));
  const waits: number[] = [];
  const patient = new SoulClient(base, { apiKey: env("SOUL_TIGHT_KEY"), retry: { ...DEFAULT_RETRY, maxAttempts: 10 },
    sleep: (ms) => { waits.push(ms); return new Promise((resolve) => setTimeout(resolve, ms)); } });
  for (let i = 0; i < 3; i++) assert.equal((await patient.call("me", {})).tenant, "tight");
  assert.ok(waits.length > 0 && waits.every((ms) => ms > 0 && ms <= 60000));
});

test("every GET operation without parameters answers through the client", async () => {
  for (const [id, spec] of Object.entries(OPERATIONS)) {
    if (spec.method !== "GET" || spec.pathParams.length || spec.stream || id === "image_get" || id === "info") continue;
    if (id === "video_estimate") continue;
    try {
      const answer = await soul.call(id as "me", {});
      assert.ok(answer && typeof answer === "object", id);
    } catch (error) {
      assert.ok(error instanceof Forbidden, `${id}: ${error}`); // admin-only for this client key: reached, typed
    }
  }
});
