// samseg UI: plain JavaScript, no build step. Every action shows progress while it runs
// and shows the server's one-line error when it fails — never a silent or blank result.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

function flash(message) {
  const box = $("#flash");
  if (!box) return;
  box.textContent = message;
  box.hidden = !message;
}

async function api(method, url, body) {
  const opts = { method, headers: { Accept: "application/json" }, credentials: "same-origin" };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(url, opts);
  } catch (err) {
    throw { detail: `cannot reach the samseg UI server (${err})` };
  }
  let data = null;
  try { data = await resp.json(); } catch (_) { /* non-JSON error body */ }
  if (!resp.ok) throw data || { detail: `HTTP ${resp.status} from ${url}` };
  return data;
}

// An action's error, in its own slot next to the action's button (never only at the top of the page).
function showError(slot, message) {
  if (!slot) { flash(message); return; }
  slot.textContent = message || "";
  slot.hidden = !message;
}

function showProgress(el, text) {
  if (!el) return;
  el.hidden = !text;
  el.textContent = text ? `⏳ ${text}…` : "";
}

// Poll a background job until it is done or failed, reporting its stage.
async function waitForJob(job, onStage) {
  const started = Date.now();
  while (job.state === "queued" || job.state === "running") {
    onStage(`${job.stage} (${((Date.now() - started) / 1000).toFixed(1)} s)`);
    await new Promise((r) => setTimeout(r, 250));
    job = await api("GET", `/api/jobs/${job.id}`);
  }
  if (job.state === "failed") throw { detail: job.error };
  return job;
}

// ------------------------------------------------------------------ runs list
function initRunsPage() {
  const btn = $("#compare-btn");
  if (!btn) return;
  const picked = () => $$("input.pick:checked").map((c) => c.value);
  const update = () => {
    const n = picked().length;
    btn.disabled = n < 2 || n > 4;
    btn.textContent = n ? `Compare selected (${n})` : "Compare selected";
  };
  $$("input.pick").forEach((c) => c.addEventListener("change", update));
  btn.addEventListener("click", () => {
    const ids = picked();
    if (ids.length < 2 || ids.length > 4) { flash("Pick 2 to 4 runs to compare."); return; }
    window.location.href = `/compare?runs=${ids.map(encodeURIComponent).join(",")}`;
  });
  update();
}

// "1 class", "2 classes": samseg.apps.count's rule, so a page says what the CLI says.
function count(n, noun) {
  const k = Number(n);
  const plural = noun + (/(s|sh|ch|x)$/.test(noun) ? "es" : "s");
  if (n === null || n === undefined || n === "" || !Number.isFinite(k)) return `? ${plural}`;  // a count not sent
  return `${n} ${k === 1 ? noun : plural}`;
}

// A form whose submit runs a background job: POST `url` with `values`; meanwhile the button
// #<prefix>-btn is off and #<prefix>-progress says the job's stage; then onDone(job), or each
// field's error next to its field and any other in #<prefix>-error ("<failing>: <why>").
async function runFormJob(form, prefix, url, values, onDone, failing) {
  $$(".field-error", form).forEach((e) => { e.textContent = ""; });
  showError($(`#${prefix}-error`), "");
  const btn = $(`#${prefix}-btn`);
  const prog = $(`#${prefix}-progress`);
  btn.disabled = true;
  try {
    showProgress(prog, "submitting");
    const job = await api("POST", url, values);
    const done = await waitForJob(job, (s) => showProgress(prog, s));
    showProgress(prog, "");
    onDone(done);
  } catch (err) {
    showProgress(prog, "");
    let placed = false;
    for (const [field, msg] of Object.entries((err && err.errors) || {})) {
      const slot = $(`.field-error[data-for="${field}"]`, form);
      if (slot) { slot.textContent = msg; placed = true; }
    }
    if (!placed) showError($(`#${prefix}-error`), `${failing}: ${(err && err.detail) || err}`);
  } finally {
    btn.disabled = false;
  }
}

// What a saved rerun did not keep (an edited run's names and merges): said beside its result, as the CLI says it.
function showWarning(el, text) {
  if (!el) return;
  el.textContent = text ? `Note: ${text}.` : "";
  el.hidden = !text;
}

