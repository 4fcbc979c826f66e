/**
 * The fetch-based client of the Soul API (node 20 and browsers). `call(id, params)` reaches every operation of
 * the generated table (`operations.ts`) with the types openapi-typescript generated (`schema.ts`); the verbs
 * that create work (`image`, `selfie`, `animate`) return a `TaskHandle`; listings are async iterators over
 * cursors. Every call has a timeout; calls safe to send twice are retried, honouring `Retry-After`; every call
 * that creates work carries an `Idempotency-Key` (generated unless given).
 */

import { ApiError, BadResponse, SoulError, TaskFailed, TransportError, WaitTimeout, errorClass } from "./errors.js";
import { OPERATIONS, type OperationId, type OperationSpec } from "./operations.js";
import { DEFAULT_RETRY, parseRetryAfter, retryDelay, type RetryPolicy } from "./retry.js";
import type { components, operations } from "./schema.js";
import { readEvents, type ServerSentEvent } from "./sse.js";

export type Schemas = components["schemas"];
export type Task = Schemas["Task"];
export type TaskUpdate = Schemas["TaskUpdate"];
export type TaskResult = Schemas["TaskResult"];

type Op<K extends OperationId> = operations[K];
type Params<K extends OperationId> = Op<K>["parameters"];
type PathOf<K extends OperationId> = Params<K> extends { path: infer P } ? P : never;
type QueryOf<K extends OperationId> = Params<K> extends { query?: infer Q } ? Q : never;
type JsonBodyOf<K extends OperationId> = Op<K> extends { requestBody: { content: { "application/json": infer B } } }
  ? B : never;
/** An upload (a non-JSON request body) takes the caller's bytes as they are. */
type BodyOf<K extends OperationId> = (typeof OPERATIONS)[K]["body"] extends "bytes" ? BodyInit : JsonBodyOf<K>;
type Success = 200 | 201 | 202;
type JsonOf<R> = R extends { content: { "application/json": infer J } } ? J : never;
/** What an operation answers: its 2xx JSON, a redirect's Location (string), or an event stream. */
export type AnswerOf<K extends OperationId> = (typeof OPERATIONS)[K]["stream"] extends true
  ? AsyncGenerator<ServerSentEvent>
  : (typeof OPERATIONS)[K]["redirect"] extends true
    ? string
    : JsonOf<Op<K>["responses"][Extract<keyof Op<K>["responses"], Success>]>;

export interface CallOptions {
  idempotencyKey?: string;
  timeoutMs?: number;
  signal?: AbortSignal;
}

export type CallParams<K extends OperationId> = CallOptions
  & ([PathOf<K>] extends [never] ? { path?: never } : { path: PathOf<K> })
  & ([QueryOf<K>] extends [never | undefined] ? { query?: never } : { query?: QueryOf<K> })
  & ([BodyOf<K>] extends [never] ? { body?: never } : { body: BodyOf<K> });

export interface ClientOptions {
  apiKey?: string;
  /** Default timeout of each call, in milliseconds (a stream's is its whole duration). */
  timeoutMs?: number;
  retry?: RetryPolicy;
  fetch?: typeof fetch;
  userAgent?: string;
  /** Waits between retries and polls; tests pass a fake. */
  sleep?: (ms: number) => Promise<void>;
}

const TERMINAL = new Set(["succeeded", "failed", "canceled"]);
const ENDING_EVENTS = new Set(["end", "timeout", "error"]);
const MAX_POLL_INTERVAL_MS = 5000;

const defaultSleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

function newIdempotencyKey(): string {
  return `soul-${globalThis.crypto.randomUUID().replace(/-/g, "")}`;
}

function queryValue(value: unknown): string {
  if (Array.isArray(value)) return value.map(queryValue).join(",");
  return String(value);
}

export class SoulClient {
  readonly baseUrl: string;
  readonly retry: RetryPolicy;
  private readonly apiKey?: string;
  private readonly timeoutMs: number;
  private readonly fetchImpl: typeof fetch;
  private readonly userAgent?: string;
  readonly sleep: (ms: number) => Promise<void>;

