// The record browser's page: list, one record, diff, stats. Read-only.
//
// Records hold user input (payloads, ids, error messages). Every value reaches the DOM as
// text (textContent, or a string passed to append) or as a non-executable attribute; nothing
// is ever parsed as HTML. Links are built here, always starting with "#".
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const PAGE_SIZE = 50;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  setAttrs(node, attrs);
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

function setAttrs(node, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "text") node.textContent = String(value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, String(value));
  }
}

function text(value) {
  return value === null || value === undefined ? "" : String(value);
}

function json(value) {
  return JSON.stringify(value, null, 2);
}

function href(route, params) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params || {})) {
    if (value !== null && value !== undefined && value !== "") query.set(key, String(value));
  }
  const qs = query.toString();
  return "#/" + route + (qs ? "?" + qs : "");
}

function recordLink(id, label) {
  return el("a", { href: href("record", { id }), class: "mono", text: label || id });
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path, params) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params || {})) {
    if (value !== null && value !== undefined && value !== "") query.set(key, String(value));
  }
  const response = await fetch(path + (query.toString() ? "?" + query : ""), {
    credentials: "same-origin",
    headers: { Accept: "application/json" },
  });
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null;
  }
  if (!response.ok) {
    throw new ApiError(response.status, (body && body.error) || response.statusText);
  }
  return body;
}

function badge(status) {
  return el("span", { class: "badge " + (status === "success" ? "ok" : "bad"), text: status });
}

function section(title, ...children) {
  return el("section", { class: "card" }, el("h2", { text: title }), ...children);
}

function pre(value, cls) {
  return el("pre", { class: cls || "json", text: typeof value === "string" ? value : json(value) });
}

function dl(pairs) {
  const list = el("dl", { class: "pairs" });
  for (const [key, value] of pairs) {
    list.append(el("dt", { text: key }), el("dd", {}, value instanceof Node ? value : text(value)));
  }
  return list;
}

// -- the list ---------------------------------------------------------------------------
const FILTERS = ["intent", "status", "error_code", "agent", "since", "until", "q"];

async function showList(params) {
  const data = await api("/api/records", { ...params, limit: params.limit || PAGE_SIZE });
  const view = el("div", { id: "list-view" });
  view.append(filterForm(params));
  view.append(statusCounts(data.counts, params));
  if (data.note) view.append(el("p", { class: "note", id: "scan-note", text: "Note: " + data.note }));
  const selected = new Set();
  const compare = el("a", { id: "compare", class: "button disabled", text: "diff the two selected" });
  const rows = data.rows.map((row) => listRow(row, selected, compare));
  const table = el(
    "table",
    { id: "records", class: "records" },
    el(
      "thead",
      {},
      el("tr", {}, ["", "created", "execution", "request", "intent", "strategy", "agent", "status", "error", "ms"].map(
        (title) => el("th", { text: title }),
      )),
    ),
    el("tbody", {}, rows),
  );
  const first = data.total ? data.offset + 1 : 0;
  const last = data.offset + data.rows.length;
  const pager = el(
    "div",
    { class: "pager" },
    el("span", { id: "range", text: `${first}–${last} of ${data.total}` }),
    data.offset > 0
      ? el("a", { href: href("", { ...params, offset: Math.max(0, data.offset - data.limit) }), id: "newer", text: "← newer" })
      : null,
    last < data.total ? el("a", { href: href("", { ...params, offset: last }), id: "older", text: "older →" }) : null,
    compare,
  );
  view.append(pager, data.rows.length ? table : el("p", { class: "muted", id: "empty", text: "no records match" }));
  return view;
}