// ------------------------------------------------------------------- run page
function initRerun(runId) {
  const form = $("#rerun-form");
  if (!form) return;
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    cancelPreview();
    flash("");
    const values = {};
    new FormData(form).forEach((v, k) => { values[k] = v; });
    await runFormJob(form, "rerun", `/api/runs/${runId}/rerun`, values, (done) => {
      const res = done.result;
      $("#rerun-result").hidden = false;
      $("#rerun-seconds").textContent = `${done.seconds.toFixed(1)} s${res.via === "prefect" ? " via Prefect" : ""}`;
      const link = $("#rerun-link");
      link.href = res.run_url;
      link.textContent = res.run_id.slice(0, 8);
      $("#rerun-clusters").textContent = count(res.n_clusters, "class");
      $("#rerun-noise").textContent = count(res.n_noise, "noise mask");
      $("#rerun-compare").href = `/compare?runs=${runId},${res.run_id}`;
      $("#rerun-overlay").src = res.overlay_url;
      showWarning($("#rerun-warning"), res.warning);
      $("#rerun-result p").scrollIntoView({ block: "nearest" });  // the answer where the click was, on any screen
    }, "Could not save the run");
  });
}

function imagePixel(img, ev, w, h) {
  const rect = img.getBoundingClientRect();
  return {
    x: ((ev.clientX - rect.left) / rect.width) * w,
    y: ((ev.clientY - rect.top) / rect.height) * h,
  };
}

function initQuery(runId, w, h) {
  const img = $("#overlay");
  if (!img) return;
  let lastQuery = null;
  img.addEventListener("click", async (ev) => {
    const { x, y } = imagePixel(img, ev, w, h);
    const prog = $("#query-progress");
    const out = $("#query-results");
    const status = $("#query-status");
    const saveBtn = $("#save-class-btn");
    saveBtn.hidden = true;
    $("#save-class-status").textContent = "";
    out.innerHTML = "";
    showProgress(prog, "searching similar masks");
    try {
      const body = { x, y, max_distance: $("#query-distance").value, scope: $("#query-scope").value };
      const res = await api("POST", `/api/runs/${runId}/query`, body);
      showProgress(prog, "");
      if (res.mask === null) { status.textContent = res.message; return; }
      const total = res.results.reduce((a, r) => a + r.n, 0);
      status.textContent = `mask #${res.mask} (${res.area} px): ${total} masks within ${res.max_distance} in ${res.results.length} image(s)`;
      for (const r of res.results) {
        const fig = document.createElement("figure");
        fig.className = "query-hit";
        const cap = document.createElement("figcaption");
        cap.textContent = `${r.image || r.run_id.slice(0, 8)}: ${r.n} masks`;
        const im = document.createElement("img");
        im.src = r.highlight_url;
        im.alt = `matches in ${r.image}`;
        fig.append(cap, im);
        out.append(fig);
      }
      lastQuery = { source_run_id: runId, mask: res.mask, max_distance: res.max_distance,
                    selections: res.results.filter((r) => r.n > 0).map((r) => ({ run_id: r.run_id, indices: r.indices })) };
      saveBtn.hidden = lastQuery.selections.length === 0;
      $$("#masks-table tr.hit").forEach((tr) => tr.classList.remove("hit"));
      const mine = res.results.find((r) => r.run_id === runId);
      if (mine) mine.indices.forEach((i) => { const tr = $(`#masks-table tr[data-index="${i}"]`); if (tr) tr.classList.add("hit"); });
    } catch (err) {
      showProgress(prog, "");
      status.textContent = "";
      flash(`Exemplar query failed: ${(err && err.detail) || err}`);
    }
  });
  $("#save-class-btn").addEventListener("click", async () => {
    if (!lastQuery) return;
    const prog = $("#query-progress");
    const status = $("#save-class-status");
    try {
      const job = await api("POST", "/api/classes", lastQuery);
      const res = (await waitForJob(job, (s) => showProgress(prog, s))).result;
      showProgress(prog, "");
      status.innerHTML = "Saved: " + res.map((r) => `<a href="${r.run_url}">${r.run_id.slice(0, 8)}</a> (${r.n} masks)`).join(", ");
    } catch (err) {
      showProgress(prog, "");
      flash(`Saving the class failed: ${(err && err.detail) || err}`);
    }
  });
}

