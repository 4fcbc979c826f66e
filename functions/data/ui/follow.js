// follow.js owns watching one task until it ends: server-sent events when the API offers
// `GET /tasks/{id}/events` (and no API key is needed, since EventSource cannot send headers), else polling
// that slows down while nothing changes. Network blips never end the watch: it retries with backoff and says so.

import {ApiError, RETRY_DELAYS_MS, apiFeatures, call, hasKey, sleep} from "./api.js";

export const TERMINAL = new Set(["succeeded", "failed", "canceled"]);
const POLL_MIN_MS = 500;
const POLL_MAX_MS = 2000;
// A stream that says nothing we understand for this long is dropped for polling.
const EVENTS_SILENCE_MS = 15000;

// Watches `taskId`; calls onUpdate(task) on every change and onTrouble(message | null) while the link is bad.
// Resolves with the final task. `watch.stop()` ends it early.
export function follow(taskId, {onUpdate, onTrouble}) {
  const watch = {stopped: false, source: null};
  watch.stop = () => { watch.stopped = true; if (watch.source) watch.source.close(); };
  watch.done = (async () => {
    const paths = await apiFeatures();
    if (!hasKey() && paths.has("/tasks/{task_id}/events") && typeof EventSource === "function") {
      const final = await viaEvents(taskId, watch, onUpdate);
      if (final || watch.stopped) return final;
    }
    return viaPolling(taskId, watch, onUpdate, onTrouble);
  })();
  return watch;
}

const path = taskId => `tasks/${encodeURIComponent(taskId)}`;

// Events carry partial task fields; the final state (with signed URLs) is read with one GET.
// Resolves null when the stream fails, so that polling takes over.
function viaEvents(taskId, watch, onUpdate) {
  return new Promise(resolve => {
    const source = new EventSource(`${path(taskId)}/events`);
    watch.source = source;
    let state = {task_id: taskId};
    let silence = null;
    const quiet = () => {
      clearTimeout(silence);
      silence = setTimeout(() => { source.close(); resolve(null); }, EVENTS_SILENCE_MS);
    };
    quiet();
    const finish = async () => {
      clearTimeout(silence);
      source.close();
      try { resolve(await call("GET", path(taskId))); } catch { resolve(null); }
    };
    const onMessage = ev => {
      let data;
      try { data = JSON.parse(ev.data); } catch { return; }
      if (!data || typeof data !== "object") return;
      quiet();
      state = {...state, ...data};
      onUpdate(state);
      if (TERMINAL.has(state.status) || data.result) finish();
    };
    source.onmessage = onMessage;
    for (const name of ["status", "stage", "progress", "eta", "result"]) source.addEventListener(name, onMessage);
    source.onerror = () => { clearTimeout(silence); source.close(); resolve(null); };
  });
}

async function viaPolling(taskId, watch, onUpdate, onTrouble) {
  let wait = POLL_MIN_MS;
  let last = "";
  let failures = 0;
  while (!watch.stopped) {
    let task;
    try {
      task = await call("GET", path(taskId), {retries: 0});
    } catch (error) {
      if (!(error instanceof ApiError) || !error.retryable) throw error;
      const delay = RETRY_DELAYS_MS[Math.min(failures, RETRY_DELAYS_MS.length - 1)];
      failures += 1;
      onTrouble(`${error.message} Retrying in ${Math.ceil(delay / 1000)} s…`);
      await sleep(delay);
      continue;
    }
    if (failures) onTrouble(null);
    failures = 0;
    const fingerprint = `${task.status}|${task.stage}|${task.progress}|${task.queue_position ?? ""}`;
    wait = fingerprint === last ? Math.min(wait * 1.5, POLL_MAX_MS) : POLL_MIN_MS;
    last = fingerprint;
    onUpdate(task);
    if (TERMINAL.has(task.status)) return task;
    await sleep(wait);
  }
  return null;
}
