// lensnet dashboard client: plain JS, no libraries, no network beyond this server.
"use strict";
const state = { data: null, rows: [], marks: {}, page: 0, pageSize: 24, view: [], current: null, undo: [], cutout: null };
const TOKEN = document.querySelector('meta[name="lensnet-token"]').content;
const GRADE_KEYS = { "1": "lens", "2": "probable", "3": "unsure", "4": "not_lens", "0": "not_lens" };
const grader = () => $("grader").value.trim() || "default";
const mine = () => state.marks[grader()] || {};
const $ = (id) => document.getElementById(id);
const num = (v) => (v === "" || v === undefined ? NaN : Number(v));
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const fileUrl = (p) => "/files/" + p.split("/").map(encodeURIComponent).join("/");

async function load() {
  const response = await fetch("/api/results");
  state.data = await response.json();
  state.rows = state.data.rows;
  state.marks = state.data.marks;
  const saved = localStorage.getItem("lensnet-grader");
  if (saved) $("grader").value = saved;
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
    const m = mine()[r.id];
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
    const m = mine()[r.id] || "";
    const img = imageFor(r);
    return `<div class="card ${m ? "mark-" + m : ""}" data-id="${esc(r.id)}" data-mark="${esc(m)}">` +
      (img ? `<img alt="${esc(r.id)}" src="${fileUrl(img)}">` : "") +
      `<div class="id">${esc(r.id)}</div><div class="score">${esc(sortCol)}: <b>${esc(r[sortCol])}</b></div>` +
      (r.classifier_predicted ? `<div>${esc(r.classifier_predicted)}</div>` : "") + `</div>`;
  }).join("");
  for (const card of document.querySelectorAll(".card")) card.onclick = () => openDetail(card.dataset.id);
  const ids = state.view.map((r) => r.id).join(",");
  $("export-filtered").href = "/api/export.csv?ids=" + encodeURIComponent(ids);
  $("export-filtered").href += "&grader=" + encodeURIComponent(grader());
  $("export-marked").href = "/api/export.csv?marked=1&grader=" + encodeURIComponent(grader());
  renderProgress();
}

function renderProgress() {
  const marks = mine(), done = state.rows.filter((r) => marks[r.id]).length;
  $("progress").textContent = `${grader()}: ${done} of ${state.rows.length} graded`;
}

function openDetail(id) {
  const row = state.rows.find((r) => r.id === id);
  if (!row) return;
  state.current = id;
  $("detail-title").textContent = `${row.id} · ${row.source}`;
  const methods = (state.data.pipeline.interpretation || {}).methods || [];
  const figures = [`<figure><img id="detail-image" alt="image" src="${fileUrl(row.thumbnail)}"><figcaption>thumbnail</figcaption></figure>`];
  for (const m of methods) {
    if (row["overlay_" + m]) figures.push(`<figure><img class="detail-map" alt="${esc(m)}" src="${fileUrl(row["overlay_" + m])}"><figcaption>${esc(m)}</figcaption></figure>`);
  }
  $("detail-images").innerHTML = figures.join("");
  const ra = num(row.ra), dec = num(row.dec);
  $("detail-sky").textContent = Number.isNaN(ra) ? `pixel box x ${row.x0}–${row.x1}, y ${row.y0}–${row.y1} (no WCS)` :
    `RA ${ra.toFixed(6)}°, Dec ${dec.toFixed(6)}° (${sexagesimal(ra / 15)} ${sexagesimal(dec, true)}) · pixel box x ${row.x0}–${row.x1}, y ${row.y0}–${row.y1}`;
  $("detail-fields").innerHTML = state.data.columns.filter((c) => !c.startsWith("map_") && !c.startsWith("overlay_") && c !== "thumbnail")
    .map((c) => `<tr><th>${esc(c)}</th><td>${esc(row[c])}</td></tr>`).join("");
  showMark();
  $("detail").classList.remove("hidden");
  loadCutout(id);
}

function showMark() {
  const m = mine()[state.current];
  $("detail-mark").textContent = m ? `marked: ${m}` : "unmarked";
  const position = state.view.findIndex((r) => r.id === state.current);
  $("detail-caption").dataset.position = String(position);
}

