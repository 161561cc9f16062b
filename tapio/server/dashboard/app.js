// Tapio dashboard: polls the server's JSON API and redraws. No build step, nothing from a CDN.
// Every value from the server goes into the page as text (textContent), never as markup.
"use strict";

const POLL_MS = 2000;
const GROUP_LIMIT = 50;
// The names (event types, group kinds, drop stages) come from the server: /api/v1/vocabulary.
const vocabulary = { event_types: [], group_kinds: [], drop_stages: [] };

const view = { kind: null, group: null, groupCounts: {}, lastOk: 0, failing: null, polling: false };

// A server with tokens wants one on /api/*: the page keeps it in this tab's sessionStorage (gone
// when the tab closes) and sends it as `Authorization: Bearer`. A link may hand it over as
// #token=TOKEN: the page stores it and takes it out of the address bar (a fragment never reaches
// the server).
const TOKEN_KEY = "tapio.token";

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

class NeedToken extends Error {
  constructor(message) { super(message); this.name = "NeedToken"; }
}

function takeTokenFromHash() {
  const params = new URLSearchParams(location.hash.slice(1));
  const given = params.get("token");
  if (given === null) return;
  if (given) sessionStorage.setItem(TOKEN_KEY, given);
  params.delete("token");
  const hash = params.toString();
  history.replaceState(null, "", hash ? `#${hash}` : location.pathname);
}

function showLogin(message) {
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("logout").hidden = true;
  $("login-token").focus();
}

function signIn(event) {
  event.preventDefault();
  const given = $("login-token").value.trim();
  if (!given) return;
  sessionStorage.setItem(TOKEN_KEY, given);
  $("login-token").value = "";
  $("login").hidden = true;
  if (!view.polling) poll();
}

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  showLogin("signed out");
}

function kinds() { return vocabulary.group_kinds.map((k) => k.kind); }

// a kind in words: underscores as spaces, OOM in capitals
function kindName(kind) {
  return String(kind).replace(/_/g, " ").replace(/\boom\b/g, "OOM");
}

async function loadVocabulary() {
  const result = await getJSON("/api/v1/vocabulary");
  if (!result.ok || !result.body) throw new Error(`vocabulary: the server answered ${result.status}`);
  Object.assign(vocabulary, result.body);
}

// -- small helpers --------------------------------------------------------------------------
function $(id) { return document.getElementById(id); }

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = String(value);
    else if (key === "data") for (const [k, v] of Object.entries(value)) node.dataset[k] = String(v);
    else node.setAttribute(key, String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  return node;
}

function count(n) {
  return n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US");
}

function rate(n) {
  if (n === null || n === undefined) return "–";
  if (n >= 100) return Math.round(n).toLocaleString("en-US");
  if (n >= 10) return n.toFixed(1);
  return n.toFixed(n === 0 ? 0 : 2);
}

function nsToDate(ns) { return ns ? new Date(Number(ns) / 1e6) : null; }

function ago(date) {
  if (!date) return "–";
  const s = Math.max(0, (Date.now() - date.getTime()) / 1000);
  if (s < 60) return `${Math.floor(s)}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m ago`;
  return `${Math.floor(s / 86400)}d ago`;
}

function clock(date) {
  return date ? date.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z") : "–";
}

function duration(ns) {
  if (!ns || ns < 0) return "–";
  const ms = ns / 1e6;
  if (ms < 1000) return `${ms.toFixed(ms < 10 ? 1 : 0)} ms`;
  const s = ms / 1000;
  return s < 120 ? `${s.toFixed(1)} s` : `${(s / 60).toFixed(1)} min`;
}

async function getJSON(path) {
  const headers = { accept: "application/json" };
  if (token()) headers.authorization = `Bearer ${token()}`;
  const response = await fetch(path, { cache: "no-store", headers });
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (response.status === 401 || response.status === 403) {
    throw new NeedToken(body && body.error ? body.error : `the server answered ${response.status}`);
  }
  return { ok: response.ok, status: response.status, body };
}

// -- header: readiness and the totals -------------------------------------------------------
function drawReady(result) {
  const pill = $("status");
  if (!result) {
    pill.className = "pill pill-unknown";
    pill.textContent = "server unreachable";
    pill.title = "";
    return;
  }
  const ready = result.body && result.body.ready;
  pill.className = ready ? "pill pill-ok" : "pill pill-bad";
  pill.textContent = ready ? "ready" : "not ready";
  pill.title = ready ? "all checks pass" : (result.body && result.body.not_ready || []).join("\n");
}

