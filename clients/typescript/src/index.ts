/** @soul/client: the TypeScript client of the Soul API (see client.ts). */
export * from "./client.js";
export * from "./errors.js";
export { OPERATIONS, type OperationId, type OperationSpec } from "./operations.js";
export { DEFAULT_RETRY, NO_RETRIES, parseRetryAfter, retryDelay, type RetryPolicy } from "./retry.js";
export type { components, operations, paths } from "./schema.js";
export { readEvents, SseParser, type ServerSentEvent } from "./sse.js";
export { verifyWebhook, type WebhookHeaders } from "./webhooks.js";
