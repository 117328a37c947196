// lensnet dashboard client: plain JS, no libraries, no network beyond this server.
"use strict";
const state = { data: null, rows: [], marks: {}, page: 0, pageSize: 24, view: [], current: null };
const $ = (id) => document.getElementById(id);
const num = (v) => (v === "" || v === undefined ? NaN : Number(v));
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const fileUrl = (p) => "/files/" + p.split("/").map(encodeURIComponent).join("/");

async function load() {
  const response = await fetch("/api/results");
  state.data = await response.json();
  state.rows = state.data.rows;
  state.marks = state.data.marks;
  const numeric = state.data.numeric;
  for (const id of ["sort-column", "filter-column", "metric-column"]) {
    $(id).innerHTML = numeric.map((c) => `<option value="${esc(c)}">${esc(c)}</option>`).join("");
  }
  const preferred = numeric.includes("finder_score") ? "finder_score" : numeric[0];  // the score people sort by
  for (const id of ["sort-column", "filter-column", "metric-column"]) if (preferred) $(id).value = preferred;
  const methods = (state.data.pipeline.interpretation || {}).methods || [];
  $("overlay-method").innerHTML = methods.map((m) => `<option value="${esc(m)}">${esc(m)}</option>`).join("");
  $("overlay-toggle").disabled = methods.length === 0;
  const stages = Object.entries(state.data.pipeline.stages || {}).map(([n, s]) => `${n}: ${s.name} v${s.version}`);
  $("summary").textContent = `${state.rows.length} candidates · ${stages.join(" · ")}`;
  $("metrics-note").textContent = state.data.has_labels ? "" : "No ground-truth labels in this results folder (pipeline --labels).";
  $("tab-metrics").disabled = !state.data.has_labels;
  loadRun();
  render();
  renderMetrics();
}

function filtered() {
  const col = $("filter-column").value, lo = num($("filter-min").value), hi = num($("filter-max").value);
  const text = $("filter-text").value.trim().toLowerCase(), mark = $("filter-mark").value;
  const rows = state.rows.filter((r) => {
    const v = num(r[col]);
    if (!Number.isNaN(lo) && !(v >= lo)) return false;
    if (!Number.isNaN(hi) && !(v <= hi)) return false;
    if (text && !Object.values(r).some((x) => String(x).toLowerCase().includes(text))) return false;
    const m = state.marks[r.id];
    if (mark === "none" && m) return false;
    if (mark && mark !== "none" && m !== mark) return false;
    return true;
  });
  const sortCol = $("sort-column").value, dir = $("sort-dir").value === "asc" ? 1 : -1;
  rows.sort((a, b) => {
    const x = num(a[sortCol]), y = num(b[sortCol]);
    if (Number.isNaN(x) && Number.isNaN(y)) return 0;
    if (Number.isNaN(x)) return 1;
    if (Number.isNaN(y)) return -1;
    return dir * (x - y) || a.id.localeCompare(b.id);
  });
  return rows;
}

function imageFor(row) {
  const method = $("overlay-method").value;
  if ($("overlay-toggle").checked && method && row["overlay_" + method]) return row["overlay_" + method];
  return row.thumbnail;
}

function render() {
  state.view = filtered();
  const pages = Math.max(1, Math.ceil(state.view.length / state.pageSize));
  state.page = Math.min(state.page, pages - 1);
  const start = state.page * state.pageSize, shown = state.view.slice(start, start + state.pageSize);
  $("count").textContent = `${state.view.length} of ${state.rows.length} shown · page ${state.page + 1}/${pages}`;
  const sortCol = $("sort-column").value;
  $("grid").innerHTML = shown.map((r) => {
    const m = state.marks[r.id] || "";
    const img = imageFor(r);
    return `<div class="card ${m ? "mark-" + m : ""}" data-id="${esc(r.id)}" data-mark="${esc(m)}">` +
      (img ? `<img alt="${esc(r.id)}" src="${fileUrl(img)}">` : "") +
      `<div class="id">${esc(r.id)}</div><div class="score">${esc(sortCol)}: <b>${esc(r[sortCol])}</b></div>` +
      (r.classifier_predicted ? `<div>${esc(r.classifier_predicted)}</div>` : "") + `</div>`;
  }).join("");
  for (const card of document.querySelectorAll(".card")) card.onclick = () => openDetail(card.dataset.id);
  const ids = state.view.map((r) => r.id).join(",");
  $("export-filtered").href = "/api/export.csv?ids=" + encodeURIComponent(ids);
  $("export-marked").href = "/api/export.csv?marked=1";
}