function drawStats(stats) {
  const drops = stats.drops || {};
  const dropTotal = Object.values(drops).reduce((a, b) => a + (b || 0), 0);
  $("kpi-rate").textContent = rate(stats.events.per_second);
  $("kpi-events").textContent = count(stats.events.received);
  $("kpi-collectors").textContent = `${stats.collectors.connected}/${stats.collectors.known}`;
  const groups = stats.groups ? Object.values(stats.groups).reduce((a, b) => a + b, 0) : null;
  $("kpi-groups").textContent = count(groups);
  $("kpi-drops").textContent = count(dropTotal);
  $("kpi-drops").className = dropTotal > 0 ? "bad" : "";
  view.groupCounts = stats.groups || {};

  const line = $("drops");
  line.replaceChildren("dropped by stage: ");
  vocabulary.drop_stages.forEach((stage, i) => {
    if (i) line.append(" · ");
    const value = drops[stage];
    line.append(`${stage} `, el("b", { class: value > 0 ? "bad" : "", text: value === null || value === undefined ? "n/a" : count(value) }));
  });
  drawRates(stats);
  drawKinds();
}

// -- rates: a tile per event type with a sparkline of the last two minutes -------------------
function drawRates(stats) {
  const history = stats.history || [];
  const now = stats.events.per_second_by_type || {};
  const totals = stats.events.by_type || {};
  const known = vocabulary.event_types;
  const types = known.concat(Object.keys(totals).filter((t) => !known.includes(t)));
  const peak = Math.max(1, ...history.flatMap((h) => Object.values(h.rates)));
  const box = $("rates");
  box.replaceChildren(...types.map((type) => {
    const current = now[type] || 0;
    const tile = el("div", { class: current > 0 ? "rate" : "rate idle", data: { type } },
      el("span", { class: "total", text: `${count(totals[type] || 0)} total` }),
      el("div", { class: "name", text: type }),
      el("div", { class: "value" }, rate(current), el("small", { text: "/s" })));
    tile.append(sparkline(history.map((h) => h.rates[type] || 0), peak));
    return tile;
  }));
}

function sparkline(values, peak) {
  const w = 160, h = 34;
  const chart = svg("svg", { viewBox: `0 0 ${w} ${h}`, preserveAspectRatio: "none", "aria-hidden": "true" });
  if (values.length < 2) return chart;
  const step = w / (values.length - 1);
  const points = values.map((v, i) => `${(i * step).toFixed(1)},${(h - 2 - (v / peak) * (h - 4)).toFixed(1)}`);
  chart.append(svg("polygon", { points: `0,${h} ${points.join(" ")} ${w},${h}`, fill: "rgba(94,196,255,0.15)" }));
  chart.append(svg("polyline", { points: points.join(" "), fill: "none", stroke: "#5ec4ff", "stroke-width": 1.5 }));
  return chart;
}

// -- collectors ------------------------------------------------------------------------------
function drawCollectors(body) {
  const rows = (body.collectors || []).map((c) => {
    const since = c.connected_since ? new Date(c.connected_since) : null;
    const drop = (n) => el("td", { class: n > 0 ? "num bad" : "num", text: count(n) });
    return el("tr", { data: { collector: c.id } },
      el("td", {}, el("span", { class: c.connected ? "dot on" : "dot", title: c.connected ? "connected" : "disconnected" })),
      el("td", { class: "mono nowrap", text: c.id }),
      el("td", { class: "nowrap", text: c.node || "–" }),
      el("td", { class: "mono muted nowrap", text: (c.peer || "–").replace(/^ipv[46]:/, "") }),
      el("td", { title: since ? clock(since) : "", text: c.connected ? ago(since) : `gone, last seen ${ago(c.last_seen ? new Date(c.last_seen) : null)}` }),
      el("td", { class: "num", text: rate(c.events_per_second) }),
      el("td", { class: "num", text: count(c.events) }),
      drop(c.drops.kernel), drop(c.drops.processor), drop(c.drops.buffer));
  });
  const tbody = $("collectors-body");
  if (rows.length) tbody.replaceChildren(...rows);
  else tbody.replaceChildren(el("tr", {}, el("td", { colspan: 10, class: "muted", text: "no collector yet" })));
}

// -- groups ----------------------------------------------------------------------------------
function drawKinds() {
  const nav = $("kinds");
  const total = Object.values(view.groupCounts).reduce((a, b) => a + b, 0);
  const chip = (kind, label, n) => {
    const button = el("button", { type: "button", "aria-pressed": view.kind === kind ? "true" : "false", data: { kind: kind || "all" } },
      label, el("span", { class: "count", text: count(n) }));
    button.addEventListener("click", () => { view.kind = kind; saveHash(); drawKinds(); refreshGroups(); });
    return button;
  };
  nav.replaceChildren(chip(null, "all", total),
    ...kinds().map((kind) => chip(kind, kindName(kind), view.groupCounts[kind] || 0)));
}