  constructor(baseUrl: string, options: ClientOptions = {}) {
    this.baseUrl = baseUrl.replace(/\/+$/, "");
    this.apiKey = options.apiKey;
    this.timeoutMs = options.timeoutMs ?? 30000;
    this.retry = options.retry ?? DEFAULT_RETRY;
    this.fetchImpl = options.fetch ?? globalThis.fetch.bind(globalThis);
    this.userAgent = options.userAgent;
    this.sleep = options.sleep ?? defaultSleep;
  }

  /** Any operation by its operationId, typed by the OpenAPI document. */
  async call<K extends OperationId>(id: K, params: CallParams<K>): Promise<AnswerOf<K>> {
    const spec: OperationSpec = OPERATIONS[id];
    const p = params as CallOptions & { path?: Record<string, unknown>; query?: Record<string, unknown>; body?: unknown };
    let path: string = spec.path;
    for (const name of spec.pathParams) {
      const value = p.path?.[name];
      if (value === undefined || value === null || value === "") throw new TypeError(`${id} needs ${name}`);
      path = path.replace(`{${name}}`, encodeURIComponent(String(value)));
    }
    const url = new URL(this.baseUrl + path);
    for (const [name, value] of Object.entries(p.query ?? {})) {
      if (value !== undefined && value !== null) url.searchParams.set(name, queryValue(value));
    }
    const headers: Record<string, string> = { Accept: spec.stream ? "text/event-stream" : "application/json" };
    if (this.apiKey) headers["X-API-Key"] = this.apiKey;
    if (this.userAgent) headers["User-Agent"] = this.userAgent;
    if (spec.idempotencyKey) headers["Idempotency-Key"] = p.idempotencyKey ?? newIdempotencyKey();
    let body: BodyInit | undefined;
    if (spec.body === "bytes") {
      headers["Content-Type"] = spec.bodyMedia ?? "application/octet-stream";
      body = p.body as BodyInit;
    } else if (spec.body) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(p.body);
    }
    const idempotent = spec.method === "GET" || spec.method === "DELETE" || spec.idempotencyKey;
    for (let attempt = 1; ; attempt++) {
      const signals = [AbortSignal.timeout(p.timeoutMs ?? this.timeoutMs)];
      if (p.signal) signals.push(p.signal);
      let response: Response;
      try {
        response = await this.fetchImpl(url, {
          method: spec.method, headers, body, redirect: "manual", signal: AbortSignal.any(signals),
        });
      } catch (error) {
        if (p.signal?.aborted) throw error;
        const delay = retryDelay(this.retry, attempt, null, null, idempotent);
        if (delay === null) throw new TransportError(`${spec.method} ${url}: ${(error as Error).message}`);
        await this.sleep(delay);
        continue;
      }
      if (response.status < 400) return this.answer(id, response) as Promise<AnswerOf<K>>;
      const retryAfter = parseRetryAfter(response.headers.get("Retry-After"));
      const delay = retryDelay(this.retry, attempt, response.status, retryAfter, idempotent);
      if (delay === null) throw await errorFrom(response, retryAfter);
      await response.body?.cancel().catch(() => undefined);
      await this.sleep(delay);
    }
  }

  private async answer(id: OperationId, response: Response): Promise<unknown> {
    const spec = OPERATIONS[id] as OperationSpec;
    const kind = spec.answers[response.status] ?? "json";
    if (kind === "stream") {
      if (!response.body || !(response.headers.get("Content-Type") ?? "").startsWith("text/event-stream")) {
        await response.body?.cancel().catch(() => undefined);
        throw new BadResponse(`${spec.method} ${spec.path} answered without an event stream`);
      }
      return readEvents(response.body);
    }
    if (kind === "bytes") return new Uint8Array(await response.arrayBuffer());
    if (kind === "empty") {
      await response.body?.cancel().catch(() => undefined);
      return null;
    }
    if (kind === "redirect") {
      const location = response.headers.get("Location");
      if (!location) throw new BadResponse(`${spec.method} ${spec.path} answered ${response.status} without a Location`);
      return location;
    }
    try {
      return await response.json();
    } catch {
      throw new BadResponse(`${spec.method} ${spec.path} answered ${response.status} without JSON; is ${this.baseUrl} the Soul API?`);
    }
  }

  // ---- verbs ---------------------------------------------------------------------------------------------------

  /** `POST /image`: a handle on the variant (ready at once, or the task that makes it). */
  async image(order: Schemas["ImageOrder"], options: CallOptions = {}): Promise<TaskHandle> {
    return new TaskHandle(this, await this.call("image_post", { ...options, body: order }));
  }

  /** `POST /image/selfie`: as `image`, in a place of the city. */
  async selfie(request: Schemas["SelfieRequest"], options: CallOptions = {}): Promise<TaskHandle> {
    return new TaskHandle(this, await this.call("selfie", { ...options, body: request }));
  }

  /** `POST /video/generate-from-variant`: a handle on the animation of a variant. */
  async animate(query: NonNullable<QueryOf<"video_from_variant">>, options: CallOptions = {}): Promise<TaskHandle> {
    return new TaskHandle(this, await this.call("video_from_variant", { ...options, query }));
  }

  /** A handle on a task by id (e.g. one a webhook named). */
  async handle(taskId: string): Promise<TaskHandle> {
    return new TaskHandle(this, await this.call("task_get", { path: { task_id: taskId } }));
  }

  /** Tasks, newest first, across pages (`status`, `type`, `soul_id`, `user_id`). */
  tasks(query: Omit<NonNullable<QueryOf<"task_list">>, "cursor"> = {}, limit?: number): AsyncGenerator<Task> {
    return this.paginate("task_list", query, limit) as AsyncGenerator<Task>;
  }

  /** The items of any listing (an operation with a `cursor`), following `next_cursor`. */
  async *paginate<K extends OperationId>(id: K, query: Record<string, unknown> = {}, limit?: number,
    pathParams?: Record<string, string>): AsyncGenerator<unknown> {
    let cursor: string | undefined;
    let seen = 0;
    const pageSize = Number(query.page_size ?? 100);
    while (limit === undefined || seen < limit) {
      const size = limit === undefined ? pageSize : Math.min(pageSize, limit - seen);
      const params = { path: pathParams, query: { ...query, page_size: size, cursor } } as unknown as CallParams<K>;
      const page = (await this.call(id, params)) as { items: unknown[]; next_cursor?: string | null };
      for (const item of page.items) {
        if (limit !== undefined && seen >= limit) return;
        seen++;
        yield item;
      }
      if (!page.items.length || !page.next_cursor || page.next_cursor === cursor) return;
      cursor = page.next_cursor;
    }
  }
}

