// app.js owns the page's behaviour: the key gate (only when `GET /me` says a key is needed), the characters
// (portrait, description, style form for admins), the create and selfie forms, one card per task placed where
// the user acted (progress, previews, Next variant, Vary, Reuse seed, GIF, downloads, copy link), the history
// rebuilt from the API on load, the larger viewer with details and previous/next, keyboard shortcuts, and the
// state kept in the URL (soul, cue, user, task) so that a reload or a shared link restores what was on screen.

import {ApiError, apiFeatures, call, forgetKey, hasKey, newIdempotencyKey, readablePaths, seedPinnable, useKey,
  whoAmI} from "./api.js";
import {follow} from "./follow.js";
import {TERMINAL, TaskState} from "./state.js";
import {MEDIA, h, mediaElement, metricsLine} from "./views.js";

const $ = id => document.getElementById(id);
const CUE_MAX = 200;
const USER_PATTERN = /^[A-Za-z0-9._@-]{1,128}$/;
const FIELD_INPUTS = {soul_id: "soul", cue: "cue", user_id: "user", city_key: "city", mood: "mood"};
const souls = new Map();       // soul_id -> {id, name, description, style, source, portrait}
const cards = new Set();
const cardsByTask = new Map(); // task_id -> Card
const features = {seed: false};
let role = "client";
let pinnedSeed = null;

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