function groupItem(g) {
  const start = nsToDate(g.start_ns);
  const item = el("li", { class: `group kind-${g.kind}${String(g.id) === view.group ? " selected" : ""}`, tabindex: 0,
    data: { id: g.id, kind: g.kind } },
    el("span", { class: "when", title: clock(start), text: ago(start) }),
    el("span", { class: "summary", text: g.summary || g.kind }),
    el("span", { class: "meta" },
      el("span", { class: `badge kind kind-${g.kind}`, text: kindName(g.kind) }),
      g.severity ? el("span", { class: `badge sev-${String(g.severity).toLowerCase()}`, text: g.severity }) : null,
      g.status === "open" ? el("span", { class: "badge open", text: "ongoing" }) : null,
      el("span", { text: g.node || g.collector_id || "" }),
      el("span", { text: `${(g.event_ids || []).length} events` }),
      g.confidence !== undefined && g.confidence !== null ? el("span", { text: `confidence ${Math.round(g.confidence * 100)}%` }) : null));
  const open = () => { view.group = String(g.id); saveHash(); openGroup(g.id); markSelected(); };
  item.addEventListener("click", open);
  item.addEventListener("keydown", (e) => { if (e.key === "Enter") open(); });
  return item;
}

function markSelected() {
  for (const li of document.querySelectorAll("#groups .group")) {
    li.classList.toggle("selected", li.dataset.id === view.group);
  }
}

function drawGroups(result) {
  const list = $("groups");
  const empty = $("groups-empty");
  if (!result.ok) {
    list.replaceChildren();
    empty.hidden = false;
    empty.textContent = (result.body && result.body.error) || `the server answered ${result.status}`;
    return;
  }
  const groups = result.body.groups || [];
  list.replaceChildren(...groups.map(groupItem));
  empty.hidden = groups.length > 0;
  empty.textContent = view.kind ? `no ${kindName(view.kind)} group yet` : "no group yet";
}

async function refreshGroups() {
  const query = new URLSearchParams({ limit: String(GROUP_LIMIT) });
  if (view.kind) query.set("kind", view.kind);
  drawGroups(await getJSON(`/api/v1/groups?${query}`));
}

// -- one group: its facts, trace id and events -----------------------------------------------
function eventDetail(e) {
  const d = e[e.type] || {};
  switch (e.type) {
    case "exec": return [d.filename, ...(d.args || []).slice(1)].filter(Boolean).join(" ");
    case "exit": return d.signal ? `killed by ${d.signal_name || d.signal}${d.core_dumped ? " (core dumped)" : ""}` : `exit code ${d.exit_code}`;
    case "signal": return `${d.signal_name || d.signal} from pid ${d.sender_pid} (${d.sender_comm || "?"})`;
    case "oom_kill": return `killed by the OOM killer in ${d.memcg_name || "?"}${d.memcg_limit_bytes ? `, limit ${count(d.memcg_limit_bytes)} B` : ""}`;
    case "throttled": return "held back by the cgroup budget: " + ["exec", "tcp_connect", "tcp_accept", "tcp_close"]
      .filter((t) => d[t]).map((t) => `${count(d[t])} ${t}`).join(", ");
    default:
      if (e.type && e.type.startsWith("tcp")) {
        const result = d.result && d.result !== "ok" ? ` ${d.result}` : "";
        return `${d.saddr}:${d.sport} → ${d.daddr}:${d.dport}${result}`;
      }
      return "";
  }
}

function attributeText(value) {
  let text;
  if (Array.isArray(value) && value.every((v) => typeof v !== "object" || v === null)) text = value.join(", ");
  else if (value !== null && typeof value === "object") text = JSON.stringify(value);
  else text = String(value);
  return text.length > 300 ? `${text.slice(0, 300)}…` : text;
}

function facts(pairs) {
  const dl = el("dl", { class: "facts" });
  for (const [name, value] of pairs) {
    if (value === undefined || value === null || value === "") continue;
    dl.append(el("dt", { text: name }), value instanceof Node ? el("dd", {}, value) : el("dd", { text: value }));
  }
  return dl;
}