type Accepted = Schemas["ImageReady"] | Schemas["ImageQueued"] | Schemas["VideoAccepted"] | Task;

/** Work the API accepted. `taskId` is null when it was ready at once (an unseen variant existed). */
export class TaskHandle {
  readonly taskId: string | null;
  task: Task | null;

  constructor(private readonly client: SoulClient, readonly answer: Accepted) {
    this.taskId = answer.status === "ready" ? null : (answer as { task_id: string }).task_id;
    this.task = "actions" in answer ? (answer as Task) : null;
  }

  async refresh(): Promise<Task> {
    this.task = await this.client.call("task_get", { path: { task_id: this.requireTask() } });
    return this.task;
  }

  /** Canceled at once when queued; `cancel_requested` when running; `Conflict` when it is over. */
  async cancel(): Promise<Task> {
    this.task = await this.client.call("task_cancel", { path: { task_id: this.requireTask() } });
    return this.task;
  }

  /** Each change until the task ends or `timeoutMs` passes: its server-sent events, else polls with backoff. */
  async *progress(options: { timeoutMs?: number; pollIntervalMs?: number; events?: boolean } = {}):
    AsyncGenerator<TaskUpdate> {
    if (this.taskId === null) return;
    const deadline = Date.now() + (options.timeoutMs ?? 300000);
    let last: TaskUpdate | null = null;
    if (options.events ?? true) {
      for await (const update of this.events(deadline)) {
        last = update;
        yield update;
        if (TERMINAL.has(update.status)) return;
      }
    }
    let interval = options.pollIntervalMs ?? 1000;
    for (;;) {
      const task = await this.refresh();
      const update: TaskUpdate = { task_id: task.task_id, status: task.status, stage: task.stage,
        progress: task.progress, eta_seconds: task.eta_seconds ?? null, result: null, error: null };
      if (!last || last.status !== update.status || last.stage !== update.stage || last.progress !== update.progress) {
        last = update;
        yield update;
      }
      const left = deadline - Date.now();
      if (TERMINAL.has(task.status) || left <= 0) return;
      await this.client.sleep(Math.min(interval, left));
      interval = Math.min(MAX_POLL_INTERVAL_MS, interval * 1.5);
    }
  }

