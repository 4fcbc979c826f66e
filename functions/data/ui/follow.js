// follow.js owns watching one task until it ends. With `GET /tasks/{id}/events` (and no API key, since an
// EventSource cannot send headers) it listens to the server's events: `update` (the task's status, stage,
// progress, eta), `preview` ({task_id, step, steps, url} while it renders), `end`, `timeout` (reconnect) and
// `error`. A queued task's place in line is only on `GET /tasks/{id}`, so it is read now and then while queued.
// Else it polls, slowing down while nothing changes. Network blips never end the watch: it retries with
// backoff and says so at once (the browser's offline event too), and the stream falls back to polling.

import {ApiError, RETRY_DELAYS_MS, apiFeatures, call, hasKey, sleep} from "./api.js";
import {TERMINAL} from "./state.js";

export {TERMINAL};
const POLL_MIN_MS = 500;
const POLL_MAX_MS = 2000;
// How often a queued task's place in line is read while the stream carries the rest.
const POSITION_EVERY_MS = 3000;
// A stream that says nothing for this long is dropped for polling (its keep-alive comments are invisible to an
// EventSource, and a runner loading a model may say nothing for half a minute).
const EVENTS_SILENCE_MS = 60000;
const EVENT_NAMES = ["update", "preview", "end", "timeout", "error", "message"];

// Watches `taskId`. Callbacks: onUpdate(fields, source) with source "events" | "poll" | "position";
// onPreview({step, steps, url}); onTrouble(words | null); onVia("events" | "polling").
// `watch.done` resolves with the final task (a full GET, with signed URLs); `watch.stop()` ends it early.
export function follow(taskId, {onUpdate, onPreview = () => {}, onTrouble = () => {}, onVia = () => {}}) {
  const watch = {stopped: false, source: null};
  watch.stop = () => { watch.stopped = true; if (watch.source) watch.source.close(); };
  watch.done = (async () => {
    const paths = await apiFeatures();
    if (!hasKey() && paths.has("/tasks/{task_id}/events") && typeof EventSource === "function") {
      onVia("events");
      const final = await viaEvents(taskId, watch, {onUpdate, onPreview, onTrouble});
      if (final || watch.stopped) return final;
    }
    onVia("polling");
    return viaPolling(taskId, watch, {onUpdate, onPreview, onTrouble});
  })();
  return watch;
}

const path = taskId => `tasks/${encodeURIComponent(taskId)}`;

export function parseEvent(ev) {
  try {
    const data = JSON.parse(ev.data);
    return data && typeof data === "object" ? data : null;
  } catch {
    return null;
  }
}

// Resolves with the final task, or null when the stream fails (then polling takes over).
function viaEvents(taskId, watch, {onUpdate, onPreview, onTrouble}) {
  return new Promise(resolve => {
    let source = null;
    let silence = null;
    let positionTimer = null;
    let status = "";
    let settled = false;
    let errors = 0;
    const settle = value => {
      if (settled) return;
      settled = true;
      clearTimeout(silence);
      clearTimeout(positionTimer);
      window.removeEventListener("offline", offline);
      if (source) source.close();
      resolve(value);
    };
    const quiet = () => {
      clearTimeout(silence);
      silence = setTimeout(() => settle(null), EVENTS_SILENCE_MS);
    };
    const offline = () => {
      onTrouble("The service cannot be reached (offline).");
      settle(null);
    };
    window.addEventListener("offline", offline);
    const finish = async () => {
      clearTimeout(silence);
      if (source) source.close();
      try { settle(await call("GET", path(taskId))); } catch { settle(null); }
    };
    // While queued, the place in line comes from a GET now and then (the stream does not carry it).
    const position = async () => {
      if (settled || watch.stopped || status !== "queued") return;
      try {
        const task = await call("GET", path(taskId), {retries: 0});
        if (!settled) onUpdate(task, "position");
        if (TERMINAL.has(task.status)) return finish();
      } catch { /* the stream reports trouble */ }
      if (!settled) positionTimer = setTimeout(position, POSITION_EVERY_MS);
    };
    const handlers = {
      update: data => {
        const was = status;
        status = data.status || status;
        onUpdate(data, "events");
        if (TERMINAL.has(status) || data.result) return finish();
        if (status === "queued" && was !== "queued") position();
      },
      message: data => handlers.update(data),
      preview: data => { if (!data.task_id || data.task_id === taskId) onPreview(data); },
      end: () => finish(),
      timeout: () => { open(); },  // the server's duration limit: reconnect at once
      error: () => finish(),       // the server could not read the task: one GET says why
    };
    const open = () => {
      if (source) source.close();
      source = new EventSource(`${path(taskId)}/events`);
      watch.source = source;
      source.onopen = () => { quiet(); errors = 0; onTrouble(null); };
      for (const name of EVENT_NAMES) {
        source.addEventListener(name, ev => {
          if (settled) return;
          // A transport error arrives as a plain Event with no data.
          if (name === "error" && !(ev instanceof MessageEvent)) return;
          const data = parseEvent(ev);
          quiet();
          if (data || name === "end" || name === "timeout") handlers[name](data || {});
        });
      }
      source.onerror = () => {
        if (settled) return;
        // Said at once; the browser reconnects by itself, but a second failure in a row (or a closed stream, or
        // the browser offline) hands over to polling, which retries with backoff.
        errors += 1;
        onTrouble("The service cannot be reached (network error). Reconnecting…");
        if (source.readyState === EventSource.CLOSED || errors >= 2 || !navigator.onLine) settle(null);
      };
    };
    quiet();
    open();
  });
}

async function viaPolling(taskId, watch, {onUpdate, onPreview, onTrouble}) {
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
    onUpdate(task, "poll");
    if (task.preview) onPreview(task.preview);
    if (TERMINAL.has(task.status)) return task;
    await sleep(wait);
  }
  return null;
}