// Live preview: every change of a clustering control redraws the class overlay from the
// run's cached masks and embeddings (POST /api/runs/{id}/preview), without creating a run.
const PREVIEW_FIELDS = ["algorithm", "eps", "min_samples", "metric", "distance_threshold"];
// The clustering form's values as the preview and the sweep take them (empty fields keep the run's).
function formValues() {
  const form = $("#rerun-form"), values = {};
  PREVIEW_FIELDS.forEach((k) => { const el = form && form.elements[k]; if (el && el.value !== "") values[k] = el.value; });
  return values;
}
let previewSeq = 0;     // the newest preview request; older answers are dropped
let previewTimer = null;

// "Save as run" (the rerun) owns the form's messages from its click on: no preview answer overwrites them.
function cancelPreview() {
  clearTimeout(previewTimer);
  previewSeq++;
}

function initPreview(runId) {
  const form = $("#rerun-form");
  const img = $("#overlay");
  if (!form || !img) return;
  const saved = img.dataset.savedSrc;
  const restoreSaved = () => {  // the saved run's overlay again: no preview stands for settings that have none
    const old = img.src;
    img.src = saved;
    if (old && old.startsWith("blob:")) URL.revokeObjectURL(old);
    $("#overlay-figure").classList.remove("previewing");
    $("#preview-note").hidden = true;
    $("#overlay-caption").hidden = false;
    showSavedClasses(false);
  };
  // The classes listed under the overlay are the saved run's: while a preview stands, they say so.
  const showSavedClasses = (previewing) => {
    const note = $("#classes-saved-note");
    if (note) note.hidden = !previewing;
    $$("#legend, .cutouts").forEach((el) => el.classList.toggle("stale", previewing));
  };
  const showSaved = () => { cancelPreview(); restoreSaved(); };
  $("#preview-reset").addEventListener("click", showSaved);
  const redraw = async () => {
    const mine = ++previewSeq;
    const values = formValues();
    $$(".field-error", form).forEach((e) => { e.textContent = ""; });
    showError($("#rerun-error"), "");
    let resp;
    try {
      resp = await fetch(`/api/runs/${runId}/preview`, {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", Accept: "image/png" }, body: JSON.stringify(values),
      });
    } catch (err) { showError($("#rerun-error"), `The preview could not reach the samseg UI server (${err}).`); return; }
    if (mine !== previewSeq) return; // a newer setting (or a save) is already on its way
    if (!resp.ok) {
      restoreSaved();  // a bad value (eps -1): the last preview's picture and counts are not this setting's
      let data = {};
      try { data = await resp.json(); } catch (_) { /* non-JSON error */ }
      const errors = data.errors || {};
      let placed = false;
      for (const [field, msg] of Object.entries(errors)) {
        const slot = $(`.field-error[data-for="${field}"]`, form);
        if (slot) { slot.textContent = msg; placed = true; }
      }
      if (!placed) showError($("#rerun-error"), `No preview: ${data.detail || resp.status}`);
      return;
    }
    const blob = await resp.blob();
    if (mine !== previewSeq) return;
    const old = img.src;
    img.src = URL.createObjectURL(blob);  // the overlay itself shows the preview, at the overlay's size
    if (old && old.startsWith("blob:")) URL.revokeObjectURL(old);
    $("#overlay-figure").classList.add("previewing");
    $("#overlay-caption").hidden = true;
    $("#preview-clusters").textContent = count(resp.headers.get("X-Samseg-Clusters"), "class");
    $("#preview-noise").textContent = count(resp.headers.get("X-Samseg-Noise"), "noise mask");
    $("#preview-note").hidden = false;
    showSavedClasses(true);
  };
  PREVIEW_FIELDS.forEach((k) => {
    const el = form.elements[k];
    if (!el) return;
    const ev = el.tagName === "SELECT" ? "change" : "input";
    el.addEventListener(ev, () => { clearTimeout(previewTimer); previewTimer = setTimeout(redraw, 80); });
  });
  initEpsSlider(form);
}

// The eps slider moves on a log scale (DBSCAN's useful eps spans 0.001 to 2 for cosine distances);
// it and the eps box always show the same value, and either redraws the preview.
function formatEps(v) { return Number(v.toPrecision(3)).toString(); }

function initEpsSlider(form) {
  const slider = $("#eps-slider");
  const box = form.elements.eps;
  if (!slider || !box) return;
  const fromBox = () => {
    const v = Number(box.value);
    if (Number.isFinite(v) && v > 0) slider.value = Math.log10(v);
    redrawSweepMarker();
  };
  slider.addEventListener("input", () => {
    box.value = formatEps(10 ** Number(slider.value));
    box.dispatchEvent(new Event("input"));
  });
  box.addEventListener("input", fromBox);
  fromBox();
}

