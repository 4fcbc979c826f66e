/**
 * When to send a request again, and after how long (pure rules). Only calls that are safe to send twice (a
 * read, a delete, or a POST with an `Idempotency-Key`), only for 429/502/503/504 or no answer at all, never past
 * the attempts; `Retry-After` wins over the backoff.
 */

export const RETRYABLE_STATUSES: ReadonlySet<number> = new Set([429, 502, 503, 504]);

export interface RetryPolicy {
  /** Counts the first try. */
  readonly maxAttempts: number;
  readonly backoffMs: number;
  readonly maxBackoffMs: number;
  /** A longer `Retry-After` is not waited for: the error is thrown instead. */
  readonly maxRetryAfterMs: number;
}

export const DEFAULT_RETRY: RetryPolicy = { maxAttempts: 4, backoffMs: 500, maxBackoffMs: 8000, maxRetryAfterMs: 60000 };
export const NO_RETRIES: RetryPolicy = { ...DEFAULT_RETRY, maxAttempts: 1 };

/** Milliseconds before attempt `attempt + 1` (attempt counts from 1), or null to stop. */
export function retryDelay(
  policy: RetryPolicy, attempt: number, status: number | null, retryAfterS: number | null, idempotent: boolean,
  random: () => number = Math.random,
): number | null {
  if (!idempotent || attempt >= policy.maxAttempts) return null;
  if (status !== null && !RETRYABLE_STATUSES.has(status)) return null;
  if (retryAfterS !== null) {
    const ms = retryAfterS * 1000;
    return ms <= policy.maxRetryAfterMs ? ms : null;
  }
  const ceiling = Math.min(policy.maxBackoffMs, policy.backoffMs * 2 ** (attempt - 1));
  return ceiling / 2 + random() * (ceiling / 2);
}

/** `Retry-After` as seconds: delta-seconds or an HTTP date; null when absent or unreadable. */
export function parseRetryAfter(value: string | null, now: number = Date.now()): number | null {
  if (!value) return null;
  const trimmed = value.trim();
  if (/^\d+(\.\d+)?$/.test(trimmed)) return Number(trimmed);
  const when = Date.parse(trimmed);
  return Number.isNaN(when) ? null : Math.max(0, (when - now) / 1000);
}
