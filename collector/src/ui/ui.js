// The review UI. Every value from the server is placed with textContent, never as HTML: command lines
// and model names are tenant-controlled. The token lives in sessionStorage and travels only in the
// Authorization header (no cookies, so no CSRF).
"use strict";
const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem("gpuattest-token") || "";

async function api(path, opts = {}) {
  const res = await fetch(path, { ...opts, headers: { ...(opts.headers || {}), Authorization: "Bearer " + token, "Content-Type": "application/json" } });
  if (!res.ok) throw new Error(path + ": " + res.status + " " + (await res.text()));
  return res.json();
}

function cell(tr, text, cls) {
  const td = document.createElement("td");
  const span = document.createElement("span");
  span.textContent = text == null ? "" : String(text);
  if (cls) span.className = cls;
  td.appendChild(span);
  tr.appendChild(td);
  return td;
}

async function loadFlags() {
  const flags = await api("/api/v1/flags");
  const sev = $("f-sev").value, status = $("f-status").value;
  const shown = flags.filter((f) => (!sev || f.severity === sev) && (!status || f.status === status));
  $("flag-count").textContent = "(" + shown.length + " of " + flags.length + ")";
  const body = $("flag-rows");
  body.replaceChildren();
  for (const f of shown) {
    const tr = document.createElement("tr");
    cell(tr, f.id); cell(tr, f.severity, "sev-" + f.severity); cell(tr, f.rule); cell(tr, f.status);
    cell(tr, f.host_id); cell(tr, f.tenant); cell(tr, f.summary).className = "summary";
    const td = document.createElement("td");
    const open = document.createElement("a");
    open.textContent = "open";
    open.className = "open";
    open.href = "#flag-" + f.id;
    open.onclick = (ev) => { ev.preventDefault(); showFlag(f); };
    td.appendChild(open);
    tr.appendChild(td);
    body.appendChild(tr);
  }
}

let current = null;

function showFlag(f) {
  current = f;
  $("d-id").textContent = String(f.id);
  $("d-severity").textContent = f.severity;
  $("d-severity").className = "sev-" + f.severity;
  $("d-rule").textContent = f.rule;
  $("d-status").textContent = f.status;
  $("d-host").textContent = f.host_id;
  $("d-tenant").textContent = f.tenant == null ? "-" : f.tenant;
  $("d-summary").textContent = f.summary;
  $("d-evidence").textContent = JSON.stringify(f.evidence, null, 2);
  $("d-reason").value = "";
  $("detail").hidden = false;
  $("detail").scrollIntoView();
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
$("d-back").onclick = (ev) => { ev.preventDefault(); $("detail").hidden = true; };

async function loadTable(path, id, fields) {
  let rows;
  try { rows = await api(path); } catch (e) { $(id).replaceChildren(); return; }
  const body = $(id);
  body.replaceChildren();
  for (const r of rows) { const tr = document.createElement("tr"); for (const k of fields) cell(tr, r[k]); body.appendChild(tr); }
}

async function refresh() {
  $("error").textContent = "";
  try {
    await loadFlags();
    await loadTable("/api/v1/hosts", "host-rows", ["host_id", "hostname", "tenant", "last_seq", "reports", "gaps", "last_seen"]);
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
$("f-sev").onchange = loadFlags; $("f-status").onchange = loadFlags;
if (token) signIn(token);