// Eps sweep: classes (blue, left axis) and noise (grey dashed, right axis) over eps (log scale); the suggested
// eps in red, the form's eps in green; a click on the chart sets eps there (and redraws the preview).
let lastSweep = null;
const SWEEP_PAD = { l: 40, r: 44, t: 18, b: 34 };

function sweepScale(svg, rep) {
  const W = Number(svg.dataset.w), H = Number(svg.dataset.h), P = SWEEP_PAD;
  const rows = rep.rows;
  const xMin = rows[0].eps, xMax = rows[rows.length - 1].eps;
  // The classes axis runs a quarter above the most classes, in 4 whole steps: a flat line sits
  // inside the chart, not on its top edge (where it would read as the noise axis's 100%).
  const cStep = Math.max(1, Math.ceil(1.25 * Math.max(1, ...rows.map((r) => r.n_clusters)) / 4));
  const cMax = 4 * cStep;
  return {
    W, H, xMin, xMax, cMax, cStep,
    // eps on a log scale, as the slider: the sweep spans the data's distances and the run's eps,
    // which can be decades apart (samseg.core.sweep.covering_grid)
    x: (e) => P.l + (W - P.l - P.r) * Math.log(e / xMin) / Math.max(1e-12, Math.log(xMax / xMin)),
    eps: (px) => xMin * Math.pow(xMax / xMin, (px - P.l) / (W - P.l - P.r)),
    yc: (c) => H - P.b - (H - P.t - P.b) * c / cMax,
    yn: (f) => H - P.b - (H - P.t - P.b) * f,
  };
}

function logTicks(lo, hi, n) {
  const out = [];
  for (let i = 0; i <= n; i++) out.push(lo * Math.pow(hi / lo, i / n));
  return out;
}

function drawSweep(svg, rep) {
  lastSweep = rep;
  const rows = rep.rows;
  if (!rows.length) { svg.setAttribute("hidden", ""); return; }
  const sc = sweepScale(svg, rep), P = SWEEP_PAD;
  const line = (f) => rows.map((r, i) => `${i ? "L" : "M"}${sc.x(r.eps).toFixed(1)},${f(r).toFixed(1)}`).join(" ");
  const yBottom = sc.H - P.b;
  let s = `<g class="axes" stroke="#999"><line x1="${P.l}" x2="${sc.W - P.r}" y1="${yBottom}" y2="${yBottom}"/>`;
  s += `<line x1="${P.l}" x2="${P.l}" y1="${P.t}" y2="${yBottom}"/><line x1="${sc.W - P.r}" x2="${sc.W - P.r}" y1="${P.t}" y2="${yBottom}"/></g>`;
  for (const e of logTicks(sc.xMin, sc.xMax, 5)) {
    s += `<line x1="${sc.x(e)}" x2="${sc.x(e)}" y1="${yBottom}" y2="${yBottom + 4}" stroke="#999"/>`;
    s += `<text x="${sc.x(e)}" y="${yBottom + 16}" text-anchor="middle">${formatEps(e)}</text>`;
  }
  for (let c = 0; c <= sc.cMax; c += sc.cStep) {
    s += `<text x="${P.l - 6}" y="${sc.yc(c) + 4}" text-anchor="end">${c}</text>`;
  }
  for (const f of [0, 0.5, 1]) s += `<text x="${sc.W - P.r + 6}" y="${sc.yn(f) + 4}">${f * 100}%</text>`;
  s += `<text x="${(sc.W) / 2}" y="${sc.H - 2}" text-anchor="middle">eps</text>`;
  s += `<text x="${P.l}" y="${P.t - 6}">classes</text><text x="${sc.W - P.r}" y="${P.t - 6}" text-anchor="end">noise (dashed)</text>`;
  s += `<path d="${line((r) => sc.yc(r.n_clusters))}" fill="none" stroke="#1f6feb" stroke-width="2"/>`;
  s += `<path d="${line((r) => sc.yn(r.noise_fraction))}" fill="none" stroke="#888" stroke-dasharray="4 3"/>`;
  if (rep.suggested_eps !== null && rep.suggested_eps >= sc.xMin && rep.suggested_eps <= sc.xMax) {
    s += `<line id="sweep-suggested" x1="${sc.x(rep.suggested_eps)}" x2="${sc.x(rep.suggested_eps)}" y1="${P.t}" y2="${yBottom}" stroke="#d1242f"><title>suggested eps ${formatEps(rep.suggested_eps)}</title></line>`;
  }
  s += `<line id="sweep-current" y1="${P.t}" y2="${yBottom}" stroke="#1a7f37" stroke-width="2" stroke-dasharray="2 2" visibility="hidden"/>`;
  s += `<text id="sweep-current-label" y="${P.t + 12}" fill="#1a7f37" visibility="hidden"></text>`;
  svg.innerHTML = s;
  svg.removeAttribute("hidden"); // an SVG element has no .hidden property: use the attribute
  redrawSweepMarker();
}

