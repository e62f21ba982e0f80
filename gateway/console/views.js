// One function per console page. Each renders into #view from the public API; text from the
// API goes in through textContent only (never innerHTML), so data cannot inject markup.
"use strict";

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) el.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

function cell(v) {
  if (v === null || v === undefined) return "";
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

function when(ts) { return ts ? new Date(ts * 1000).toISOString().replace("T", " ").slice(0, 19) : ""; }

function dataTable(rows, columns, onRow) {
  return h("table", {},
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", {}, c.label !== undefined ? c.label : (c.key || c))))),
    h("tbody", {}, rows.map((r) => h("tr", onRow ? { class: "clickable", onclick: () => onRow(r), "data-id": r.id } : {},
      columns.map((c) => {
        const key = c.key || c;
        const v = c.render ? c.render(r) : cell(r[key]);
        return h("td", c.cls ? { class: c.cls(r) } : {}, v);
      })))));
}

// ---------------------------------------------------------------- jobs
const views = {};
let jobTimer = null;

views.jobs = async (root) => {
  const jobs = await api.list("/v1/fine_tuning/jobs?limit=50");
  root.append(h("div", { class: "card" }, h("h2", {}, "Fine-tuning jobs"),
    jobs.length ? dataTable(jobs, [
      "id", { key: "status", cls: (r) => "status-" + r.status }, "model", "fine_tuned_model",
      "trained_tokens", { label: "created", render: (r) => when(r.created_at) },
    ], (r) => { location.hash = "#jobs/" + r.id; }) : h("p", { class: "muted" }, "No jobs yet.")));
};

function lossSeries(events) {
  const bySteps = new Map();
  for (const e of events) {
    const d = e.data || {};
    if (d.step !== undefined && d.step !== null && !bySteps.has(d.step)) bySteps.set(d.step, d);
  }
  const pts = [...bySteps.values()].sort((a, b) => a.step - b.step);
  const series = [{ name: "train loss", points: pts.filter((d) => d.train_loss != null).map((d) => [d.step, d.train_loss]) }];
  const valid = pts.filter((d) => d.valid_loss != null).map((d) => [d.step, d.valid_loss]);
  if (valid.length) series.push({ name: "validation loss", points: valid });
  return { series, last: pts[pts.length - 1] };
}

// job.result may be {base:{m:v}, tuned:{m:v}} or {metrics:{…}} or {m:{base, tuned}}: one table.
function evalRows(result) {
  if (!result || typeof result !== "object") return [];
  const r = result.metrics && typeof result.metrics === "object" && (result.metrics.base || result.metrics.tuned) ? result.metrics : result;
  if (r.base || r.tuned) {
    const names = [...new Set([...Object.keys(r.base || {}), ...Object.keys(r.tuned || {})])];
    return names.filter((m) => typeof (r.base || {})[m] !== "object" && typeof (r.tuned || {})[m] !== "object")
      .map((m) => ({ metric: m, base: (r.base || {})[m], tuned: (r.tuned || {})[m] }));
  }
  return Object.entries(r).filter(([, v]) => v && typeof v === "object" && ("base" in v || "tuned" in v))
    .map(([m, v]) => ({ metric: m, base: v.base, tuned: v.tuned }));
}

function num(v) { return typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toFixed(4)) : cell(v); }

