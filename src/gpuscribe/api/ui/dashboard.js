// The dashboard at /: every GPU (memory plot, sensors, resident models, running tasks), the
// queue by priority with each task's wait and why it waits, recent failures, the calibration
// table, and an upload form. It polls the JSON API; the plot starts from the service's own
// history (GET /v1/gpus/history), so it shows the last minutes as soon as the page opens.

import {
  ApiError, api, apiJson, ago, bytes, duration, el, errorMessage, gib, now, percent,
  progressBar, replace, secondsOf, shortId, stateBadge, taskLink,
} from "./common.js";
import { memoryPlot, sparkline } from "./plot.js";

const WINDOW_SECONDS = 300;
const FAST_MS = 2000;
const SLOW_MS = 15000;
const PRIORITIES = ["urgent", "high", "normal", "low"];
const FIGURES = [
  "memory_used_bytes", "memory_foreign_bytes", "memory_reserved_bytes", "memory_cap_bytes",
  "utilization_percent", "temperature_c", "power_watts",
];

const traces = new Map(); // `${node}|${uuid}` -> columnar samples, oldest first
const served = new Set(); // the keys the service keeps a history of (this node's devices)
let historyFetchedAt = 0; // Date.now() of the last history call
let shown = null; // the GPUs and running tasks last drawn, to draw again at a new size
let redraw = null;

const $ = (id) => document.getElementById(id);
const traceKey = (node, uuid) => `${node || ""}|${uuid}`;

function emptyTrace() {
  return Object.fromEntries([["at", []], ...FIGURES.map((name) => [name, []])]);
}

function append(key, sample) {
  const trace = traces.get(key) || emptyTrace();
  traces.set(key, trace);
  const last = trace.at.at(-1);
  if (last !== undefined && sample.at <= last) return;
  trace.at.push(sample.at);
  for (const name of FIGURES) trace[name].push(sample[name] ?? null);
  const keepFrom = trace.at.findIndex((t) => t >= sample.at - WINDOW_SECONDS - 5);
  if (keepFrom > 0) for (const column of Object.values(trace)) column.splice(0, keepFrom);
}

// The whole window at first, then only what is new since the last call (browser time measures
// the gap, so the service's clock and the browser's need not agree).
async function loadHistory() {
  const gap = historyFetchedAt ? Math.ceil((Date.now() - historyFetchedAt) / 1000) + 3 : 0;
  const seconds = gap ? Math.min(WINDOW_SECONDS, gap) : WINDOW_SECONDS;
  historyFetchedAt = Date.now();
  const body = await apiJson(`/v1/gpus/history?seconds=${seconds}`);
  for (const gpu of body.gpus) {
    const key = traceKey(gpu.node, gpu.uuid);
    served.add(key);
    gpu.at.forEach((at, i) => {
      append(key, Object.fromEntries([["at", at], ...FIGURES.map((n) => [n, gpu[n][i]])]));
    });
  }
}

// Devices of other nodes: the page samples them itself from /v1/gpus.
function sampleOtherNodes(gpus) {
  for (const gpu of gpus) {
    const key = traceKey(gpu.node, gpu.uuid);
    if (served.has(key)) continue;
    append(key, { ...gpu, at: secondsOf(gpu.read_at) ?? now(), memory_foreign_bytes: null });
  }
}

function latestTime() {
  let latest = 0;
  for (const trace of traces.values()) latest = Math.max(latest, trace.at.at(-1) ?? 0);
  return latest || now();
}

// --- GPUs --------------------------------------------------------------------------------------
// The GPU's memory warning episode (/v1/gpus memory_warning: condition, since, message), or null.
function warningOf(gpu) {
  const warning = gpu.memory_warning;
  if (!warning) return null;
  const since = warning.since ? ` since ${new Date(warning.since).toLocaleTimeString()}` : "";
  return `memory warning${since}: ${warning.message}; no new task is placed here until it clears`;
}