// The form's eps, marked on the chart (hidden when it is outside the swept range or not a number).
function redrawSweepMarker() {
  const svg = $("#sweep-chart");
  const marker = svg && $("#sweep-current", svg);
  const box = $("#rerun-form") && $("#rerun-form").elements.eps;
  if (!marker || !lastSweep || !box) return;
  const v = Number(box.value), sc = sweepScale(svg, lastSweep);
  const inside = Number.isFinite(v) && v >= sc.xMin && v <= sc.xMax;
  const label = $("#sweep-current-label", svg);
  marker.setAttribute("visibility", inside ? "visible" : "hidden");
  label.setAttribute("visibility", inside ? "visible" : "hidden");
  if (inside) {
    marker.setAttribute("x1", sc.x(v)); marker.setAttribute("x2", sc.x(v));
    const right = sc.x(v) < sc.W / 2;  // the label on the side with room
    label.setAttribute("x", sc.x(v) + (right ? 4 : -4));
    label.setAttribute("text-anchor", right ? "start" : "end");
    label.textContent = `eps ${formatEps(v)}`;
  }
}

function initSweep(runId) {
  const btn = $("#sweep-btn");
  if (!btn) return;
  const svg = $("#sweep-chart");
  svg.addEventListener("click", (ev) => {  // a click on the chart sets eps there
    if (!lastSweep) return;
    const rect = svg.getBoundingClientRect();
    const px = (ev.clientX - rect.left) / rect.width * Number(svg.dataset.w);
    const sc = sweepScale(svg, lastSweep);
    const eps = Math.min(sc.xMax, Math.max(sc.xMin, sc.eps(px)));
    const box = $("#rerun-form").elements.eps;
    box.value = formatEps(eps);
    box.dispatchEvent(new Event("input"));
  });
  btn.addEventListener("click", async () => {
    btn.disabled = true;
    showError($("#sweep-error"), "");
    $("#sweep-note").textContent = "sweeping…";
    try {
      const rep = await api("POST", `/api/runs/${runId}/sweep`, formValues());  // the form's min_samples and metric
      drawSweep(svg, rep);
      $("#sweep-note").textContent = `DBSCAN, min_samples ${rep.min_samples}, metric ${rep.metric} (the form's when swept) · `
        + (rep.suggested_eps !== null
          ? `suggested eps (knee of the k-distance curve, k=${rep.min_samples}): ${formatEps(rep.suggested_eps)}`
          : `no suggested eps: ${rep.reason}`) + " · click the chart to try an eps";
    } catch (err) {
      $("#sweep-note").textContent = "";
      const fields = Object.entries((err && err.errors) || {}).map(([k, v]) => `${k} ${v}`).join("; ");
      showError($("#sweep-error"), `The sweep did not run: ${fields || (err && err.detail) || err}`);
    } finally { btn.disabled = false; }
  });
}

// "Send to Label Studio": the run (or the batch's images) pushed as predictions, a background job.
function initLabelStudio() {
  const btn = $("#ls-send");
  const sec = $("#run") || $("#dataset-run");
  if (!btn || !sec) return;
  btn.addEventListener("click", async () => {
    const prog = $("#ls-progress");
    btn.disabled = true;
    flash("");
    try {
      showProgress(prog, "submitting");
      const job = await api("POST", `/api/runs/${sec.dataset.runId}/label-studio`);
      const done = await waitForJob(job, (s) => showProgress(prog, s));
      showProgress(prog, "");
      const link = $("#ls-link");
      link.href = done.result.project_url;
      link.textContent = done.result.project_url;
      $("#ls-line").textContent = `${done.result.created} new tasks, ${done.result.matched} already there`;
      $("#ls-result").hidden = false;
    } catch (err) {
      showProgress(prog, "");
      flash(`Send to Label Studio failed: ${err.detail || err.error || JSON.stringify(err)}`);
    } finally {
      btn.disabled = false;
    }
  });
}

