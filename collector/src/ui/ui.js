// The review UI. Every value from the server is placed with textContent (or as an SVG attribute), never
// as HTML: command lines and model names are tenant-controlled. The token lives in sessionStorage and
// travels only in the Authorization header (no cookies, so no CSRF).
"use strict";
const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem("gpuattest-token") || "";
let allFlags = [];

// A decision never hides later evidence: occurrences since it, and re-openings, are shown with it.
function statusText(f) {
  let t = f.status;
  if (f.after_decision > 0) t += " (+" + f.after_decision + " since decision)";
  if (f.reopened > 0) t += " (re-opened " + f.reopened + "x)";
  return t;
}

async function api(path, opts = {}) {
  const res = await fetch(path, { ...opts, headers: { ...(opts.headers || {}), Authorization: "Bearer " + token, "Content-Type": "application/json" } });
  if (!res.ok) throw new Error(path + ": " + res.status + " " + (await res.text()));
  return res.json();
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text != null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.appendChild(el("span", text == null ? "" : text, cls));
  tr.appendChild(td);
  return td;
}

function fillSelect(id, values) {
  const s = $(id), keep = s.value;
  while (s.options.length > 1) s.remove(1);
  for (const v of [...new Set(values.filter((x) => x != null))].sort()) s.appendChild(el("option", v));
  s.value = keep;
}

async function loadFlags() {
  allFlags = await api("/api/v1/flags");
  fillSelect("f-rule", allFlags.map((f) => f.rule));
  fillSelect("f-tenant", allFlags.map((f) => f.tenant));
  fillSelect("f-host", allFlags.map((f) => f.host_id));
  renderFlags();
}

function renderFlags() {
  const want = { severity: $("f-sev").value, status: $("f-status").value, rule: $("f-rule").value, tenant: $("f-tenant").value, host_id: $("f-host").value };
  const shown = allFlags.filter((f) => Object.entries(want).every(([k, v]) => !v || f[k] === v));
  $("flag-count").textContent = "(" + shown.length + " of " + allFlags.length + ")";
  const counts = $("sev-counts");
  counts.replaceChildren();
  for (const sev of ["critical", "high", "medium", "low"]) {
    const n = shown.filter((f) => f.severity === sev).length;
    if (n) counts.appendChild(el("span", sev + " " + n, "sev-" + sev));
  }
  const body = $("flag-rows");
  body.replaceChildren();
  for (const f of shown) {
    const tr = document.createElement("tr");
    cell(tr, f.id); cell(tr, f.severity, "sev-" + f.severity); cell(tr, f.rule); cell(tr, statusText(f));
    cell(tr, f.host_id); cell(tr, f.tenant); cell(tr, f.assignee); cell(tr, f.summary).className = "summary";
    const td = document.createElement("td");
    const open = el("a", "open", "open");
    open.href = "#flag-" + f.id;
    open.onclick = (ev) => { ev.preventDefault(); showFlag(f.id); };
    td.appendChild(open);
    tr.appendChild(td);
    body.appendChild(tr);
  }
}

let current = null;

async function showFlag(id) {
  const d = await api("/api/v1/flags/" + id);
  const f = d.flag;
  current = f;
  $("d-id").textContent = String(f.id);
  $("d-severity").textContent = f.severity;
  $("d-severity").className = "sev-" + f.severity;
  $("d-rule").textContent = f.rule;
  $("d-status").textContent = statusText(f);
  $("d-host").textContent = f.host_id;
  $("d-tenant").textContent = f.tenant == null ? "-" : f.tenant;
  $("d-job").textContent = f.job;
  $("d-summary").textContent = f.summary;
  $("d-evidence").textContent = JSON.stringify(f.evidence, null, 2);
  $("d-reason").value = "";
  $("a-current").textContent = f.assignee ? "assigned to " + f.assignee : "unassigned";
  showJob(d.job);
  drawTimeline(d.timeline || []);
  showModels(f.evidence || {});
  showGpuEvidence(d.gpu_evidence || []);
  showLocation(d.location);
  const s = $("s-rows");
  s.replaceChildren();
  for (const x of d.screening || []) s.appendChild(el("li", x.severity + " · " + x.rule + ": " + x.summary));
  if (!(d.screening || []).length) s.appendChild(el("li", "nothing known against this tenant under the policy in force"));
  showReports(d.reports || []);
  const h = $("h-rows");
  h.replaceChildren();
  for (const a of d.history || []) { const tr = document.createElement("tr"); for (const k of ["at", "actor", "action", "detail"]) cell(tr, a[k]); h.appendChild(tr); }
  $("detail").hidden = false;
  $("detail").scrollIntoView();
}