// ---- the full-resolution cutout: Lupton et al. (2004) asinh colour composite, north up, east left ----
async function loadCutout(id) {
  state.cutout = null;
  const canvas = $("detail-canvas");
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  const response = await fetch("/api/cutout/" + encodeURIComponent(id));
  if (state.current !== id) return;
  if (!response.ok) { $("detail-caption").textContent = "no raw cutout: the thumbnail is shown"; return; }
  state.cutout = await response.json();
  drawCutout();
}

function noise(values) {
  const v = values.filter((x) => x !== null).sort((a, b) => a - b);
  if (!v.length) return 1;
  const med = v[Math.floor(v.length / 2)];
  const dev = v.map((x) => Math.abs(x - med)).sort((a, b) => a - b);
  return 1.4826 * dev[Math.floor(dev.length / 2)] || 1;
}

function drawCutout() {
  const c = state.cutout;
  if (!c) return;
  const [h, w, nc] = c.shape;
  const pick = (y, x, b) => { const v = c.data[y][x][Math.min(b, nc - 1)]; return v === null ? 0 : v; };
  // R, G, B = the reddest band first (i, r, g of g, r, i planes), each times its slider's scale.
  const bands = nc >= 3 ? [2, 1, 0] : [0, 0, 0];
  const scales = bands.map((b) => Number($("scale-" + b).value));
  const all = [];
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) for (const b of bands) all.push(pick(y, x, b));
  const q = Number($("stretch-q").value), soft = Number($("stretch-soft").value) * noise(all);
  // Orientation: cd maps pixel offsets (x, y) to (east, north) arcsec; display pixel (u, v) shows the sky
  // offset (east, north) = (-(u - cu), -(v - cv)) * scale, i.e. north up and east left.
  const cd = c.cd_arcsec;
  const det = cd ? cd[0][0] * cd[1][1] - cd[0][1] * cd[1][0] : 0;
  const pixel = cd ? Math.sqrt(Math.abs(det)) : null;
  const zoom = Math.max(1, Math.floor(384 / Math.max(w, h)));
  const canvas = $("detail-canvas");
  canvas.width = w * zoom; canvas.height = h * zoom;
  const ctx = canvas.getContext("2d");
  const out = ctx.createImageData(w, h);
  for (let v = 0; v < h; v++) for (let u = 0; u < w; u++) {
    let x = u, y = v;
    if (cd) {
      const e = -(u - (w - 1) / 2) * pixel, n = -(v - (h - 1) / 2) * pixel;
      x = Math.round((cd[1][1] * e - cd[0][1] * n) / det + (w - 1) / 2);
      y = Math.round((-cd[1][0] * e + cd[0][0] * n) / det + (h - 1) / 2);
      x = Math.min(w - 1, Math.max(0, x)); y = Math.min(h - 1, Math.max(0, y));
    }
    const rgb = bands.map((b, k) => Math.max(0, pick(y, x, b) * scales[k]));
    const intensity = (rgb[0] + rgb[1] + rgb[2]) / 3;
    const f = intensity > 0 ? Math.asinh(q * intensity / soft) / (q * intensity) : 0;
    const peak = Math.max(1, ...rgb.map((z) => z * f));
    const o = 4 * (v * w + u);
    for (let k = 0; k < 3; k++) out.data[o + k] = Math.round(255 * Math.min(1, rgb[k] * f / peak));
    out.data[o + 3] = 255;
  }
  const small = document.createElement("canvas");
  small.width = w; small.height = h;
  small.getContext("2d").putImageData(out, 0, 0);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(small, 0, 0, w * zoom, h * zoom);
  if (cd) drawCompass(ctx, w * zoom, h * zoom, pixel / zoom);
  $("detail-caption").textContent = cd ? `${w}×${h} px at ${pixel.toFixed(3)}″/px, north up, east left`
    : `${w}×${h} px, array orientation (no WCS)`;
}

function drawCompass(ctx, W, H, arcsecPerScreenPx) {
  ctx.strokeStyle = ctx.fillStyle = "#fff";
  ctx.lineWidth = 2; ctx.font = "bold 13px sans-serif";
  const ox = W - 18, oy = H - 18, len = Math.min(40, W / 5);
  const arrow = (dx, dy, label) => {
    ctx.beginPath(); ctx.moveTo(ox, oy); ctx.lineTo(ox + dx * len, oy + dy * len); ctx.stroke();
    ctx.fillText(label, ox + dx * (len + 12) - 5, oy + dy * (len + 12) + 5);
  };
  arrow(0, -1, "N"); arrow(-1, 0, "E");
  // Scale bar: the largest of 10", 5", 2", 1", 0.5" that fits a third of the width.
  const bar = [10, 5, 2, 1, 0.5].find((a) => a / arcsecPerScreenPx <= W / 3) || 0.5;
  const px = bar / arcsecPerScreenPx;
  ctx.beginPath(); ctx.moveTo(10, H - 12); ctx.lineTo(10 + px, H - 12); ctx.stroke();
  ctx.fillText(`${bar}″`, 10, H - 18);
}