function gpuCard(gpu, running, end) {
  const trace = traces.get(traceKey(gpu.node, gpu.uuid)) || emptyTrace();
  const foreign = trace.memory_foreign_bytes.at(-1);
  const warning = warningOf(gpu);
  return el("article", { class: `card gpu-card${warning ? " warned" : ""}`,
    "data-uuid": gpu.uuid, "data-index": gpu.index, "data-cap-bytes": gpu.memory_cap_bytes },
    el("header", { class: "gpu-head" },
      el("h3", {}, el("span", { class: "gpu-index" }, gpu.kind === "cpu" ? "CPU" : `GPU ${gpu.index}`), " ",
        el("span", { class: "gpu-name" }, gpu.name)),
      el("span", { class: "gpu-cap", title: "gpuscribe fills the device up to this cap" },
        `cap ${gib(gpu.memory_cap_bytes)} of ${gib(gpu.memory_total_bytes)}`)),
    warning && el("p", { class: "alert gpu-warning", role: "alert" }, `⚠ ${warning}`),
    !gpu.healthy && el("p", { class: "alert" }, `unhealthy: ${gpu.error || "unknown error"}`),
    gpu.healthy && gpu.draining && el("p", { class: "alert" }, "draining: no new tasks"),
    memoryFigures(gpu, foreign),
    el("div", { class: "plot" }),
    legend(foreign !== null && foreign !== undefined),
    sensors(gpu, trace, end),
    residentModels(gpu),
    runningList(running, gpu));
}

function memoryFigures(gpu, foreign) {
  const known = foreign !== null && foreign !== undefined;
  return el("p", { class: "figures" },
    el("span", {}, "used ", el("b", {}, bytes(gpu.memory_used_bytes))),
    known && el("span", {}, "gpuscribe ",
      el("b", {}, bytes(Math.max(0, gpu.memory_used_bytes - foreign)))),
    known && el("span", { class: foreign > 0 ? "foreign" : "" }, "other processes ",
      el("b", {}, bytes(foreign))),
    el("span", {}, "admitted ", el("b", {}, bytes(gpu.memory_reserved_bytes))),
    el("span", {}, "tasks ", el("b", {}, `${gpu.tasks_running} / ${gpu.max_tasks}`)));
}

function legend(foreignKnown) {
  const item = (cls, text) => el("span", {}, el("i", { class: `key ${cls}` }), text);
  return el("p", { class: "legend" },
    foreignKnown ? [item("area-gpuscribe", "gpuscribe"), item("area-foreign", "other processes")]
      : item("area-used", "used"),
    item("line-reserved", "admitted by the ledger"), item("line-cap", "cap"));
}

function sensors(gpu, trace, end) {
  const figure = (label, value, unit, column) => el("div", { class: "sensor" },
    el("span", { class: "muted" }, label),
    el("b", {}, value === null || value === undefined ? "–" : `${Math.round(value)} ${unit}`),
    sparkline(trace.at, trace[column], { end, windowSeconds: WINDOW_SECONDS }));
  return el("div", { class: "sensors" },
    figure("utilisation", gpu.utilization_percent, "%", "utilization_percent"),
    figure("temperature", gpu.temperature_c, "°C", "temperature_c"),
    figure("power", gpu.power_watts, "W", "power_watts"));
}

function residentModels(gpu) {
  const models = gpu.resident_models.length
    ? gpu.resident_models.map((name) => el("span", { class: "chip" }, name))
    : el("span", { class: "muted" }, "none");
  return el("p", { class: "models" }, el("span", { class: "muted" }, "resident models "), models);
}

function runningList(tasks, gpu) {
  const mine = tasks.filter((t) => t.gpu === gpu.index && (!gpu.node || t.node === gpu.node));
  if (!mine.length) return el("p", { class: "muted running-none" }, "no task running");
  return el("ul", { class: "running" }, mine.map((task) => el("li", { "data-task-id": task.id },
    taskLink(task), " ", el("span", { class: "chip" }, task.model), " ",
    el("span", { class: `chip priority-${task.priority}` }, task.priority), " ",
    progressBar(task.progress), " ", el("span", { class: "pct" }, percent(task.progress)),
    el("span", { class: "muted" }, ` ${duration(task.audio_seconds)} of audio`))));
}

