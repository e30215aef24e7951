// The lipsync page: plain JavaScript over the public API (no build step, no framework).
// It uploads through /lipsync/upload and /face-tracking/upload, follows jobs through
// /jobs/{id}/events (server-sent events, read with fetch so the API key can travel in a header),
// and builds its settings form from GET /options, the same model that validates every request.
"use strict";

const KEY_STORAGE = "lipsync.apiKey";
let settingsFields = [];
let currentJob = null;
let nextJobsCursor = null;

class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(err.message || `request failed (HTTP ${status})`);
    this.status = status;
    this.code = err.code || `http_${status}`;
    this.field = err.field || null;
  }
}

const $ = (id) => document.getElementById(id);

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (apiKey()) headers.set("Authorization", `Bearer ${apiKey()}`);
  const response = await fetch(path, { ...options, headers });
  if (!response.ok) {
    let body = null;
    try { body = await response.json(); } catch (_) { /* not JSON */ }
    const error = new ApiError(response.status, body);
    if (response.status === 401) askForKey(error.message);
    throw error;
  }
  return response;
}

// --- the API key ----------------------------------------------------------------------------------

function askForKey(message) {
  $("auth").hidden = false;
  $("api-key-error").textContent = message && apiKey() ? `The key was refused: ${message}` : (message || "");
  $("api-key").focus();
}

$("auth-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY_STORAGE, $("api-key").value.trim());
  $("api-key-error").textContent = "";
  try {
    await api("/");
    $("auth").hidden = true;
    refreshJobs();
  } catch (error) {
    if (error.status !== 401) $("api-key-error").textContent = error.message;
  }
});

// --- the settings form, from GET /options -----------------------------------------------------------

function fieldId(name) { return `opt-${name}`; }

function buildInput(field) {
  const wrap = document.createElement("div");
  wrap.className = "field";
  const id = fieldId(field.name);
  const help = document.createElement("p");
  help.className = "help";
  help.id = `${id}-help`;
  const range = field.choices ? "" : (field.min !== null && field.max !== null ? ` (${field.min}–${field.max})` : "");
  help.textContent = `${field.description}${range} Default: ${field.default_text}.`;
  const error = document.createElement("p");
  error.className = "error";
  error.id = `${id}-error`;
  error.setAttribute("role", "alert");
  const describedBy = `${id}-help ${id}-error`;

  if (field.type === "int[4]") {
    const set = document.createElement("fieldset");
    set.className = "pads";
    const legend = document.createElement("legend");
    legend.textContent = field.name;
    set.appendChild(legend);
    ["top", "bottom", "left", "right"].forEach((side, i) => {
      const label = document.createElement("label");
      label.textContent = `${side} `;
      const input = document.createElement("input");
      Object.assign(input, { type: "number", id: `${id}-${i}`, min: field.min, max: field.max, step: 1 });
      input.value = field.default[i];
      input.setAttribute("aria-describedby", describedBy);
      label.appendChild(input);
      set.appendChild(label);
    });
    set.append(help, error);
    wrap.appendChild(set);
    return wrap;
  }
  const label = document.createElement("label");
  label.htmlFor = id;
  label.textContent = field.name;
  let input;
  if (field.choices) {
    input = document.createElement("select");
    for (const choice of field.choices) {
      const option = document.createElement("option");
      option.value = option.textContent = choice;
      option.selected = choice === field.default;
      input.appendChild(option);
    }
  } else if (field.type === "bool") {
    input = document.createElement("input");
    input.type = "checkbox";
    input.checked = Boolean(field.default);
  } else {
    input = document.createElement("input");
    input.type = "number";
    if (field.min !== null) input.min = field.min;
    if (field.max !== null) input.max = field.max;
    input.step = field.type === "int" ? "1" : "any";
    if (field.default !== null) input.value = field.default;
    else input.placeholder = field.default_text;
  }
  input.id = id;
  input.setAttribute("aria-describedby", describedBy);
  wrap.append(label, input, help, error);
  return wrap;
}

async function loadSettings() {
  const schema = await (await fetch("/options")).json();
  settingsFields = schema.fields.filter((f) => !f.alias_of);
  const container = $("settings");
  container.textContent = "";
  for (const group of schema.groups) {
    const fields = settingsFields.filter((f) => f.group === group);
    if (!fields.length) continue;
    const set = document.createElement("fieldset");
    const legend = document.createElement("legend");
    legend.textContent = `Settings: ${group}`;
    set.appendChild(legend);
    fields.forEach((f) => set.appendChild(buildInput(f)));
    container.appendChild(set);
  }
}

