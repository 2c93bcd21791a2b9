// mlcanary dashboard: polls the admin API with the pasted bearer token (kept in sessionStorage only).
// Everything shown is set with textContent or built as SVG elements: no HTML from the server is parsed.
"use strict";

(function () {
  const API = "/api/v1";
  const POLL_MS = 3000;
  const TOKEN_KEY = "mlcanary.token";
  const SVG = "http://www.w3.org/2000/svg";
  let selected = null;
  let timer = null;
  let busy = false;
  let lastAction = "";
  let showFolded = false;

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

  // ------------------------------------------------------------------------------------ formatting
  const DASH = "–";
  const missing = (x) => x === null || x === undefined || (typeof x === "number" && !isFinite(x));

  function cell(row, text, cls) {
    const td = document.createElement("td");
    td.textContent = missing(text) ? DASH : String(text);
    if (cls) td.className = cls;
    row.appendChild(td);
    return td;
  }

  function count(x) { return missing(x) ? DASH : Number(x).toLocaleString("en-US"); }

  function pct(x, digits) {
    if (missing(x)) return DASH;
    const v = 100 * x;
    const d = digits !== undefined ? digits : (Math.abs(v) >= 10 ? 1 : 2);
    return v.toFixed(d) + "%";
  }

  function ms(x) {
    if (missing(x)) return DASH;
    return x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2);
  }

  // A gate's value in its own unit: shares as %, differences of shares as points, ratios and PSI plain.
  const SHARE_GATES = ["agreement", "agreement_proxy", "coverage"];
  const PLAIN_GATES = ["latency_p99", "latency_p99_slo", "drift", "srm"];
  function gateValue(gate, x) {
    if (missing(x)) return DASH;
    if (PLAIN_GATES.includes(gate)) return Number(x).toFixed(3);
    if (SHARE_GATES.includes(gate) || gate === "regression") return (100 * x).toFixed(2) + "%";
    return (100 * x).toFixed(Math.abs(x) >= 0.1 ? 1 : 2) + " pt";
  }

  function ago(seconds) {
    if (missing(seconds)) return "";
    const s = Math.round(seconds);
    if (s < 60) return s + " s ago";
    if (s < 3600) return Math.round(s / 60) + " min ago";
    if (s < 86400) return (s / 3600).toFixed(1) + " h ago";
    return (s / 86400).toFixed(1) + " days ago";
  }

  function clock(iso) {
    if (!iso) return DASH;
    const d = new Date(iso);
    return isNaN(d) ? String(iso) : d.toISOString().slice(11, 19);
  }

  function dayClock(iso) {
    if (!iso) return DASH;
    const d = new Date(iso);
    return isNaN(d) ? String(iso) : d.toISOString().slice(5, 10) + " " + d.toISOString().slice(11, 19);
  }

  function outcomeLabel(o) {
    if (typeof o === "number") return ["pass", "inconclusive", "no-data", "fail"][o] || String(o);
    return String(o || "unknown").toLowerCase().replace("_", "-");
  }

  function stateBadge(el, state) {
    el.textContent = state ? state.label : "stable";
    el.className = "badge phase tone-" + (state ? state.tone : "idle");
  }

  // ------------------------------------------------------------------------------------ deployments
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
      cell(tr, d.name, "name");
      const td = document.createElement("td");
      const badge = document.createElement("span");
      stateBadge(badge, d.state || { label: d.phase, tone: d.phase === "stable" ? "idle" : "live" });
      td.appendChild(badge);
      if (d.state && !d.state.active && d.state.since) {
        const age = document.createElement("span");
        age.className = "age muted small";
        age.textContent = " " + ago(d.state.age_s);
        td.appendChild(age);
      }
      tr.appendChild(td);
      cell(tr, d.champion);
      cell(tr, d.challenger);
      cell(tr, d.mode);
      cell(tr, d.step_index, "n");
      cell(tr, d.weights ? d.weights.challenger + "%" : null, "n");
      cell(tr, d.weights ? pct(d.weights.shadow_rate, 0) : null, "n");
      tr.addEventListener("click", () => { select(d.name); });
      body.appendChild(tr);
    }
  }

  // ------------------------------------------------------------------------------------ detail
  function renderDetail(d, o) {
    $("#detail").hidden = false;
    $("#detail-title").textContent = d.name;
    stateBadge($("#detail-state"), o.state);
    $("#detail-since").textContent = o.state && o.state.since
      ? (o.state.active ? "step started " : "ended ") + ago(o.state.age_s) : "";
    // The status document's verdict (the report's sentence) wins; the dashboard's own is the fallback.
    $("#verdict").textContent = d.verdict || o.verdict || "";
    $("#verdict").className = "verdict tone-" + (o.state ? o.state.tone : "idle");
    const r = d.rollout;
    $("#detail-summary").textContent = r
      ? "Rollout " + r.id + ": " + r.challenger + " against " + r.champion + ", mode " + r.mode + ", started by " + r.created_by +
        " at " + dayClock(r.created_at) + " UTC"
      : "Champion " + d.champion + "; no rollout yet.";
    const active = !!(r && r.active);
    for (const b of document.querySelectorAll("[data-action]")) {
      const a = b.dataset.action;
      b.disabled = !active || (a === "resume" && r.phase !== "paused") || (a === "pause" && r.phase === "paused");
    }
    $("#open-report").disabled = !r;
    $("#download-report").disabled = !r;
    renderPlan(o);
    renderLive(d, active);
    renderVerdicts(d, active);
    renderPlots(o.series);
    renderTimeline(o.timeline || []);
  }

  function renderPlan(o) {
    const block = $("#plan-block");
    block.hidden = !o.plan;
    if (!o.plan) return;
    const list = $("#plan");
    list.replaceChildren();
    for (const stage of o.plan) {
      const li = document.createElement("li");
      li.className = "stage s-" + stage.status.replace("_", "-");
      const name = document.createElement("span");
      name.className = "stage-name";
      name.textContent = stage.label;
      const status = document.createElement("span");
      status.className = "stage-status small";
      status.textContent = stage.status.replace("_", " ");
      li.append(name, status);
      list.appendChild(li);
    }
    const p = o.progress;
    const share = p && p.needed ? Math.min(1, p.samples / p.needed) : 0;
    $("#progress-bar").style.width = (100 * share).toFixed(1) + "%";
    $("#progress-bar").className = "tone-" + (o.state ? o.state.tone : "idle");
    let text = p ? p.text : "";
    if (p && o.state && o.state.active && p.min_duration_s) {
      text += " · step running " + Math.round(p.step_elapsed_s) + " s of at least " + Math.round(p.min_duration_s) + " s";
    }
    $("#progress-text").textContent = text;
  }

  function renderLive(d, active) {
    // Live figures belong to a running step: once the rollout ends they are history (see the report).
    $("#live-block").hidden = !active;
    const live = $("#live tbody");
    live.replaceChildren();
    $("#shadow-line").textContent = "";
    if (!active || !d.live || !d.live.arms) return;
    for (const arm of ["champion", "challenger"]) {
      const a = d.live.arms[arm];
      if (!a) continue;
      const tr = document.createElement("tr");
      cell(tr, arm, "arm-" + arm);
      cell(tr, count(a.served), "n"); cell(tr, count(a.scored), "n"); cell(tr, count(a.errors), "n");
      cell(tr, pct(a.error_rate), "n");
      cell(tr, ms(a.latency_ms && a.latency_ms.p50), "n");
      cell(tr, ms(a.latency_ms && a.latency_ms.p99), "n");
      live.appendChild(tr);
    }
    const sh = d.live.shadow;
    if (sh && sh.sampled) {
      const skipped = Object.entries(sh.skipped || {}).map(([k, n]) => k + " " + count(n)).join(", ") || "none";
      $("#shadow-line").textContent = "Shadow coverage " + pct(sh.coverage, 1) + " (" + count(sh.scored) + " of " +
        count(sh.sampled) + " sampled requests scored); skipped: " + skipped + "; queue wait mean " +
        ms(sh.queue_wait_ms && sh.queue_wait_ms.mean) + " ms.";
    }
  }

  function renderVerdicts(d, active) {
    const verdicts = $("#verdicts tbody");
    verdicts.replaceChildren();
    const last = d.last_analysis;
    $("#verdict-meta").textContent = last
      ? "(" + outcomeLabel(last.outcome) + " at " + clock(last.evaluated_at) + " UTC, step " + last.step + (active ? "" : ", the last look") + ")"
      : "(none yet)";
    if (!last) return;
    // Gates that decide first (required, vetoes, guardrails); informational gates without data folded.
    const order = { required: 0, veto: 1, guardrail: 2, proxy: 3, informational: 4 };
    const all = (last.verdicts || []).slice().sort((a, b) => (order[a.role] ?? 5) - (order[b.role] ?? 5));
    const quiet = (v) => v.role === "informational" && outcomeLabel(v.outcome) === "no-data";
    const folded = all.filter(quiet);
    for (const v of all) {
      const tr = document.createElement("tr");
      // informational gates are reported, never decide: not a red "fail" (o-noted is neutral)
      const o = v.role === "informational" && v.outcome === "fail" ? "noted" : outcomeLabel(v.outcome);
      if (quiet(v)) { tr.className = "folded"; tr.hidden = !showFolded; }
      cell(tr, v.gate, "nowrap"); cell(tr, v.role); cell(tr, o, "nowrap o-" + o);
      cell(tr, gateValue(v.gate, v.effect), "n"); cell(tr, gateValue(v.gate, v.margin), "n");
      cell(tr, count((v.n_champion || 0) + (v.n_challenger || 0)), "n");
      cell(tr, v.reason, "why");
      verdicts.appendChild(tr);
    }
    if (folded.length) {
      const tr = document.createElement("tr");
      const td = document.createElement("td");
      td.colSpan = 7;
      const button = document.createElement("button");
      button.type = "button";
      button.className = "link small";
      button.id = "toggle-folded";
      button.textContent = showFolded
        ? "hide the " + folded.length + " informational gates without data"
        : "show " + folded.length + " more informational gates without data (" + folded.map((v) => v.gate).join(", ") + ")";
      button.addEventListener("click", () => {
        showFolded = !showFolded;
        renderVerdicts(d, active);
      });
      td.appendChild(button);
      tr.appendChild(td);
      verdicts.appendChild(tr);
    }
  }

  function renderTimeline(events) {
    const tbody = $("#events tbody");
    tbody.replaceChildren();
    for (const e of events) {
      const tr = document.createElement("tr");
      const kind = e.action.split(".").pop();
      tr.className = "ev-" + kind;
      cell(tr, dayClock(e.at), "nowrap");
      const what = cell(tr, e.action, "nowrap event");
      what.title = e.reason || "";
      cell(tr, e.actor, "nowrap");
      const said = e.message && e.reason && e.message.startsWith(e.reason) ? [e.message] : [e.reason, e.message];
      cell(tr, said.filter(Boolean).join(": "), "why");
      tbody.appendChild(tr);
    }
  }

  // ------------------------------------------------------------------------------------ plots
  function svg(tag, attrs, parent) {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
    if (parent) parent.appendChild(el);
    return el;
  }

  // One small multiple: lines over time, an optional band and horizontal reference line, step marks.
  function plot(spec) {
    const W = 360, H = 150, L = 48, R = 10, T = 10, B = 22;
    const fig = document.createElement("figure");
    fig.className = "plot-card";
    fig.dataset.plot = spec.id;
    const cap = document.createElement("figcaption");
    cap.textContent = spec.title;
    fig.appendChild(cap);
    const xs = [], ys = [];
    for (const s of spec.lines) for (const [t, y] of s.points) { if (!missing(y)) { xs.push(t); ys.push(y); } }
    for (const [t, lo, hi] of spec.band || []) {
      if (!missing(lo) && !missing(hi)) { xs.push(t); ys.push(lo, hi); }
    }
    if (xs.length && !missing(spec.hline)) ys.push(spec.hline);
    if (!xs.length) {
      const p = document.createElement("p");
      p.className = "muted small empty";
      p.textContent = spec.empty || "no data yet";
      fig.appendChild(p);
      return fig;
    }
    let x0 = Math.min(...xs), x1 = Math.max(...xs);
    if (x1 - x0 < 1000) { x0 -= 1000; x1 += 1000; }
    // Bounds: the data and the reference line, padded 8%; a flat series gets at least minSpan (zero
    // errors read as a line at 0%, not a band of ±100%); never below ymin or above ymax when the data
    // respect them; shares (full) always show their whole 0..1 range.
    const lo = Math.min(...ys), hi = Math.max(...ys);
    const span = Math.max(hi - lo, spec.minSpan || Math.abs(hi) * 0.2 || 1);
    const mid = (lo + hi) / 2;
    let y0 = Math.min(lo, mid - span / 2) - span * 0.08;
    let y1 = Math.max(hi, mid + span / 2) + span * 0.08;
    if (spec.ymin !== undefined && lo >= spec.ymin && y0 < spec.ymin) { y1 += spec.ymin - y0; y0 = spec.ymin; }
    if (spec.ymax !== undefined && hi <= spec.ymax && y1 > spec.ymax) y1 = spec.ymax;
    if (spec.full) { y0 = Math.min(y0, spec.ymin); y1 = Math.max(y1, spec.ymax); }
    const X = (t) => L + (W - L - R) * (t - x0) / (x1 - x0);
    const Y = (y) => T + (H - T - B) * (1 - (y - y0) / (y1 - y0));
    const root = svg("svg", { viewBox: "0 0 " + W + " " + H, class: "plot", role: "img", "aria-label": spec.title });
    for (const v of [y0, (y0 + y1) / 2, y1]) {
      svg("line", { x1: L, x2: W - R, y1: Y(v), y2: Y(v), class: "grid" }, root);
      const label = svg("text", { x: L - 4, y: Y(v) + 3, class: "tick", "text-anchor": "end" }, root);
      label.textContent = spec.fmt(v);
    }
    for (const [t, anchor] of [[x0, "start"], [x1, "end"]]) {
      const label = svg("text", { x: X(t), y: H - 6, class: "tick", "text-anchor": anchor }, root);
      label.textContent = new Date(t).toISOString().slice(11, 19);
    }
    for (const t of spec.steps || []) {
      if (t > x0 && t < x1) svg("line", { x1: X(t), x2: X(t), y1: T, y2: H - B, class: "step-mark" }, root);
    }
    const band = (spec.band || []).filter(([, lo, hi]) => !missing(lo) && !missing(hi));
    if (band.length) {
      const upper = band.map(([t, , hi]) => X(t).toFixed(1) + "," + Y(Math.min(hi, y1)).toFixed(1));
      const lower = band.slice().reverse().map(([t, lo]) => X(t).toFixed(1) + "," + Y(Math.max(lo, y0)).toFixed(1));
      if (band.length === 1) {  // one look so far: its interval as a bar
        const [t, lo, hi] = band[0];
        svg("rect", { x: X(t) - 3, width: 6, y: Y(Math.min(hi, y1)), height: Math.max(1, Y(Math.max(lo, y0)) - Y(Math.min(hi, y1))), class: "band" }, root);
      } else {
        svg("polygon", { points: upper.concat(lower).join(" "), class: "band" }, root);
      }
    }
    if (!missing(spec.hline)) {
      svg("line", { x1: L, x2: W - R, y1: Y(spec.hline), y2: Y(spec.hline), class: "margin" }, root);
    }
    for (const s of spec.lines) {
      const pts = s.points.filter(([, y]) => !missing(y));
      if (pts.length > 1) {
        svg("polyline", { points: pts.map(([t, y]) => X(t).toFixed(1) + "," + Y(y).toFixed(1)).join(" "), class: "line " + s.cls }, root);
      }
      const lastPt = pts[pts.length - 1];
      if (pts.length === 1 || lastPt) svg("circle", { cx: X(lastPt[0]), cy: Y(lastPt[1]), r: 2.5, class: "dot " + s.cls }, root);
    }
    fig.appendChild(root);
    if (spec.note) {
      const note = document.createElement("p");
      note.className = "muted small note";
      note.textContent = spec.note;
      fig.appendChild(note);
    }
    return fig;
  }

  const GATE_TITLES = {
    error_rate: "Error rate difference (challenger − champion)",
    accuracy: "Accuracy difference (challenger − champion)",
    balanced_accuracy: "Balanced accuracy difference (challenger − champion)",
    agreement: "Agreement (share of identical predictions)",
    regression: "Mean absolute error, relative change",
    coverage: "Shadow coverage gate",
  };

  const ARM_TITLES = {
    error_rate: "Error rate",
    accuracy: "Accuracy",
    regression: "Mean absolute error",
    latency_p99: "Latency p99 (ms, the judge's histogram)",
  };
  const ARM_SHARES = ["error_rate", "accuracy"];
  const ARM_FORMATS = {
    error_rate: (v) => pct(v, 2),
    accuracy: (v) => pct(v, 1),
    latency_p99: (v) => ms(v),
  };

  function renderPlots(series) {
    const box = $("#plots");
    box.replaceChildren();
    if (!series) { $("#plots-meta").textContent = "(no rollout yet)"; return; }
    $("#plots-meta").textContent = "(buckets of " + series.bucket_s + " s; gates at each look of the controller)";
    const t = (iso) => Date.parse(iso);
    const steps = (series.steps || []).slice(1).map((s) => t(s.at));
    const pts = series.points || [];
    for (const g of series.gates || []) {
      const looks = g.looks || [];
      const last = looks[looks.length - 1];
      box.appendChild(plot({
        id: "gate-" + g.gate,
        title: (GATE_TITLES[g.gate] || g.gate) + " · " + (g.role || "") + (last ? " · " + outcomeLabel(last.outcome) : ""),
        lines: [{ cls: "challenger", points: looks.map((l) => [t(l.at), l.effect]) }],
        band: looks.map((l) => [t(l.at), l.lower, l.upper]),
        hline: g.threshold,
        steps: steps,
        fmt: (v) => gateValue(g.gate, v),
        note: missing(g.threshold) ? "" : "margin " + gateValue(g.gate, g.threshold) + (last ? "; effect now " + gateValue(g.gate, last.effect) + ", n " + count(last.n) : ""),
        empty: "no look has measured this gate yet",
      }));
      if (looks.some((l) => !missing(l.champion))) {  // what each arm had, beside the difference judged
        const armFmt = ARM_FORMATS[g.gate] || ((v) => Number(v).toPrecision(3));
        box.appendChild(plot({
          id: "gate-arms-" + g.gate,
          title: (ARM_TITLES[g.gate] || g.gate) + " per arm, as the gate measured it at each look",
          lines: ["champion", "challenger"].map((arm) => ({ cls: arm, points: looks.map((l) => [t(l.at), l[arm]]) })),
          steps: steps,
          fmt: armFmt,
          ymin: 0,
          ...(ARM_SHARES.includes(g.gate) ? { ymax: 1, minSpan: 0.01 } : {}),
          note: last && !missing(last.champion) ? "now: champion " + armFmt(last.champion) + ", challenger " + armFmt(last.challenger) : "",
          empty: "no look has measured this gate per arm yet",
        }));
      }
    }
    const arms = ["champion", "challenger"];
    const line = (key) => arms.map((arm) => ({ cls: arm, points: pts.map((p) => [t(p.at), p[key][arm]]) }));
    box.appendChild(plot({ id: "p99", title: "Latency p99 (ms) per arm", lines: line("p99_ms"), steps, fmt: ms, ymin: 0, minSpan: 1 }));
    box.appendChild(plot({ id: "errors", title: "Error rate per arm", lines: line("error_rate"), steps, fmt: (v) => pct(v, 1), ymin: 0, ymax: 1, minSpan: 0.01 }));
    box.appendChild(plot({ id: "traffic", title: "Traffic share answered per arm", lines: line("share"), steps, fmt: (v) => pct(v, 0), ymin: 0, ymax: 1, full: true }));
    const skipped = pts.reduce((n, p) => n + p.skipped, 0);
    const sampled = pts.reduce((n, p) => n + p.sampled, 0);
    box.appendChild(plot({
      id: "coverage",
      title: "Shadow coverage (scored / sampled)",
      lines: [{ cls: "coverage", points: pts.map((p) => [t(p.at), p.coverage]) }],
      steps, fmt: (v) => pct(v, 0), ymin: 0, ymax: 1, full: true,
      note: count(skipped) + " of " + count(sampled) + " sampled requests skipped by the router (not errors)",
      empty: "no shadow sample yet",
    }));
  }

  // ------------------------------------------------------------------------------------ polling
  async function refresh() {
    if (!token()) { setStatus("no token yet", false); return; }
    if (busy) return;
    busy = true;
    try {
      const list = await (await api("/deployments")).json();
      const items = list.deployments || list;
      if (!selected && items.length) selected = items[0].name;
      renderDeployments(items);
      if (selected) {
        const name = encodeURIComponent(selected);
        const [detail, overview] = await Promise.all([
          api("/deployments/" + name).then((r) => r.json()),
          api("/deployments/" + name + "/dashboard").then((r) => r.json()),
        ]);
        if (detail.name === selected) renderDetail(detail, overview);
      }
      $("#refreshed").textContent = "updated " + new Date().toISOString().slice(11, 19) + " UTC";
      setStatus("connected" + (lastAction ? " · " + lastAction : ""), false);
    } catch (error) {
      setStatus(error.status === 401 ? "the token was refused: paste a valid one" : "error: " + error.message, true);
    } finally {
      busy = false;
    }
  }

  function select(name) {
    if (name !== selected) {
      selected = name;
      lastAction = "";
      $("#events tbody").replaceChildren();
      $("#plots").replaceChildren();
    }
    refresh();
  }

  function start() {
    if (timer) clearInterval(timer);
    setStatus("connecting", false);
    refresh();
    timer = setInterval(refresh, POLL_MS);
  }

  // ------------------------------------------------------------------------------------ actions
  const VERBS = {
    promote: "Promote the challenger to the next step (or straight to 100%)",
    pause: "Pause the rollout: hold the current split and stop automatic decisions",
    resume: "Resume the paused rollout",
    rollback: "Roll back: send all traffic to the champion and end this rollout",
    abort: "Abort the rollout without a verdict: all traffic returns to the champion at once and the rollout ends",
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
      const response = await api("/deployments/" + encodeURIComponent(selected) + "/rollout/" + action, {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
      });
      const rollout = await response.json();
      lastAction = action + " done: rollout " + rollout.id + " is now " + String(rollout.phase).replace("_", " ");
      setStatus(lastAction, false);
    } catch (error) {
      lastAction = "";
      setStatus(action + " failed: " + error.message, true);
      return;
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
