// The status page: reads /status every few seconds and renders one card per model. With API keys
// on it asks for a key and keeps it in sessionStorage only (gone when the tab closes). Admin
// actions call the existing /admin routes; the server decides, the page only hides buttons a key
// could not use.

import { h } from "./charts.js";
import { renderModel } from "./render.js";

const KEY = "mlserve.key";
const REFRESH_MS = 3000;
const HISTOGRAM_MS = 15000;
const ui = { features: new Map(), histograms: new Map(), splitDraft: new Map(), auth: false, timer: null, last: null };
const $ = (id) => document.getElementById(id);

async function api(method, path, body) {
  const headers = {};
  const key = sessionStorage.getItem(KEY);
  if (key) headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, { method, headers, cache: "no-store",
    body: body === undefined ? undefined : JSON.stringify(body) });
  let data = null;
  try { data = await resp.json(); } catch (err) { data = null; }
  return { ok: resp.ok, status: resp.status, data };
}

function say(text, kind = "info") {
  const line = $("message");
  line.textContent = text;
  line.className = `message ${kind}`;
}

function showPrompt(reason) {
  $("login").hidden = false;
  $("login-reason").textContent = reason || "This server needs an API key to show its status.";
  $("key").focus();
}

async function refresh() {
  clearTimeout(ui.timer);
  ui.timer = setTimeout(refresh, REFRESH_MS);
  if (ui.auth && !sessionStorage.getItem(KEY)) { clearTimeout(ui.timer); showPrompt(); return; }
  let result;
  try { result = await api("GET", "/status"); } catch (err) { setConnection(false, "server unreachable"); return; }
  if (result.status === 401) {
    clearTimeout(ui.timer);
    sessionStorage.removeItem(KEY);
    showPrompt(result.data?.error);
    return;
  }
  if (!result.ok) { setConnection(false, result.data?.error || `HTTP ${result.status}`); return; }
  $("login").hidden = true;
  setConnection(true);
  ui.last = result.data;
  await fetchHistograms(result.data);
  render(result.data);
}

function setConnection(ok, why) {
  const el = $("conn");
  el.textContent = ok ? `updated ${new Date().toLocaleTimeString()}` : why;
  el.className = ok ? "muted" : "error";
}

// Histograms are fetched again only where the live window changed size, another feature was
// chosen, or HISTOGRAM_MS passed (a full count window slides at a constant size), so an idle
// server costs one request per refresh, not one per version.
async function fetchHistograms(overview) {
  const wanted = [];
  for (const model of overview.models) {
    for (const v of model.versions) {
      if (!v.drift || !v.drift.features.length) continue;
      const key = `${model.name}/${v.version}`;
      if (!v.drift.features.includes(ui.features.get(key))) ui.features.set(key, v.drift.worst[0]?.name || v.drift.features[0]);
      const seen = ui.histograms.get(key);
      if (seen && seen.feature === ui.features.get(key) && seen.rows === v.drift.window_rows &&
          Date.now() - seen.at < HISTOGRAM_MS) continue;
      const path = `/status/models/${encodeURIComponent(model.name)}/versions/${v.version}/histogram` +
        `?feature=${encodeURIComponent(ui.features.get(key))}`;
      wanted.push(api("GET", path).then((result) => {
        if (result.ok) ui.histograms.set(key, { ...result.data, rows: v.drift.window_rows, at: Date.now() });
      }));
    }
  }
  await Promise.all(wanted);
}

function render(overview) {
  const s = overview.server, access = overview.access;
  $("version").textContent = `mlserve ${s.version}`;
  $("ready").textContent = s.ready ? "ready" : "not ready";
  $("ready").className = `badge ${s.ready ? "ok" : "bad"}`;
  $("who").textContent = access.auth ? `key ${access.key}${access.admin ? " (admin)" : ""}` : "";
  $("logout").hidden = !access.auth;
  const editing = document.activeElement && $("models").contains(document.activeElement) &&
    document.activeElement.matches("input, select");
  if (editing) return;  // the next refresh renders; typing is not interrupted
  $("models").replaceChildren(...overview.models.map((m) => renderModel(m, access, ui)));
  if (!overview.models.length) $("models").append(h("p", { class: "muted" }, "No models in the repository."));
}

async function act(button) {
  const model = button.dataset.model, action = button.dataset.action;
  const card = button.closest("section.model");
  const base = `/admin/models/${encodeURIComponent(model)}`;
  let result;
  if (action === "rollback" || action === "unpin") result = await api("POST", `${base}/${action}`);
  else if (action === "pin") result = await api("POST", `${base}/pin`,
    { version: Number(card.querySelector("select[data-pin-model]").value) });
  else if (action === "split") {
    const split = {};
    for (const input of card.querySelectorAll("input[data-split-version]")) split[input.dataset.splitVersion] = Number(input.value);
    result = await api("PUT", `${base}/traffic`, { split });
    for (const v of Object.keys(split)) ui.splitDraft.delete(`${model}/${v}`);
  }
  if (!result) return;
  if (result.ok) say(`${model}: ${action} done${result.data?.serving ? `, serving v${result.data.serving}` : ""}`, "ok");
  else say(`${model}: ${action} refused (${result.status}): ${result.data?.error || "no reason given"}`, "error");
  await refresh();
}

function wire() {
  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("key").value.trim();
    if (!key) return;
    sessionStorage.setItem(KEY, key);
    $("key").value = "";
    refresh();
  });
  $("logout").addEventListener("click", () => { sessionStorage.removeItem(KEY); $("models").replaceChildren(); refresh(); });
  $("models").addEventListener("click", (event) => {
    const button = event.target.closest("button[data-action]");
    if (button) act(button);
  });
  $("models").addEventListener("change", (event) => {
    const select = event.target.closest("select[data-drift]");
    if (!select) return;
    ui.features.set(select.dataset.drift, select.value);
    ui.histograms.delete(select.dataset.drift);
    select.blur();
    refresh();
  });
  $("models").addEventListener("input", (event) => {
    const input = event.target.closest("input[data-split-version]");
    if (input) ui.splitDraft.set(`${input.closest("section.model").dataset.model}/${input.dataset.splitVersion}`, input.value);
  });
}

async function start() {
  wire();
  const session = await api("GET", "/ui/session");
  ui.auth = Boolean(session.data?.auth);
  refresh();
}

start();