function readSetting(field) {
  const id = fieldId(field.name);
  if (field.type === "int[4]") {
    return [0, 1, 2, 3].map((i) => Number.parseInt($(`${id}-${i}`).value, 10));
  }
  const input = $(id);
  if (field.choices) return input.value;
  if (field.type === "bool") return input.checked;
  if (input.value === "") return field.nullable ? null : field.default;
  return field.type === "int" ? Number.parseInt(input.value, 10) : Number.parseFloat(input.value);
}

function collectSettings(kind) {
  const out = {};
  for (const field of settingsFields) {
    if (!field.kinds.includes(kind)) continue;
    const value = readSetting(field);
    if (value !== null) out[field.name] = value;
  }
  return out;
}

// --- characters -------------------------------------------------------------------------------------

let characterCount = 0;

$("add-character").addEventListener("click", () => {
  const node = $("character-template").content.firstElementChild.cloneNode(true);
  characterCount += 1;
  node.querySelector("legend").textContent = `Character ${characterCount}`;
  node.querySelector(".remove-character").addEventListener("click", () => {
    node.remove();
    $("add-character").focus();
  });
  $("character-list").appendChild(node);
  node.querySelector(".char-id").focus();
});

function characters() {
  return [...document.querySelectorAll("#character-list .character")];
}

// --- errors next to the field they name -------------------------------------------------------------

function clearErrors() {
  document.querySelectorAll(".error").forEach((el) => { if (el.id !== "api-key-error") el.textContent = ""; });
  document.querySelectorAll("[aria-invalid]").forEach((el) => el.removeAttribute("aria-invalid"));
}

function errorSlot(field) {
  if (!field) return $("form-error");
  if (field === "video" || field === "video_url") return $("video-error");
  if (field === "audio" || field === "audio_url") return $("audio-error");
  const match = /^characters\[(\d+)\]/.exec(field);
  if (match) {
    const node = characters()[Number(match[1])];
    return node ? node.querySelector(".char-error") : $("characters-error");
  }
  if (field === "characters" || field === "references") return $("characters-error");
  const name = field.split(/[.[]/)[0];
  return $(`${fieldId(name)}-error`) || $("form-error");
}

function showError(error) {
  const slot = errorSlot(error.field);
  slot.textContent = error.code ? `${error.message} (${error.code})` : error.message;
  const input = slot.id.endsWith("-error") ? $(slot.id.slice(0, -"-error".length)) : null;
  if (input) input.setAttribute("aria-invalid", "true");
}

// --- submitting -------------------------------------------------------------------------------------

function buildForm(kind) {
  const form = new FormData();
  const video = $("video").files[0];
  if (video) form.append("video", video, video.name);
  if (kind === "lipsync") {
    const audio = $("audio").files[0];
    if (audio) form.append("audio", audio, audio.name);
  }
  const chars = characters().map((node, i) => {
    // Uploaded references are matched by file name: prefix each with its character, so two people's
    // photos may share a name on disk.
    const names = [...node.querySelector(".char-refs").files].map((file, j) => {
      const name = `c${i}-${j}-${file.name}`;
      form.append("references", file, name);
      return name;
    });
    return { id: node.querySelector(".char-id").value.trim(), name: node.querySelector(".char-name").value.trim(),
             reference: names };
  });
  const options = { ...collectSettings(kind === "lipsync" ? "lipsync" : "tracking"), characters: chars, async: true };
  form.append("options", new Blob([JSON.stringify(options)], { type: "application/json" }), "options.json");
  return form;
}

async function submit(kind) {
  clearErrors();
  const path = kind === "lipsync" ? "/lipsync/upload" : "/face-tracking/upload";
  try {
    const response = await api(path, { method: "POST", body: buildForm(kind) });
    const accepted = await response.json();
    follow(accepted.job_id, kind);
  } catch (error) {
    showError(error);
  }
}

$("job-form").addEventListener("submit", (event) => { event.preventDefault(); submit("lipsync"); });
$("preview").addEventListener("click", () => submit("face_tracking"));
$("cancel").addEventListener("click", async () => {
  if (!currentJob) return;
  try {
    await api(`/jobs/${currentJob}`, { method: "DELETE" });
  } catch (error) {
    showError(error);
  }
});

// --- following a job --------------------------------------------------------------------------------

function stageBar(stage) {
  let row = document.querySelector(`#stages [data-stage="${stage}"]`);
  if (!row) {
    row = document.createElement("div");
    row.className = "stage";
    row.dataset.stage = stage;
    const label = document.createElement("label");
    label.htmlFor = `stage-${stage}`;
    label.textContent = stage;
    const bar = document.createElement("progress");
    bar.id = `stage-${stage}`;
    bar.max = 1;
    bar.value = 0;
    const text = document.createElement("span");
    text.className = "stage-text";
    row.append(label, bar, text);
    $("stages").appendChild(row);
  }
  return row;
}

function showStage(stage, done, total) {
  const row = stageBar(stage);
  const bar = row.querySelector("progress");
  bar.max = Math.max(1, total);
  bar.value = done;
  row.querySelector(".stage-text").textContent = `${done} / ${total}`;
}

function onProgress(event) {
  $("job-status").textContent = `${event.status}${event.stage ? `: ${event.stage}` : ""}`;
  // Every stage so far (one shorter than the server's poll still shows), then the current one.
  for (const [stage, p] of Object.entries(event.progress || {})) showStage(stage, p.done, p.total);
  if (event.stage) showStage(event.stage, event.done, event.total);
}

async function readEvents(jobId, onEvent) {
  const response = await api(`/jobs/${jobId}/events`, { headers: { Accept: "text/event-stream" } });
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trim());
      }
      if (data.length) onEvent(name, JSON.parse(data.join("\n")));
    }
  }
}

