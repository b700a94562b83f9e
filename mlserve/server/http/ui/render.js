// One card per model, built from the /status overview. `ui` carries what the page remembers
// between refreshes: the chosen drift feature per version and the histograms fetched for them.

import { bar, ciBar, fmtMs, fmtNum, fmtPct, h, histogram, sparkline } from "./charts.js";

const series = (v, name) => (v.series ? v.series[name] : null);
const now = (v, name) => (v.now ? v.now[name] : null);

function badge(text, kind, attrs = {}) {
  return h("span", { class: `badge ${kind}`, ...attrs }, text);
}

export function renderModel(model, access, ui) {
  const card = h("section", { class: "model", "data-model": model.name },
    h("h2", {}, model.name, " ",
      model.kind === "llm" ? badge("LLM", "kind") : null,
      model.serving ? badge(`serving v${model.serving}`, "ok", { "data-serving": model.serving }) : null,
      model.pinned ? badge(`pinned v${model.pinned}`, "warn", { "data-pinned": model.pinned }) : null,
      model.unloaded ? badge("unloaded", "muted") : null));
  if (model.reason) card.append(h("p", { class: "reason" }, model.reason));
  if (model.versions.length) card.append(versionsTable(model));
  const blocks = h("div", { class: "blocks" });
  if (model.traffic) blocks.append(trafficBlock(model));
  if (model.experiment) blocks.append(experimentBlock(model.experiment));
  if (model.optimize && model.optimize.length) blocks.append(optimizeBlock(model.optimize));
  const drifting = model.versions.filter((v) => v.drift);
  if (drifting.length) blocks.append(h("div", { class: "block drift" }, h("h3", {}, "Drift"),
    ...drifting.map((v) => driftBlock(model.name, v, ui))));
  if (model.kind === "llm") blocks.append(llmBlock(model));
  if (access.admin && model.versions.length) blocks.append(adminBlock(model, ui));
  card.append(blocks);
  return card;
}

function versionsTable(model) {
  const head = ["version", "state", "share", "load", "req/s", "p50", "p99", "errors", "batch", "queue", "drift"];
  const rows = model.versions.map((v) => h("tr", { "data-version": v.version },
    h("td", {}, `v${v.version}`),
    h("td", {}, badge(v.state, v.state === "READY" ? "ok" : v.state === "UNAVAILABLE" ? "bad" : "warn",
      { title: v.reason || null }), v.reason ? h("div", { class: "reason" }, v.reason) : null),
    h("td", {}, v.weight === null ? "–" : fmtPct(v.weight, 0)),
    h("td", {}, v.load_s === null ? "–" : `${fmtNum(v.load_s)} s`),
    h("td", { class: "num" }, fmtNum(now(v, "rps")), sparkline(series(v, "rps"), "requests/s")),
    h("td", { class: "num" }, fmtMs(now(v, "p50_s"))),
    h("td", { class: "num" }, fmtMs(now(v, "p99_s")), sparkline(series(v, "p99_s"), "p99 latency")),
    h("td", { class: "num" }, fmtPct(now(v, "error_rate")), sparkline(series(v, "error_rate"), "error rate")),
    h("td", { class: "num" }, fmtNum(now(v, "batch_size")), sparkline(series(v, "batch_size"), "batch rows")),
    h("td", { class: "num" }, String(v.queue_depth), sparkline(series(v, "queue_depth"), "queue depth")),
    h("td", {}, v.drift ? badge(v.drift.status, driftKind(v.drift.status)) : "–")));
  return h("table", { class: "versions" }, h("thead", {}, h("tr", {}, head.map((t) => h("th", {}, t)))),
    h("tbody", {}, rows));
}

const driftKind = (status) => ({ ok: "ok", warn: "warn", alert: "bad" })[status] || "muted";