function listRow(row, selected, compare) {
  const box = el("input", { type: "checkbox", title: "select for diff" });
  box.addEventListener("change", () => {
    if (box.checked) selected.add(row.executionId);
    else selected.delete(row.executionId);
    const ids = [...selected];
    if (ids.length === 2) {
      compare.setAttribute("href", href("diff", { a: ids[0], b: ids[1] }));
      compare.classList.remove("disabled");
    } else {
      compare.removeAttribute("href");
      compare.classList.add("disabled");
    }
  });
  return el(
    "tr",
    { "data-id": row.executionId },
    el("td", {}, box),
    el("td", { class: "mono nowrap", text: row.createdAt }),
    el("td", { class: "nowrap" }, recordLink(row.executionId)),
    el("td", { class: "mono", text: row.requestId }),
    el("td", { text: row.intent }),
    el("td", { text: row.strategy }),
    el("td", { text: row.agent }),
    el("td", {}, row.status ? badge(row.status) : el("span", { class: "muted", text: row.kind })),
    el("td", { class: "mono", text: row.errorCode }),
    el("td", { class: "num", text: row.latencyMs }),
  );
}

function filterForm(params) {
  const field = (name, label, placeholder) =>
    el(
      "label",
      {},
      el("span", { text: label }),
      el("input", { name, id: "f-" + name, value: params[name] || "", placeholder: placeholder || "" }),
    );
  const status = el(
    "select",
    { name: "status", id: "f-status" },
    ["", "success", "error"].map((value) =>
      el("option", { value, selected: (params.status || "") === value, text: value || "any" }),
    ),
  );
  const form = el(
    "form",
    { class: "filters", id: "filters" },
    field("q", "search", "execution, request or correlation id"),
    field("intent", "intent"),
    el("label", {}, el("span", { text: "status" }), status),
    field("error_code", "error code"),
    field("agent", "agent"),
    field("since", "since", "1h, 7d or 2026-01-31T12:00"),
    field("until", "until", "1h, 7d or 2026-01-31T12:00"),
    el("button", { type: "submit", id: "apply", text: "apply" }),
    el("a", { href: "#/", text: "clear" }),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const next = {};
    for (const name of FILTERS) next[name] = new FormData(form).get(name);
    location.hash = href("", next);
  });
  return form;
}

function statusCounts(counts, params) {
  const total = Object.values(counts).reduce((a, b) => a + b, 0);
  const box = el("div", { class: "counts", id: "counts" });
  const entries = [["", total], ...Object.entries(counts).sort()];
  for (const [status, count] of entries) {
    const active = (params.status || "") === status;
    box.append(
      el(
        "a",
        {
          href: href("", { ...params, status, offset: null }),
          class: "count" + (active ? " active" : ""),
          "data-status": status || "all",
        },
        el("span", { text: status || "all" }),
        el("b", { text: count }),
      ),
    );
  }
  return box;
}

