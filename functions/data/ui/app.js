// app.js owns the page's behaviour: the forms (cue, selfie, API key), one card per task, the gallery of this
// user's results, the styles view, the larger viewer, downloads, and the state kept in the URL
// (soul, cue, user, task) so that a reload or a shared link restores what was on screen.

import {ApiError, call, forgetKey, hasKey, newIdempotencyKey, sleep, useKey, whoAmI} from "./api.js";
import {TERMINAL, follow} from "./follow.js";
import {MEDIA, h, mediaElement, metricsLine, progressLine} from "./views.js";

const $ = id => document.getElementById(id);
const CUE_MAX = 200;
const USER_PATTERN = /^[A-Za-z0-9._@-]{1,128}$/;
const FIELD_INPUTS = {soul_id: "soul", cue: "cue", user_id: "user", city_key: "city", mood: "mood"};
const souls = new Map(); // soul_id -> display name
const cards = new Set();

// ---- URL state ----------------------------------------------------------------------------------------------

function readUrl() {
  const q = new URLSearchParams(location.search);
  return {soul: q.get("soul") || "", cue: q.get("cue"), user: q.get("user"), task: q.get("task") || ""};
}

function writeUrl(task) {
  const q = new URLSearchParams(location.search);
  const set = (name, value) => (value ? q.set(name, value) : q.delete(name));
  set("soul", $("soul").value);
  set("cue", $("cue").value);
  set("user", $("user").value.trim());
  if (task !== undefined) set("task", task);
  const search = q.toString();
  history.replaceState(null, "", `${location.pathname}${search ? `?${search}` : ""}${location.hash}`);
}

// ---- messages -----------------------------------------------------------------------------------------------

function notice(text, kind = "info") {
  const el = $("notice");
  el.textContent = text || "";
  el.className = text ? `notice ${kind}` : "notice";
}

function clearFieldErrors(form) {
  for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
}

// An error in words; when it names a field of a form on screen, that field is marked and focused.
function showError(error, form) {
  const raw = error instanceof Error ? error.message : String(error);
  const message = raw.charAt(0).toUpperCase() + raw.slice(1);  // the API's messages start in lower case
  const input = error && error.field && FIELD_INPUTS[error.field] ? $(FIELD_INPUTS[error.field]) : null;
  if (input && (!form || form.contains(input))) {
    input.setAttribute("aria-invalid", "true");
    input.focus();
  }
  if (error instanceof ApiError && (error.status === 401 || error.status === 403)) {
    notice(`${/[.!?…]$/.test(message) ? message : `${message}.`} Enter an API key below.`, "error");
    $("key").focus();
    return;
  }
  notice(message, "error");
}

// ---- souls, user, key ---------------------------------------------------------------------------------------

async function loadSouls() {
  const select = $("soul");
  const wanted = select.value || readUrl().soul;
  $("generate").disabled = true;
  for (let attempt = 0; ; attempt++) {
    try {
      const page = await call("GET", "style?page_size=100");
      if (page.items.length) {
        souls.clear();
        select.replaceChildren(...page.items.map(s => {
          souls.set(s.soul_id, s.display_name || s.soul_id);
          return h("option", {value: s.soul_id}, s.display_name || s.soul_id);
        }));
        if (souls.has(wanted)) select.value = wanted;
        $("generate").disabled = false;
        $("selfie-go").disabled = false;
        if ($("notice").dataset.about === "souls") notice("");
        renderStyles(page.items);
        return;
      }
      notice("The service has no souls yet; asking again…");
      $("notice").dataset.about = "souls";
    } catch (error) {
      showError(error);
      if (error instanceof ApiError && [401, 403].includes(error.status)) return;
    }
    await sleep(Math.min(1000 * 2 ** attempt, 8000));
  }
}

function currentUser(form) {
  const user = $("user").value.trim();
  if (!USER_PATTERN.test(user)) {
    showError(new ApiError("User: use 1 to 128 letters, digits or . _ @ -", {field: "user_id"}), form);
    return null;
  }
  localStorage.setItem("soul-user", user);
  return user;
}