function trafficBlock(model) {
  const t = model.traffic;
  const block = h("div", { class: "block traffic" }, h("h3", {}, "Traffic"));
  const split = Object.entries(t.split || {});
  const total = split.reduce((a, [, w]) => a + w, 0);
  if (split.length) {
    const stacked = h("div", { class: "split" });
    split.forEach(([version, weight], i) => {
      const seg = h("span", { class: `seg c${i % 6}`, "data-version": version },
        `v${version} ${fmtPct(weight / total, 0)}`);
      seg.style.flexGrow = String(weight);
      stacked.append(seg);
    });
    block.append(stacked, h("p", { class: "muted" }, `split set by ${t.source}; stable v${t.stable ?? "–"}`,
      t.sticky_key ? `; sticky on ${t.sticky_key}` : ""));
  } else {
    block.append(h("p", { class: "muted" }, `no split: every unversioned request goes to v${model.serving ?? "–"}`));
  }
  if (t.error) block.append(h("p", { class: "error" }, t.error));
  if (t.rollout) block.append(rolloutLine(t.rollout));
  const breakers = Object.entries(t.breakers || {});
  if (breakers.length) block.append(h("p", { class: "breakers" }, "breakers: ", breakers.map(([v, b]) =>
    badge(`v${v} ${b.state}`, b.state === "closed" ? "ok" : b.state === "open" ? "bad" : "warn",
      { title: `error rate ${fmtPct(b.error_rate)}, opened ${b.times_opened}×` }))));
  if (t.shadow) {
    const s = t.shadow;
    block.append(h("p", { class: "shadow" }, `shadow v${s.version} (${s.percent}%): agreement `,
      h("b", {}, fmtPct(s.agreement)), `, mean |diff| ${fmtNum(s.mean_abs_diff)}, `,
      `${s.compared} compared, ${s.dropped} dropped, ${s.failed} failed`));
  }
  return block;
}

function rolloutLine(r) {
  const kind = { running: "warn", promoted: "ok", rolled_back: "bad", cancelled: "muted" }[r.status] || "muted";
  return h("div", { class: "rollout" }, "rollout of ", h("b", {}, `v${r.version}`), ` over v${r.stable}: `,
    badge(r.status.replace("_", " "), kind), ` step ${r.step + 1}/${r.steps.length} at ${r.percent}% `,
    bar(r.percent / 100, "rollout-bar"), r.reason ? h("span", { class: "muted" }, ` ${r.reason}`) : null);
}

const RUN_KIND = { published: "ok", no_winner: "muted", failed: "bad", cancelled: "muted" };

function optimizeBlock(runs) {
  // Automatic optimization ([optimize] on_new_version): the newest runs, the reason when nothing was published.
  return h("div", { class: "block optimize" }, h("h3", {}, "Automatic optimization"),
    ...runs.slice(0, 5).map((r) => h("div", { "data-source-version": String(r.source_version) },
      `v${r.source_version} `, badge(r.state.replace("_", " "), RUN_KIND[r.state] || "warn"),
      r.published_version ? ` → v${r.published_version} (${r.winner})` : "",
      r.reason ? h("span", { class: "muted" }, ` ${r.reason}`) : null)));
}

function experimentBlock(exp) {
  const rows = Object.entries(exp.versions);
  const bounds = rows.flatMap(([, r]) => [r.ci?.[0], r.ci?.[1], r.mean]).filter((x) => x !== null && x !== undefined);
  const lo = Math.min(0, ...bounds), hi = Math.max(...bounds, lo + 1e-9);
  const head = ["version", "requests", "outcomes", "mean (CI)", "", "lift", "p-value", "decision"];
  return h("div", { class: "block experiment" }, h("h3", {}, `Experiment (${exp.outcome}, control v${exp.control})`),
    h("table", {}, h("thead", {}, h("tr", {}, head.map((t) => h("th", {}, t)))),
      h("tbody", {}, rows.map(([v, r]) => h("tr", { "data-version": v },
        h("td", {}, `v${v}`), h("td", { class: "num" }, String(r.requests)), h("td", { class: "num" }, String(r.outcomes)),
        h("td", { class: "num" }, `${fmtNum(r.mean)} [${fmtNum(r.ci?.[0])}, ${fmtNum(r.ci?.[1])}]`),
        h("td", {}, ciBar(r.mean, r.ci, lo, hi)),
        h("td", { class: "num" }, r.lift === undefined ? "control" : fmtPct(r.lift)),
        h("td", { class: "num" }, r.p_value === undefined ? "" : fmtNum(r.p_value)),
        h("td", {}, r.decision ? badge(r.decision.replace("_", " "), r.decision === "continue" ? "muted" : "ok",
          { title: `always-valid p-value ${fmtNum(r.sequential_p_value)}` }) : ""))))));
}