views.job = async (root, id) => {
  const [job, events] = await Promise.all([
    api.get("/v1/fine_tuning/jobs/" + encodeURIComponent(id)),
    api.list("/v1/fine_tuning/jobs/" + encodeURIComponent(id) + "/events?limit=100"),
  ]);
  const { series, last } = lossSeries(events);
  const head = h("div", { class: "card" },
    h("h2", {}, "Job ", h("code", {}, job.id), " ", h("span", { class: "status-" + job.status, id: "job-status" }, job.status)),
    h("p", {}, "model ", h("code", {}, job.model), job.fine_tuned_model ? [" → ", h("code", {}, job.fine_tuned_model)] : "",
      last ? `  · step ${last.step}${last.total_steps ? "/" + last.total_steps : ""}` : "",
      last && last.tokens_per_second ? `  · ${Math.round(last.tokens_per_second)} tokens/s` : ""),
    job.error ? h("p", { class: "fail" }, `${job.error.message} (${job.error.code})`) : null);
  const chart = h("div", { class: "card", id: "loss-chart" }, h("h3", {}, "Loss"),
    series[0].points.length ? lineChart(series, { xLabel: "step", title: "loss by step" }) : h("p", { class: "muted" }, "No steps reported yet."));
  const rows = evalRows(job.result);
  const evalCard = h("div", { class: "card", id: "eval" }, h("h3", {}, "Evaluation on held-out data"),
    rows.length ? dataTable(rows, ["metric",
      { key: "base", label: "base model", render: (r) => num(r.base) },
      { key: "tuned", label: "tuned", render: (r) => num(r.tuned) },
      { label: "change", render: (r) => typeof r.base === "number" && typeof r.tuned === "number" ? (r.tuned >= r.base ? "+" : "") + num(r.tuned - r.base) : "" }])
      : h("p", { class: "muted" }, "No evaluation yet."));
  root.append(head, h("div", { class: "row" }, chart, evalCard),
    h("div", { class: "card" }, h("h3", {}, "Events"), dataTable(events.slice(0, 30), [
      { label: "time", render: (e) => when(e.created_at) }, "level", "message"])));
  if (!["succeeded", "failed", "cancelled"].includes(job.status)) {
    jobTimer = setTimeout(() => { if (location.hash === "#jobs/" + id) app.render(); }, 2000);
  }
};

// ---------------------------------------------------------------- adapters
views.adapters = async (root) => {
  const adapters = await api.list("/v1/adapters?limit=100");
  root.append(h("div", { class: "card" }, h("h2", {}, "Adapters"),
    adapters.length ? dataTable(adapters, ["name", "latest_version",
      { label: "aliases", render: (a) => Object.entries(a.aliases || {}).map(([k, v]) => `${k} → v${v}`).join(", ") },
      "description"], (a) => { location.hash = "#adapters/" + a.name; }) : h("p", { class: "muted" }, "No adapters yet.")));
};

views.adapter = async (root, name) => {
  const base = "/v1/adapters/" + encodeURIComponent(name);
  const [adapter, versions, moves] = await Promise.all([
    api.get(base), api.list(base + "/versions?limit=100"), api.list(base + "/alias-moves?limit=100")]);
  const aliasInput = h("input", { id: "alias-name", value: "production", size: 12 });
  const promote = async (v) => {
    const moved = await api.put(base + "/aliases/" + encodeURIComponent(aliasInput.value), { version: v.version });
    app.flash(`${name}@${moved.alias} now v${moved.version}`);
    app.render();
  };
  const rollback = async (alias) => {
    const last = moves.filter((m) => m.alias === alias).sort((a, b) => b.id - a.id)[0];
    if (!last || last.from_version == null) throw new Error(`alias ${alias} has no previous version`);
    await api.put(base + "/aliases/" + encodeURIComponent(alias), { version: last.from_version });
    app.render();
  };
  const aliases = Object.entries(adapter.aliases || {});
  root.append(
    h("div", { class: "card" }, h("h2", {}, "Adapter ", h("code", {}, name)),
      h("p", {}, "Aliases: ", aliases.length ? aliases.map(([a, v]) => h("span", { class: "alias", "data-alias": a },
        h("code", {}, `${a} → v${v}`), " ", h("button", { class: "secondary", onclick: () => app.guard(rollback(a)) }, "roll back"), " "))
        : h("span", { class: "muted" }, "none")),
      h("p", {}, "Promote to alias ", aliasInput)),
    h("div", { class: "card" }, h("h3", {}, "Versions"), dataTable(versions, [
      "version", "base_model", "rank", { label: "sha256", render: (v) => (v.sha256 || "").slice(0, 12) },
      { label: "job", render: (v) => (v.lineage || {}).job_id || "" },
      { label: "metrics", render: (v) => cell((v.lineage || {}).metrics) },
      { label: "created", render: (v) => when(v.created) },
      { label: "", render: (v) => h("button", { class: "promote", "data-version": v.version, onclick: () => app.guard(promote(v)) }, "promote") },
    ])),
    h("div", { class: "card" }, h("h3", {}, "Alias moves"), dataTable(moves, [
      "alias", "from_version", "to_version", "actor", { label: "at", render: (m) => when(m.created || m.at) }])));
};

