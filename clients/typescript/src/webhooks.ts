/**
 * Standard Webhooks verification with the `standardwebhooks` package: the API signs each delivery with the
 * tenant's `whsec_<base64>` secret and sends `webhook-id`, `webhook-timestamp` and `webhook-signature`.
 * `verifyWebhook` returns the parsed body once the signature and the timestamp (5 minutes) verify.
 */

import { Webhook } from "standardwebhooks";

import { WebhookVerificationError } from "./errors.js";

export type WebhookHeaders = Headers | Record<string, string | string[] | undefined>;

function headerRecord(headers: WebhookHeaders): Record<string, string> {
  const out: Record<string, string> = {};
  if (typeof (headers as Headers).forEach === "function" && !(headers as Record<string, unknown>)["webhook-id"]) {
    (headers as Headers).forEach((value, key) => { out[key.toLowerCase()] = value; });
    return out;
  }
  for (const [key, value] of Object.entries(headers as Record<string, string | string[] | undefined>)) {
    if (value !== undefined) out[key.toLowerCase()] = Array.isArray(value) ? value.join(" ") : value;
  }
  return out;
}

/** The delivery's JSON once it verifies; `WebhookVerificationError` otherwise. `body` must be the raw text. */
export function verifyWebhook(headers: WebhookHeaders, body: string | Uint8Array, secret: string): unknown {
  const payload = typeof body === "string" ? body : new TextDecoder().decode(body);
  try {
    return new Webhook(secret).verify(payload, headerRecord(headers));
  } catch (error) {
    throw new WebhookVerificationError(`webhook does not verify: ${(error as Error).message}`);
  }
}