function renderGpus(gpus, running) {
  shown = [gpus, running];
  const end = latestTime();
  const nodes = [...new Set(gpus.map((g) => g.node || ""))];
  const groups = nodes.map((node) => {
    const cards = gpus.filter((g) => (g.node || "") === node).map((g) => gpuCard(g, running, end));
    const grid = el("div", { class: "grid" }, cards);
    return nodes.length > 1 ? el("section", { class: "node" }, el("h3", {}, `node ${node}`), grid)
      : grid;
  });
  replace($("gpus"), gpus.length ? groups : el("p", { class: "muted" }, "no GPU"));
  for (const card of $("gpus").querySelectorAll(".gpu-card")) drawPlot(card, gpus, end);
}

function drawPlot(card, gpus, end) {
  const gpu = gpus.find((g) => g.uuid === card.dataset.uuid);
  const box = card.querySelector(".plot");
  const trace = traces.get(traceKey(gpu.node, gpu.uuid)) || emptyTrace();
  box.append(memoryPlot(trace, { width: Math.max(240, box.clientWidth),
    total: gpu.memory_total_bytes, windowSeconds: WINDOW_SECONDS, end }));
}

// --- queue, failures, calibration ------------------------------------------------------------
function renderSummary(queue, gpus) {
  const s = queue.state;
  const item = (label, value, cls = "") => el("span", { class: `stat ${cls}` }, el("b", {}, value),
    ` ${label}`);
  replace($("summary"),
    item(gpus.length === 1 ? "GPU" : "GPUs", gpus.length),
    item("running", s.running), item("queued", s.queued, s.queued ? "busy" : ""),
    item("completed", s.completed), item("failed", s.failed, s.failed ? "bad" : ""),
    item("cancelled", s.cancelled));
}

