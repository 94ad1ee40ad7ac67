// Shared by gpuscribe's pages: calls to the JSON API (with the API key the person typed in,
// kept in this browser session), the key dialog, number and time formatting, and `el`, which
// builds DOM nodes with text content only (task names and errors come from users: never HTML).

const KEY_STORAGE = "gpuscribe.apiKey";
let pendingKey = null; // one dialog for every call that got a 401 at the same time

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

// fetch() with the key; a 401 asks for a key (once for all waiting calls) and tries again.
export async function api(path, options = {}) {
  for (;;) {
    const headers = new Headers(options.headers || {});
    const key = apiKey();
    if (key) headers.set("Authorization", `Bearer ${key}`);
    const response = await fetch(path, { ...options, headers });
    if (response.status !== 401) return response;
    await askForKey(key ? "The service refused that key." : "This service needs an API key.");
  }
}

export async function apiJson(path, options = {}) {
  const response = await api(path, options);
  if (!response.ok) throw new ApiError(response.status, await errorMessage(response));
  return response.json();
}

export async function errorMessage(response) {
  try {
    const body = await response.json();
    return body?.error?.message || `${response.status} ${response.statusText}`;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

function askForKey(message) {
  if (!pendingKey) {
    pendingKey = new Promise((resolve) => showKeyDialog(message, resolve)).finally(() => {
      pendingKey = null;
    });
  }
  return pendingKey;
}

function showKeyDialog(message, resolve) {
  const input = el("input", {
    id: "api-key-input", type: "password", name: "key", required: true,
    autocomplete: "off", placeholder: "API key", "aria-label": "API key",
  });
  const form = el("form", { method: "dialog", class: "key-form" },
    el("h2", {}, "API key"),
    el("p", { id: "api-key-message" }, message),
    el("p", { class: "muted" }, "It is kept in this browser tab's session only."),
    input,
    el("button", { type: "submit", id: "api-key-submit" }, "Use this key"));
  const dialog = el("dialog", { id: "api-key-dialog" }, form);
  dialog.addEventListener("cancel", (event) => event.preventDefault()); // no data without a key
  form.addEventListener("submit", () => {
    sessionStorage.setItem(KEY_STORAGE, input.value.trim());
    dialog.remove();
    resolve();
  });
  document.body.append(dialog);
  dialog.showModal();
  input.focus();
}

export function forgetKey() {
  sessionStorage.removeItem(KEY_STORAGE);
}

// --- formatting --------------------------------------------------------------------------------
const GIB = 1024 ** 3;
const MIB = 1024 ** 2;

export function bytes(value) {
  if (value === null || value === undefined) return "–";
  if (Math.abs(value) >= GIB) return `${(value / GIB).toFixed(1)} GiB`;
  return `${Math.round(value / MIB)} MiB`;
}

export function gib(value) {
  return `${(value / GIB).toFixed(1)} GiB`;
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "–";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${String(s % 60).padStart(2, "0")} s`;
  return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, "0")} min`;
}

export function secondsOf(iso) {
  return iso ? Date.parse(iso) / 1000 : null;
}

export function now() {
  return Date.now() / 1000;
}

export function ago(iso) {
  const at = secondsOf(iso);
  return at === null ? "–" : `${duration(now() - at)} ago`;
}

export function clock(iso) {
  if (!iso) return "–";
  return new Date(iso).toLocaleString(undefined, {
    month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit",
  });
}

export function timestamp(seconds) {
  const whole = Math.floor(seconds);
  const h = Math.floor(whole / 3600);
  const m = String(Math.floor((whole % 3600) / 60)).padStart(2, "0");
  const s = String(whole % 60).padStart(2, "0");
  const tenths = Math.floor((seconds - whole) * 10);
  return `${h ? `${h}:` : ""}${m}:${s}.${tenths}`;
}

export function percent(fraction) {
  return `${Math.round(100 * fraction)} %`;
}

export function shortId(id) {
  return id.length > 12 ? `${id.slice(0, 8)}…` : id;
}

export function taskLink(task) {
  return el("a", { href: `/tasks/${encodeURIComponent(task.id)}`, class: "task-link",
    title: task.id }, shortId(task.id));
}

export function stateBadge(state) {
  return el("span", { class: `badge state-${state}` }, state);
}

export function progressBar(fraction) {
  const bar = el("span", { class: "progress", role: "progressbar",
    "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": Math.round(100 * fraction) });
  bar.append(el("span", { style: `width:${(100 * fraction).toFixed(1)}%` }));
  return bar;
}

// Children that are null, undefined or false (from `condition && el(...)`) are left out.
export function replace(container, ...children) {
  const kept = children.flat().filter((c) => c !== null && c !== undefined && c !== false);
  container.replaceChildren(...kept);
}