// Each GPU's attestation state: verified, failed (why), missing, awaiting, not in CC mode, not supported.
function showGpuEvidence(rows) {
  const body = $("e-rows");
  body.replaceChildren();
  for (const e of rows) {
    const tr = document.createElement("tr");
    for (const v of [e.gpu_uuid, e.state.replaceAll("_", " "), e.device_serial || "-", e.seq == null ? "-" : String(e.seq), (e.reasons || []).join("; ")]) cell(tr, v);
    body.appendChild(tr);
  }
  if (!rows.length) { const tr = document.createElement("tr"); cell(tr, "no GPUs reported"); body.appendChild(tr); }
}

function locationText(h) {
  const l = h.location;
  if (!l || l.verdict === "unregistered") return "-";
  return l.verdict + (l.precision_km == null ? "" : " (" + Math.round(l.precision_km) + " km)");
}

// The landmarks' discs around the registered site, to scale on one axis: each bar is a disc's radius,
// the tick the site's distance from that landmark; a tick beyond its bar is a landmark that proves the
// host is elsewhere. Drawn from the API's numbers only; no map tiles.
function showLocation(l) {
  const chart = $("l-chart");
  chart.replaceChildren();
  if (!l || l.verdict === "unregistered") { $("l-verdict").textContent = "no registered site"; return; }
  $("l-verdict").textContent = l.verdict + ": " + l.reason;
  // Host-key discs, then GPU-bound ones (the chips' own answers, in orange).
  const discs = (l.landmarks || []).concat((l.gpu_landmarks || []).map((d) => Object.assign({}, d, { gpu: true })));
  if (!discs.length) return;
  const max = Math.max(...discs.map((d) => Math.max(d.bound_km, d.site_distance_km || 0))) || 1;
  const width = 640, row = 22, left = 110;
  const s = svg("svg", { width, height: row * discs.length + 24, role: "img" });
  discs.forEach((d, i) => {
    const y = 8 + i * row, scale = (km) => left + (width - left - 20) * km / max;
    s.appendChild(svg("text", { x: 0, y: y + 12 }, d.name + (d.gpu ? " (GPU)" : "")));
    s.appendChild(svg("rect", { x: left, y, width: Math.max(1, scale(d.bound_km) - left), height: 14, fill: d.gpu ? "#fdae6b" : "#9ecae1" }));
    const sx = scale(d.site_distance_km || 0);
    s.appendChild(svg("line", { x1: sx, x2: sx, y1: y - 2, y2: y + 16, stroke: d.site_distance_km > d.bound_km ? "#d62728" : "#333", "stroke-width": 2 }));
    s.appendChild(svg("text", { x: width - 15, y: y + 12, "text-anchor": "end" }, Math.round(d.bound_km) + " km"));
  });
  chart.appendChild(s);
}

function evidenceText(h) {
  const counts = {};
  for (const e of h.gpu_evidence || []) counts[e.state] = (counts[e.state] || 0) + 1;
  return Object.entries(counts).map(([k, n]) => n + " " + k.replaceAll("_", " ")).join(", ") || "-";
}

function showJob(j) {
  const reasons = $("j-reasons");
  reasons.replaceChildren();
  if (!j) { $("j-verdict").textContent = "no job accounting for this flag"; $("j-compute").textContent = ""; return; }
  $("j-verdict").textContent = j.verdict.kind + " (" + Math.round(j.verdict.confidence * 100) + "% confidence) on " + j.hosts.length + " host(s), " + j.gpus + " GPU(s)";
  // Evidence the tenant controls (names) is marked, so reviewers weigh it as such.
  j.verdict.reasons.forEach((r, i) => {
    const li = el("li", r);
    if (j.verdict.tenant_controlled && j.verdict.tenant_controlled[i]) li.className = "tenant-controlled";
    reasons.appendChild(li);
  });
  $("j-compute").textContent = j.gpu_hours.toFixed(3) + " GPU-hours · " + (j.energy_joules / 3.6e6).toFixed(3) + " kWh · at most " +
    j.ops_upper_bound.toExponential(2) + " operations, estimated " + j.ops_estimate.toExponential(2);
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text != null) e.textContent = String(text);
  return e;
}
const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"];