async function openGroup(id) {
  const panel = $("detail");
  const body = $("detail-body");
  panel.hidden = false;
  $("detail-title").textContent = "loading…";
  body.replaceChildren();
  const result = await getJSON(`/api/v1/groups/${encodeURIComponent(id)}`);
  if (!result.ok) {
    $("detail-title").textContent = `group ${id}`;
    body.replaceChildren(el("p", { class: "muted", text: (result.body && result.body.error) || `the server answered ${result.status}` }));
    return;
  }
  const g = result.body;
  $("detail-title").textContent = g.summary || `${g.kind} ${g.id}`;
  const trace = el("span", { class: "trace" }, el("code", { text: g.trace_id || "none" }));
  if (g.trace_id && navigator.clipboard) {
    const copy = el("button", { type: "button", text: "copy" });
    copy.addEventListener("click", () => navigator.clipboard.writeText(g.trace_id).then(() => { copy.textContent = "copied"; }));
    trace.append(copy);
  }
  const start = nsToDate(g.start_ns);
  body.replaceChildren(
    facts([
      ["kind", el("span", { class: `badge kind kind-${g.kind}`, text: kindName(g.kind) })],
      ["severity", g.severity], ["intent", g.intent],
      ["confidence", g.confidence !== undefined && g.confidence !== null ? `${Math.round(g.confidence * 100)}%` : null],
      ["trace id", trace], ["root cause", g.root_cause],
      ["started", start ? `${clock(start)} (${ago(start)})` : null],
      ["lasted", g.end_ns && g.start_ns ? duration(g.end_ns - g.start_ns) : null],
      ["node", g.node], ["collector", g.collector_id], ["group id", String(g.id)],
    ]));
  const attributes = Object.entries(g.attributes || {}).filter(([k]) => k !== "processes" && k !== "exits");
  if (attributes.length) {
    body.append(el("h3", { text: "attributes" }), facts(attributes.map(([k, v]) => [k, attributeText(v)])));
  }
  const events = g.events || [];
  body.append(el("h3", { text: `events (${events.length})` }));
  const rows = events.map((e) => el("tr", { data: { id: e.id } },
    el("td", { class: "mono", text: (e.time || "").replace("T", " ").slice(0, 23) }),
    el("td", { text: e.type }),
    el("td", { class: "num", text: e.pid }),
    el("td", { class: "mono", text: e.comm }),
    el("td", { class: "mono", text: eventDetail(e) })));
  body.append(el("table", { class: "grid" },
    el("thead", {}, el("tr", {}, ...["time (UTC)", "type", "pid", "comm", "what"].map((h) => el("th", { text: h })))),
    el("tbody", {}, ...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 5, class: "muted", text: "the events have aged out of the store" }))]))));
}

function closeGroup() {
  $("detail").hidden = true;
  view.group = null;
  saveHash();
  markSelected();
}

// -- the address bar keeps the filter and the open group (#kind=KIND&group=ID) ---------------
function loadHash() {
  const params = new URLSearchParams(location.hash.slice(1));
  const kind = params.get("kind");
  view.kind = kinds().includes(kind) ? kind : null;
  view.group = params.get("group");
}

function saveHash() {
  const params = new URLSearchParams();
  if (view.kind) params.set("kind", view.kind);
  if (view.group) params.set("group", view.group);
  const hash = params.toString();
  history.replaceState(null, "", hash ? `#${hash}` : location.pathname);
}

// -- the loop --------------------------------------------------------------------------------
async function poll() {
  view.polling = true;
  try {
    if (!vocabulary.event_types.length) {
      await loadVocabulary();
      loadHash();
      drawKinds();
    }
    const [ready, stats, collectors] = await Promise.all([
      getJSON("/readyz"), getJSON("/api/v1/stats"), getJSON("/api/v1/collectors")]);
    drawReady(ready);
    if (stats.ok) drawStats(stats.body);
    if (collectors.ok) drawCollectors(collectors.body);
    await refreshGroups();
    view.lastOk = Date.now();
    view.failing = null;
  } catch (e) {
    if (e instanceof NeedToken) {
      // no token, or one the server does not take: ask, and poll again once one is given
      view.polling = false;
      if (token()) sessionStorage.removeItem(TOKEN_KEY);
      showLogin(e.message);
      return;
    }
    view.failing = String(e);
    drawReady(null);
  }
  $("logout").hidden = !token();
  const banner = $("banner");
  banner.hidden = !view.failing;
  banner.textContent = view.failing ? `cannot reach the server (${view.failing}); last update ${view.lastOk ? ago(new Date(view.lastOk)) : "never"}` : "";
  $("updated").textContent = view.lastOk ? `updated ${new Date(view.lastOk).toLocaleTimeString()}` : "";
  setTimeout(poll, POLL_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  takeTokenFromHash();
  loadHash();
  $("login").addEventListener("submit", signIn);
  $("logout").addEventListener("click", signOut);
  $("detail-close").addEventListener("click", closeGroup);
  document.addEventListener("keydown", (e) => { if (e.key === "Escape" && !$("detail").hidden) closeGroup(); });
  if (view.group) openGroup(view.group);
  poll();
});