function sexagesimal(value, signed) {
  const sign = value < 0 ? "-" : signed ? "+" : "";
  let v = Math.abs(value);
  const d = Math.floor(v); v = (v - d) * 60;
  const m = Math.floor(v); const s = (v - m) * 60;
  return `${sign}${String(d).padStart(2, "0")}:${String(m).padStart(2, "0")}:${s.toFixed(2).padStart(5, "0")}`;
}

async function post(id, value) {
  const response = await fetch("/api/marks", { method: "POST",
    headers: { "Content-Type": "application/json", "X-Lensnet-Token": TOKEN },
    body: JSON.stringify({ id, mark: value || null, grader: grader() }) });
  let body;
  try { body = await response.json(); } catch (e) { body = { error: `HTTP ${response.status}` }; }
  if (!response.ok) { $("detail-mark").textContent = "error: " + body.error; return false; }
  state.marks = body.marks;
  state.data.agreement = body.agreement;
  return true;
}

async function mark(value, id = state.current) {
  const previous = mine()[id] || null;
  if (!(await post(id, value))) return;
  state.undo.push({ id, previous });
  showMark();
  render();
  renderAgreement();
}

async function undo() {
  const last = state.undo.pop();
  if (!last) return;
  if (!(await post(last.id, last.previous))) return;
  if (state.view.some((r) => r.id === last.id)) openDetail(last.id);
  showMark();
  render();
  renderAgreement();
}

function step(delta) {
  if (!state.view.length) return;
  const at = state.view.findIndex((r) => r.id === state.current);
  const next = at < 0 ? 0 : Math.min(state.view.length - 1, Math.max(0, at + delta));
  state.page = Math.floor(next / state.pageSize);
  render();
  openDetail(state.view[next].id);
}