// -- one record -------------------------------------------------------------------------
async function showRecord(params) {
  const data = await api("/api/record", { id: params.id });
  const record = data.record;
  const header = record.header || {};
  const response = record.finalResponse || {};
  const meta = response.metadata || {};
  const view = el("div", { id: "record-view" });

  const verdict = el("span", { id: "verify-result", class: "muted" });
  const verify = el("button", { id: "verify", type: "button", text: "verify" });
  verify.addEventListener("click", async () => {
    verdict.className = "muted";
    verdict.textContent = "verifying…";
    try {
      const result = await api("/api/verify", { id: data.executionId });
      verdict.className = result.ok ? "ok-text" : "bad-text";
      verdict.textContent = result.ok ? "ok" : "failed";
      verdict.append(
        el("span", { class: "muted", text: result.routingChecked ? ` (integrity, and routing against ${result.agents})` : " (integrity only)" }),
      );
      for (const note of result.notes || []) verdict.append(el("div", { class: "muted note-line", text: note }));
      if (!result.routingChecked && !result.agents) {
        verdict.append(el("div", { class: "muted", text: "start the browser with --agents to check routing too" }));
      }
      if (!result.ok) verdict.append(el("ul", { id: "problems" }, result.problems.map((p) => el("li", { text: p }))));
    } catch (error) {
      verdict.className = "bad-text";
      verdict.textContent = error.message;
    }
  });

  const other = el("input", { id: "diff-other", placeholder: "another execution, request or correlation id" });
  const diffLink = el("a", { id: "diff-link", class: "button disabled", text: "diff" });
  other.addEventListener("input", () => {
    if (other.value.trim()) {
      diffLink.setAttribute("href", href("diff", { a: data.executionId, b: other.value.trim() }));
      diffLink.classList.remove("disabled");
    } else {
      diffLink.removeAttribute("href");
      diffLink.classList.add("disabled");
    }
  });

  view.append(
    el(
      "div",
      { class: "title" },
      el("h1", { class: "mono", id: "record-id", text: data.executionId }),
      response.status ? badge(response.status) : null,
      el("span", { class: "actions" }, verify, verdict),
    ),
    el("div", { class: "actions" }, other, diffLink),
    section(
      "header",
      dl([
        ["request id", header.requestId],
        ["correlation id", header.correlationId],
        ["created", header.createdAt],
        ["kind", header.kind],
        ["intent", (record.routerDecision || {}).intent],
        ["strategy", meta.strategy],
        ["agent", meta.agent],
        ["attempts", meta.attempts],
        ["latency (ms)", meta.latency_ms],
        ["error", response.error ? `${response.error.code}: ${response.error.message}` : ""],
        ["replayable", header.replayable],
        ["worker", header.workerId],
        ["user", header.userId],
        ["runtime", header.runtimeVersion],
        ["envelope hash", header.envelopeHash],
      ]),
    ),
    timelineSection(record.events || []),
    decisionSection(record.policy || {}, record.routerDecision || {}),
    record.envelope ? section("envelope (normalised)", pre(record.envelope)) : rawBodySection(record),
    section("final response", pre(response)),
    section(
      "stored reply (the exact bytes replayed)",
      data.reply === null ? el("p", { class: "muted", text: "no reply stored" }) : pre(data.reply, "json reply"),
    ),
    eventsSection(record.events || []),
  );
  return view;
}

function rawBodySection(record) {
  return section(
    "rejected input",
    dl([
      ["sha256", record.rawBodySha256],
      ["bytes", record.rawBodyBytes],
      ["encoding", record.rawBodyEncoding],
      ["truncated", record.rawBodyTruncated],
    ]),
    pre(text(record.rawBody), "json raw"),
  );
}

function decisionSection(policy, decision) {
  const reasons = Object.entries(policy.reasons || {});
  return section(
    "routing and policy",
    dl([
      ["selected", decision.agent],
      ["reason", decision.reason],
      ["try order", (decision.tryOrder || []).join(" → ")],
      ["allowed by policy", (policy.allowed || []).join(", ")],
      ["filtered by policy", (policy.filtered || []).join(", ")],
    ]),
    reasons.length
      ? el(
          "table",
          { class: "small", id: "policy-reasons" },
          el("thead", {}, el("tr", {}, el("th", { text: "agent" }), el("th", { text: "reason" }))),
          el("tbody", {}, reasons.map(([agent, why]) => el("tr", {}, el("td", { text: agent }), el("td", { text: why })))),
        )
      : null,
  );
}

function eventsSection(events) {
  return section(
    "events",
    el(
      "table",
      { class: "small", id: "events" },
      el("thead", {}, el("tr", {}, ["seq", "t (ms)", "type", "payload"].map((t) => el("th", { text: t })))),
      el(
        "tbody",
        {},
        events.map((e) =>
          el(
            "tr",
            {},
            el("td", { class: "num", text: e.seq }),
            el("td", { class: "num", text: e.t_ms }),
            el("td", { class: "mono", text: e.type }),
            el("td", { class: "mono", text: JSON.stringify(e.payload) }),
          ),
        ),
      ),
    ),
  );
}

// Attempts from the event log: start and end (or abandonment) per attempt number.
function attemptsOf(events) {
  const byNumber = new Map();
  const attempt = (p) => {
    const key = p.attempt;
    if (!byNumber.has(key)) byNumber.set(key, { number: key, agent: p.agent, start: null, end: null, outcome: "unfinished" });
    return byNumber.get(key);
  };
  for (const e of events) {
    const p = e.payload || {};
    if (e.type === "AGENT_ATTEMPT_START") attempt(p).start = e.t_ms;
    else if (e.type === "AGENT_ATTEMPT_END") {
      const a = attempt(p);
      a.end = e.t_ms;
      a.outcome = p.abandoned ? "timeout" : p.status;
      a.errorCode = p.error_code;
      a.latency = p.latency_ms;
    } else if (e.type === "AGENT_ATTEMPT_ABANDONED") {
      const a = attempt(p);
      a.end = e.t_ms;
      a.outcome = "abandoned";
      a.errorCode = p.reason;
    }
  }
  return [...byNumber.values()].sort((a, b) => a.number - b.number);
}

