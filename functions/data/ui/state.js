// state.js owns the one model of a task's state the page shows, whatever told it: the POST answer, a GET (polling
// or a check of the queue position), a server-sent `update`, a `preview`, or a lost connection. Every line on a
// card (stage, bar, queue position, time left) and every announcement comes from here, so the SSE and polling
// paths cannot disagree. Pure: no DOM, the time is passed in.

import {duration, stageName} from "./views.js";

export const TERMINAL = new Set(["succeeded", "failed", "canceled"]);
// A task next in line that nobody picks up for this long: say plainly that no runner is taking work.
export const WAITING_FOR_RUNNER_S = 10;
// Below this many seconds left, say "finishing" rather than a number that would be wrong a moment later.
const FINISHING_S = 2;

export function ordinal(n) {
  const suffix = n % 100 >= 11 && n % 100 <= 13 ? "th" : ({1: "st", 2: "nd", 3: "rd"}[n % 10] || "th");
  return `${n}${suffix}`;
}

// `queue_position` counts the tasks ahead (0: next).
export function queueWords(ahead) {
  if (!Number.isInteger(ahead) || ahead < 0) return "";
  return ahead === 0 ? "next in line" : `${ordinal(ahead + 1)} in line`;
}

export class TaskState {
  constructor(fields = {}, nowMs = Date.now()) {
    this.task = {};
    this.preview = null;     // {step, steps, url}
    this.trouble = null;     // words while the link is bad; the clock stops then
    this.troubleSince = null;
    this.etaEndMs = null;    // local time the server's estimate ends at
    this.samples = [];       // [localMs, progress] while running, for a rate-based estimate
    this.positionAt = null;  // local time the queue position was read
    this.apply(fields, nowMs);
  }

  get status() { return this.task.status || ""; }
  get done() { return TERMINAL.has(this.status); }

  // Merge what a source said. Fields it does not carry keep their last value, except those that only mean
  // something in one phase (a queue position once running, the time left once done).
  apply(fields, nowMs = Date.now()) {
    const before = this.task;
    const t = {...before, ...fields};
    // Never step back: a late poll that still says queued does not undo a running update.
    const rank = s => (TERMINAL.has(s) ? 2 : s === "running" ? 1 : 0);
    const retried = (fields.attempts ?? 0) > (before.attempts ?? 0)
      || ["requeued", "retrying", "stuck_queued"].includes(fields.stage);
    if (before.status && t.status && rank(t.status) < rank(before.status) && !(retried && !TERMINAL.has(before.status))) {
      t.status = before.status;
      t.stage = before.stage;
      t.progress = before.progress;
    }
    if (retried) this.samples = [];
    if (!retried && typeof before.progress === "number" && typeof t.progress === "number"
        && t.status === before.status) {
      t.progress = Math.max(before.progress, t.progress);
    }
    if (t.status !== "queued") t.queue_position = null;
    else if ("queue_position" in fields) this.positionAt = nowMs;
    if ("eta_seconds" in fields) {
      this.etaEndMs = typeof fields.eta_seconds === "number" ? nowMs + fields.eta_seconds * 1000 : null;
    }
    if (t.status === "running" && typeof t.progress === "number") {
      const last = this.samples[this.samples.length - 1];
      if (!last || t.progress > last[1]) this.samples.push([nowMs, t.progress]);
      if (this.samples.length > 20) this.samples.shift();
    }
    if (TERMINAL.has(t.status)) {
      this.etaEndMs = null;
      if (t.status === "succeeded") t.progress = 1;
    }
    this.task = t;
    return this;
  }

  applyPreview(preview) {
    if (!preview || typeof preview.url !== "string" || this.done) return false;
    if (this.preview && Number(preview.step) < Number(this.preview.step)) return false;
    this.preview = {step: Number(preview.step) || 0, steps: Number(preview.steps) || 0, url: preview.url};
    return true;
  }

  setTrouble(words, nowMs = Date.now()) {
    this.trouble = words || null;
    this.troubleSince = words ? (this.troubleSince ?? nowMs) : null;
  }

  // 0..1 for the bar, or null while nothing is known (an indeterminate bar).
  fraction() {
    const p = this.task.progress;
    if (this.status === "succeeded") return 1;
    if (this.status === "queued") return null;
    return typeof p === "number" ? Math.min(1, Math.max(0, p)) : null;
  }

  // Seconds left: the pace measured here (once the task has moved), capped by the server's estimate counted
  // down. The server's estimate alone only past the first tenth: while a model loads it is far off.
  secondsLeft(nowMs = Date.now()) {
    if (this.status !== "running") return null;
    const server = this.etaEndMs !== null ? (this.etaEndMs - nowMs) / 1000 : null;
    let measured = null;
    if (this.samples.length >= 2) {
      const [t0, p0] = this.samples[0];
      const [t1, p1] = this.samples[this.samples.length - 1];
      if (p1 > p0 && p1 >= 0.1) measured = ((1 - p1) * (t1 - t0)) / (p1 - p0) / 1000 - (nowMs - t1) / 1000;
    }
    if (measured !== null) return server !== null ? Math.min(server, measured) : measured;
    return server !== null && (this.task.progress || 0) >= 0.1 ? server : null;
  }

  // What a screen reader is told: one phrase per stage, and the outcome. Never the clock.
  announcement() {
    const t = this.task;
    if (!t.status) return "";
    if (t.status === "queued") return stageName("queued");
    if (t.status === "running") return stageName(t.stage === "queued" ? "starting" : t.stage) || "Working";
    if (t.status === "succeeded") return "Done";
    if (t.status === "canceled") return "Canceled";
    return `Failed${t.error && t.error.message ? `: ${t.error.message}` : ""}`;
  }

  // The line on the card, from the fields and the time now.
  line(nowMs = Date.now()) {
    const t = this.task;
    const created = Date.parse(t.created_at || "") || nowMs;
    const started = Date.parse(t.started_at || "") || null;
    if (this.trouble && !this.done) {
      const last = this.announcement() || "Asking";
      return `${last} when last seen · the service cannot be reached right now`;
    }
    if (t.status === "queued") {
      const waited = (nowMs - created) / 1000;
      const parts = [`${stageName("queued")} for ${duration(waited)}`];
      const place = queueWords(t.queue_position);
      if (place) parts.push(place);
      // Only a task with nobody ahead is waiting for a runner; one further back waits for those ahead.
      if (waited >= WAITING_FOR_RUNNER_S && (t.queue_position === 0 || t.queue_position === undefined
          || t.queue_position === null)) parts.push("waiting for a runner to pick it up");
      return parts.join(" · ");
    }
    if (t.status === "running") {
      const parts = [stageName(t.stage === "queued" ? "starting" : t.stage) || "Working"];
      const p = this.fraction();
      if (p !== null && p > 0) parts.push(`${Math.round(p * 100)}%`);
      parts.push(`running for ${duration((nowMs - (started || created)) / 1000)}`);
      const left = this.secondsLeft(nowMs);
      if (t.cancel_requested) parts.push("canceling…");
      else if (left !== null) parts.push(left <= FINISHING_S ? "finishing" : `about ${duration(left)} left`);
      return parts.join(" · ");
    }
    const finished = Date.parse(t.finished_at || "") || null;
    const took = finished && (started || created) ? ` in ${duration((finished - (started || created)) / 1000)}` : "";
    if (t.status === "succeeded") return `Done${took}`;
    if (t.status === "canceled") return "Canceled";
    if (t.status === "failed") return `Failed${t.error && t.error.message ? `: ${t.error.message}` : ""}`;
    return stageName(t.stage || t.status);
  }
}