async function onKey(ev) {
  ev.preventDefault();
  const status = $("key-status");
  const button = ev.submitter || $("key-use");
  button.disabled = true;
  status.textContent = "Checking the key…";
  try {
    await useKey($("key").value);
    $("key").value = "";
    status.textContent = hasKey() ? "Key accepted and kept in this browser." : "No key in use.";
    notice("");
    await Promise.all([loadSouls(), loadSelfieOptions(), loadRole(), loadGallery()]);
  } catch (error) {
    $("key").setAttribute("aria-invalid", "true");
    status.textContent = `Key not kept: ${error.message}`;
  } finally {
    button.disabled = false;
  }
}

// ---- task cards ---------------------------------------------------------------------------------------------

class Card {
  constructor({title, kind}) {
    this.kind = kind;
    this.task = null;
    this.watch = null;
    this.title = h("h3", {className: "card-title"}, title);
    this.status = h("p", {className: "status", role: "status", "aria-live": "polite"});
    this.bar = h("progress", {max: 1, value: 0, "aria-label": `Progress of ${title}`});
    this.trouble = h("p", {className: "trouble", hidden: true});
    this.error = h("p", {className: "error", role: "alert", hidden: true});
    this.result = h("div", {className: "result"});
    this.actions = h("div", {className: "actions"});
    this.cancel = h("button", {type: "button", className: "secondary", hidden: true, onclick: () => this.onCancel()},
      "Cancel");
    this.el = h("li", {className: "card"}, this.title, this.status, this.bar, this.trouble, this.error,
      this.result, h("div", {className: "actions"}, this.cancel), this.actions);
    $("tasks").prepend(this.el);
    $("tasks-empty").hidden = true;
    cards.add(this);
  }

  update(task) {
    this.task = {...(this.task || {}), ...task};
    const t = this.task;
    this.el.dataset.status = t.status || "";
    if (t.task_id) this.el.dataset.task = t.task_id;
    this.status.textContent = progressLine(t);
    const running = !TERMINAL.has(t.status);
    this.bar.hidden = !running;
    if (typeof t.progress === "number") this.bar.value = t.progress;
    this.cancel.hidden = !running || !t.task_id;
    if (t.cancel_requested) this.cancel.disabled = true;
    if (t.status === "failed" && t.error) this.fail(t.error.message || "The task failed.");
  }

  tick() { if (this.task && !TERMINAL.has(this.task.status)) this.status.textContent = progressLine(this.task); }

  setTrouble(text) {
    this.trouble.hidden = !text;
    this.trouble.textContent = text || "";
  }

  fail(message) {
    this.error.hidden = false;
    this.error.textContent = message;
  }

  async onCancel() {
    this.cancel.disabled = true;
    this.cancel.textContent = "Canceling…";
    try {
      this.update(await call("DELETE", `tasks/${encodeURIComponent(this.task.task_id)}`));
    } catch (error) {
      this.fail(`Could not cancel: ${error.message}`);
      this.cancel.disabled = false;
      this.cancel.textContent = "Cancel";
    }
  }

  async track(taskId) {
    this.update({task_id: taskId});
    this.watch = follow(taskId, {onUpdate: t => this.update(t), onTrouble: m => this.setTrouble(m)});
    try {
      const final = await this.watch.done;
      this.setTrouble(null);
      if (final) this.update(final);
      return final;
    } catch (error) {
      this.fail(error.message);
      return null;
    } finally {
      this.cancel.hidden = true;
    }
  }

  showMetrics() {
    const line = metricsLine(this.task && this.task.metrics);
    if (line) this.result.append(h("p", {className: "muted"}, line));
  }
}

function soulName(soulId) { return souls.get(soulId) || soulId || "a soul"; }

