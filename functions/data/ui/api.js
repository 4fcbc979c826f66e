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

// Checks a key against the service before keeping it (on `GET /me` where the service has it): a refused key is
// never stored.
export async function useKey(candidate) {
  const key = candidate.trim();
  const paths = await apiFeatures();
  await once("GET", paths.has("/me") ? "me" : "style?page_size=1", {key});
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

// What the service offers beyond the basics, read once from its OpenAPI document: its paths, and whether an
// image order may pin a seed (`seed` among POST /image's fields).
let features = null;
let openapi = null;
function loadOpenapi() {
  if (!openapi) openapi = call("GET", "openapi.json", {retries: 1}).catch(() => ({}));
  return openapi;
}
export async function apiFeatures() {
  if (!features) features = loadOpenapi().then(doc => new Set(Object.keys(doc.paths || {})));
  return features;
}

function resolve(doc, schema, depth = 0) {
  if (!schema || depth > 8) return {};
  if (schema.$ref) {
    const target = schema.$ref.replace(/^#\//, "").split("/").reduce((o, k) => (o ? o[k] : undefined), doc);
    return resolve(doc, target, depth + 1);
  }
  const parts = [...(schema.allOf || []), ...(schema.anyOf || []), ...(schema.oneOf || [])];
  if (!parts.length) return schema;
  const merged = {properties: {...(schema.properties || {})}};
  for (const part of parts) Object.assign(merged.properties, resolve(doc, part, depth + 1).properties || {});
  return merged;
}

// The paths that answer GET, from the OpenAPI document.
export async function readablePaths() {
  const doc = await loadOpenapi();
  return Object.entries(doc.paths || {}).filter(([, ops]) => ops && ops.get).map(([p]) => p);
}

export async function seedPinnable() {
  const doc = await loadOpenapi();
  const body = (((doc.paths || {})["/image"] || {}).post || {}).requestBody;
  const schema = body && body.content && body.content["application/json"] && body.content["application/json"].schema;
  return Boolean(resolve(doc, schema).properties && resolve(doc, schema).properties.seed);
}

// Who the caller is, and whether a key is needed: `GET /me` answered 401/403 means this browser has no
// (valid) key for a service that wants one. A service without `GET /me` says nothing: {needsKey: null}.
export async function whoAmI() {
  if (!(await apiFeatures()).has("/me")) return {tenant: null, role: "client", needsKey: null};
  try {
    const me = await call("GET", "me", {retries: 1});
    return {...me, needsKey: false};
  } catch (error) {
    if (error instanceof ApiError && [401, 403].includes(error.status)) {
      return {tenant: null, role: "client", needsKey: true, refused: hasKey()};
    }
    return {tenant: null, role: "client", needsKey: null};
  }
}
