// Small SVG and DOM pictures: sparklines, share bars, confidence intervals, histograms.
// Everything is built with DOM calls (never innerHTML), so text from the server stays text.

const SVG = "http://www.w3.org/2000/svg";

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") el.className = value;
    else if (name === "text") el.textContent = value;
    else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function svg(tag, attrs = {}) {
  const el = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) el.setAttribute(name, String(value));
  return el;
}

// A line over the recent points; null values (nothing happened) break the line.
export function sparkline(values, label) {
  const width = 90, height = 22, pad = 2;
  const root = svg("svg", { class: "spark", viewBox: `0 0 ${width} ${height}`, width, height, role: "img" });
  root.append(Object.assign(svg("title"), { textContent: label }));
  const finite = (values || []).filter((v) => v !== null && Number.isFinite(v));
  if (finite.length < 2) return root;
  const max = Math.max(...finite), min = Math.min(0, ...finite);
  const span = max - min || 1;
  const step = (width - 2 * pad) / Math.max(values.length - 1, 1);
  let run = [];
  const flush = () => {
    if (run.length > 1) root.append(svg("polyline", { points: run.join(" ") }));
    else if (run.length === 1) {
      const [x, y] = run[0].split(",");
      root.append(svg("circle", { cx: x, cy: y, r: 1.2 }));
    }
    run = [];
  };
  values.forEach((v, i) => {
    if (v === null || !Number.isFinite(v)) return flush();
    const x = pad + i * step, y = height - pad - ((v - min) / span) * (height - 2 * pad);
    run.push(`${x.toFixed(1)},${y.toFixed(1)}`);
  });
  flush();
  return root;
}

// A horizontal bar filled to `fraction` (0..1), with optional threshold marks.
export function bar(fraction, cls = "", marks = []) {
  const outer = h("span", { class: `bar ${cls}` });
  const fill = h("span", { class: "fill" });
  fill.style.width = `${Math.max(0, Math.min(1, fraction || 0)) * 100}%`;
  outer.append(fill);
  for (const m of marks) {
    const tick = h("span", { class: "mark" });
    tick.style.left = `${Math.max(0, Math.min(1, m)) * 100}%`;
    outer.append(tick);
  }
  return outer;
}

// Mean with its confidence interval on a shared scale [lo, hi].
export function ciBar(mean, ci, lo, hi) {
  const outer = h("span", { class: "ci" });
  const span = hi - lo || 1;
  const pos = (v) => `${((v - lo) / span) * 100}%`;
  if (ci && ci[0] !== null && ci[1] !== null) {
    const range = h("span", { class: "range" });
    range.style.left = pos(ci[0]);
    range.style.width = `${((ci[1] - ci[0]) / span) * 100}%`;
    outer.append(range);
  }
  if (mean !== null && mean !== undefined) {
    const dot = h("span", { class: "dot" });
    dot.style.left = pos(mean);
    outer.append(dot);
  }
  return outer;
}

// Reference vs live share per bin, side by side.
export function histogram(hist) {
  const width = 300, height = 90, pad = 14;
  const root = svg("svg", { class: "hist", viewBox: `0 0 ${width} ${height}`, width, height, role: "img" });
  const shares = (counts) => {
    const total = counts.reduce((a, b) => a + b, 0) || 1;
    return counts.map((c) => c / total);
  };
  const ref = shares(hist.reference), live = shares(hist.live);
  const top = Math.max(...ref, ...live, 0.01);
  const slot = (width - pad) / ref.length;
  ref.forEach((r, i) => {
    const barW = slot / 2 - 1;
    for (const [j, share, cls] of [[0, r, "ref"], [1, live[i], "live"]]) {
      const barH = (share / top) * (height - pad);
      root.append(svg("rect", { class: cls, x: pad / 2 + i * slot + j * (barW + 1), y: height - pad - barH,
        width: barW, height: Math.max(barH, 0.5) }));
    }
  });
  const ends = [hist.edges[0], hist.edges[hist.edges.length - 1]];
  if (ends[0] !== undefined) {
    root.append(Object.assign(svg("text", { x: pad / 2 + slot, y: height - 2, class: "axis" }),
      { textContent: fmtNum(ends[0]) }));
    root.append(Object.assign(svg("text", { x: width - slot - pad, y: height - 2, class: "axis" }),
      { textContent: fmtNum(ends[1]) }));
  }
  return root;
}

export function fmtNum(v, digits = 3) {
  if (v === null || v === undefined || !Number.isFinite(v)) return "–";
  if (Math.abs(v) >= 1000) return v.toFixed(0);
  return Number(v.toPrecision(digits)).toString();
}

export function fmtMs(seconds) {
  return seconds === null || seconds === undefined ? "–" : `${fmtNum(seconds * 1000)} ms`;
}

export function fmtPct(fraction, digits = 1) {
  return fraction === null || fraction === undefined ? "–" : `${(fraction * 100).toFixed(digits)}%`;
}