function taskLink(taskId) {
  const q = new URLSearchParams({task: taskId});
  const user = $("user").value.trim();
  if (user) q.set("user", user);
  return `${location.origin}${location.pathname}?${q}`;
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

const sentence = raw => {
  const m = raw.charAt(0).toUpperCase() + raw.slice(1);  // the API's messages start in lower case
  return /[.!?…]$/.test(m) ? m : `${m}.`;
};

// An error in words; when it names a field of a form on screen, that field is marked and focused. A refused
// key sends the user to the key gate.
function showError(error, form) {
  const raw = error instanceof Error ? error.message : String(error);
  if (error instanceof ApiError && (error.status === 401 || error.status === 403)) {
    showGate(sentence(raw));
    return;
  }
  const input = error && error.field && FIELD_INPUTS[error.field] ? $(FIELD_INPUTS[error.field]) : null;
  if (input && (!form || form.contains(input))) {
    input.setAttribute("aria-invalid", "true");
    input.focus();
  }
  notice(raw.charAt(0).toUpperCase() + raw.slice(1), "error");
}

// A busy button refuses clicks but keeps the keyboard focus (a disabled one would drop it to the page).
function setBusy(button, busy) {
  if (busy) button.setAttribute("aria-disabled", "true");
  else button.removeAttribute("aria-disabled");
}
const isBusy = button => button.getAttribute("aria-disabled") === "true";

// ---- the key gate -------------------------------------------------------------------------------------------

function showGate(why = "") {
  $("gate").hidden = false;
  $("main").hidden = true;
  $("key-status").textContent = why;
  $("key").focus();
}

async function onKey(ev) {
  ev.preventDefault();
  const status = $("key-status");
  const button = $("key-use");
  if (isBusy(button)) return;
  setBusy(button, true);
  status.textContent = "Checking the key…";
  try {
    await useKey($("key").value);
    $("key").value = "";
    $("key").removeAttribute("aria-invalid");
    status.textContent = "Key accepted and kept in this browser.";
    $("gate").hidden = true;
    $("main").hidden = false;
    await enterStudio(await whoAmI());
    $("cue").focus();
  } catch (error) {
    $("key").setAttribute("aria-invalid", "true");
    status.textContent = `Key not kept: ${error.message}`;
  } finally {
    setBusy(button, false);
  }
}

function keyPanel(me) {
  const info = $("key-info");
  if (me.needsKey === false && !hasKey()) {
    info.textContent = "This service needs no API key.";
    $("key-forget").hidden = true;
  } else if (hasKey()) {
    info.textContent = `A key is in use${me.tenant ? ` (tenant ${me.tenant}, ${me.role})` : ""}.`;
    $("key-forget").hidden = false;
  } else {
    info.textContent = "No key in use.";
    $("key-forget").hidden = true;
  }
}

// Forgetting the key takes the tenant's work off the screen, then asks again what the service needs.
async function onForget() {
  forgetKey();
  for (const card of cards) card.dispose();
  cards.clear();
  cardsByTask.clear();
  $("tasks").replaceChildren();
  $("tasks-empty").hidden = false;
  $("gallery").replaceChildren();
  $("gallery-note").textContent = "";
  $("styles").replaceChildren();
  $("soul-cards").replaceChildren();
  $("soul").replaceChildren();
  souls.clear();
  $("generate").disabled = true;
  const me = await whoAmI();
  if (me.needsKey) showGate("Key forgotten. Enter a key to go on.");
  else await enterStudio(me);
}

// ---- characters ---------------------------------------------------------------------------------------------

// A short description from the style: who they are, without the "portrait of <name>," lead.
export function describe(name, style) {
  let text = String((style && style.prompt_prefix) || "").trim();
  text = text.replace(/^(a\s+)?(portrait|photo|picture|illustration)\s+of\s+/i, "");
  const lead = new RegExp(`^${name.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}\\s*,\\s*`, "i");
  text = text.replace(lead, "");
  return text ? text.charAt(0).toUpperCase() + text.slice(1) : "";
}

async function loadSouls() {
  const select = $("soul");
  const wanted = select.value || readUrl().soul;
  $("generate").disabled = true;
  for (let attempt = 0; attempt < 6; attempt++) {
    try {
      const page = await call("GET", "style?page_size=100");
      if (page.items.length) {
        const portraits = new Map([...souls].map(([id, s]) => [id, s.portrait]));
        souls.clear();
        for (const s of page.items) {
          const name = s.display_name || s.soul_id;
          souls.set(s.soul_id, {id: s.soul_id, name, description: describe(name, s.style), style: s.style,
            source: s.source, portrait: portraits.get(s.soul_id) || null});
        }
        select.replaceChildren(...page.items.map(s => h("option", {value: s.soul_id}, souls.get(s.soul_id).name)));
        if (souls.has(wanted)) select.value = wanted;
        $("generate").disabled = false;
        $("selfie-go").disabled = false;
        if ($("notice").dataset.about === "souls") notice("");
        renderPicker();
        renderSouls();
        return;
      }
      notice("The service has no characters yet; asking again…");
      $("notice").dataset.about = "souls";
    } catch (error) {
      showError(error);
      if (error instanceof ApiError && [401, 403].includes(error.status)) return;
    }
    await new Promise(r => setTimeout(r, Math.min(1000 * 2 ** attempt, 8000)));
  }
}

function portraitOf(soul, size = "small") {
  if (soul.portrait) return h("img", {src: soul.portrait, alt: "", className: `portrait ${size}`, decoding: "async"});
  return h("span", {className: `portrait ${size} monogram`, "aria-hidden": "true"}, soul.name.charAt(0));
}

// Pointer shortcut to the Character select (the select is the accessible control; this is a visual aid).
function renderPicker() {
  const current = $("soul").value;
  const box = $("soul-cards");
  box.setAttribute("aria-hidden", "true");
  box.removeAttribute("role");
  box.replaceChildren(...[...souls.values()].map(s => {
    const pick = h("div", {className: `soul-pick${s.id === current ? " picked" : ""}`, "data-soul": s.id},
      portraitOf(s), h("span", {className: "soul-name"}, s.name),
      h("span", {className: "soul-desc"}, s.description));
    pick.addEventListener("click", () => {
      $("soul").value = s.id;
      $("soul").dispatchEvent(new Event("change"));
    });
    return pick;
  }));
}

const STYLE_FIELDS = [
  ["prompt_prefix", "Who they are", "textarea"],
  ["prompt_suffix", "Look and light", "textarea"],
  ["negative_prompt", "Never draw", "textarea"],
  ["width", "Width (px)", "number"],
  ["height", "Height (px)", "number"],
  ["steps", "Steps", "number"],
  ["guidance", "Guidance", "number"],
];

function renderSouls(saved = null, said = "") {
  $("styles").replaceChildren(...[...souls.values()].map(s => {
    const facts = h("dl", {className: "facts"},
      h("div", {className: "kv"}, h("dt", {}, "Size"), h("dd", {}, `${s.style.width}×${s.style.height}`)),
      h("div", {className: "kv"}, h("dt", {}, "Steps"), h("dd", {}, String(s.style.steps))),
      h("div", {className: "kv"}, h("dt", {}, "Style"), h("dd", {}, s.source === "stored" ? "customised" : "default")));
    const box = h("article", {className: "soul", "data-soul": s.id},
      portraitOf(s, "large"),
      h("div", {className: "soul-body"},
        h("h3", {}, s.name),
        h("p", {className: "soul-desc"}, s.description || "No description yet."),
        facts));
    if (role === "admin") {
      box.append(styleForm(s, s.id === saved ? said : ""));
      extrasFor(s).then(el => { if (el) box.append(el); });
    }
    return box;
  }));
}

function styleForm(s, said) {
  const inputs = {};
  const rows = STYLE_FIELDS.map(([name, label, kind]) => {
    const id = `style-${s.id}-${name}`;
    const input = kind === "textarea" ? h("textarea", {id, rows: 2, spellcheck: "false"})
      : h("input", {id, type: "number", step: name === "guidance" ? "0.5" : "1", inputmode: "decimal"});
    input.value = String(s.style[name] ?? "");
    inputs[name] = input;
    return h("div", {className: `field${kind === "textarea" ? " wide" : ""}`}, h("label", {for: id}, label), input);
  });
  const note = h("p", {className: "muted", role: "status"}, said);
  const save = h("button", {type: "submit"}, `Save ${s.name}'s style`);
  const form = h("form", {className: "style-edit"}, ...rows, save, note);
  const details = h("details", {className: "style-admin", open: Boolean(said)},
    h("summary", {}, `Edit ${s.name}'s style`), form);
  form.addEventListener("submit", async ev => {
    ev.preventDefault();
    clearFieldErrors(form);
    const style = {};
    for (const [name, , kind] of STYLE_FIELDS) {
      style[name] = kind === "number" ? Number(inputs[name].value) : inputs[name].value;
    }
    setBusy(save, true);
    try {
      await call("POST", "style", {body: {soul_id: s.id, display_name: s.name, style}});
      await loadSouls();
      renderSouls(s.id, "Saved.");
      const again = document.querySelector(`#styles [data-soul="${s.id}"] button[type=submit]`);
      if (again) again.focus();
    } catch (error) {
      const field = error.field && error.field.startsWith("style.") ? inputs[error.field.slice(6)] : null;
      if (field) { field.setAttribute("aria-invalid", "true"); field.focus(); }
      note.textContent = `Not saved: ${error.message}`;
    } finally {
      setBusy(save, false);
    }
  });
  return details;
}

// References and adapter of a soul, where the API has them (a GET path under the soul naming its identity,
// references or adapter: `GET /style/{soul_id}/identity` answers {references, lora, identity_scale}).
async function extrasFor(s) {
  const paths = (await readablePaths()).filter(p => /\{soul_id\}/.test(p) && /(identity|reference|adapter|lora)/i.test(p));
  if (!paths.length) return null;
  const list = h("dl", {className: "facts"});
  const row = (k, v) => list.append(h("div", {className: "kv"}, h("dt", {}, k), h("dd", {}, v)));
  for (const p of paths) {
    const url = p.replace(/^\//, "").replace("{soul_id}", encodeURIComponent(s.id));
    try {
      const data = await call("GET", url, {retries: 0});
      if (Array.isArray(data.references)) {
        row("References", data.references.length
          ? data.references.map(r => `${r.width}×${r.height} (${r.ref_id})`).join(", ") : "none");
        if (typeof data.identity_scale === "number") row("Likeness", String(data.identity_scale));
      }
      if ("lora" in data) row("Adapter", data.lora ? `${data.lora.name} ${data.lora.version} at ${data.lora.scale}` : "none");
    } catch { /* not readable by this key: left out */ }
  }
  return list.children.length ? h("div", {className: "identity"}, h("h4", {}, "Likeness"), list) : null;
}

function soulName(soulId) { return (souls.get(soulId) || {}).name || soulId || "a character"; }

function setPortrait(soulId, url) {
  const s = souls.get(soulId);
  if (!s || s.portrait === url) return;
  s.portrait = url;
  renderPicker();
  for (const el of document.querySelectorAll(`#styles [data-soul="${soulId}"] .portrait`)) {
    el.replaceWith(portraitOf(s, "large"));
  }
}

// ---- results: one shape for cards, history and the viewer ---------------------------------------------------

function titleOf(soulId, cue) { return `${soulName(soulId)}${cue ? ` · “${cue}”` : ""}`; }

// A task (or an answer) with its result as a history item.
function itemOf(task, extra = {}) {
  const r = task.result || {};
  const base = {taskId: task.task_id || null, soulId: task.soul_id || extra.soulId, cue: task.cue ?? extra.cue ?? null,
    when: task.finished_at || task.created_at || extra.when || null, gpuSeconds: task.metrics && task.metrics.gpu_seconds,
    model: task.metrics && task.metrics.model, device: task.metrics && task.metrics.device, ...extra};
  if (r.variant) {
    return {...base, kind: "image", format: "png", url: r.variant.url, id: r.variant.variant_id, variant: r.variant,
      seed: r.variant.seed, width: r.variant.width, height: r.variant.height};
  }
  if (r.outputs && r.outputs.length) {
    const shown = r.outputs.find(o => o.format === "gif") || r.outputs.find(o => o.format === "webp") || r.outputs[0];
    return {...base, kind: "animation", format: shown.format, url: shown.url, id: base.taskId, outputs: r.outputs};
  }
  return null;
}

function when(iso) {
  const t = Date.parse(iso || "");
  if (!t) return "";
  return new Date(t).toLocaleString(undefined, {month: "short", day: "numeric", hour: "2-digit", minute: "2-digit"});
}

function detailRows(item) {
  const rows = [["Character", soulName(item.soulId)]];
  if (item.cue) rows.push(["Cue", item.cue]);
  if (item.when) rows.push(["Made", when(item.when)]);
  if (Number.isInteger(item.seed)) rows.push(["Seed", String(item.seed)]);
  if (item.width && item.height) rows.push(["Size", `${item.width}×${item.height}`]);
  if (typeof item.gpuSeconds === "number") rows.push(["GPU time", `${item.gpuSeconds.toFixed(2)} s`]);
  if (item.model) rows.push(["Model", `${item.model}${item.device ? ` on ${item.device}` : ""}`]);
  return rows;
}

function detailList(item) {
  return h("dl", {className: "details"}, ...detailRows(item).map(([k, v]) =>
    h("div", {className: "kv"}, h("dt", {}, k), h("dd", {}, v))));
}

function metaLine(item) {
  const parts = [when(item.when)];
  if (Number.isInteger(item.seed)) parts.push(`seed ${item.seed}`);
  if (item.width && item.height) parts.push(`${item.width}×${item.height}`);
  if (typeof item.gpuSeconds === "number") parts.push(`${item.gpuSeconds.toFixed(1)} GPU-s`);
  return parts.filter(Boolean).join(" · ");
}

function noteModel(item) {
  if (item && item.model && /^tiny/i.test(item.model)) $("tiny-note").hidden = false;
}

// The service's model, from `GET /info` where it has one: the tiny offline model gets its notice up front.
async function noteBackend() {
  if (!(await apiFeatures()).has("/info")) return;
  try {
    const info = await call("GET", "info", {retries: 0});
    noteModel({model: info.model_backend});
  } catch { /* the notice then waits for a result's metrics */ }
}

function fileName(soulId, id, format) { return `soul-${soulId || "result"}-${id}.${format}`; }

// ---- task cards ---------------------------------------------------------------------------------------------

let cardSeq = 0;
class Card {
  // `ask` says how to ask again (path, body, title, kind): Next variant and Vary use it.
  constructor({title, kind, badge, anchor = null, ask = null, context = {}}) {
    this.kind = kind;
    this.ask = ask;
    this.context = context;
    this.state = new TaskState();
    this.watch = null;
    this.item = null;
    this.announced = "";
    const id = `card-${++cardSeq}`;
    this.title = h("h3", {className: "card-title", id: `${id}-title`}, title);
    this.badge = h("span", {className: "badge"}, badge || (kind === "video" ? "GIF" : "Image"));
    this.media = h("div", {className: "media"}, h("div", {className: "placeholder", "aria-hidden": "true"}));
    this.status = h("p", {className: "status"});
    this.live = h("p", {className: "sr-only live", role: "status", "aria-live": "polite", "aria-atomic": "true"});
    this.bar = h("progress", {max: 1, "aria-labelledby": `${id}-title`});
    this.trouble = h("p", {className: "trouble", hidden: true});
    this.error = h("p", {className: "error", role: "alert", hidden: true});
    this.details = h("div", {className: "card-details"});
    this.actions = h("div", {className: "actions"});
    this.cancel = h("button", {type: "button", className: "secondary", hidden: true, onclick: () => this.onCancel()},
      "Cancel");
    this.el = h("li", {className: "card", tabindex: "-1", "aria-labelledby": `${id}-title`, "data-kind": kind},
      h("div", {className: "card-head"}, this.title, this.badge), this.media, this.status, this.live, this.bar,
      this.trouble, this.error, this.details, h("div", {className: "actions"}, this.cancel), this.actions);
    this.el.addEventListener("soul-preview", ev => this.showPreview(ev.detail));
    const list = $("tasks");
    if (anchor && anchor.el && anchor.el.parentNode === list) list.insertBefore(this.el, anchor.el);
    else list.prepend(this.el);
    $("tasks-empty").hidden = true;
    cards.add(this);
  }

  // Where the user acted: the new card comes into view (once the API answered, so that the rest of a double
  // click does not land on it); the keyboard focus stays where it was.
  reveal() { this.el.scrollIntoView({block: "nearest"}); }

  dispose() {
    if (this.watch) this.watch.stop();
    cards.delete(this);
    if (this.state.task.task_id) cardsByTask.delete(this.state.task.task_id);
  }

  update(fields) {
    this.state.apply(fields);
    if (fields.task_id) cardsByTask.set(fields.task_id, this);
    this.render();
  }

  render() {
    const s = this.state;
    const t = s.task;
    this.el.dataset.status = t.status || "";
    this.el.dataset.stage = t.stage || "";
    this.el.dataset.progress = typeof t.progress === "number" ? String(t.progress) : "";
    if (t.task_id) this.el.dataset.task = t.task_id;
    this.status.textContent = s.line();
    const fraction = s.fraction();
    this.bar.hidden = s.done;
    if (fraction === null) this.bar.removeAttribute("value");
    else this.bar.value = fraction;
    const cancelFocused = document.activeElement === this.cancel;
    this.cancel.hidden = s.done || !t.task_id;
    if (cancelFocused && this.cancel.hidden) this.el.focus();  // the keyboard stays on this card
    if (t.cancel_requested) setBusy(this.cancel, true);
    if (t.status === "failed" && t.error) this.fail(t.error.message || "The task failed.");
    this.say(s.announcement());
  }

  // The live region hears each stage once, and the outcome; never the clock or the queue count.
  say(words) {
    if (!words || words === this.announced) return;
    this.announced = words;
    this.live.textContent = `${this.title.textContent}: ${words}`;
  }

  tick() { if (!this.state.done && !this.state.trouble && this.state.status) this.status.textContent = this.state.line(); }

  setTrouble(text) {
    this.state.setTrouble(text);
    this.trouble.hidden = !text;
    this.trouble.textContent = text || "";
    this.el.dataset.trouble = text ? "1" : "";
    this.render();
  }

  showPreview(preview) {
    if (!this.state.applyPreview(preview)) return;
    const p = this.state.preview;
    const alt = `Preview of ${this.title.textContent}, step ${p.step} of ${p.steps}`;
    let img = this.media.querySelector("img.preview");
    if (!img) {
      img = h("img", {className: "preview", alt, decoding: "async"});
      this.media.replaceChildren(img, h("span", {className: "preview-step"}));
    }
    img.src = p.url;
    img.alt = alt;
    this.media.querySelector(".preview-step").textContent = p.steps ? `Step ${p.step} of ${p.steps}` : `Step ${p.step}`;
    this.el.dataset.preview = String(p.step);
  }

  fail(message) {
    this.error.hidden = false;
    this.error.textContent = message;
    this.media.replaceChildren();
  }

  // Replaces the action buttons; if the keyboard was on one of them, it lands on the first new one (or the card).
  setActions(...buttons) {
    const hadFocus = this.el.contains(document.activeElement) && document.activeElement !== this.el;
    this.actions.replaceChildren(...buttons);
    if (hadFocus && !this.el.contains(document.activeElement)) (buttons[0] || this.el).focus();
  }

  async onCancel() {
    if (isBusy(this.cancel)) return;
    setBusy(this.cancel, true);
    this.cancel.textContent = "Canceling…";
    try {
      this.update(await call("DELETE", `tasks/${encodeURIComponent(this.state.task.task_id)}`));
    } catch (error) {
      this.fail(`Could not cancel: ${error.message}`);
      setBusy(this.cancel, false);
      this.cancel.textContent = "Cancel";
    }
    if (this.cancel.hidden && document.activeElement === this.cancel) this.el.focus();
  }

  async track(taskId) {
    this.update({task_id: taskId});
    this.watch = follow(taskId, {
      onUpdate: t => this.update(t),
      onPreview: p => this.el.dispatchEvent(new CustomEvent("soul-preview", {detail: p})),
      onTrouble: m => this.setTrouble(m),
      onVia: via => { this.el.dataset.via = via; },
    });
    try {
      const final = await this.watch.done;
      if (final) this.update(final);
      this.setTrouble(null);
      return final;
    } catch (error) {
      this.fail(error.message);
      return null;
    } finally {
      const focused = document.activeElement === this.cancel;
      this.cancel.hidden = true;
      if (focused) this.el.focus();
    }
  }

  // A finished result: the media, its details, and what can be done next.
  showResult(item, {readyAtOnce = false, repeat = false} = {}) {
    this.item = item;
    noteModel(item);
    this.media.classList.add("result");
    const alt = `${item.kind === "animation" ? "Animation of " : ""}${titleOf(item.soulId, item.cue)}`;
    this.media.replaceChildren(h("button", {type: "button", className: "thumb", "aria-label": `Larger view of ${alt}`,
      onclick: () => openViewer(cardItems(), cardItems().indexOf(item))}, mediaElement(item.format, item.url, alt)));
    this.details.replaceChildren(detailList(item));
    const line = metricsLine({gpu_seconds: item.gpuSeconds, device: item.device});
    if (readyAtOnce) {
      this.status.textContent = repeat
        ? "The same picture as before: you have not marked it seen. Next variant makes a new one."
        : "Ready at once: made earlier, new to you.";
    } else if (line) {
      this.status.textContent = `${this.state.line()} · ${line}`;
    }
    if (item.kind === "image") this.imageActions(item);
    else {
      this.setActions(...item.outputs.map(o => downloadButton(`Download ${(MEDIA[o.format] || {}).label || o.format}`,
        o.url, fileName(item.soulId, item.id, o.format))), copyLinkButton(item));
    }
    if (item.soulId && item.kind === "image") setPortrait(item.soulId, item.url);
  }

  imageActions(item) {
    const buttons = [];
    if (this.ask) {
      buttons.push(actionButton("Next variant", "primary", b => nextVariant(this, b, item),
        "Marks this one seen and asks for a new one"));
      if (features.seed && this.ask.path === "image") {
        buttons.push(actionButton("Vary", "secondary", b => vary(this, b), "Same cue, a new seed"));
        if (Number.isInteger(item.seed)) {
          buttons.push(actionButton("Reuse seed", "secondary", b => reuseSeed(b, item.seed), `Pin seed ${item.seed}`));
        }
      }
    }
    buttons.push(actionButton("Make a GIF", "secondary", b => startAnimation(this, b, item)));
    buttons.push(downloadButton("Download image", item.url, fileName(item.soulId, item.id, "png")));
    buttons.push(copyLinkButton(item));
    buttons.push(seenButton(this, item));
    this.setActions(...buttons);
  }
}

function actionButton(label, kind, onClick, description = "") {
  const button = h("button", {type: "button", className: kind === "primary" ? "" : "secondary",
    title: description || null}, label);
  button.addEventListener("click", async () => {
    if (isBusy(button)) return;
    setBusy(button, true);
    try { await onClick(button); } finally { setBusy(button, false); }
  });
  return button;
}

function seenButton(card, item) {
  const button = h("button", {type: "button", className: "secondary"}, item.seen ? "Seen" : "Mark seen");
  if (item.seen) setBusy(button, true);
  button.addEventListener("click", async () => {
    if (isBusy(button)) return;
    setBusy(button, true);
    try {
      await markSeen(item);
      button.textContent = "Seen";
    } catch (error) {
      setBusy(button, false);
      card.fail(`Could not mark it seen: ${error.message}`);
    }
  });
  return button;
}

async function markSeen(item) {
  if (item.seen) return;
  const user = $("user").value.trim();
  await call("POST", `image/mark-seen?${new URLSearchParams({variant_id: item.id, user_id: user})}`);
  item.seen = true;
  for (const card of cards) {
    if (card.item && card.item.id === item.id) {
      const b = [...card.actions.querySelectorAll("button")].find(x => /^(Mark seen|Seen)$/.test(x.textContent));
      if (b) { b.textContent = "Seen"; setBusy(b, true); }
    }
  }
}

function cardItems() { return [...$("tasks").children].map(li => [...cards].find(c => c.el === li))
  .filter(c => c && c.item).map(c => c.item); }

// ---- asking -------------------------------------------------------------------------------------------------

// One card, one POST with an Idempotency-Key (so its retries are safe), the button busy until the API answered.
// A refusal removes only the new card and is said next to where the user acted.
async function askFor({form = null, button, anchor = null, ask, context, onAnswer = () => {}}) {
  if (button) setBusy(button, true);
  const card = new Card({title: ask.title, kind: "image", badge: ask.badge, anchor, ask, context});
  card.status.textContent = "Asking…";
  card.say("Asking");
  let answer;
  try {
    const path = ask.query ? `${ask.path}?${new URLSearchParams(ask.query)}` : ask.path;
    answer = await call("POST", path, {body: ask.body, idempotencyKey: newIdempotencyKey(),
      onRetry: e => card.setTrouble(`${e.message} Retrying…`)});
  } catch (error) {
    card.dispose();
    card.el.remove();
    if (!cards.size) $("tasks-empty").hidden = false;
    if (anchor) anchor.fail(error.message);
    else showError(error, form);
    return null;
  } finally {
    if (button) setBusy(button, false);
  }
  card.setTrouble(null);
  card.reveal();
  onAnswer(card, answer);
  card.running = runTask(card, answer, context);  // the button is free again: the card follows the task
  return card;
}

async function runTask(card, answer, context, {restored = false} = {}) {
  if (answer.status === "ready" && answer.variant) {
    const repeat = [...cards].some(c => c !== card && c.item && c.item.id === answer.variant.variant_id);
    card.update({status: "succeeded", stage: "succeeded", progress: 1});
    card.showResult(itemOf({result: {variant: answer.variant}, soul_id: context.soulId, cue: context.cue,
      created_at: answer.variant.created_at}), {readyAtOnce: true, repeat});
    return;
  }
  let final;
  if (answer.result && TERMINAL.has(answer.status)) {
    card.update(answer);
    final = answer;
  } else {
    if (!restored) writeUrl(answer.task_id);
    card.update({created_at: new Date().toISOString(), stage: "queued", ...answer});
    final = await card.track(answer.task_id);
  }
  if (!final || final.status !== "succeeded") return;
  const item = itemOf(final, {soulId: context.soulId, cue: context.cue});
  if (item) card.showResult(item);
  loadGallery();
}

function currentUser(form) {
  const user = $("user").value.trim();
  if (!USER_PATTERN.test(user)) {
    showError(new ApiError("Your name: use 1 to 128 letters, digits or . _ @ -", {field: "user_id"}), form);
    return null;
  }
  localStorage.setItem("soul-user", user);
  return user;
}

// The cue form. The button is busy from the click until the API answered, so a double-click sends one request.
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
  const body = {soul_id: soulId, cue, user_id: user};
  if (pinnedSeed !== null && features.seed) body.seed = pinnedSeed;
  await askFor({form, button, context: {soulId, cue, user},
    ask: {path: "image", body, title: titleOf(soulId, cue), badge: body.seed !== undefined ? `Seed ${body.seed}` : "Image"}});
}

// Next variant: this one is marked seen, and the same request asked again, in one step.
async function nextVariant(card, button, item) {
  try {
    await markSeen(item);
  } catch (error) {
    card.fail(`Could not mark it seen: ${error.message}`);
    return;
  }
  const {seed, ...body} = card.ask.body;  // a pinned seed would give the same picture again
  void seed;
  await askFor({anchor: card, ask: {...card.ask, body}, context: card.context});
}

function randomSeed() { return crypto.getRandomValues(new Uint32Array(1))[0]; }

async function vary(card) {
  const body = {...card.ask.body, seed: randomSeed()};
  await askFor({anchor: card, ask: {...card.ask, body, badge: `Seed ${body.seed}`}, context: card.context});
}

function reuseSeed(button, seed) {
  pinnedSeed = seed;
  renderSeedPin();
  $("cue").focus();
  $("cue").select();
}

function renderSeedPin() {
  let pin = $("seed-pin");
  if (pinnedSeed === null) { if (pin) pin.remove(); return; }
  if (!pin) {
    pin = h("p", {id: "seed-pin", className: "seed-pin"});
    $("ask").after(pin);
  }
  const clear = h("button", {type: "button", className: "secondary"}, "Unpin");
  clear.addEventListener("click", () => { pinnedSeed = null; renderSeedPin(); $("cue").focus(); });
  pin.replaceChildren(`Seed ${pinnedSeed} is pinned: the next Generate uses it. `, clear);
}

async function startAnimation(source, button, item) {
  const context = {...source.context, soulId: item.soulId, cue: item.cue};
  const card = new Card({title: source.title.textContent, kind: "video", badge: "GIF", anchor: source, context});
  card.status.textContent = "Asking…";
  card.say("Asking");
  try {
    const q = new URLSearchParams({variant_id: item.id, generate_gif: "true", user_id: $("user").value.trim()});
    const answer = await call("POST", `video/generate-from-variant?${q}`, {idempotencyKey: newIdempotencyKey()});
    card.reveal();
    card.running = runTask(card, answer, context);
  } catch (error) {
    card.fail(error.message);
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
  await askFor({form, button, context: {soulId, cue, user},
    ask: {path: "image/selfie", body, title: titleOf(soulId, cue), badge: "Selfie"},
    onAnswer: (card, answer) => {
      if (answer.place) {
        card.title.textContent = `${soulName(soulId)} · selfie at ${answer.place.name}, ${answer.place.city_name}`;
        card.ask = {...card.ask, title: card.title.textContent};
      }
    }});
}

// ---- history: this user's tasks, rebuilt from the API -------------------------------------------------------

const HISTORY_SIZE = 12;
let galleryRun = 0;
let historyItems = [];

// A card for a task of this user that is not finished (after a reload, or from another tab).
function restoreCard(task, cue) {
  if (cardsByTask.has(task.task_id)) return;
  const c = task.cue ?? cue ?? null;
  const kind = task.type === "video" ? "video" : "image";
  const ask = kind === "image" && c && task.soul_id
    ? {path: "image", body: {soul_id: task.soul_id, cue: c, user_id: $("user").value.trim()}, title: titleOf(task.soul_id, c)}
    : null;
  const card = new Card({title: titleOf(task.soul_id, c), kind, badge: kind === "video" ? "GIF" : "Image", ask,
    context: {soulId: task.soul_id, cue: c, user: task.user_id || $("user").value.trim()}});
  cardsByTask.set(task.task_id, card);
  card.update(task);
  const answer = TERMINAL.has(task.status) ? {...task} : {...task, result: null};
  runTask(card, answer, card.context, {restored: true});
}

async function loadGallery({restore = false} = {}) {
  const user = $("user").value.trim();
  if (!USER_PATTERN.test(user)) return;
  const run = ++galleryRun;
  try {
    // Lists carry no signed URLs: the newest few finished tasks are read one by one for theirs.
    const [tasks, seen] = await Promise.all([
      call("GET", `tasks?${new URLSearchParams({user_id: user, page_size: "30"})}`),
      call("GET", `image/user/${encodeURIComponent(user)}/seen?page_size=50`),
    ]);
    if (restore) for (const t of tasks.items.filter(t => !TERMINAL.has(t.status)).reverse()) restoreCard(t);
    const finished = tasks.items.filter(t => t.status === "succeeded").slice(0, HISTORY_SIZE);
    const full = await Promise.all(finished.map(t => call("GET", `tasks/${encodeURIComponent(t.task_id)}`)
      .catch(() => t)));
    const seenIds = new Set(seen.items.map(s => s.variant_id));
    const items = [];
    const have = new Set();
    for (const t of full) {
      const item = itemOf(t);
      if (!item) continue;
      if (item.kind === "image") { have.add(item.id); item.seen = seenIds.has(item.id); }
      items.push(item);
    }
    // Seen images answered at once (made for someone else first) are not among this user's tasks.
    const missing = seen.items.filter(s => !have.has(s.variant_id));
    const pks = [...new Set(missing.map(s => s.pk_id))].slice(0, 5);  // bounded: one call per prompt key
    const pages = await Promise.all(pks.map(pk => call("GET", `image/variants/${encodeURIComponent(pk)}?page_size=100`)
      .catch(() => ({items: []}))));
    const byId = new Map(pages.flatMap(p => p.items).map(v => [v.variant_id, v]));
    for (const s of missing) {
      const v = byId.get(s.variant_id);
      if (v) items.push({...itemOf({result: {variant: v}, soul_id: s.soul_id, created_at: v.created_at}), seen: true});
    }
    if (run !== galleryRun) return;
    items.sort((a, b) => String(b.when).localeCompare(String(a.when)));
    historyItems = items;
    renderGallery(items);
  } catch (error) {
    if (run === galleryRun) $("gallery-note").textContent = `The history could not be loaded: ${error.message}`;
  }
}

function renderGallery(items) {
  $("gallery-note").textContent = items.length
    ? `${items.length} ${items.length === 1 ? "result" : "results"}, newest first.`
    : "No results yet. What you make shows here, with its cue, seed and size.";
  const latest = new Map();
  for (const item of items) {
    noteModel(item);
    if (item.kind === "image" && !latest.has(item.soulId)) latest.set(item.soulId, item.url);
  }
  for (const [soulId, url] of latest) if (!(souls.get(soulId) || {}).portrait) setPortrait(soulId, url);
  $("gallery").replaceChildren(...items.map((item, index) => {
    const title = `${item.kind === "animation" ? "Animation of " : ""}${titleOf(item.soulId, item.cue)}`;
    return h("li", {className: "tile", "data-format": item.format, "data-id": item.id},
      h("button", {type: "button", className: "thumb", "aria-label": `Larger view: ${title}`,
        onclick: () => openViewer(historyItems, index)}, mediaElement(item.format, item.url, title)),
      h("span", {className: "caption"}, title, item.seen ? h("span", {className: "muted"}, " · seen") : null),
      h("span", {className: "meta muted"}, metaLine(item)));
  }));
}

// ---- viewer, copy link and downloads ------------------------------------------------------------------------

let lastFocus = null;
let viewerList = [];
let viewerIndex = 0;

function openViewer(list, index) {
  if (!list.length || index < 0) return;
  if (!$("viewer").open) lastFocus = document.activeElement;
  viewerList = list;
  viewerIndex = index;
  const item = list[index];
  const title = `${item.kind === "animation" ? "Animation of " : ""}${titleOf(item.soulId, item.cue)}`;
  $("viewer-title").textContent = title;
  const media = mediaElement(item.format, item.url, title);
  media.classList.add("viewer-media");
  if (media.tagName === "VIDEO") media.autoplay = true;
  const name = fileName(item.soulId, item.id, item.format);
  $("viewer-body").replaceChildren(h("div", {className: "viewer-grid"}, media,
    h("div", {className: "viewer-side"}, detailList(item),
      h("p", {className: "muted"}, `${index + 1} of ${list.length}`),
      h("div", {className: "actions"}, downloadButton("Download", item.url, name), copyLinkButton(item),
        h("a", {href: item.url, target: "_blank", rel: "noopener noreferrer", className: "link-button"},
          "Open in a new tab")))));
  $("viewer-prev").disabled = index === 0;
  $("viewer-next").disabled = index === list.length - 1;
  if (!$("viewer").open) {
    $("viewer").showModal();
    $("viewer-close").focus();
  } else if (!$("viewer").contains(document.activeElement) || document.activeElement.disabled) {
    $("viewer-close").focus();
  }
}

function stepViewer(delta) {
  const next = viewerIndex + delta;
  if (next >= 0 && next < viewerList.length) openViewer(viewerList, next);
}

function closeViewer() {
  $("viewer").close();
  $("viewer-body").replaceChildren();
  if (lastFocus && document.contains(lastFocus)) lastFocus.focus();
}

function copyLinkButton(item) {
  const button = h("button", {type: "button", className: "secondary"}, "Copy link");
  button.addEventListener("click", async () => {
    const link = item.taskId ? taskLink(item.taskId) : item.url;
    button.dataset.link = link;
    try {
      await navigator.clipboard.writeText(link);
      button.textContent = "Link copied";
    } catch {
      window.prompt("Copy this link:", link);
    }
    setTimeout(() => { button.textContent = "Copy link"; }, 2500);
  });
  return button;
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
    if (isBusy(button)) return;
    setBusy(button, true);
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
      if (!$("viewer").open) {
        openViewer([{kind: format === "png" ? "image" : "animation", format, url, id: name.replace(/\.[^.]+$/, ""),
          soulId: null, cue: name}], 0);
      }
    } finally {
      setBusy(button, false);
    }
  });
  return button;
}