const MARKERS = {
  INTENT_RECEIVED: "received",
  FALLBACK_TRIGGERED: "fallback",
  ROUTER_DECISION: "decision",
  FINAL_RESPONSE: "response",
  DUPLICATE_DELIVERY: "duplicate",
};

function timelineSection(events) {
  const attempts = attemptsOf(events);
  const fallbacks = events.filter((e) => e.type === "FALLBACK_TRIGGERED");
  const end = Math.max(0.001, ...events.map((e) => Number(e.t_ms) || 0));
  const left = 190;
  const right = 890;
  const lane = 28;
  const top = 34;
  const height = top + lane * (attempts.length + 1) + 10;
  const x = (t) => left + ((Number(t) || 0) / end) * (right - left);
  const chart = svg("svg", {
    id: "timeline",
    viewBox: `0 0 1000 ${height}`,
    role: "img",
    "aria-label": `timeline of ${attempts.length} attempts over ${end} ms`,
    "data-attempts": attempts.length,
  });
  for (let i = 0; i <= 4; i += 1) {
    const t = (end * i) / 4;
    chart.append(
      svg("line", { x1: x(t), x2: x(t), y1: 22, y2: height - 6, class: "grid" }),
      svg("text", { x: x(t), y: 14, class: "axis", "text-anchor": "middle", text: `${t.toFixed(end < 10 ? 2 : end < 1000 ? 1 : 0)} ms` }),
    );
  }
  const eventsY = top;
  chart.append(svg("text", { x: 8, y: eventsY + 17, class: "label", text: "events" }));
  for (const e of events) {
    const kind = MARKERS[e.type];
    if (!kind) continue;
    const p = e.payload || {};
    const title = e.type === "FALLBACK_TRIGGERED" ? `fallback ${p.from} → ${p.to} (${p.reason}) at ${e.t_ms} ms` : `${e.type} at ${e.t_ms} ms`;
    chart.append(
      svg("g", { class: "marker " + kind }, svg("title", { text: title }), svg("rect", { x: x(e.t_ms) - 2, y: eventsY + 4, width: 4, height: lane - 10 })),
    );
  }
  attempts.forEach((a, i) => {
    const y = top + lane * (i + 1);
    const start = a.start === null ? 0 : a.start;
    const stop = a.end === null ? end : a.end;
    const summary = [a.outcome, a.errorCode, a.latency !== undefined ? `${a.latency} ms` : null].filter(Boolean).join(" · ");
    chart.append(
      svg(
        "g",
        { class: "attempt " + a.outcome, "data-agent": a.agent, "data-outcome": a.outcome },
        svg("title", { text: `attempt ${a.number}: ${a.agent}, ${summary}, ${start}–${stop} ms` }),
        svg("text", { x: 8, y: y + 17, class: "label", text: `#${a.number} ${text(a.agent)}` }),
        svg("rect", { x: x(start), y: y + 5, width: Math.max(2, x(stop) - x(start)), height: lane - 10, rx: 3 }),
        svg("text", { x: Math.min(x(stop) + 6, right + 6), y: y + 17, class: "bar-label", text: summary }),
      ),
    );
  });
  const abandoned = attempts.filter((a) => a.outcome === "abandoned" || a.outcome === "timeout").length;
  return section(
    "timeline (to scale)",
    el(
      "p",
      { class: "muted", id: "timeline-summary" },
      `${attempts.length} attempt${attempts.length === 1 ? "" : "s"}, ${fallbacks.length} fallback${fallbacks.length === 1 ? "" : "s"}, ${abandoned} abandoned or timed out; ${end} ms from receipt to response`,
    ),
    chart,
    el(
      "p",
      { class: "legend" },
      ["success", "error", "timeout", "abandoned"].map((k) => el("span", { class: "key key-" + k, text: k })),
      ["received", "fallback", "decision", "response"].map((k) => el("span", { class: "key marker-key key-" + k, text: k })),
    ),
  );
}