// Class curation: the edits are kept here (undo pops the last) and sent together on "Save".
function initCuration(runId) {
  const panel = $("#classes-panel");
  if (!panel) return;
  const edits = [];
  const list = $("#edit-list");
  const save = $("#save-edits-btn");
  const err = $("#edits-error");
  const picked = () => $$("input.pick-class:checked", panel).map((c) => Number(c.value));
  const render = () => {
    list.innerHTML = "";
    for (const e of edits) {
      const li = document.createElement("li");
      li.textContent = e.op === "rename" ? `name class ${e.classes[0]} “${e.name}”`
        : e.op === "split" ? `split class ${e.classes[0]}${e.eps ? ` at eps ${e.eps}` : ""}`
        : `${e.op} class${e.classes.length > 1 ? "es" : ""} ${e.classes.join(", ")}`;
      list.append(li);
    }
    save.disabled = edits.length === 0;
  };
  // The edits drawn on the overlay as they are made (an image run's panel only); a newer list wins.
  const figure = $("#edits-preview-figure");
  let drawSeq = 0, drawTimer = null;
  const draw = async () => {
    if (!figure) return;
    const mine = ++drawSeq;
    if (!edits.length) { figure.hidden = true; return; }
    let resp;
    try {
      resp = await fetch(`/api/runs/${runId}/classes/preview`, {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", Accept: "image/png" }, body: JSON.stringify({ edits }),
      });
    } catch (e) { showError(err, `The preview could not reach the samseg UI server (${e}).`); return; }
    if (mine !== drawSeq) return;
    if (!resp.ok) {
      figure.hidden = true;  // a rejected edit (a split eps of -1): no stale preview stands for it
      let data = {};
      try { data = await resp.json(); } catch (_) { /* non-JSON error */ }
      showError(err, `No preview: ${(data.errors && data.errors.edits) || data.detail || resp.status}`);
      return;
    }
    const blob = await resp.blob();
    if (mine !== drawSeq) return;
    const img = $("#edits-preview");
    const old = img.src;
    img.src = URL.createObjectURL(blob);
    if (old && old.startsWith("blob:")) URL.revokeObjectURL(old);
    $("#edits-preview-clusters").textContent = count(resp.headers.get("X-Samseg-Clusters"), "class");
    $("#edits-preview-noise").textContent = count(resp.headers.get("X-Samseg-Noise"), "noise mask");
    figure.hidden = false;
  };
  const redraw = () => { clearTimeout(drawTimer); drawTimer = setTimeout(draw, 80); };
  // The form says what the edit list holds: a tick is a choice for the next merge or drop (an applied one
  // leaves none), a name box its class's last rename in the list, else the run's own name.
  const untick = () => $$("input.pick-class:checked", panel).forEach((c) => { c.checked = false; });
  const showNames = () => $$("input.class-name", panel).forEach((box) => {
    const renames = edits.filter((e) => e.op === "rename" && e.classes[0] === Number(box.dataset.class));
    box.value = renames.length ? renames[renames.length - 1].name : box.defaultValue;
  });
  const add = (e) => { edits.push(e); showError(err, ""); render(); redraw(); };
  $("#merge-btn").addEventListener("click", () => {
    const ids = picked();
    if (ids.length < 2) { showError(err, "Tick two classes or more to merge them."); return; }
    add({ op: "merge", classes: ids });
    untick();
  });
  $("#drop-btn").addEventListener("click", () => {
    const ids = picked();
    if (!ids.length) { showError(err, "Tick the classes to drop to noise."); return; }
    ids.forEach((c) => add({ op: "drop", classes: [c] }));
    untick();
  });
  $$(".split-btn", panel).forEach((b) => b.addEventListener("click", () => {
    const raw = $("#split-eps").value.trim();
    const eps = raw === "" ? null : Number(raw);
    if (eps !== null && !(eps > 0)) { showError(err, "The split eps must be a number above 0 (or empty: half the run's)."); return; }
    add({ op: "split", classes: [Number(b.dataset.class)], eps });
  }));
  $$("input.class-name", panel).forEach((box) => box.addEventListener("change", () => {
    const name = box.value.trim();
    if (!name) return;
    add({ op: "rename", classes: [Number(box.dataset.class)], name });
  }));
  $("#undo-btn").addEventListener("click", () => { edits.pop(); showNames(); untick(); showError(err, ""); render(); redraw(); });
  // A split just added follows the eps box: typing a new eps redraws it, as the eps slider does for a rerun.
  $("#split-eps").addEventListener("input", () => {
    const last = edits[edits.length - 1];
    const raw = $("#split-eps").value.trim();
    const eps = raw === "" ? null : Number(raw);
    if (!last || last.op !== "split" || (eps !== null && !(eps > 0))) return;
    last.eps = eps;
    render();
    redraw();
  });
  save.addEventListener("click", async () => {
    const prog = $("#edits-progress");
    save.disabled = true;
    showError(err, "");
    try {
      showProgress(prog, "submitting");
      const reg = $("#register-name");
      const body = reg && reg.value.trim() ? { edits, register: reg.value.trim() } : { edits };
      const job = await api("POST", `/api/runs/${runId}/classes`, body);
      const res = (await waitForJob(job, (s) => showProgress(prog, s))).result;
      showProgress(prog, "");
      const link = $("#edits-link");
      link.href = res.run_url;
      link.textContent = res.run_id.slice(0, 8);
      $("#edits-summary").textContent = res.classes.map((c) => `${c.id} ${c.name || `class_${c.id}`} (${c.masks} masks)`).join(" · ");
      $("#edits-registered").hidden = !res.registered;
      if (res.registered) $("#edits-model").textContent = res.registered;
      $("#edits-result").hidden = false;
    } catch (e) {
      showProgress(prog, "");
      showError(err, `The edits were not saved: ${(e && e.detail) || e}`);
    } finally { save.disabled = edits.length === 0; }
  });
  render();
}