// An image result: the picture, a larger view, download, animate, mark seen.
function showImage(card, variant, {soulId, cue, user}) {
  const alt = `${soulName(soulId)}${cue ? `: ${cue}` : ""}`;
  const img = mediaElement("png", variant.url, alt);
  card.result.replaceChildren(
    h("button", {type: "button", className: "thumb", "aria-label": `Larger view of ${alt}`,
      onclick: () => openViewer(alt, "png", variant.url, fileName(soulId, variant.variant_id, "png"))}, img),
  );
  card.showMetrics();
  const seen = h("button", {type: "button", className: "secondary"}, "Mark seen");
  seen.addEventListener("click", async () => {
    seen.disabled = true;
    try {
      await call("POST", `image/mark-seen?${new URLSearchParams({variant_id: variant.variant_id, user_id: user})}`);
      seen.textContent = "Seen: Generate again for another";
      loadGallery();
    } catch (error) {
      seen.disabled = false;
      card.fail(`Could not mark it seen: ${error.message}`);
    }
  });
  const animate = h("button", {type: "button"}, "Make a GIF");
  animate.addEventListener("click", () => startAnimation(animate, variant, {soulId, cue, user}));
  card.actions.replaceChildren(
    downloadButton("Download image", variant.url, fileName(soulId, variant.variant_id, "png")), animate, seen);
}

function showOutputs(card, outputs, {soulId, cue}) {
  const alt = `Animation of ${soulName(soulId)}${cue ? `: ${cue}` : ""}`;
  const byFormat = Object.fromEntries(outputs.map(o => [o.format, o]));
  const inline = byFormat.gif || byFormat.webp || byFormat.mp4;
  const base = (card.task && card.task.task_id) || "animation";
  card.result.replaceChildren();
  if (inline) {
    card.result.append(h("button", {type: "button", className: "thumb", "aria-label": `Larger view of ${alt}`,
      onclick: () => openViewer(alt, inline.format, inline.url, fileName(soulId, base, inline.format))},
    mediaElement(inline.format, inline.url, alt)));
  }
  if (byFormat.mp4 && inline !== byFormat.mp4) card.result.append(mediaElement("mp4", byFormat.mp4.url, `${alt} (MP4)`));
  card.showMetrics();
  card.actions.replaceChildren(...outputs.map(o => downloadButton(`Download ${(MEDIA[o.format] || {}).label || o.format}`,
    o.url, fileName(soulId, base, o.format))));
}

function fileName(soulId, id, format) { return `soul-${soulId || "result"}-${id}.${format}`; }

async function runTask(card, answer, context) {
  if (answer.status === "ready" && answer.variant) {
    card.update({status: "succeeded", stage: "succeeded", progress: 1});
    card.status.textContent = "Ready at once: an image you had not seen yet";
    showImage(card, answer.variant, context);
    return;
  }
  if (answer.result) {
    card.update({task_id: answer.task_id, status: "succeeded", progress: 1});
  } else {
    writeUrl(answer.task_id);
    card.update({created_at: new Date().toISOString(), stage: "queued", ...answer});
  }
  const final = answer.result ? {status: "succeeded", result: answer.result} : await card.track(answer.task_id);
  if (!final || final.status !== "succeeded") return;
  if (final.result && final.result.variant) showImage(card, final.result.variant, context);
  else if (final.result && final.result.outputs) showOutputs(card, final.result.outputs, context);
  loadGallery();
}

// A busy button refuses clicks but keeps the keyboard focus (a disabled one would drop it to the page).
function setBusy(button, busy) {
  if (busy) button.setAttribute("aria-disabled", "true");
  else button.removeAttribute("aria-disabled");
}
const isBusy = button => button.getAttribute("aria-disabled") === "true";

// The cue form. The button is disabled from the click until the API answered, so a double-click sends one
// request; the Idempotency-Key makes the retries of that one request safe.
async function onAsk(ev) {
  ev.preventDefault();
  const form = $("ask");
  const button = $("generate");
  if (button.disabled || isBusy(button)) return;
  clearFieldErrors(form);
  const cue = $("cue").value.trim();
  if (!cue) return showError(new ApiError("Write a cue first, e.g. penguin.", {field: "cue"}), form);
  if (cue.length > CUE_MAX) {
    return showError(new ApiError(`The cue has ${cue.length} characters; the most is ${CUE_MAX}.`, {field: "cue"}), form);
  }
  const user = currentUser(form);
  if (!user) return;
  const soulId = $("soul").value;
  notice("");
  writeUrl();
  await askFor(form, button, `${soulName(soulId)} · “${cue}”`, "image", {soul_id: soulId, cue, user_id: user},
    {soulId, cue, user});
}

