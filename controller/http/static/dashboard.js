// mlcanary dashboard: polls the admin API with the pasted bearer token (kept in sessionStorage only).
"use strict";

(function () {
  const API = "/api/v1";
  const POLL_MS = 3000;
  const TOKEN_KEY = "mlcanary.token";
  let selected = null;
  let timer = null;
  let lastEventId = 0;

  const $ = (sel) => document.querySelector(sel);

  function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

  function setStatus(text, isError) {
    const el = $("#status");
    el.textContent = text;
    el.className = isError ? "error" : "muted";
  }

  async function api(path, options) {
    const opts = Object.assign({ headers: {} }, options || {});
    opts.headers = Object.assign({ "Authorization": "Bearer " + token(), "Accept": "application/json" }, opts.headers);
    const response = await fetch(API + path, opts);
    if (!response.ok) {
      let message = response.status + " " + response.statusText;
      try { const body = await response.json(); if (body && body.error) message = body.error.message; } catch (e) { /* not JSON */ }
      const error = new Error(message);
      error.status = response.status;
      throw error;
    }
    return response;
  }

  function cell(row, text, cls) {
    const td = document.createElement("td");
    td.textContent = text === null || text === undefined ? "–" : String(text);
    if (cls) td.className = cls;
    row.appendChild(td);
    return td;
  }

  function fmt(x, digits) {
    if (x === null || x === undefined) return "–";
    return Number(x).toPrecision(digits || 3);
  }

  function pct(x) { return x === null || x === undefined ? "–" : (100 * x).toFixed(2) + "%"; }

  function outcomeLabel(o) {
    if (typeof o === "number") return ["pass", "inconclusive", "no-data", "fail"][o] || String(o);
    return String(o || "unknown").toLowerCase().replace("_", "-");
  }

  function renderDeployments(items) {
    const body = $("#deployments tbody");
    body.replaceChildren();
    if (!items.length) {
      const tr = document.createElement("tr");
      const td = cell(tr, "No deployments yet.", "muted");
      td.colSpan = 8;
      body.appendChild(tr);
      return;
    }
    for (const d of items) {
      const tr = document.createElement("tr");
      tr.dataset.name = d.name;
      if (d.name === selected) tr.className = "selected";
      cell(tr, d.name);
      cell(tr, d.phase, "phase phase-" + d.phase);
      cell(tr, d.champion);
      cell(tr, d.challenger);
      cell(tr, d.mode);
      cell(tr, d.step_index);
      cell(tr, d.weights ? d.weights.challenger + "%" : null, "n");
      cell(tr, d.weights ? d.weights.shadow_rate : null, "n");
      tr.addEventListener("click", () => { select(d.name); });
      body.appendChild(tr);
    }
  }

  function renderDetail(d) {
    $("#detail").hidden = false;
    $("#detail-title").textContent = d.name + " — " + d.phase;
    const r = d.rollout;
    $("#detail-summary").textContent = r
      ? "Rollout " + r.id + " (" + r.phase + "): " + r.challenger + " against " + r.champion + ", " + r.mode + ", step " + r.step_index +
        ", challenger weight " + r.canary_weight + "%, shadow rate " + r.shadow_rate + "; started by " + r.created_by +
        (r.reason ? "; last reason: " + r.reason : "")
      : "Champion " + d.champion + "; no rollout yet.";
    const active = r && r.active;
    for (const b of document.querySelectorAll("[data-action]")) {
      const a = b.dataset.action;
      b.disabled = !active || (a === "resume" && r.phase !== "paused") || (a === "pause" && r.phase === "paused");
    }
    $("#open-report").disabled = !r;
    $("#download-report").disabled = !r;
    const live = $("#live tbody");
    live.replaceChildren();
    if (d.live && d.live.arms) {
      for (const arm of ["champion", "challenger"]) {
        const a = d.live.arms[arm];
        if (!a) continue;
        const tr = document.createElement("tr");
        cell(tr, arm);
        cell(tr, a.served, "n"); cell(tr, a.scored, "n"); cell(tr, a.errors, "n");
        cell(tr, pct(a.error_rate), "n");
        cell(tr, fmt(a.latency_ms && a.latency_ms.p50), "n");
        cell(tr, fmt(a.latency_ms && a.latency_ms.p99), "n");
        live.appendChild(tr);
      }
    }
    const verdicts = $("#verdicts tbody");
    verdicts.replaceChildren();
    const last = d.last_analysis;
    $("#verdict-meta").textContent = last
      ? "(" + outcomeLabel(last.outcome) + " at " + last.evaluated_at + ", step " + last.step + ")" : "(none yet)";
    if (last) {
      for (const v of last.verdicts || []) {
        const tr = document.createElement("tr");
        // informational gates are reported, never decide: not a red "fail" (o-noted is neutral)
        const o = v.role === "informational" && v.outcome === "fail" ? "noted" : outcomeLabel(v.outcome);
        cell(tr, v.gate); cell(tr, v.role); cell(tr, o, "o-" + o); cell(tr, v.reason);
        verdicts.appendChild(tr);
      }
    }
  }

  async function refreshEvents() {
    if (!selected) return;
    const response = await api("/deployments/" + encodeURIComponent(selected) + "/events?after_id=" + lastEventId + "&limit=200");
    const body = await response.json();
    const tbody = $("#events tbody");
    for (const e of body.events) {
      const tr = document.createElement("tr");
      cell(tr, e.at); cell(tr, e.actor); cell(tr, e.action); cell(tr, e.reason); cell(tr, e.message);
      tbody.insertBefore(tr, tbody.firstChild);
    }
    lastEventId = body.next_after_id;
  }

  async function refresh() {
    if (!token()) { setStatus("no token yet", false); return; }
    try {
      const list = await (await api("/deployments")).json();
      const items = list.deployments || list;
      renderDeployments(items);
      if (!selected && items.length) selected = items[0].name;
      if (selected) {
        const detail = await (await api("/deployments/" + encodeURIComponent(selected))).json();
        renderDetail(detail);
        await refreshEvents();
      }
      $("#refreshed").textContent = "updated " + new Date().toLocaleTimeString();
      setStatus("connected", false);
    } catch (error) {
      setStatus(error.status === 401 ? "the token was refused: paste a valid one" : "error: " + error.message, true);
    }
  }

  function select(name) {
    if (name !== selected) {
      selected = name;
      lastEventId = 0;
      $("#events tbody").replaceChildren();
    }
    refresh();
  }

  function start() {
    if (timer) clearInterval(timer);
    refresh();
    timer = setInterval(refresh, POLL_MS);
  }

  const VERBS = {
    promote: "Promote the challenger to the next step (or straight to 100%)",
    pause: "Pause the rollout: hold the current split and stop automatic decisions",
    resume: "Resume the paused rollout",
    rollback: "Roll back: send all traffic to the champion and end this rollout",
  };

  function confirmAction(action) {
    const dialog = $("#confirm");
    $("#confirm-title").textContent = action.charAt(0).toUpperCase() + action.slice(1) + " " + selected + "?";
    $("#confirm-text").textContent = VERBS[action] + ".";
    $("#confirm-reason").value = "";
    $("#confirm-full").checked = false;
    $("#full-row").hidden = action !== "promote";
    dialog.dataset.action = action;
    dialog.showModal();
  }

  async function perform(action) {
    const body = { reason: $("#confirm-reason").value || ("dashboard " + action) };
    if (action === "promote") body.full = $("#confirm-full").checked;
    try {
      await api("/deployments/" + encodeURIComponent(selected) + "/rollout/" + action, {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
      });
      setStatus(action + " done", false);
    } catch (error) {
      setStatus(action + " failed: " + error.message, true);
    }
    refresh();
  }

  async function openReport(asJson) {
    try {
      const response = await api("/deployments/" + encodeURIComponent(selected) + "/report" + (asJson ? "" : "?format=html"),
        { headers: { "Accept": asJson ? "application/json" : "text/html" } });
      const blob = new Blob([await response.text()], { type: asJson ? "application/json" : "text/html" });
      const url = URL.createObjectURL(blob);
      if (asJson) {
        const a = document.createElement("a");
        a.href = url; a.download = selected + "-report.json"; a.click();
      } else {
        window.open(url, "_blank", "noopener");
      }
      setTimeout(() => URL.revokeObjectURL(url), 60000);
    } catch (error) {
      setStatus("report failed: " + error.message, true);
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("#token").value = token();
    $("#token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, $("#token").value.trim());
      start();
    });
    $("#forget").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      $("#token").value = "";
      setStatus("token forgotten", false);
    });
    for (const b of document.querySelectorAll("[data-action]")) {
      b.addEventListener("click", () => confirmAction(b.dataset.action));
    }
    $("#confirm-cancel").addEventListener("click", () => $("#confirm").close("cancel"));
    $("#confirm-form").addEventListener("submit", () => {
      const action = $("#confirm").dataset.action;
      setTimeout(() => perform(action), 0);
    });
    $("#open-report").addEventListener("click", () => openReport(false));
    $("#download-report").addEventListener("click", () => openReport(true));
    if (token()) start();
  });
})();