function openDetail(id) {
  const row = state.rows.find((r) => r.id === id);
  if (!row) return;
  state.current = id;
  $("detail-title").textContent = `${row.id} · ${row.source}`;
  const methods = (state.data.pipeline.interpretation || {}).methods || [];
  const figures = [`<figure><img id="detail-image" alt="image" src="${fileUrl(row.thumbnail)}"><figcaption>image</figcaption></figure>`];
  for (const m of methods) {
    if (row["overlay_" + m]) figures.push(`<figure><img class="detail-map" alt="${esc(m)}" src="${fileUrl(row["overlay_" + m])}"><figcaption>${esc(m)}</figcaption></figure>`);
  }
  $("detail-images").innerHTML = figures.join("");
  const ra = num(row.ra), dec = num(row.dec);
  $("detail-sky").textContent = Number.isNaN(ra) ? `pixel box x ${row.x0}–${row.x1}, y ${row.y0}–${row.y1} (no WCS)` :
    `RA ${ra.toFixed(6)}°, Dec ${dec.toFixed(6)}° (${sexagesimal(ra / 15)} ${sexagesimal(dec, true)}) · pixel box x ${row.x0}–${row.x1}, y ${row.y0}–${row.y1}`;
  $("detail-fields").innerHTML = state.data.columns.filter((c) => !c.startsWith("map_") && !c.startsWith("overlay_") && c !== "thumbnail")
    .map((c) => `<tr><th>${esc(c)}</th><td>${esc(row[c])}</td></tr>`).join("");
  $("detail-mark").textContent = state.marks[id] ? `marked: ${state.marks[id]}` : "unmarked";
  $("detail").classList.remove("hidden");
}

function sexagesimal(value, signed) {
  const sign = value < 0 ? "-" : signed ? "+" : "";
  let v = Math.abs(value);
  const d = Math.floor(v); v = (v - d) * 60;
  const m = Math.floor(v); const s = (v - m) * 60;
  return `${sign}${String(d).padStart(2, "0")}:${String(m).padStart(2, "0")}:${s.toFixed(2).padStart(5, "0")}`;
}

async function mark(value) {
  const response = await fetch("/api/marks", { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ id: state.current, mark: value || null }) });
  const body = await response.json();
  if (!response.ok) { $("detail-mark").textContent = "error: " + body.error; return; }
  state.marks = body.marks;
  $("detail-mark").textContent = state.marks[state.current] ? `marked: ${state.marks[state.current]}` : "unmarked";
  render();
}

// ---- truth metrics: ROC, PR and the confusion matrix at the threshold, all from the rows' labels ----
function labelled() {
  const col = $("metric-column").value;
  return state.rows.map((r) => [num(r[col]), num(r.label)]).filter(([s, y]) => !Number.isNaN(s) && (y === 0 || y === 1));
}

function curves(pairs) {
  const sorted = pairs.slice().sort((a, b) => b[0] - a[0]);
  const P = sorted.filter((p) => p[1] === 1).length, N = sorted.length - P;
  const roc = [[0, 0]], pr = [];
  let tp = 0, fp = 0, auc = 0;
  for (let i = 0; i < sorted.length; i++) {
    if (sorted[i][1] === 1) tp++; else fp++;
    if (i + 1 < sorted.length && sorted[i + 1][0] === sorted[i][0]) continue;
    const [x0, y0] = roc[roc.length - 1], x = N ? fp / N : 0, y = P ? tp / P : 0;
    auc += (x - x0) * (y + y0) / 2;
    roc.push([x, y]);
    pr.push([P ? tp / P : 0, tp / (tp + fp)]);
  }
  return { roc, pr, auc, P, N };
}