// Shared by the cue and selfie forms: one card, one POST with an Idempotency-Key (so its retries are safe), the
// button busy until the API answered. A refusal removes only the new card and is said next to the form.
async function askFor(form, button, title, path, body, context, onAnswer = () => {}) {
  setBusy(button, true);
  const card = new Card({title, kind: "image"});
  card.status.textContent = "Asking…";
  let answer;
  try {
    answer = await call("POST", path, {body, idempotencyKey: newIdempotencyKey(),
      onRetry: e => card.setTrouble(`${e.message} Retrying…`)});
  } catch (error) {
    card.el.remove();
    cards.delete(card);
    showError(error, form);
    return;
  } finally {
    setBusy(button, false);
  }
  card.setTrouble(null);
  onAnswer(card, answer);
  await runTask(card, answer, context);
}

async function startAnimation(button, variant, context) {
  button.disabled = true;
  const card = new Card({title: `GIF of ${soulName(context.soulId)}${context.cue ? ` · “${context.cue}”` : ""}`,
    kind: "video"});
  card.status.textContent = "Asking…";
  try {
    const q = new URLSearchParams({variant_id: variant.variant_id, generate_gif: "true", user_id: context.user});
    const answer = await call("POST", `video/generate-from-variant?${q}`, {idempotencyKey: newIdempotencyKey()});
    await runTask(card, answer, context);
  } catch (error) {
    card.fail(error.message);
  } finally {
    button.disabled = false;
  }
}

// ---- selfie -------------------------------------------------------------------------------------------------

async function loadSelfieOptions() {
  try {
    const options = await call("GET", "image/selfie/options");
    $("city").replaceChildren(...options.cities.map(c => h("option", {value: c.key}, c.name)));
    $("mood").replaceChildren(...options.moods.map(m => h("option", {value: m}, m)));
  } catch (error) {
    $("selfie-note").textContent = `Selfies are not available: ${error.message}`;
  }
}

async function onSelfie(ev) {
  ev.preventDefault();
  const form = $("selfie");
  const button = $("selfie-go");
  if (button.disabled || isBusy(button)) return;
  clearFieldErrors(form);
  const user = currentUser($("ask"));
  if (!user) return;
  const soulId = $("soul").value;
  const cityName = $("city").selectedOptions[0] ? $("city").selectedOptions[0].textContent : $("city").value;
  const cue = `selfie in ${cityName}, ${$("mood").value}`;
  const body = {soul_id: soulId, city_key: $("city").value, mood: $("mood").value, user_id: user};
  await askFor(form, button, `${soulName(soulId)} · ${cue}`, "image/selfie", body, {soulId, cue, user},
    (card, answer) => {
      if (answer.place) card.title.textContent = `${soulName(soulId)} · selfie at ${answer.place.name}, ${answer.place.city_name}`;
    });
}

// ---- gallery: this user's results, newest first, from /tasks and the seen list -----------------------------

const GALLERY_SIZE = 12;
let galleryRun = 0;
async function loadGallery() {
  const user = $("user").value.trim();
  if (!USER_PATTERN.test(user)) return;
  const run = ++galleryRun;
  try {
    // Lists carry no signed URLs: the newest few tasks are read one by one for theirs.
    const [tasks, seen] = await Promise.all([
      call("GET", `tasks?${new URLSearchParams({user_id: user, status: "succeeded", page_size: String(GALLERY_SIZE)})}`),
      call("GET", `image/user/${encodeURIComponent(user)}/seen?page_size=50`),
    ]);
    const full = await Promise.all(tasks.items.map(t => call("GET", `tasks/${encodeURIComponent(t.task_id)}`)
      .catch(() => t)));
    const seenIds = new Set(seen.items.map(s => s.variant_id));
    const items = [];
    const have = new Set();
    for (const t of full) {
      const r = t.result || {};
      if (r.variant) {
        have.add(r.variant.variant_id);
        items.push({when: t.finished_at || t.created_at, soulId: t.soul_id, format: "png", url: r.variant.url,
          id: r.variant.variant_id, seen: seenIds.has(r.variant.variant_id)});
      } else if (r.outputs && r.outputs.length) {
        const shown = r.outputs.find(o => o.format === "gif") || r.outputs.find(o => o.format === "webp") || r.outputs[0];
        items.push({when: t.finished_at || t.created_at, soulId: t.soul_id, format: shown.format, url: shown.url,
          id: t.task_id, animation: true});
      }
    }
    // Seen images answered at once (made for someone else first) are not among this user's tasks.
    const missing = seen.items.filter(s => !have.has(s.variant_id));
    const pks = [...new Set(missing.map(s => s.pk_id))].slice(0, 5);  // bounded: one call per prompt key
    const pages = await Promise.all(pks.map(pk => call("GET", `image/variants/${encodeURIComponent(pk)}?page_size=100`)
      .catch(() => ({items: []}))));
    const byId = new Map(pages.flatMap(p => p.items).map(v => [v.variant_id, v]));
    for (const s of missing) {
      const v = byId.get(s.variant_id);
      if (v) items.push({when: s.seen_at, soulId: s.soul_id, format: "png", url: v.url, id: v.variant_id, seen: true});
    }
    if (run !== galleryRun) return;
    items.sort((a, b) => String(b.when).localeCompare(String(a.when)));
    renderGallery(items);
  } catch (error) {
    if (run === galleryRun) $("gallery-note").textContent = `The gallery could not be loaded: ${error.message}`;
  }
}