// Utilisation per GPU (lines, left axis 0-100%) and the job's cumulative energy (bars of the summed
// counter deltas, right axis), over the report windows.
function drawTimeline(points) {
  const box = $("t-chart"), legend = $("t-legend");
  box.replaceChildren(); legend.replaceChildren();
  if (!points.length) { box.appendChild(el("p", "no GPU samples for this flag")); return; }
  const W = 900, H = 220, L = 40, R = 60, T = 10, B = 30;
  const t0 = points[0].t, t1 = Math.max(points[points.length - 1].t, t0 + 1);
  const x = (t) => L + (t - t0) / (t1 - t0) * (W - L - R);
  const series = new Map();
  for (const p of points) { const k = p.host_id + " " + p.gpu_uuid; if (!series.has(k)) series.set(k, []); series.get(k).push(p); }
  let energy = 0; const cum = [];
  for (const pts of series.values()) for (let i = 1; i < pts.length; i++) {
    const d = (pts[i].energy_mj || 0) - (pts[i - 1].energy_mj || 0);
    if (d > 0) cum.push([pts[i].t, d / 1000]);
  }
  cum.sort((a, b) => a[0] - b[0]);
  const cumPts = cum.map(([t, j]) => [t, (energy += j)]);
  const emax = Math.max(energy, 1);
  const s = svg("svg", { width: W, height: H, viewBox: "0 0 " + W + " " + H, role: "img" });
  s.appendChild(svg("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#999" }));
  s.appendChild(svg("line", { x1: L, y1: T, x2: L, y2: H - B, stroke: "#999" }));
  s.appendChild(svg("text", { x: 2, y: T + 10, "font-size": 10 }, "100%"));
  s.appendChild(svg("text", { x: 2, y: H - B, "font-size": 10 }, "0%"));
  s.appendChild(svg("text", { x: W - R + 4, y: T + 10, "font-size": 10 }, (energy / 1000).toFixed(1) + " kJ"));
  s.appendChild(svg("text", { x: L, y: H - 8, "font-size": 10 }, new Date(t0).toISOString()));
  s.appendChild(svg("text", { x: W - R - 150, y: H - 8, "font-size": 10 }, new Date(t1).toISOString()));
  if (cumPts.length) {
    const d = cumPts.map(([t, e], i) => (i ? "L" : "M") + x(t).toFixed(1) + " " + (H - B - e / emax * (H - T - B)).toFixed(1)).join(" ");
    s.appendChild(svg("path", { d, fill: "none", stroke: "#444", "stroke-dasharray": "4 3", "stroke-width": 1.5 }));
  }
  let i = 0;
  for (const [k, pts] of series) {
    const color = COLORS[i++ % COLORS.length];
    const d = pts.filter((p) => p.util != null).map((p, j) => (j ? "L" : "M") + x(p.t).toFixed(1) + " " + (H - B - p.util / 100 * (H - T - B)).toFixed(1)).join(" ");
    if (d) s.appendChild(svg("path", { d, fill: "none", stroke: color, "stroke-width": 1.2 }));
    if (i <= 8) { const sp = el("span", "■ " + k); sp.style.color = color; legend.appendChild(sp); }
  }
  if (series.size > 8) legend.appendChild(el("span", "and " + (series.size - 8) + " more GPUs"));
  legend.appendChild(el("span", "- - - cumulative energy"));
  box.appendChild(s);
}

function showModels(ev) {
  const rows = $("m-rows");
  rows.replaceChildren();
  const models = [...(ev.models || []), ...(ev.model ? [ev.model] : [])];
  const reg = ev.registry;
  for (const m of models) {
    const tr = document.createElement("tr");
    for (const k of ["path", "format", "name", "architecture", "parameter_count", "header_sha256"]) cell(tr, m[k]);
    cell(tr, reg ? reg.family + " (" + Math.round(reg.confidence * 100) + "%): " + reg.reasons.join("; ") : (ev.family ? ev.family + " by " + ev.developer : ""));
    rows.appendChild(tr);
  }
  if (!models.length) { const tr = document.createElement("tr"); cell(tr, "no model files in this flag's evidence"); rows.appendChild(tr); }
}

