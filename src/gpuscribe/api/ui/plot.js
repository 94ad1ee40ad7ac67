// SVG plots drawn by hand (no library): a GPU's memory over the last minutes, and sparklines.
// A trace is the columnar shape of GET /v1/gpus/history: {at: [...], memory_used_bytes: [...],
// memory_foreign_bytes: [...], memory_reserved_bytes: [...], memory_cap_bytes: [...], ...}.

const SVG = "http://www.w3.org/2000/svg";
const GIB = 1024 ** 3;

function svg(tag, attributes = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

function niceStep(range, ticks) {
  const raw = range / ticks;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 4, 5, 10].map((m) => m * power).find((s) => s >= raw);
  return step || 10 * power;
}

function polyline(points) {
  return points.map(([x, y], i) => `${i ? "L" : "M"}${x.toFixed(1)},${y.toFixed(1)}`).join("");
}

// An area between `lower` and `upper` (arrays of values, same length as xs).
function area(xs, lower, upper, y) {
  const top = xs.map((x, i) => [x, y(upper[i])]);
  const bottom = xs.map((x, i) => [x, y(lower[i])]).reverse();
  return `${polyline([...top, ...bottom])}Z`;
}

// Step lines for ledger figures: the value holds until the next sample.
function steps(xs, values, y) {
  const points = [];
  xs.forEach((x, i) => {
    if (i) points.push([x, y(values[i - 1])]);
    points.push([x, y(values[i])]);
  });
  return polyline(points);
}

/**
 * The memory plot of one GPU: stacked areas (other processes, then gpuscribe's processes),
 * the ledger's admitted memory and the cap as lines, over `windowSeconds` ending at `end`.
 */
export function memoryPlot(trace, { width, height = 170, total, windowSeconds = 300, end }) {
  const margin = { left: 52, right: 8, top: 8, bottom: 22 };
  const plotW = Math.max(40, width - margin.left - margin.right);
  const plotH = height - margin.top - margin.bottom;
  const start = end - windowSeconds;
  const root = svg("svg", {
    class: "memory-plot", width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": "memory over the last minutes",
  });
  const x = (t) => margin.left + ((t - start) / windowSeconds) * plotW;
  const top = Math.max(total, ...trace.memory_used_bytes, 1);
  const y = (v) => margin.top + plotH - (Math.max(0, v) / top) * plotH;

  drawGrid(root, { margin, plotW, plotH, top, y, windowSeconds });
  const kept = trace.at.map((t, i) => i).filter((i) => trace.at[i] >= start - 2);
  if (kept.length >= 1) drawSeries(root, trace, kept, x, y);
  return root;
}

function drawGrid(root, { margin, plotW, plotH, top, y, windowSeconds }) {
  const step = niceStep(top / GIB, 4) * GIB;
  for (let v = 0; v <= top + 1; v += step) {
    root.append(svg("line", { class: "grid", x1: margin.left, x2: margin.left + plotW,
      y1: y(v), y2: y(v) }));
    root.append(svg("text", { class: "axis", x: margin.left - 6, y: y(v) + 4,
      "text-anchor": "end" }, `${Math.round(v / GIB)} GiB`));
  }
  const minutes = Math.round(windowSeconds / 60);
  const every = plotW / minutes < 70 ? 2 : 1; // a phone's narrow plot labels every other minute
  for (let m = 0; m <= minutes; m += every) {
    const px = margin.left + plotW - (m * 60 / windowSeconds) * plotW;
    const anchor = m === 0 ? "end" : m === minutes ? "start" : "middle";
    root.append(svg("text", { class: "axis", x: px, y: margin.top + plotH + 16,
      "text-anchor": anchor }, m === 0 ? "now" : `−${m} min`));
  }
}

function drawSeries(root, trace, kept, x, y) {
  const rows = kept.length === 1 ? [kept[0], kept[0]] : kept; // one sample: a 1 px wide sliver
  const xs = rows.map((i, n) => x(trace.at[i]) + (kept.length === 1 ? n : 0));
  const pick = (name) => rows.map((i) => trace[name][i]);
  const used = pick("memory_used_bytes");
  const foreign = pick("memory_foreign_bytes");
  const zero = used.map(() => 0);
  if (foreign.every((v) => v !== null && v !== undefined)) {
    root.append(svg("path", { class: "area-foreign", d: area(xs, zero, foreign, y) }));
    root.append(svg("path", { class: "area-gpuscribe", d: area(xs, foreign, used, y) }));
  } else { // a device of another node, sampled by this page: who holds what is unknown
    root.append(svg("path", { class: "area-used", d: area(xs, zero, used, y) }));
  }
  root.append(svg("path", { class: "line-reserved", d: steps(xs, pick("memory_reserved_bytes"), y) }));
  root.append(svg("path", { class: "line-cap", d: steps(xs, pick("memory_cap_bytes"), y) }));
}

/** A small line of one figure (utilisation, temperature, power) over the same window. */
export function sparkline(at, values, { width = 96, height = 26, windowSeconds = 300, end }) {
  const root = svg("svg", { class: "sparkline", width, height, viewBox: `0 0 ${width} ${height}`,
    "aria-hidden": "true" });
  const start = end - windowSeconds;
  const points = at.map((t, i) => [t, values[i]])
    .filter(([t, v]) => t >= start && v !== null && v !== undefined);
  if (points.length < 2) return root;
  const low = Math.min(...points.map(([, v]) => v));
  const high = Math.max(...points.map(([, v]) => v));
  const span = high - low;
  const xy = points.map(([t, v]) => [ // a flat line runs through the middle
    ((t - start) / windowSeconds) * width,
    span ? height - 2 - ((v - low) / span) * (height - 4) : height / 2,
  ]);
  root.append(svg("path", { class: "spark", d: polyline(xy) }));
  return root;
}