function renderGallery(items) {
  $("gallery-note").textContent = items.length
    ? `${items.length} ${items.length === 1 ? "result" : "results"}, newest first.` : "Nothing here yet.";
  $("gallery").replaceChildren(...items.map(item => {
    const label = `${item.animation ? "Animation" : "Image"} of ${soulName(item.soulId)}${item.seen ? " (seen)" : ""}`;
    return h("li", {className: "tile", "data-format": item.format},
      h("button", {type: "button", className: "thumb", "aria-label": `Larger view: ${label}`,
        onclick: () => openViewer(label, item.format, item.url, fileName(item.soulId, item.id, item.format))},
      mediaElement(item.format, item.url, label)),
      h("span", {className: "muted"}, label));
  }));
}

// ---- styles -------------------------------------------------------------------------------------------------

let role = "client";
async function loadRole() {
  role = (await whoAmI()).role || "client";
  $("styles").dataset.role = role;
}

function renderStyles(items, saved = null) {
  $("styles").replaceChildren(...items.map(s => {
    const rows = Object.entries(s.style).map(([k, v]) => h("div", {className: "kv"}, h("dt", {}, k), h("dd", {}, String(v))));
    const box = h("details", {className: "style", open: s.soul_id === saved},
      h("summary", {}, `${s.display_name || s.soul_id} `, h("span", {className: "muted"}, `(${s.source})`)),
      h("dl", {}, rows));
    if (role === "admin") box.append(styleEditor(s, s.soul_id === saved ? "Saved." : ""));
    return box;
  }));
}

function styleEditor(s, said) {
  const id = `style-${s.soul_id}`;
  const text = h("textarea", {id, rows: 8, spellcheck: "false"});
  text.value = JSON.stringify(s.style, null, 2);
  const note = h("p", {className: "muted", role: "status"}, said);
  const form = h("form", {className: "style-edit"}, h("label", {for: id}, `Style of ${s.soul_id} (JSON)`), text,
    h("button", {type: "submit"}, "Save style"), note);
  form.addEventListener("submit", async ev => {
    ev.preventDefault();
    let style;
    try { style = JSON.parse(text.value); } catch { note.textContent = "That is not valid JSON."; return; }
    try {
      await call("POST", "style", {body: {soul_id: s.soul_id, display_name: s.display_name, style}});
      renderStyles((await call("GET", "style?page_size=100")).items, s.soul_id);
    } catch (error) {
      note.textContent = `Not saved: ${error.message}`;
    }
  });
  return form;
}

// ---- viewer and downloads -----------------------------------------------------------------------------------

let lastFocus = null;
function openViewer(title, format, url, name) {
  lastFocus = document.activeElement;
  $("viewer-title").textContent = title;
  const media = mediaElement(format, url, title);
  if (media.tagName === "VIDEO") media.autoplay = true;
  $("viewer-body").replaceChildren(media,
    h("p", {}, downloadButton("Download", url, name), " ",
      h("a", {href: url, target: "_blank", rel: "noopener noreferrer"}, "Open in a new tab")));
  $("viewer").showModal();
  $("viewer-close").focus();
}

