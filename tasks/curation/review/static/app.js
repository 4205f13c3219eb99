/* mrifoundry offline QC review page (issue 23).
 *
 * A plain classic script with no build step: the page is opened from file://, where Chromium
 * refuses module scripts and fetch()/XHR, so the run's data comes from data.js (window.MRIF_QC)
 * and each volume from volumes/<sid>.js (window.MRIF_VOLUMES[sid] = base64 .nii.gz), both loaded
 * with <script> tags; niivue (assets/niivue.js, one IIFE bundle from `make web`) is loaded the
 * same way the first time the viewer opens, so a page built without it still works.
 *
 * Every string from data.js (series descriptions come from DICOM headers) goes into the DOM as
 * text, never as HTML. Decisions live in localStorage under a key that includes the run id:
 * every file:// page shares one origin, so pages of different runs must not mix.
 */
(function () {
  "use strict";

  const QC = window.MRIF_QC;
  const $ = (sel) => document.querySelector(sel);
  if (!QC || !Array.isArray(QC.series)) {
    $("#gallery").textContent = "data.js is missing or invalid: rebuild the page.";
    return;
  }

  const RUN = QC.run || {};
  const METRICS = QC.metrics || [];
  const REASONS = QC.reasons || {};
  const SERIES = QC.series;
  const BY_ID = new Map(SERIES.map((s) => [s.series_id, s]));
  const ORDER = new Map(SERIES.map((s, i) => [s.series_id, i]));
  const KEY_DECISIONS = "mrifoundry-qc/1:" + RUN.run_id + ":decisions";
  const KEY_RATER = "mrifoundry-qc/1:rater";
  const DECISION_KEYS = { i: "include", e: "exclude", u: "unsure" };
  const FILTERS = ["body_part", "sequence_type", "manufacturer", "status", "outlier", "decision"];
  const UNKNOWN = "(unknown)";
  // flags of the absolute checks (catalog/views_quality.py) → the metric they are about; every
  // other flag is "<metric>_low" or "<metric>_high"
  const ABSOLUTE_FLAGS = new Map([["blank_slices", "blank_slices"], ["saturated", "saturated_fraction"]]);

  // ---------- small helpers ----------

  /** el("div", {class: "x", onclick: f}, child, "text") — children are nodes or plain text. */
  function el(tag, attrs, ...children) {
    const svg = ["svg", "circle", "line", "text", "g", "rect"].includes(tag);
    const node = svg ? document.createElementNS("http://www.w3.org/2000/svg", tag)
      : document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v === true ? "" : v);
    }
    node.append(...nodes(children));
    return node;
  }

  /** Children for append/replaceChildren: nested lists flattened; null, false and "" dropped
   * (the DOM would otherwise insert the text "null"). */
  function nodes(list) {
    return list.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false && c !== "");
  }

  function fmt(v) {
    if (v === null || v === undefined || Number.isNaN(v)) return "n/a";
    const a = Math.abs(v);
    if (a !== 0 && (a >= 1e5 || a < 1e-3)) return v.toExponential(2);
    return Number(v.toPrecision(3)).toString();
  }

  /** A stable jitter in [0, 1) from the series id, so dots do not jump between renders. */
  function jitter(sid) {
    let h = 2166136261;
    for (let i = 0; i < sid.length; i++) h = Math.imul(h ^ sid.charCodeAt(i), 16777619);
    return ((h >>> 0) % 1000) / 1000;
  }

  /** Whether one of the series' flags is about metric `name`. Exact names, not prefixes:
   * "snr_dietrich_low" is about snr_dietrich, not snr. */
  function flaggedFor(s, name) {
    return (s.flags || []).some((f) => f === name + "_low" || f === name + "_high"
      || ABSOLUTE_FLAGS.get(f) === name);
  }

  function loadJSON(key, fallback) {
    try { return JSON.parse(localStorage.getItem(key)) ?? fallback; } catch (e) { return fallback; }
  }

  function saveJSON(key, value) {
    try { localStorage.setItem(key, JSON.stringify(value)); } catch (e) { setStatus("could not save to localStorage: " + e.message); }
  }

  function setStatus(text) { $("#export-status").textContent = text; }

  // ---------- state ----------

  // local[sid] = {decision: "include"|"exclude"|"unsure"|null, note, rater, decided_at}: made in this page
  const local = loadJSON(KEY_DECISIONS, {});
  forgetImported();
  const filters = Object.fromEntries(FILTERS.map((f) => [f, ""]));
  let selectedId = null;
  let visible = SERIES.map((s) => s.series_id);   // ids shown, in gallery order
  const cards = new Map();                        // sid → card button

  /** After `review import` and a rebuild the catalog holds what was decided here: a local decision
   * the catalog has (same decision and note, decided there no earlier) is dropped, so its card
   * says "imported" and the next export does not send it again. A later change is kept. */
  function forgetImported() {
    let changed = false;
    for (const [sid, mine] of Object.entries(local)) {
      const imp = BY_ID.has(sid) ? BY_ID.get(sid).decision : null;
      if (imp && mine && imp.decision === mine.decision && (imp.note || "") === (mine.note || "")
          && Date.parse(imp.decided_at) >= Date.parse(mine.decided_at)) {
        delete local[sid];
        changed = true;
      }
    }
    if (changed) saveJSON(KEY_DECISIONS, local);
  }

  /** The decision shown for a series: the page's own, else the one already in the catalog. */
  function effective(s) {
    const mine = local[s.series_id];
    const imported = s.decision || null;
    return {
      decision: (mine && mine.decision) || (imported && imported.decision) || null,
      note: mine && mine.note !== undefined ? mine.note : (imported && imported.note) || "",
      imported: !mine && !!imported,
    };
  }

  // ---------- filters ----------

  function filterValue(s, name) {
    if (name === "outlier") return s.outlier ? "yes" : "no";
    if (name === "decision") return effective(s).decision || "none";
    const v = s[name];
    return v === null || v === undefined || v === "" ? UNKNOWN : String(v);
  }

  function buildFilters() {
    const fixed = { status: ["ok", "rejected", "failed"], outlier: ["yes", "no"],
      decision: ["none", "include", "exclude", "unsure"] };
    const form = $("#filters");
    for (const name of FILTERS) {
      const values = fixed[name]
        || [...new Set(SERIES.map((s) => filterValue(s, name)))].sort();
      const select = form.elements[name];
      select.replaceChildren(el("option", { value: "", text: "all" }),
        ...values.map((v) => el("option", { value: v, text: v })));
      select.addEventListener("change", () => { filters[name] = select.value; applyFilters(); });
    }
    form.addEventListener("submit", (ev) => ev.preventDefault());
    form.addEventListener("reset", () => {
      for (const name of FILTERS) filters[name] = "";
      setTimeout(applyFilters);  // after the form has reset its selects
    });
  }

  function applyFilters() {
    visible = SERIES.filter((s) => FILTERS.every((f) => !filters[f] || filterValue(s, f) === filters[f]))
      .map((s) => s.series_id);
    const shown = new Set(visible);
    for (const [sid, card] of cards) card.hidden = !shown.has(sid);
    $("#count").textContent = visible.length + " of " + SERIES.length + " shown";
    renderPlots();
  }

  // ---------- gallery ----------

  function badge(cls, text, title) { return el("span", { class: "badge " + cls, title }, text); }

  function cardContent(s) {
    const eff = effective(s);
    // image_set ("phase", "real", …) tells apart the cards of one DICOM series with the same description
    const meta = [s.body_part, s.sequence_type, s.orientation, s.image_set].filter(Boolean).join(" · ");
    const scanner = [s.manufacturer, s.model, s.field_strength ? s.field_strength + " T" : null]
      .filter(Boolean).join(" ");
    return [
      s.thumb ? el("img", { class: "thumb", src: s.thumb, alt: "", loading: "lazy" })
        : el("div", { class: "thumb thumb-none" }, s.status === "ok" ? "no thumbnail" : s.status),
      el("span", { class: "card-title" }, s.series_description || s.series_id),
      el("span", { class: "card-id" }, s.series_id),
      meta && el("span", { class: "card-meta" }, meta),
      scanner && el("span", { class: "card-meta" }, scanner),
      el("span", { class: "badges" },
        s.status !== "ok" && badge("status-" + s.status, s.status),
        s.outlier && badge("outlier", "outlier", (s.flags || []).join(", ")),
        eff.decision && badge("decision decision-" + eff.decision,
          eff.decision + (eff.imported ? " (imported)" : ""), eff.note || null),
        !eff.decision && eff.note && badge("decision", "note")),
      s.reason && el("span", { class: "reason" },
        el("code", {}, s.reason), " ", REASONS[s.reason] || ""),
      s.outlier && (s.flags || []).length > 0 && el("span", { class: "flags" }, s.flags.join(", ")),
    ];
  }

  function buildGallery() {
    const gallery = $("#gallery");
    for (const s of SERIES) {
      const card = el("button", {
        type: "button", class: "card status-" + s.status, "data-sid": s.series_id,
        "aria-pressed": "false", onclick: () => select(s.series_id),
      }, cardContent(s));
      cards.set(s.series_id, card);
      gallery.append(card);
    }
  }

  function updateCard(sid) {
    const s = BY_ID.get(sid);
    const card = cards.get(sid);
    card.replaceChildren(...nodes(cardContent(s)));
    card.dataset.decision = effective(s).decision || "";
  }

  // ---------- strip plots ----------

  const LABEL_W = 150, ROW_H = 44, PAD = 10;

  /** One SVG row per metric: x = value, y = stable jitter; dots outside the filters are faded. */
  function renderPlots() {
    const box = $("#plots");
    if (!METRICS.length) { box.textContent = "No image-quality metrics in this run."; return; }
    const width = Math.max(240, box.clientWidth - LABEL_W - 60);
    const shown = new Set(visible);
    box.replaceChildren(...METRICS.map((m) => plotRow(m, width, shown)));
  }

  /** A log axis where the values are all positive and span more than LOG_SPAN (FBER: 3…2500),
   * else a linear one; decade ticks on a log axis. */
  const LOG_SPAN = 50;

  function scaleFor(values, width) {
    let lo = values.length ? values.reduce((a, b) => Math.min(a, b)) : 0;
    let hi = values.length ? values.reduce((a, b) => Math.max(a, b)) : 1;
    const log = values.length > 1 && lo > 0 && hi / lo > LOG_SPAN;
    if (hi === lo) { lo -= 0.5 * (Math.abs(lo) || 1); hi += 0.5 * (Math.abs(hi) || 1); }
    const f = log ? Math.log10 : (v) => v;
    const x = (v) => PAD + ((f(v) - f(lo)) / (f(hi) - f(lo))) * (width - 2 * PAD);
    const ticks = [];
    if (log) {
      for (let e = Math.ceil(Math.log10(lo)); e <= Math.floor(Math.log10(hi)); e++) ticks.push(10 ** e);
    }
    return { lo, hi, log, x, ticks };
  }

  function plotRow(m, width, shown) {
    const pts = SERIES.filter((s) => s.iqm && typeof s.iqm[m.name] === "number" && isFinite(s.iqm[m.name]));
    const missing = SERIES.length - pts.length;
    const { lo, hi, log, x, ticks } = scaleFor(pts.map((s) => s.iqm[m.name]), width);
    // faded first, then shown, then the selected dot on top (SVG paints in document order)
    const rank = (s) => (s.series_id === selectedId ? 2 : shown.has(s.series_id) ? 1 : 0);
    const dots = pts.slice().sort((a, b) => rank(a) - rank(b)).map((s) => {
      const flagged = flaggedFor(s, m.name);
      const cls = ["dot", flagged ? "flagged" : s.outlier ? "outlier" : "",
        shown.has(s.series_id) ? "" : "faded", s.series_id === selectedId ? "selected" : ""];
      return el("circle", {
        class: cls.filter(Boolean).join(" "), cx: x(s.iqm[m.name]).toFixed(1),
        cy: (6 + jitter(s.series_id) * (ROW_H - 22)).toFixed(1), r: s.series_id === selectedId ? 6 : 4,
        "data-sid": s.series_id, "data-metric": m.name,
      });
    });
    const axisY = ROW_H - 14;
    // decade ticks; a label only where it keeps clear of the end labels and the previous one
    let lastLabel = PAD;
    const decades = ticks.map((v) => {
      const tx = x(v);
      const labelled = tx - lastLabel >= 40 && width - PAD - tx >= 40;
      if (labelled) lastLabel = tx;
      return [el("line", { class: "axis tick-mark", x1: tx.toFixed(1), x2: tx.toFixed(1), y1: axisY - 3, y2: axisY + 3 }),
        labelled && el("text", { class: "tick", x: tx.toFixed(1), y: ROW_H - 2, "text-anchor": "middle" }, fmt(v))];
    });
    const better = m.better === "higher" ? "higher is better" : m.better === "lower" ? "lower is better" : "";
    const name = m.label || m.name;
    return el("div", { class: "strip", "data-metric": m.name, "data-scale": log ? "log" : "linear" },
      el("div", { class: "strip-label", title: [m.doc, better, log ? "log scale" : ""].filter(Boolean).join(" — ") },
        el("span", { class: "strip-name" }, name),
        el("span", { class: "strip-better" }, [better && (m.better === "higher" ? "↑ better" : "↓ better"),
          log && el("span", { class: "strip-scale" }, "log")].filter(Boolean).flatMap((c, i) => i ? [" · ", c] : [c]))),
      el("svg", { class: "strip-plot", width, height: ROW_H, role: "img",
        "aria-label": name + ": " + pts.length + " values from " + fmt(lo) + " to " + fmt(hi) + (log ? ", log scale" : "") },
        el("line", { class: "axis", x1: PAD, x2: width - PAD, y1: axisY, y2: axisY }),
        decades,
        el("text", { class: "tick", x: PAD, y: ROW_H - 2 }, pts.length ? fmt(lo) : ""),
        el("text", { class: "tick", x: width - PAD, y: ROW_H - 2, "text-anchor": "end" }, pts.length ? fmt(hi) : ""),
        dots),
      el("span", { class: "strip-missing", title: "series without a value" }, missing ? missing + " n/a" : ""));
  }

  /** Moves the "selected" look between dots without redrawing every plot (runs can have thousands). */
  function markDots(previous, sid) {
    const dots = (id) => id ? document.querySelectorAll('#plots circle[data-sid="' + CSS.escape(id) + '"]') : [];
    for (const d of dots(previous)) { d.classList.remove("selected"); d.setAttribute("r", 4); }
    for (const d of dots(sid)) {
      d.classList.add("selected");
      d.setAttribute("r", 6);
      d.parentNode.append(d);  // painted last, so on top
    }
  }

  function plotEvents() {
    const box = $("#plots"), tip = $("#tooltip");
    box.addEventListener("mousemove", (ev) => {
      const dot = ev.target.closest("circle.dot");
      if (!dot) { tip.hidden = true; return; }
      const s = BY_ID.get(dot.dataset.sid), m = METRICS.find((mm) => mm.name === dot.dataset.metric);
      const z = s.z && s.z[m.name];
      tip.textContent = s.series_id + " · " + (m.label || m.name) + " " + fmt(s.iqm[m.name])
        + (typeof z === "number" ? " (z " + fmt(z) + ")" : "");
      tip.hidden = false;
      tip.style.left = Math.min(ev.clientX + 12, window.innerWidth - tip.offsetWidth - 8) + "px";
      tip.style.top = ev.clientY + 14 + "px";
    });
    box.addEventListener("mouseleave", () => { tip.hidden = true; });
    box.addEventListener("click", (ev) => {
      const dot = ev.target.closest("circle.dot");
      if (!dot) return;
      tip.hidden = true;
      select(dot.dataset.sid);
      openViewer(dot.dataset.sid);
    });
    $("#plots-section").addEventListener("toggle", renderPlots);  // widths are 0 while folded
    let timer = null;
    window.addEventListener("resize", () => { clearTimeout(timer); timer = setTimeout(renderPlots, 150); });
  }

  // ---------- selection and the detail pane ----------

  function select(sid, opts) {
    if (!BY_ID.has(sid)) return;
    const previous = selectedId;
    selectedId = sid;
    if (previous && cards.has(previous)) {
      cards.get(previous).classList.remove("selected");
      cards.get(previous).setAttribute("aria-pressed", "false");
    }
    const card = cards.get(sid);
    card.classList.add("selected");
    card.setAttribute("aria-pressed", "true");
    if (opts && opts.focus) card.focus({ preventScroll: true });
    card.scrollIntoView({ block: "nearest" });
    renderDetail();
    markDots(previous, sid);
    if (viewer.open && viewer.sid !== sid) openViewer(sid);  // the viewer follows j/k
  }

  function move(step) {
    if (!visible.length) return;
    let next;
    const at = visible.indexOf(selectedId);
    if (at >= 0) next = visible[Math.max(0, Math.min(visible.length - 1, at + step))];
    else {
      // the selected card was filtered out (e.g. just decided under a decision filter): go on from its place
      const pos = selectedId ? ORDER.get(selectedId) : -1;
      next = step > 0 ? visible.find((id) => ORDER.get(id) > pos) || visible[visible.length - 1]
        : visible.slice().reverse().find((id) => ORDER.get(id) < pos) || visible[0];
    }
    select(next, { focus: !viewer.open });
  }

  function renderDetail() {
    const pane = $("#detail");
    const s = BY_ID.get(selectedId);
    if (!s) return;
    const eff = effective(s);
    const rows = [["series", s.series_id], ["exam", s.exam_id], ["description", s.series_description],
      ["body part", s.body_part], ["sequence", s.sequence_type], ["orientation", s.orientation],
      ["image set", s.image_set],
      ["scanner", [s.manufacturer, s.model].filter(Boolean).join(" ")],
      ["field", s.field_strength ? s.field_strength + " T" : null], ["shape", s.nifti_shape],
      ["status", s.status]].filter(([, v]) => v);
    const iqm = METRICS.map((m) => {
      const v = s.iqm ? s.iqm[m.name] : null, z = s.z ? s.z[m.name] : null;
      const flagged = flaggedFor(s, m.name);
      return el("tr", { class: flagged ? "flagged" : null },
        el("th", { scope: "row", title: m.doc || null }, m.label || m.name),
        el("td", {}, fmt(v)), el("td", {}, typeof z === "number" ? "z " + fmt(z) : ""));
    });
    const decisionButton = (key, d) => el("button", {
      type: "button", class: "decide decision-" + d, "aria-pressed": String(eff.decision === d),
      onclick: () => decide(d), title: "key " + key,
    }, d, " ", el("kbd", {}, key));
    const note = el("input", { id: "note", type: "text", value: eff.note, placeholder: "note (n, Enter saves)",
      autocomplete: "off", "aria-label": "Note" });
    pane.replaceChildren(...nodes([
      el("h2", {}, s.series_description || s.series_id),
      s.thumb ? el("img", { class: "detail-thumb", src: s.thumb, alt: "three-plane thumbnail" }) : null,
      s.reason ? el("p", { class: "reason" }, el("code", {}, s.reason), " ", REASONS[s.reason] || "") : null,
      s.outlier ? el("p", { class: "flags" }, "outlier: " + ((s.flags || []).join(", ") || "yes")) : null,
      el("div", { class: "decide-row", role: "group", "aria-label": "Decision" },
        decisionButton("i", "include"), decisionButton("e", "exclude"), decisionButton("u", "unsure")),
      el("div", { class: "note-row" }, note,
        el("button", { type: "button", onclick: () => saveNote() }, "Save note")),
      el("p", { class: "decision-line" }, eff.decision
        ? "decision: " + eff.decision + (eff.imported ? " (already in the catalog)" : "") : "no decision yet",
        local[s.series_id] ? el("button", { type: "button", class: "link", onclick: () => clearDecision() }, "undo") : null),
      el("button", { type: "button", class: "open-viewer", disabled: !s.volume && !s.thumb,
        onclick: () => openViewer(s.series_id) }, "Open viewer ", el("kbd", {}, "v")),
      METRICS.length ? el("table", { class: "iqm" }, el("tbody", {}, iqm)) : null,
      el("dl", { class: "meta" }, rows.map(([k, v]) => [el("dt", {}, k), el("dd", {}, String(v))]))]));
  }

  // ---------- decisions ----------

  function rater() { return $("#rater").value.trim(); }

  function record(sid, change) {
    const s = BY_ID.get(sid);
    const eff = effective(s);
    local[sid] = Object.assign({ decision: eff.decision, note: eff.note }, local[sid], change,
      { rater: rater(), decided_at: new Date().toISOString() });
    saveJSON(KEY_DECISIONS, local);
    updateCard(sid);
    renderDetail();
    if (filters.decision) applyFilters();
  }

  function decide(decision) {
    if (!selectedId) return;
    const note = $("#note");  // a note typed but not yet saved goes with the decision
    record(selectedId, note ? { decision, note: note.value } : { decision });
    setStatus(selectedId + ": " + decision + (rater() ? "" : " — enter your name in Rater before exporting"));
  }

  function saveNote() {
    const input = $("#note");
    if (!selectedId || !input) return;
    record(selectedId, { note: input.value });
    setStatus(selectedId + ": note saved");
  }

  function clearDecision() {
    if (!selectedId) return;
    delete local[selectedId];
    saveJSON(KEY_DECISIONS, local);
    updateCard(selectedId);
    renderDetail();
  }

  // ---------- export ----------

  /** Decisions made in this page that differ from the catalog's (unchanged imported ones are not re-sent). */
  function exportable() {
    const out = [], skipped = [];
    for (const s of SERIES) {
      const mine = local[s.series_id];
      if (!mine) continue;
      const eff = effective(s), imp = s.decision;
      if (!eff.decision) { skipped.push(s.series_id); continue; }
      if (imp && imp.decision === eff.decision && (imp.note || "") === (eff.note || "")) continue;
      out.push({ series_id: s.series_id, decision: eff.decision, note: eff.note || "",
        rater: mine.rater || rater(), decided_at: mine.decided_at });
    }
    return { out, skipped };
  }

  function csvField(v) {
    const t = v === null || v === undefined ? "" : String(v);
    return /[",\r\n]/.test(t) ? '"' + t.replace(/"/g, '""') + '"' : t;
  }

  function download(name, type, text) {
    const url = URL.createObjectURL(new Blob([text], { type }));
    const a = el("a", { href: url, download: name, hidden: true });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  function exportAs(kind) {
    if (!rater()) {
      setStatus("Enter your name in Rater first: exports carry the rater.");
      $("#rater").focus();
      return null;
    }
    const { out, skipped } = exportable();
    const name = "review-" + RUN.run_id + "." + kind;
    if (kind === "json") {
      download(name, "application/json", JSON.stringify({
        format: "mrifoundry-review/1", run_id: RUN.run_id, rater: rater(),
        exported_at: new Date().toISOString(),
        decisions: out.map(({ series_id, decision, note, decided_at }) => ({ series_id, decision, note, decided_at })),
      }, null, 2) + "\n");
    } else {
      const lines = [["series_id", "decision", "note", "rater", "decided_at"]].concat(
        out.map((d) => [d.series_id, d.decision, d.note, d.rater, d.decided_at]));
      download(name, "text/csv", lines.map((l) => l.map(csvField).join(",")).join("\r\n") + "\r\n");
    }
    setStatus("exported " + out.length + " decision(s) to " + name
      + (skipped.length ? "; " + skipped.length + " note(s) without a decision not exported" : ""));
    return name;
  }

  // ---------- viewer ----------

  const viewer = { open: false, sid: null, loadedSid: null, nv: null, token: 0, error: null,
    loading: false, bundled: null };
  let niivueReady = null;

  function loadScript(src) {
    return new Promise((resolve, reject) => {
      const tag = el("script", { src });
      tag.onload = () => { tag.remove(); resolve(); };
      tag.onerror = () => { tag.remove(); reject(new Error("could not load " + src)); };
      document.head.append(tag);
    });
  }

  /** niivue is 2 MB: load it the first time the viewer opens; false when the page was built without it. */
  function ensureNiivue() {
    if (!niivueReady) {
      niivueReady = (window.niivue ? Promise.resolve() : loadScript("assets/niivue.js"))
        .then(() => !!(window.niivue && window.niivue.Niivue), () => false)
        .then((ok) => { viewer.bundled = ok; return ok; });
    }
    return niivueReady;
  }

  async function getNiivue() {
    if (viewer.nv) return viewer.nv;
    const NV = window.niivue;
    const nv = new NV.Niivue({
      backColor: [0.07, 0.08, 0.09, 1], show3Dcrosshair: true, dragAndDropEnabled: false,
      // in percent of the field of view: niivue's default unit (voxels) is fat on small volumes
      crosshairColor: [1, 0.85, 0.3, 0.7], crosshairWidth: 0.5, crosshairWidthUnit: "percent",
      multiplanarShowRender: NV.SHOW_RENDER ? NV.SHOW_RENDER.ALWAYS : 1, loadingText: "",
      logLevel: "warn",
      viewModeHotKey: "", clipPlaneHotKey: "", cycleClipPlaneHotKey: "",  // v, c, p are ours
    });
    await nv.attachToCanvas($("#viewer-canvas"));
    nv.setSliceType(nv.sliceTypeMultiplanar);
    viewer.nv = nv;
    return nv;
  }

  function base64ToBuffer(b64) {
    const bin = atob(b64);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    return bytes.buffer;
  }

  function showFallback(s, line) {
    $("#viewer-canvas").hidden = true;
    $("#viewer-fallback").hidden = false;
    const img = $("#viewer-fallback-img");
    if (s.thumb) { img.src = s.thumb; img.hidden = false; } else img.hidden = true;
    if (line) $("#viewer-fallback p").textContent = line;
  }

  async function openViewer(sid) {
    sid = sid || selectedId;
    const s = BY_ID.get(sid);
    if (!s) return;
    if (sid !== selectedId) select(sid);
    if (viewer.open && viewer.sid === sid && (viewer.loading || viewer.loadedSid === sid)) return;
    const token = ++viewer.token;
    Object.assign(viewer, { open: true, sid, error: null, loading: true });
    $("#viewer").hidden = false;
    $("#viewer-title").textContent = s.series_description || s.series_id;
    $("#viewer-status").textContent = s.series_id + (s.nifti_shape ? " · " + s.nifti_shape : "") + " · loading…";
    const done = (text, error) => {
      if (token !== viewer.token) return;
      Object.assign(viewer, { loading: false, error: error || null });
      $("#viewer-status").textContent = s.series_id + (s.nifti_shape ? " · " + s.nifti_shape : "") + (text ? " · " + text : "");
    };
    if (!(await ensureNiivue())) {
      showFallback(s, "3D viewer not bundled: run `make web` and rebuild the page");
      return done("thumbnail only");
    }
    if (!s.volume) {
      showFallback(s, "No volume for this series (" + s.status + (s.reason ? ": " + s.reason : "") + ").");
      return done("no volume");
    }
    $("#viewer-fallback").hidden = true;
    $("#viewer-canvas").hidden = false;
    try {
      const nv = await getNiivue();
      window.MRIF_VOLUMES = window.MRIF_VOLUMES || {};
      if (!window.MRIF_VOLUMES[sid]) await loadScript(s.volume);
      if (token !== viewer.token) return;
      const b64 = window.MRIF_VOLUMES[sid];
      if (!b64) throw new Error(s.volume + " did not define the volume");
      delete window.MRIF_VOLUMES[sid];  // the decoded copy is enough; a volume can be tens of MB
      while (nv.volumes.length) nv.removeVolume(nv.volumes[0]);
      viewer.loadedSid = null;
      await nv.loadFromArrayBuffer(base64ToBuffer(b64), sid + ".nii.gz");
      if (token !== viewer.token) return;
      viewer.loadedSid = sid;
      nv.resizeListener();
      done("");
    } catch (e) {
      showFallback(s, "3D viewer failed: " + (e && e.message ? e.message : e));
      done("error", String(e && e.message ? e.message : e));
    }
  }

  function closeViewer() {
    viewer.open = false;
    viewer.token++;
    $("#viewer").hidden = true;
    const card = cards.get(selectedId);
    if (card && !card.hidden) card.focus({ preventScroll: true });
  }

  function viewerState() {
    const nv = viewer.nv;
    const vol = nv && nv.volumes.length ? nv.volumes[0] : null;
    return {
      open: viewer.open, series_id: viewer.sid, loaded_series_id: viewer.loadedSid,
      loading: viewer.loading, error: viewer.error, bundled: viewer.bundled,
      n_volumes: nv ? nv.volumes.length : 0,
      dims: vol && vol.dims ? Array.from(vol.dims).slice(1, 1 + vol.dims[0]) : null,
    };
  }

  // ---------- keyboard ----------

  function toggleHelp(show) {
    const help = $("#help");
    help.hidden = show === undefined ? !help.hidden : !show;
    if (!help.hidden) $("#help-close").focus();
  }

  function onKey(ev) {
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const t = ev.target;
    const typing = t instanceof Element && t.matches("input, textarea, select");
    if (ev.key === "Escape") {
      if (!$("#help").hidden) toggleHelp(false);
      else if (typing) t.blur();
      else if (viewer.open) closeViewer();
      return;
    }
    if (typing) {
      if (t.id === "note" && ev.key === "Enter") { ev.preventDefault(); saveNote(); t.blur(); }
      if (t.id === "rater" && ev.key === "Enter") t.blur();
      return;
    }
    if (!$("#help").hidden && ev.key !== "?") return;
    // arrows inside the niivue canvas move its crosshair, not the selection
    const inCanvas = t instanceof Element && t.id === "viewer-canvas";
    let handled = true;
    switch (ev.key) {
      case "j": move(1); break;
      case "k": move(-1); break;
      case "ArrowDown": case "ArrowRight": if (inCanvas) handled = false; else move(1); break;
      case "ArrowUp": case "ArrowLeft": if (inCanvas) handled = false; else move(-1); break;
      case "i": case "e": case "u": decide(DECISION_KEYS[ev.key]); break;
      case "n": if (selectedId) $("#note").focus(); break;
      case "v": case "Enter":
        if (t instanceof HTMLButtonElement && !t.classList.contains("card")) handled = false;
        else openViewer(); break;
      case "?": toggleHelp(); break;
      default: handled = false;
    }
    if (handled) ev.preventDefault();  // e.g. keeps `n` out of the note field it focuses
  }

  // ---------- start ----------

  function init() {
    document.title = "QC review · " + RUN.run_id;
    $("#run-id").textContent = RUN.run_id || "";
    $("#run-meta").textContent = [RUN.n_series !== undefined ? RUN.n_series + " series" : null,
      RUN.built_at ? "built " + RUN.built_at : null, RUN.code_version ? "code " + RUN.code_version : null]
      .filter(Boolean).join(" · ");
    const raterInput = $("#rater");
    raterInput.value = loadJSON(KEY_RATER, "");
    raterInput.addEventListener("input", () => saveJSON(KEY_RATER, raterInput.value.trim()));
    $("#export-json").addEventListener("click", () => exportAs("json"));
    $("#export-csv").addEventListener("click", () => exportAs("csv"));
    $("#help-button").addEventListener("click", () => toggleHelp());
    $("#help-close").addEventListener("click", () => toggleHelp(false));
    $("#viewer-close").addEventListener("click", closeViewer);
    document.addEventListener("keydown", onKey);
    buildFilters();
    buildGallery();
    for (const sid of cards.keys()) cards.get(sid).dataset.decision = effective(BY_ID.get(sid)).decision || "";
    plotEvents();
    applyFilters();
  }

  init();

  // for tests and the curious: read-only views and the same actions as the UI
  window.MRIF_APP = {
    viewerState, openViewer, closeViewer,
    select: (sid) => select(sid),
    selected: () => selectedId,
    visibleIds: () => visible.slice(),
    decisions: () => JSON.parse(JSON.stringify(local)),
    storageKey: KEY_DECISIONS,
    exportJSON: () => exportAs("json"),
    exportCSV: () => exportAs("csv"),
  };
})();