// ---- keyboard shortcuts -------------------------------------------------------------------------------------

function typing(target) {
  return target instanceof HTMLElement && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName));
}

function onKeydown(ev) {
  if ($("viewer").open) {
    if (ev.key === "ArrowLeft") { ev.preventDefault(); stepViewer(-1); }
    if (ev.key === "ArrowRight") { ev.preventDefault(); stepViewer(1); }
    return;
  }
  if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey) && !$("main").hidden) {
    ev.preventDefault();
    $("ask").requestSubmit();
    return;
  }
  if (typing(ev.target) || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  if (ev.key === "/") { ev.preventDefault(); $("cue").focus(); return; }
  if (ev.key === "n" || ev.key === "N") {
    const here = ev.target instanceof Element ? ev.target.closest("#tasks > li") : null;
    const card = [...cards].find(c => c.el === here) || [...cards].find(c => c.el === $("tasks").firstElementChild);
    const button = card && [...card.actions.querySelectorAll("button")].find(b => b.textContent === "Next variant");
    if (button) { ev.preventDefault(); button.click(); }
  }
}

// ---- start --------------------------------------------------------------------------------------------------

async function restoreTask(taskId, url) {
  if (cardsByTask.has(taskId)) return;
  let task;
  try {
    task = await call("GET", `tasks/${encodeURIComponent(taskId)}`);
  } catch (error) {
    notice(`The task in the address could not be shown: ${error.message}`, "error");
    return;
  }
  restoreCard(task, task.type === "image" ? url.cue : null);
}