function driftBlock(model, v, ui) {
  const d = v.drift;
  const key = `${model}/${v.version}`;
  const alertAt = d.thresholds.psi_alert;
  const scale = Math.max(alertAt * 2, ...d.worst.map((f) => f.psi));
  const chooser = h("select", { "data-drift": key }, d.features.map((f) =>
    h("option", { value: f, selected: ui.features.get(key) === f }, f)));
  const hist = ui.histograms.get(key);
  const status = badge(d.status, driftKind(d.status), { class: `badge ${driftKind(d.status)} drift-status`,
    "data-status": d.status });
  if (!d.features.length) {  // no frozen reference yet: one line says how far it got
    return h("p", { class: "drift-version", "data-version": v.version }, `v${v.version} `, status,
      h("span", { class: "muted" }, ` ${d.reference.source} (${d.reference.rows} so far)`));
  }
  return h("div", { class: "drift-version", "data-version": v.version },
    h("p", {}, `v${v.version} `, status, h("span", { class: "muted" }, ` ${d.window_rows} live rows vs ${d.reference.source}`)),
    d.status === "collecting" ? null :  // PSI over too few live rows is not judged, so not drawn
    h("table", { class: "psi" }, h("tbody", {}, d.worst.slice(0, 5).map((f) => h("tr", { "data-feature": f.name },
      h("td", {}, f.name), h("td", { class: "num" }, `PSI ${fmtNum(f.psi)}`),
      h("td", {}, bar(f.psi / scale, driftKind(f.status), [d.thresholds.psi_warn / scale, alertAt / scale])))))),
    d.features.length ? h("div", { class: "histogram" }, h("label", {}, "reference vs live: ", chooser),
      hist ? histogram(hist) : null,
      h("span", { class: "legend" }, h("i", { class: "ref" }), " reference ", h("i", { class: "live" }), " live")) : null);
}

function llmBlock(model) {
  const rows = model.versions.filter((v) => v.now && v.now.kv_total);
  return h("div", { class: "block llm" }, h("h3", {}, "Generation"), rows.length ? rows.map((v) => h("p", {},
    `v${v.version} KV cache `, bar(v.now.kv_used / (v.now.kv_total || 1), "kv"),
    ` ${v.now.kv_used}/${v.now.kv_total} blocks, running ${v.now.llm_running}, waiting ${v.now.llm_waiting}, `,
    `TTFT p50 ${fmtMs(v.now.ttft_p50_s)} `, sparkline(series(v, "ttft_p50_s"), "TTFT p50"),
    ` ITL p50 ${fmtMs(v.now.itl_p50_s)} `, sparkline(series(v, "itl_p50_s"), "ITL p50"))) :
    h("p", { class: "muted" }, "no engine steps yet"));
}

function adminBlock(model, ui) {
  const ready = model.versions.filter((v) => v.state === "READY").map((v) => v.version);
  const split = model.traffic?.split || {};
  const field = (v) => h("input", { type: "number", min: 0, step: 1, "data-split-version": v,
    value: ui.splitDraft.get(`${model.name}/${v}`) ?? split[v] ?? 0 });
  const act = (action, text, extra = {}) => h("button", { "data-action": action, "data-model": model.name, ...extra }, text);
  return h("div", { class: "block admin" }, h("h3", {}, "Actions"),
    h("p", {}, act("rollback", "Roll back"), " ",
      h("select", { "data-pin-model": model.name }, ready.map((v) => h("option", { value: v }, `v${v}`))), " ",
      act("pin", "Pin"), " ", act("unpin", "Unpin", { disabled: !model.pinned })),
    h("p", { class: "split-form" }, "split: ", ready.map((v) => h("label", {}, `v${v} `, field(v))), " ",
      act("split", "Set split")));
}