// -- diff -------------------------------------------------------------------------------
async function showDiff(params) {
  const data = await api("/api/diff", { a: params.a, b: params.b });
  const view = el("div", { id: "diff-view" });
  const cell = (row, side) =>
    el("td", { class: side in row ? "mono" : "mono muted" }, el("pre", { text: side in row ? json(row[side]) : "(absent)" }));
  view.append(
    el("h1", { text: "diff" }),
    el(
      "p",
      {},
      "A ",
      recordLink(data.a.executionId),
      " — B ",
      recordLink(data.b.executionId),
      el("span", { class: "muted", id: "diff-count", text: ` · ${data.differences.length} difference${data.differences.length === 1 ? "" : "s"}` }),
    ),
    data.differences.length
      ? el(
          "table",
          { class: "diff", id: "differences" },
          el("thead", {}, el("tr", {}, el("th", { text: "path" }), el("th", { text: "A" }), el("th", { text: "B" }))),
          el(
            "tbody",
            {},
            data.differences.map((row) => el("tr", {}, el("td", { class: "mono path", text: row.path }), cell(row, "a"), cell(row, "b"))),
          ),
        )
      : el("p", { text: "the records are identical" }),
    el(
      "div",
      { class: "side-by-side" },
      el("details", {}, el("summary", { text: "record A in full" }), pre(data.a.record)),
      el("details", {}, el("summary", { text: "record B in full" }), pre(data.b.record)),
    ),
  );
  return view;
}

// -- stats ------------------------------------------------------------------------------
async function showStats() {
  const data = await api("/api/stats");
  const view = el("div", { id: "stats-view" });
  view.append(el("h1", { text: `${data.records} records` }), el("p", { class: "muted", text: `${data.unreadable} unreadable; ${data.note}` }));
  for (const key of ["by_status", "by_kind", "by_intent", "by_agent", "by_error_code"]) {
    const entries = Object.entries(data[key] || {}).sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
    view.append(
      section(
        key.replace("by_", "by ").replace("_", " "),
        el("table", { class: "small" }, el("tbody", {}, entries.map(([name, n]) => el("tr", {}, el("td", { text: name }), el("td", { class: "num", text: n }))))),
      ),
    );
  }
  return view;
}

// -- routing ----------------------------------------------------------------------------
function route() {
  const hash = location.hash.replace(/^#\/?/, "");
  const [path, qs] = hash.split("?", 2);
  const params = Object.fromEntries(new URLSearchParams(qs || ""));
  if (path === "record" && params.id) return () => showRecord(params);
  if (path === "diff" && params.a && params.b) return () => showDiff(params);
  if (path === "stats") return () => showStats();
  return () => showList(params);
}

let generation = 0;

async function render() {
  const mine = ++generation;
  const app = document.getElementById("app");
  app.setAttribute("aria-busy", "true");
  let view;
  try {
    view = await route()();
  } catch (error) {
    view = el(
      "div",
      { class: "error", id: "error" },
      el("p", { text: error.message }),
      error.status === 401 ? el("p", { text: "Open the address printed by `intentus records serve`, with ?token=…" }) : null,
    );
  }
  if (mine !== generation) return; // a later navigation won
  app.replaceChildren(view);
  app.removeAttribute("aria-busy");
  app.setAttribute("data-ready", String(mine));
}

async function showStore() {
  try {
    const info = await api("/api/info");
    document.getElementById("store").textContent = `${info.store}${info.indexed ? " (indexed)" : " (scanned)"} · v${info.version}`;
  } catch (_) {
    // the view itself reports what went wrong
  }
}

window.addEventListener("hashchange", render);
showStore();
render();