function showReports(reports) {
  const body = $("r-rows");
  body.replaceChildren();
  $("r-raw").hidden = true;
  for (const r of reports) {
    const tr = document.createElement("tr");
    cell(tr, r.host_id); cell(tr, r.seq); cell(tr, r.received_at); cell(tr, r.report_sha256.slice(0, 16) + "…"); cell(tr, r.key_id.slice(0, 12) + "…");
    const td = document.createElement("td");
    const b = el("button", "re-verify", "reverify");
    const result = cell(tr, "");
    b.onclick = async () => {
      try {
        const c = await api("/api/v1/reports/" + encodeURIComponent(r.host_id) + "/" + r.seq);
        result.firstChild.textContent = c.valid
          ? "valid signature" + (c.chains_to_previous === false ? "; does NOT chain to the previous report" : c.chains_to_previous ? ", chains to the previous report" : "")
          : "INVALID: " + c.problem;
        result.firstChild.className = c.valid && c.chains_to_previous !== false ? "ok" : "error";
        $("r-raw").textContent = JSON.stringify({ report_sha256: c.report_sha256, signature_base64: c.signature_base64, report_base64: c.report_base64, decoded: c.decoded }, null, 2);
        $("r-raw").hidden = false;
      } catch (e) { result.firstChild.textContent = e.message; }
    };
    td.appendChild(b);
    tr.insertBefore(td, result);
    body.appendChild(tr);
  }
  if (!reports.length) { const tr = document.createElement("tr"); cell(tr, "no stored reports on this flag's host"); body.appendChild(tr); }
}

$("d-form").onsubmit = async (ev) => {
  ev.preventDefault();
  if (!current) return;
  const reason = $("d-reason").value.trim();
  if (!reason) { $("d-reason").focus(); return; }
  try {
    await api("/api/v1/flags/" + current.id + "/decision", { method: "POST", body: JSON.stringify({ decision: $("d-decision").value, reason }) });
    $("detail").hidden = true;
    current = null;
    refresh();
  } catch (e) { $("error").textContent = e.message; }
};
$("a-form").onsubmit = async (ev) => {
  ev.preventDefault();
  if (!current) return;
  try {
    await api("/api/v1/flags/" + current.id + "/assign", { method: "POST", body: JSON.stringify({ assignee: $("a-name").value.trim() }) });
    await showFlag(current.id);
    loadFlags();
  } catch (e) { $("error").textContent = e.message; }
};
$("d-back").onclick = (ev) => { ev.preventDefault(); $("detail").hidden = true; };

async function loadTable(path, id, fields) {
  let rows;
  try { rows = await api(path); } catch (e) { $(id).replaceChildren(); return; }
  const body = $(id);
  body.replaceChildren();
  for (const r of rows) { const tr = document.createElement("tr"); for (const k of fields) cell(tr, typeof k === "function" ? k(r) : r[k]); body.appendChild(tr); }
}

const gpuText = (h) => {
  const g = h.gpus || [];
  if (!g.length) return "none";
  const names = [...new Set(g.map((x) => x.name))].join(", ");
  const lost = g.filter((x) => x.lost).length;
  return g.length + " × " + names + (lost ? " (" + lost + " lost)" : "");
};
const accText = (h) => (h.accelerators || []).map((a) => a.vendor + " " + a.product + " @ " + a.pci_address).join("; ") || "none";

async function refresh() {
  $("error").textContent = "";
  try {
    await loadFlags();
    await loadTable("/api/v1/hosts", "host-rows", ["host_id", "hostname", "tenant", "last_seq", "reports", "gaps", "last_seen", gpuText, evidenceText, locationText, accText]);
    await loadTable("/api/v1/audit", "audit-rows", ["at", "actor", "action", "target", "detail"]);
  } catch (e) { $("error").textContent = e.message; }
}

async function signIn(t) {
  token = t.trim();
  try {
    await api("/api/v1/flags");
    sessionStorage.setItem("gpuattest-token", token);
    $("signin").hidden = true; $("app").hidden = false;
    refresh();
  } catch (e) { $("signin-error").textContent = "sign-in failed: " + e.message; }
}

$("signin-form").onsubmit = (ev) => { ev.preventDefault(); signIn($("token").value); };
$("signout").onclick = (ev) => { ev.preventDefault(); sessionStorage.removeItem("gpuattest-token"); location.reload(); };
for (const id of ["f-sev", "f-status", "f-rule", "f-tenant", "f-host"]) $(id).onchange = renderFlags;
if (token) signIn(token);