async function showResult(jobId) {
  const blob = await (await api(`/jobs/${jobId}/result`)).blob();
  const url = URL.createObjectURL(blob);
  const video = $("result");
  video.src = url;
  video.hidden = false;
  const link = $("download");
  link.href = url;
  link.download = `${jobId}.mp4`;
  link.hidden = false;
}

function showTrackCounts(tracks) {
  const box = $("tracking-counts");
  box.textContent = "";
  const list = document.createElement("ul");
  for (const ch of (tracks && tracks.characters) || []) {
    const item = document.createElement("li");
    item.className = "track-count";
    item.textContent = `${ch.name || ch.id} (${ch.id}): ${ch.frames.length} frames`;
    list.appendChild(item);
  }
  box.appendChild(list);
}

async function follow(jobId, kind) {
  currentJob = jobId;
  $("job").hidden = false;
  $("stages").textContent = "";
  $("tracking-counts").textContent = "";
  $("result").hidden = true;
  $("download").hidden = true;
  $("job-title").textContent = `${kind === "lipsync" ? "Lip-sync" : "Tracking preview"} job ${jobId}`;
  $("cancel").disabled = false;
  delete $("job-status").dataset.status;  // set again when this job ends
  let final = null;
  try {
    await readEvents(jobId, (name, data) => {
      if (name === "progress") onProgress(data);
      else if (name === "end") final = data;
    });
  } catch (error) {
    showError(error);
  }
  $("cancel").disabled = true;
  if (!final) return;
  $("job-status").textContent = final.status;
  $("job-status").dataset.status = final.status;
  if (final.status === "succeeded") {
    if (kind !== "lipsync") showTrackCounts(final.result && final.result.tracks);
    await showResult(jobId);
  } else if (final.error) {
    showError(final.error);
  }
  refreshJobs();
}

// --- recent jobs ------------------------------------------------------------------------------------

async function refreshJobs(more = false) {
  try {
    const query = new URLSearchParams({ limit: "10" });
    if (more && nextJobsCursor) query.set("before", nextJobsCursor);
    const page = await (await api(`/jobs?${query}`)).json();
    const body = $("jobs-body");
    if (!more) body.textContent = "";
    for (const job of page.jobs) {
      const row = document.createElement("tr");
      for (const text of [job.id.slice(0, 12), job.kind, job.status, job.stage || "", job.created_at]) {
        const cell = document.createElement("td");
        cell.textContent = text;
        row.appendChild(cell);
      }
      body.appendChild(row);
    }
    nextJobsCursor = page.next;
    $("more-jobs").hidden = !page.next;
  } catch (error) {
    if (error.status !== 401) $("form-error").textContent = error.message;
  }
}

$("refresh-jobs").addEventListener("click", () => refreshJobs());
$("more-jobs").addEventListener("click", () => refreshJobs(true));

// --- start ------------------------------------------------------------------------------------------

(async () => {
  try {
    await loadSettings();
  } catch (error) {
    $("settings").textContent = `The settings could not be loaded: ${error.message}`;
  }
  document.body.dataset.ready = "true";
  try {
    await api("/");
    refreshJobs();
  } catch (_) { /* askForKey has been shown on 401 */ }
})();
