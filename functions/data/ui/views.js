// views.js owns how things read on the page: human stage names, durations, queue wording, and a tiny element
// builder that only ever sets text (never HTML), so nothing from the API or a cue can run as markup.

export const STAGES = {
  queued: "Waiting in line",
  starting: "Starting",
  loading_model: "Loading the model",
  loading_source: "Reading the image",
  denoising: "Drawing",
  encoding: "Making the animation",
  uploading: "Saving",
  uploading_png: "Saving the image",
  uploading_gif: "Saving the GIF",
  uploading_mp4: "Saving the MP4 video",
  uploading_webp: "Saving the WebP animation",
  retrying: "Retrying after a hiccup",
  requeued: "Back in line",
  stuck_queued: "Back in line",
  waiting_for_runner: "Its runner stopped: waiting for another",
  succeeded: "Done",
  failed: "Failed",
  canceled: "Canceled",
};

// A raw stage name we do not know yet still reads as words: `uploading_thing` -> "Uploading thing".
export function stageName(stage) {
  if (!stage) return "";
  if (STAGES[stage]) return STAGES[stage];
  const words = String(stage).replace(/[_-]+/g, " ").trim();
  return words.charAt(0).toUpperCase() + words.slice(1);
}

export function duration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  return m < 60 ? `${m} min ${s % 60} s` : `${Math.floor(m / 60)} h ${m % 60} min`;
}

// The measured cost of a finished task, when the API reports it.
export function metricsLine(metrics) {
  if (!metrics) return "";
  const parts = [];
  if (typeof metrics.gpu_seconds === "number") parts.push(`${metrics.gpu_seconds.toFixed(1)} GPU-seconds`);
  if (metrics.device) parts.push(`on ${metrics.device}`);
  return parts.join(" ");
}

// h("button", {type: "button", onclick: f}, "Text", child...): attributes, listeners and text children only.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") el.addEventListener(name.slice(2), value);
    else if (name === "className") el.className = value;
    else if (name in el && typeof value !== "string") el[name] = value;
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

// How each result format is shown inline.
export const MEDIA = {
  png: {kind: "img", label: "Image (PNG)"},
  gif: {kind: "img", label: "GIF"},
  webp: {kind: "img", label: "WebP animation"},
  mp4: {kind: "video", label: "MP4 video"},
};

export function mediaElement(format, url, alt) {
  if ((MEDIA[format] || {}).kind === "video") {
    return h("video", {src: url, controls: true, muted: true, loop: true, playsInline: true, preload: "metadata",
      "aria-label": alt});
  }
  return h("img", {src: url, alt, decoding: "async"});  // at most a dozen: no lazy loading
}
