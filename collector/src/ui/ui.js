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
    const sel = document.createElement("select");
    for (const d of ["confirm", "dismiss", "escalate"]) { const o = document.createElement("option"); o.textContent = d; sel.appendChild(o); }
    const reason = document.createElement("input"); reason.placeholder = "reason (required)";
    const btn = document.createElement("button"); btn.textContent = "Record";
    btn.onclick = async () => {
      if (!reason.value.trim()) { reason.focus(); return; }
      try { await api("/api/v1/flags/" + f.id + "/decision", { method: "POST", body: JSON.stringify({ decision: sel.value, reason: reason.value }) }); refresh(); }
      catch (e) { $("error").textContent = e.message; }
    };
    td.append(sel, reason, btn);
    tr.appendChild(td);
    body.appendChild(tr);
  }
}

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