function updateCount() {
  const n = $("cue").value.trim().length;
  $("cue-count").textContent = `${n}/${CUE_MAX}`;
  $("cue-count").className = n > CUE_MAX ? "count over" : "count";
}

let wired = false;
function wire() {
  if (wired) return;
  wired = true;
  $("ask").addEventListener("submit", onAsk);
  $("selfie").addEventListener("submit", onSelfie);
  $("key-forget").addEventListener("click", onForget);
  $("cue").addEventListener("input", () => { updateCount(); $("cue").removeAttribute("aria-invalid"); });
  $("user").addEventListener("change", () => { writeUrl(); loadGallery({restore: true}); });
  $("soul").addEventListener("change", () => { writeUrl(); renderPicker(); });
  $("gallery-refresh").addEventListener("click", () => loadGallery());
  $("viewer-close").addEventListener("click", closeViewer);
  $("viewer-prev").addEventListener("click", () => stepViewer(-1));
  $("viewer-next").addEventListener("click", () => stepViewer(1));
  $("viewer").addEventListener("cancel", ev => { ev.preventDefault(); closeViewer(); });
  document.addEventListener("keydown", onKeydown);
  setInterval(() => cards.forEach(c => c.tick()), 1000);
}

async function enterStudio(me) {
  role = me.role || "client";
  $("styles").dataset.role = role;
  keyPanel(me);
  wire();
  features.seed = await seedPinnable();
  noteBackend();
  await Promise.all([loadSouls(), loadSelfieOptions()]);
  writeUrl();
  await loadGallery({restore: true});
  const url = readUrl();
  if (url.task) await restoreTask(url.task, url);
}

async function start() {
  const url = readUrl();
  $("cue").value = url.cue ?? "penguin";
  $("user").value = url.user ?? localStorage.getItem("soul-user") ?? "user123";
  updateCount();
  $("keyform").addEventListener("submit", onKey);
  const online = () => { $("offline").hidden = navigator.onLine; };
  window.addEventListener("offline", online);
  window.addEventListener("online", online);
  online();
  const me = await whoAmI();
  if (me.needsKey) {
    if (me.refused) forgetKey();
    showGate(me.refused ? "The key kept in this browser was refused; enter another." : "");
    return;
  }
  await enterStudio(me);
}

start();