function initRunPage() {
  const sec = $("#run");
  if (!sec) return;
  const runId = sec.dataset.runId;
  initCuration(runId);
  initRerun(runId);
  initPreview(runId);
  initSweep(runId);
  initQuery(runId, Number(sec.dataset.imageW), Number(sec.dataset.imageH));
}

// Broken images (an artifact missing from a run) get a visible note instead of a blank box.
function markBrokenImages() {
  $$("img").forEach((img) => img.addEventListener("error", () => {
    if (!img.getAttribute("src")) return;
    img.classList.add("broken");
    img.title = `could not load ${img.getAttribute("src")}`;
  }));
}

// ------------------------------------------------------------ batch pages
// "Recluster the batch": its images with a new eps / min_samples, as one new batch run.
function initBatchRecluster() {
  const form = $("#batch-recluster-form");
  const sec = $("#batch-run") || $("#dataset-run");
  if (!form || !sec) return;
  const runId = sec.dataset.runId;
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    $("#batch-recluster-result").hidden = true;
    showWarning($("#batch-recluster-warning"), null);
    const values = {};
    new FormData(form).forEach((v, k) => { if (String(v).trim() !== "") values[k] = String(v).trim(); });
    await runFormJob(form, "batch-recluster", `/api/runs/${runId}/rerun`, values, (done) => {
      const res = done.result;
      const link = $("#batch-recluster-link");
      link.href = res.run_url;
      link.textContent = res.run_id.slice(0, 8);
      $("#batch-recluster-count").textContent = count(res.images, "image") +
        (res.failed ? `, ${res.failed} failed (the first: ${res.first_error})` : "");
      $("#batch-recluster-seconds").textContent = `${done.seconds.toFixed(1)} s`;
      const compare = $("#batch-recluster-compare");  // a dataset run's page: compare takes dataset runs
      if (compare) compare.href = `/compare?runs=${runId},${res.run_id}`;
      showWarning($("#batch-recluster-warning"), res.warning);
      $("#batch-recluster-result").hidden = false;
      $("#batch-recluster-result").scrollIntoView({ block: "nearest" });
    }, "Could not recluster the batch");
  });
}

window.addEventListener("unhandledrejection", (ev) => flash(`Error: ${(ev.reason && ev.reason.detail) || ev.reason}`));
function initDatasetPage() {
  const sec = $("#dataset-run");
  if (sec) initCuration(sec.dataset.runId);  // the batch's classes, edited across its images
}

document.addEventListener("DOMContentLoaded", () => {
  markBrokenImages();
  initRunsPage();
  initRunPage();
  initDatasetPage();
  initBatchRecluster();
  initLabelStudio();
});