function closeViewer() {
  $("viewer").close();
  $("viewer-body").replaceChildren();
  if (lastFocus) lastFocus.focus();
}

// A signed URL on another origin: saved from a blob where the page may fetch it (connect-src and CORS allow),
// else shown in the viewer with a link that opens in a new tab. The page itself never navigates away.
let fetchAllowed = null;
async function mayFetch(url) {
  const origin = new URL(url, location.href).origin;
  if (origin === location.origin) return true;
  if (fetchAllowed === null) {
    fetchAllowed = fetch(location.pathname, {method: "HEAD"}).then(r => {
      const csp = r.headers.get("content-security-policy") || "";
      const rule = csp.split(";").map(d => d.trim().split(/\s+/)).find(d => d[0] === "connect-src")
        || csp.split(";").map(d => d.trim().split(/\s+/)).find(d => d[0] === "default-src");
      return rule ? rule.slice(1) : ["*"];
    }).catch(() => []);
  }
  const sources = await fetchAllowed;
  return sources.includes("*") || sources.includes(origin);
}

function downloadButton(label, url, name) {
  const button = h("button", {type: "button", className: "secondary"}, label);
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      if (!(await mayFetch(url))) throw new Error("cross-origin fetch not allowed");
      const response = await fetch(url, {mode: "cors"});
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const blobUrl = URL.createObjectURL(await response.blob());
      const a = h("a", {href: blobUrl, download: name, hidden: true});
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(blobUrl), 60000);
    } catch {
      const format = name.split(".").pop();
      if (!$("viewer").open) openViewer(name, format, url, name);
    } finally {
      button.disabled = false;
    }
  });
  return button;
}

// ---- start --------------------------------------------------------------------------------------------------

async function restoreTask(taskId, url) {
  let task;
  try {
    task = await call("GET", `tasks/${encodeURIComponent(taskId)}`);
  } catch (error) {
    notice(`The task in the address could not be shown: ${error.message}`, "error");
    return;
  }
  const cue = task.type === "image" ? url.cue : null;
  const card = new Card({title: `${task.type === "video" ? "GIF of " : ""}${soulName(task.soul_id)}${cue ? ` · “${cue}”` : ""}`,
    kind: task.type});
  card.update(task);
  await runTask(card, TERMINAL.has(task.status) && task.result ? {task_id: task.task_id, result: task.result}
    : {...task}, {soulId: task.soul_id, cue, user: task.user_id || $("user").value.trim()});
}

function updateCount() {
  const n = $("cue").value.trim().length;
  $("cue-count").textContent = `${n}/${CUE_MAX}`;
  $("cue-count").className = n > CUE_MAX ? "count over" : "count";
}

async function start() {
  const url = readUrl();
  $("cue").value = url.cue ?? "penguin";
  $("user").value = url.user ?? localStorage.getItem("soul-user") ?? "user123";
  updateCount();
  $("ask").addEventListener("submit", onAsk);
  $("selfie").addEventListener("submit", onSelfie);
  $("keyform").addEventListener("submit", onKey);
  $("key-forget").addEventListener("click", () => {
    forgetKey();
    $("key-status").textContent = "Key forgotten.";
    loadSouls();
  });
  $("cue").addEventListener("input", () => { updateCount(); $("cue").removeAttribute("aria-invalid"); });
  $("user").addEventListener("change", () => { writeUrl(); loadGallery(); });
  $("soul").addEventListener("change", () => writeUrl());
  $("gallery-refresh").addEventListener("click", loadGallery);
  $("viewer-close").addEventListener("click", closeViewer);
  $("viewer").addEventListener("cancel", ev => { ev.preventDefault(); closeViewer(); });
  $("key-status").textContent = hasKey() ? "A key is in use." : "";
  setInterval(() => cards.forEach(c => c.tick()), 1000);
  await loadRole();
  await Promise.all([loadSouls(), loadSelfieOptions()]);
  writeUrl();
  loadGallery();
  if (url.task) await restoreTask(url.task, url);
}

start();