function renderAgreement() {
  const rows = state.data.agreement || [];
  $("agreement").innerHTML = rows.length ? `<tr><th>graders</th><th>both graded</th><th>same grade</th><th>Cohen's κ</th></tr>` +
    rows.map((r) => `<tr><td>${esc(r.graders.join(" · "))}</td><td>${r.both}</td><td>${r.agree === null ? "n/a" : (100 * r.agree).toFixed(1) + "%"}</td>` +
      `<td>${r.kappa === null ? "n/a" : r.kappa.toFixed(3)}</td></tr>`).join("")
    : `<tr><td>one grader so far: type another name in "grader" to grade independently</td></tr>`;
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
  // A lens no candidate holds (score -Infinity) is never accepted: the curve stops at (1, found / P).
  const scored = sorted.filter((p) => p[0] !== -Infinity);
  for (let i = 0; i < scored.length; i++) {
    if (scored[i][1] === 1) tp++; else fp++;
    if (i + 1 < scored.length && scored[i + 1][0] === scored[i][0]) continue;
    const [x0, y0] = roc[roc.length - 1], x = N ? fp / N : 0, y = P ? tp / P : 0;
    auc += (x - x0) * (y + y0) / 2;
    roc.push([x, y]);
    pr.push([P ? tp / P : 0, tp / (tp + fp)]);
  }
  const [x0, y0] = roc[roc.length - 1];
  if (x0 < 1 && N) { auc += (1 - x0) * y0; roc.push([1, y0]); }  // no candidate left to accept
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
  renderAgreement();
  if (!state.data || !state.data.has_labels) return;
  const pairs = labelled(), threshold = Number($("threshold").value);
  $("threshold-value").textContent = threshold.toFixed(2);
  const truth = state.data.truth, missed = truth ? truth.missed.length : 0;
  // Lenses no candidate holds are positives the finder never scored: they stay false negatives at every
  // threshold (score -Infinity), so recall and the ROC count them.
  const c = curves(pairs.concat(Array.from({ length: missed }, () => [-Infinity, 1])));
  let tp = 0, fp = 0, tn = 0, fn = 0;
  for (const [s, y] of pairs) { if (s >= threshold) { if (y === 1) tp++; else fp++; } else { if (y === 1) fn++; else tn++; } }
  fn += missed;
  const tpr = c.P ? tp / c.P : 0, fpr = c.N ? fp / c.N : 0, precision = tp + fp ? tp / (tp + fp) : 1;
  plot($("roc"), c.roc, "false positive rate", "true positive rate", [fpr, tpr]);
  plot($("pr"), c.pr, "recall", "precision", [tpr, precision]);
  const empty = !c.P || !c.N;
  $("auc").textContent = empty ? `AUC n/a (${c.P} lenses, ${c.N} others: needs both)` : `AUC ${c.auc.toFixed(3)} (${c.P} lenses, ${c.N} others)`;
  if (truth) {
    $("truth-summary").textContent = `truth ${truth.path}: ${truth.found} of ${truth.lenses} lenses in a candidate ` +
      `(completeness ${truth.lenses ? (100 * truth.found / truth.lenses).toFixed(1) + "%" : "n/a"}), ` +
      `${truth.true_candidates} of ${truth.candidates} candidates hold a lens (purity ${truth.candidates ? (100 * truth.true_candidates / truth.candidates).toFixed(1) + "%" : "n/a"}); ${missed} missed`;
    $("missed").innerHTML = `<tr><th>id</th><th>RA</th><th>Dec</th><th>x</th><th>y</th><th>θ_E (″)</th></tr>` +
      truth.missed.map((t) => `<tr><td>${esc(t.id)}</td><td>${esc(t.ra)}</td><td>${esc(t.dec)}</td><td>${esc(t.x)}</td><td>${esc(t.y)}</td><td>${esc(t.theta_e_arcsec)}</td></tr>`).join("");
  }
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
  // Text boxes re-render as one types; not again on "change" (fired on blur: a click on a card would land on a
  // grid being replaced and be lost).
  const typed = $(id).tagName === "INPUT" && $(id).type !== "checkbox";
  $(id).addEventListener(typed ? "input" : "change", () => { state.page = 0; render(); });
}
$("prev").onclick = () => { state.page = Math.max(0, state.page - 1); render(); };
$("next").onclick = () => { state.page += 1; render(); };
$("detail-close").onclick = () => $("detail").classList.add("hidden");
for (const b of document.querySelectorAll(".mark-btn")) b.onclick = () => mark(b.dataset.mark);
for (const id of ["stretch-q", "stretch-soft", "scale-0", "scale-1", "scale-2"]) $(id).addEventListener("input", drawCutout);
$("stretch-reset").onclick = () => {
  for (const [id, v] of [["stretch-q", 8], ["stretch-soft", 5], ["scale-0", 1], ["scale-1", 1], ["scale-2", 1]]) $(id).value = v;
  drawCutout();
};
$("grader").addEventListener("change", () => { localStorage.setItem("lensnet-grader", grader()); state.undo = []; render(); showMark(); });
$("threshold").addEventListener("input", renderMetrics);
$("metric-column").addEventListener("change", renderMetrics);
for (const tab of document.querySelectorAll(".tab")) tab.onclick = () => show(tab.dataset.view);
document.addEventListener("keydown", (e) => {
  if (e.target.tagName === "INPUT" && e.target.type !== "range" && e.target.type !== "checkbox") return;
  if (e.target.tagName === "SELECT") return;
  const open = !$("detail").classList.contains("hidden");
  if (e.key === "Escape") { $("detail").classList.add("hidden"); return; }
  if (e.key === "ArrowRight" || e.key === "j") { e.preventDefault(); step(open ? 1 : 0); return; }
  if (e.key === "ArrowLeft" || e.key === "k") { e.preventDefault(); step(open ? -1 : 0); return; }
  if (e.key === "u" || (e.key === "z" && (e.ctrlKey || e.metaKey))) { e.preventDefault(); undo(); return; }
  if (!open || !state.current) return;
  if (GRADE_KEYS[e.key]) { e.preventDefault(); mark(GRADE_KEYS[e.key]); }
  else if (e.key === "x" || e.key === "Backspace" || e.key === "Delete") { e.preventDefault(); mark(""); }
});
load();
// The page's Content-Security-Policy forbids inline handlers: forms never submit (Enter would reload the page).
for (const form of document.querySelectorAll("form")) form.addEventListener("submit", (e) => e.preventDefault());