// ---------------------------------------------------------------- usage, audit
views.usage = async (root) => {
  const rows = await api.list("/admin/usage");
  const models = [...new Set(rows.map((r) => r.model))].sort();
  const days = [...new Set(rows.map((r) => r.day))].sort();
  const groups = days.map((d) => ({ label: d, values: {} }));
  for (const r of rows) {
    const g = groups[days.indexOf(r.day)];
    g.values[r.model] = (g.values[r.model] || 0) + r.prompt_tokens + r.completion_tokens;
  }
  root.append(h("div", { class: "card", id: "usage-chart" }, h("h2", {}, "Tokens per model and day"),
    rows.length ? barChart(groups, models, { title: "tokens per model and day" }) : h("p", { class: "muted" }, "No usage yet.")),
  h("div", { class: "card" }, dataTable(rows, ["day", "tenant", "model", "requests", "prompt_tokens", "completion_tokens"])));
};

views.audit = async (root) => {
  const [rows, check] = await Promise.all([api.list("/admin/audit?limit=100"), api.get("/admin/audit/verify")]);
  root.append(h("div", { class: "card" }, h("h2", {}, "Audit log"),
    h("p", { class: check.valid ? "pass" : "fail" },
      "hash chain: " + (check.valid ? `verified (${check.checked} entries)`
        : "BROKEN" + (check.first_bad_id != null ? ` at entry ${check.first_bad_id}` : "") + (check.reason ? `: ${check.reason}` : ""))),
    dataTable(rows, [{ label: "at", render: (r) => when(r.at) }, "tenant", "actor", "action", "target", "outcome", "request_id"])));
};

// ---------------------------------------------------------------- integrations
views.integrations = async (root) => {
  const items = await api.list("/v1/integrations");
  const pick = h("select", { id: "integration" }, items.map((i) => h("option", { value: i.name }, i.name)));
  const samples = h("textarea", { id: "samples", placeholder: '[{"record": {...}, "expected": "..."}]' });
  const result = h("div", { id: "test-result" });
  const run = async (ev) => {
    ev.preventDefault();
    let body;
    try { body = JSON.parse(samples.value); } catch (e) { throw new Error("samples: " + e.message); }
    const out = await api.post("/v1/integrations/" + encodeURIComponent(pick.value) + "/test", { samples: body });
    const rows = out.results || [];
    result.replaceChildren(h("p", {}, "accuracy: ", h("strong", {}, cell(out.accuracy))),
      rows.length ? dataTable(rows, Object.keys(rows[0]).slice(0, 6).map((k) => k === "pass" ? { key: k, cls: (r) => (r.pass ? "pass" : "fail") } : k)) : "");
  };
  root.append(h("div", { class: "card" }, h("h2", {}, "Integrations"),
    items.length ? dataTable(items, ["name", "system", "task", "model", { label: "output", render: (i) => cell((i.output || {}).field) }])
      : h("p", { class: "muted" }, "No integrations yet.")),
  h("div", { class: "card" }, h("h3", {}, "Test with sample records"),
    h("form", { onsubmit: (ev) => app.guard(run(ev)) }, pick, " ", h("button", { type: "submit" }, "Run test"), samples), result));
};