// A table; on a phone each row stacks its cells, each under its heading (`data-label`).
function table(headings, rows) {
  for (const row of rows) {
    [...row.children].forEach((cell, i) => cell.setAttribute("data-label", headings[i]));
  }
  return el("div", { class: "table-wrap" }, el("table", { class: "stack" },
    el("thead", {}, el("tr", {}, headings.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows)));
}

function queueRow(task) {
  return el("tr", { "data-task-id": task.id },
    el("td", {}, el("span", { class: `chip priority-${task.priority}` }, task.priority)),
    el("td", {}, taskLink(task), el("div", { class: "muted small" }, task.original_filename || "")),
    el("td", {}, task.model),
    el("td", { class: "num" }, duration(task.audio_seconds)),
    el("td", { class: "num wait" }, duration(now() - secondsOf(task.created_at))),
    el("td", { class: "why" }, task.wait_reason || "waiting for the scheduler's next pass"));
}

function renderQueue(queue, queued) {
  const counts = PRIORITIES.map((p) => el("span", { class: `chip priority-${p}` },
    `${p} ${queue.priority[p] ?? 0}`));
  const byAge = (a, b) => a.created_at.localeCompare(b.created_at);
  const rows = PRIORITIES.flatMap((p) => queued.filter((t) => t.priority === p).sort(byAge))
    .map(queueRow);
  const shown = queued.length < queue.queued
    ? el("p", { class: "muted" }, `the ${queued.length} newest of ${queue.queued} shown`) : null;
  replace($("queue"), el("p", { class: "chips" }, counts),
    rows.length ? table(["priority", "task", "model", "audio", "waiting", "why it waits"], rows)
      : el("p", { class: "muted" }, "nothing waits"),
    shown);
}

function failureRow(task) {
  return el("tr", { "data-task-id": task.id },
    el("td", { class: "nowrap" }, ago(task.finished_at)), el("td", {}, taskLink(task)),
    el("td", {}, task.model), el("td", { class: "why" }, task.error || "no reason recorded"));
}

function renderFailures(failed) {
  replace($("failures"), failed.length ? table(["when", "task", "model", "reason"],
    failed.map(failureRow)) : el("p", { class: "muted" }, "no failure"));
}

function calibrationRow(r) {
  const number = (value) => el("td", { class: "num" }, value);
  const ratio = r.mean_error_ratio === null ? "–" : r.mean_error_ratio.toFixed(2);
  return el("tr", {},
    el("td", {}, r.gpu_name), el("td", {}, r.model), el("td", {}, r.engine),
    el("td", {}, r.compute_type), number(r.beam_size), number(r.batch_size),
    number(r.sample_count), number(bytes(r.estimate.total_bytes)),
    el("td", {}, el("span", { class: `chip source-${r.estimate.source}` }, r.estimate.source)),
    number(bytes(r.estimate.working_bytes)), number(bytes(r.max_working_bytes)), number(ratio));
}

function renderCalibration(rows) {
  const headings = ["GPU", "model", "engine", "compute", "beam", "batch", "samples",
    "estimate", "source", "working: estimate", "working: measured max", "estimate / measured"];
  replace($("calibration"), rows.length ? table(headings, rows.map(calibrationRow))
    : el("p", { class: "muted" }, "no measurement yet"));
}

// --- upload ---------------------------------------------------------------------------------
async function loadModels() {
  const body = await apiJson("/v1/models");
  const select = $("upload-model");
  const chosen = select.value;
  replace(select, el("option", { value: "" }, "the service's default"),
    body.data.filter((m) => m.id !== "whisper-1").map((m) => el("option", { value: m.id }, m.id)));
  select.value = chosen;
}

async function upload(event) {
  event.preventDefault();
  const form = event.target;
  const data = new FormData(form);
  for (const [name, value] of [...data.entries()]) if (value === "") data.delete(name);
  const status = $("upload-status");
  form.querySelector("button").disabled = true;
  replace(status, "uploading…");
  try {
    const response = await api("/v1/tasks", { method: "POST", body: data });
    if (response.status !== 202) throw new ApiError(response.status, await errorMessage(response));
    const task = await response.json();
    replace(status, el("span", { class: "ok" }, "queued as task "), taskLink(task),
      el("span", {}, ` (${task.model}, ${task.priority})`));
    status.dataset.taskId = task.id;
    form.reset();
    refresh();
  } catch (error) {
    replace(status, el("span", { class: "error" }, error.message));
  } finally {
    form.querySelector("button").disabled = false;
  }
}

// --- polling ---------------------------------------------------------------------------------
async function refresh() {
  const [gpus, queue, running, queued] = await Promise.all([
    apiJson("/v1/gpus"), apiJson("/v1/queue"),
    apiJson("/v1/tasks?state=running&limit=1000"), apiJson("/v1/tasks?state=queued&limit=200"),
    loadHistory(),
  ]).then(([g, q, r, w]) => [g.gpus, q, r.tasks, w.tasks]);
  sampleOtherNodes(gpus);
  renderSummary(queue, gpus);
  renderGpus(gpus, running);
  renderQueue(queue, queued);
  $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
}

async function refreshSlow() {
  const [failed, calibration] = await Promise.all([
    apiJson("/v1/tasks?state=failed&limit=10"), apiJson("/v1/calibration"),
  ]);
  renderFailures(failed.tasks);
  renderCalibration(calibration.calibration);
}

function every(ms, job) {
  const run = async () => {
    if (!document.hidden) {
      try {
        await job();
        $("offline").hidden = true;
      } catch (error) {
        $("offline").hidden = false;
        $("offline").textContent = `cannot reach the service: ${error.message}`;
      }
    }
    setTimeout(run, ms);
  };
  run();
}

$("upload-form").addEventListener("submit", upload);
window.addEventListener("resize", () => { // a turned phone: the plots take the new width
  clearTimeout(redraw);
  redraw = setTimeout(() => shown && renderGpus(...shown), 150);
});
every(FAST_MS, refresh);
every(SLOW_MS, refreshSlow);
loadModels().catch(() => {});
