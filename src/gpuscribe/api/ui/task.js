// The page of one task (/tasks/{id}): state, timeline, GPU, memory estimate against measured
// peak, the transcript with its timestamps, and downloads in every format. Polls until the task
// is final.

import {
  ApiError, api, apiJson, bytes, clock, duration, el, errorMessage, percent, progressBar,
  replace, secondsOf, stateBadge, timestamp,
} from "./common.js";

const FORMATS = [
  ["text", "txt"], ["srt", "srt"], ["vtt", "vtt"], ["tsv", "tsv"], ["json", "json"],
  ["verbose_json", "verbose.json"],
];
const FINAL = new Set(["completed", "failed", "cancelled"]);
const POLL_MS = 2000;

const $ = (id) => document.getElementById(id);
const taskId = decodeURIComponent(location.pathname.split("/").filter(Boolean).at(-1) || "");

function fact(label, ...value) {
  return el("div", { class: "fact" }, el("span", { class: "muted" }, label), el("b", {}, ...value));
}

function renderTask(task) {
  document.title = `${task.original_filename || task.id} · gpuscribe`;
  replace($("task-title"), stateBadge(task.state), " ", task.original_filename || "task", " ",
    el("span", { class: "muted small", id: "task-id" }, task.id));
  const o = task.options;
  const on = task.node ? ` on ${task.node}` : "";
  const onCpu = task.gpu_uuid === "cpu";  // the CPU device of a node without GPUs
  const where = task.gpu === null ? "not placed yet" : onCpu ? `the CPU${on}` : `GPU ${task.gpu}${on}`;
  replace($("task"),
    task.state === "running" && el("p", {}, progressBar(task.progress), " ",
      percent(task.progress), task.cancel_requested ? " · cancelling" : ""),
    task.error && el("p", { class: "alert" }, `failed: ${task.error}`),
    task.last_error && el("p", { class: "alert" }, `an earlier attempt failed: ${task.last_error}`),
    task.state === "queued" && el("p", { class: "alert" },
      `waits: ${task.wait_reason || "for the scheduler's next pass"}`),
    el("div", { class: "card facts" },
      fact("state", task.state), fact("priority", task.priority),
      fact("model", `${task.model} (${task.engine})`),
      fact("language", o.language || "detected"), fact("task", o.task),
      fact("audio", `${duration(task.audio_seconds)} · ${task.audio_format}`),
      fact(onCpu ? "device" : "GPU", where,
        task.gpu_uuid && !onCpu ? el("div", { class: "muted small" }, task.gpu_uuid) : null),
      fact("attempts", `${task.attempts} of ${task.max_attempts}`),
      fact("decoding", `beam ${o.beam_size} · batch ${o.batch_size} · ${o.compute_type}`)),
    !FINAL.has(task.state) && el("p", {},
      el("button", { class: "secondary", id: "cancel", onclick: () => cancel(task) }, "Cancel")));
  renderTimeline(task);
  renderMemory(task);
}

function renderTimeline(task) {
  const created = secondsOf(task.created_at);
  const started = secondsOf(task.started_at);
  const finished = secondsOf(task.finished_at);
  const step = (label, iso, note) => el("li", {}, el("span", {}, clock(iso)),
    el("b", {}, label), el("span", { class: "detail muted" }, note || ""));
  const events = (task.history || []).map((e) => step(e.state, e.at, e.detail));
  replace($("timeline"), el("p", {},
    `queued ${clock(task.created_at)}`,
    started ? ` · waited ${duration(started - created)}` : "",
    started ? ` · started ${clock(task.started_at)}` : "",
    finished && started ? ` · ran ${duration(finished - started)}` : "",
    finished ? ` · ${task.state} ${clock(task.finished_at)}` : ""),
  events.length ? el("ul", { class: "timeline" }, events) : null);
}

function renderMemory(task) {
  const estimate = task.memory_estimate_bytes;
  const peak = task.memory_peak_bytes;
  if (!estimate && !peak) {
    replace($("memory"), el("p", { class: "muted" }, "no estimate yet: the task was not placed"));
    return;
  }
  const top = Math.max(estimate || 0, peak || 0, 1);
  const bar = (cls, value) => el("span", { class: `bar ${cls}`,
    style: `width:${((100 * (value || 0)) / top).toFixed(1)}%` });
  replace($("memory"), el("div", { class: "bars" },
    el("span", {}, "estimate (admitted)"), bar("estimate", estimate),
    el("b", { class: "num" }, bytes(estimate)),
    el("span", {}, "measured peak"), bar("peak", peak),
    el("b", { class: "num" }, peak ? bytes(peak) : "not yet")),
  estimate && peak ? el("p", { class: "muted" },
    `the estimate is ${(estimate / peak).toFixed(2)}× the measured peak`) : null);
}

async function renderTranscript(task) {
  if (task.state !== "completed") {
    replace($("transcript"), el("p", { class: "muted" },
      task.state === "failed" || task.state === "cancelled" ? "no transcript" : "not ready yet"));
    return;
  }
  replace($("downloads"), FORMATS.map(([format, extension]) => el("button", {
    class: "secondary", "data-format": format,
    onclick: () => download(task, format, extension),
  }, `download ${extension}`)));
  const result = await apiJson(`/v1/tasks/${encodeURIComponent(task.id)}/result?format=verbose_json`);
  const segments = result.segments || [];
  replace($("transcript"),
    result.simulated && el("p", { class: "muted" },
      "simulated GPUs: the segments stand for the audio, no words were recognised"),
    segments.length ? segments.map((s) => el("div", { class: "segment" },
      el("time", {}, `${timestamp(s.start)} → ${timestamp(s.end)}`), el("span", {}, s.text.trim())))
      : el("p", { class: "muted" }, result.text || "no speech"));
}

// Downloads go through fetch so that the API key travels in a header, then save the file.
async function download(task, format, extension) {
  const path = `/v1/tasks/${encodeURIComponent(task.id)}/result?format=${format}`;
  const response = await api(path);
  if (!response.ok) throw new ApiError(response.status, await errorMessage(response));
  const url = URL.createObjectURL(await response.blob());
  const stem = (task.original_filename || task.id).replace(/\.[^.]*$/, "");
  const link = el("a", { href: url, download: `${stem}.${extension}` });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

async function cancel(task) {
  const response = await api(`/v1/tasks/${encodeURIComponent(task.id)}`, { method: "DELETE" });
  if (!response.ok) alert(await errorMessage(response));
  clearTimeout(timer);
  poll();
}

let shownFinal = false;
let timer = null;

async function poll() {
  try {
    const task = await apiJson(`/v1/tasks/${encodeURIComponent(taskId)}`);
    $("offline").hidden = true;
    renderTask(task);
    $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    if (FINAL.has(task.state)) {
      if (!shownFinal) await renderTranscript(task);
      shownFinal = true;
      return;
    }
  } catch (error) {
    $("offline").hidden = false;
    $("offline").textContent = error instanceof ApiError && error.status === 404
      ? `no task with id ${taskId}` : `cannot reach the service: ${error.message}`;
    if (error instanceof ApiError && error.status === 404) return;
  }
  timer = setTimeout(poll, POLL_MS);
}

poll();