  /** The result once the task succeeded; `TaskFailed` when it failed or was canceled, `WaitTimeout` first. */
  async wait(options: { timeoutMs?: number; pollIntervalMs?: number; events?: boolean } = {}): Promise<TaskResult> {
    if (this.answer.status === "ready") return { variant: (this.answer as Schemas["ImageReady"]).variant, outputs: [] };
    const video = this.answer as Schemas["VideoAccepted"];
    if (video.status === "succeeded" && video.result) return video.result;
    for await (const _ of this.progress(options)) { /* follow to the end */ }
    const task = this.task && TERMINAL.has(this.task.status) ? this.task : await this.refresh();
    if (!TERMINAL.has(task.status)) {
      throw new WaitTimeout(`task ${this.taskId} is still ${task.status} after ${options.timeoutMs ?? 300000} ms`);
    }
    if (task.status === "succeeded") return task.result ?? { outputs: [], variant: null };
    const detail = task.error ? `: ${task.error.type}: ${task.error.message}` : "";
    throw new TaskFailed(`task ${task.task_id} ${task.status}${detail}`, task);
  }

  private async *events(deadline: number): AsyncGenerator<TaskUpdate> {
    let stream: AsyncGenerator<ServerSentEvent>;
    try {
      stream = await this.client.call("task_events", { path: { task_id: this.requireTask() },
        timeoutMs: Math.max(1000, deadline - Date.now()) });
    } catch (error) {
      if (error instanceof SoulError) return; // no stream here: poll
      throw error;
    }
    try {
      for await (const event of stream) {
        if (ENDING_EVENTS.has(event.event) || Date.now() >= deadline) return;
        if (event.event === "update") yield JSON.parse(event.data) as TaskUpdate;
      }
    } catch {
      return; // a dropped or cut stream, or a malformed event: polling takes over
    } finally {
      await stream.return(undefined).catch(() => undefined);
    }
  }

  private requireTask(): string {
    if (this.taskId === null) throw new TypeError("this answer was ready at once: there is no task to follow");
    return this.taskId;
  }
}

async function errorFrom(response: Response, retryAfter: number | null): Promise<ApiError> {
  const requestId = response.headers.get("X-Request-Id");
  const Kind = errorClass(response.status);
  const text = await response.text().catch(() => "");
  try {
    const detail = (JSON.parse(text) as { error: { code: string; message: string; field?: string | null } }).error;
    return new Kind(response.status, String(detail.code), String(detail.message), detail.field ?? null, retryAfter,
      requestId);
  } catch {
    const short = text.split(/\s+/).join(" ").slice(0, 200) || response.statusText || "no body";
    return new Kind(response.status, `http_${response.status}`, short, null, retryAfter, requestId);
  }
}