function plot(svg, points, xLabel, yLabel, marker) {
  const s = (v) => 20 + v * 190, t = (v) => 200 - v * 190;
  const path = points.map(([x, y], i) => `${i ? "L" : "M"}${s(x).toFixed(1)},${t(y).toFixed(1)}`).join(" ");
  svg.innerHTML = `<rect x="20" y="10" width="190" height="190" fill="none" stroke="#555"/>` +
    `<path d="${path}" fill="none" stroke="#7af" stroke-width="2"/>` +
    (marker ? `<circle cx="${s(marker[0])}" cy="${t(marker[1])}" r="4" fill="#fa5"/>` : "") +
    `<text x="115" y="216" fill="#aaa" font-size="10" text-anchor="middle">${xLabel}</text>` +
    `<text x="8" y="105" fill="#aaa" font-size="10" transform="rotate(-90 8 105)" text-anchor="middle">${yLabel}</text>`;
}

function renderMetrics() {
  if (!state.data || !state.data.has_labels) return;
  const pairs = labelled(), threshold = Number($("threshold").value);
  $("threshold-value").textContent = threshold.toFixed(2);
  const c = curves(pairs);
  let tp = 0, fp = 0, tn = 0, fn = 0;
  for (const [s, y] of pairs) { if (s >= threshold) { if (y === 1) tp++; else fp++; } else { if (y === 1) fn++; else tn++; } }
  const tpr = c.P ? tp / c.P : 0, fpr = c.N ? fp / c.N : 0, precision = tp + fp ? tp / (tp + fp) : 1;
  plot($("roc"), c.roc, "false positive rate", "true positive rate", [fpr, tpr]);
  plot($("pr"), c.pr, "recall", "precision", [tpr, precision]);
  $("auc").textContent = `AUC ${c.auc.toFixed(3)} (${c.P} lenses, ${c.N} others)`;
  $("confusion").innerHTML = `<tr><th></th><th>predicted lens</th><th>predicted not</th></tr>` +
    `<tr><th>true lens</th><td id="cm-tp">${tp}</td><td id="cm-fn">${fn}</td></tr>` +
    `<tr><th>true not</th><td id="cm-fp">${fp}</td><td id="cm-tn">${tn}</td></tr>`;
}

// ---- the training run (--run) ----
async function loadRun() {
  const response = await fetch("/api/run");
  if (!response.ok) { $("tab-run").disabled = true; $("run").textContent = "no --run given"; return; }
  const run = await response.json();
  const img = (p) => `<figure><img alt="${esc(p)}" src="/run/files/${p.split("/").map(encodeURIComponent).join("/")}"><figcaption>${esc(p)}</figcaption></figure>`;
  const metrics = run.metrics ? `<pre id="run-metrics">${esc(JSON.stringify(run.metrics, null, 2))}</pre>` : "";
  const info = run.run ? `<p>task ${esc(run.run.task)} · model ${esc(run.run.model)} · status ${esc(run.run.status)} · epochs ${esc(run.run.epochs_done)}</p>` : "";
  $("run").innerHTML = `<h2>${esc(run.folder)}</h2>${info}${metrics}<h3>plots</h3><div class="images">${run.plots.map(img).join("")}</div>` +
    `<h3>sample predictions</h3><div class="images">${run.samples.map(img).join("")}</div>`;
}

function show(view) {
  for (const tab of document.querySelectorAll(".tab")) tab.classList.toggle("active", tab.dataset.view === view);
  for (const v of ["candidates", "metrics", "run"]) $("view-" + v).classList.toggle("hidden", v !== view);
}

for (const id of ["sort-column", "sort-dir", "filter-column", "filter-min", "filter-max", "filter-text", "filter-mark",
                  "overlay-toggle", "overlay-method"]) {
  $(id).addEventListener("input", () => { state.page = 0; render(); });
  $(id).addEventListener("change", () => { state.page = 0; render(); });
}
$("prev").onclick = () => { state.page = Math.max(0, state.page - 1); render(); };
$("next").onclick = () => { state.page += 1; render(); };
$("detail-close").onclick = () => $("detail").classList.add("hidden");
for (const b of document.querySelectorAll(".mark-btn")) b.onclick = () => mark(b.dataset.mark);
$("threshold").addEventListener("input", renderMetrics);
$("metric-column").addEventListener("change", renderMetrics);
for (const tab of document.querySelectorAll(".tab")) tab.onclick = () => show(tab.dataset.view);
document.addEventListener("keydown", (e) => { if (e.key === "Escape") $("detail").classList.add("hidden"); });
load();
