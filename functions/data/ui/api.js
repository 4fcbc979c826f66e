// api.js owns talking to the Soul API: the API key, JSON in and out, the error shape turned into words, and
// retries with backoff for what a retry can fix (network drops, 5xx, an HTML error page from a proxy).
// Paths are relative so the page works under any prefix the function is deployed at.

const KEY_STORE = "soul-key";
let apiKey = localStorage.getItem(KEY_STORE) || "";

export const RETRY_DELAYS_MS = [400, 1000, 2000, 4000, 8000];

export class ApiError extends Error {
  constructor(message, {status = 0, code = "", field = null, retryable = false} = {}) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field;
    this.retryable = retryable;
  }
}

export const sleep = ms => new Promise(resolve => setTimeout(resolve, ms));

export function hasKey() { return apiKey !== ""; }

function headers(extra = {}, key = apiKey) {
  const h = {Accept: "application/json", ...extra};
  if (key) h["X-API-Key"] = key;
  return h;
}

async function once(method, path, {body, idempotencyKey, key} = {}) {
  const extra = {};
  if (body !== undefined) extra["Content-Type"] = "application/json";
  if (idempotencyKey) extra["Idempotency-Key"] = idempotencyKey;
  let response;
  try {
    response = await fetch(path, {method, headers: headers(extra, key),
      body: body === undefined ? undefined : JSON.stringify(body)});
  } catch {
    throw new ApiError("The service cannot be reached (network error).", {retryable: true});
  }
  const text = await response.text().catch(() => "");
  let data = null;
  try { data = text ? JSON.parse(text) : {}; } catch { data = null; }
  const transient = response.status >= 500 || response.status === 429;
  if (data === null) {
    throw new ApiError(`The service answered with an error page (HTTP ${response.status}).`,
      {status: response.status, retryable: transient || response.ok});
  }
  if (!response.ok) {
    const e = data.error || {};
    throw new ApiError(e.message || `The service answered HTTP ${response.status}.`,
      {status: response.status, code: e.code || "", field: e.field || null, retryable: transient});
  }
  return data;
}

// One call; retried with backoff while the failure is transient. `onRetry(error, delayMs)` reports each wait.
export async function call(method, path, options = {}) {
  const delays = options.retries === 0 ? [] : RETRY_DELAYS_MS;
  for (let attempt = 0; ; attempt++) {
    try {
      return await once(method, path, options);
    } catch (error) {
      if (!(error instanceof ApiError) || !error.retryable || attempt >= delays.length) throw error;
      if (options.onRetry) options.onRetry(error, delays[attempt]);
      await sleep(delays[attempt]);
    }
  }
}

// Checks a key against the service before keeping it: a refused key is never stored.
export async function useKey(candidate) {
  const key = candidate.trim();
  await once("GET", "style?page_size=1", {key});
  apiKey = key;
  if (key) localStorage.setItem(KEY_STORE, key); else localStorage.removeItem(KEY_STORE);
}

export function forgetKey() {
  apiKey = "";
  localStorage.removeItem(KEY_STORE);
}

export function newIdempotencyKey() {
  return crypto.randomUUID ? crypto.randomUUID()
    : Array.from(crypto.getRandomValues(new Uint8Array(16)), b => b.toString(16).padStart(2, "0")).join("");
}

// What the service offers beyond the basics, read once from its OpenAPI document.
let features = null;
export async function apiFeatures() {
  if (!features) {
    features = call("GET", "openapi.json", {retries: 1})
      .then(doc => new Set(Object.keys(doc.paths || {})))
      .catch(() => new Set());
  }
  return features;
}

// The caller's role; a service without `GET /me` (or a refusal) means a client.
export async function whoAmI() {
  if (!(await apiFeatures()).has("/me")) return {tenant: null, role: "client"};
  try { return await call("GET", "me", {retries: 1}); } catch { return {tenant: null, role: "client"}; }
}
