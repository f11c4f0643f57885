// The vrp serve page: reads /v1/info, sends a title + transcript (JSON) or a caption file (multipart) to the API,
// shows a busy state while the single worker generates, and renders comments or a readable error.
"use strict";

const $ = (id) => document.getElementById(id);
let chosenFile = null;
let info = null;

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function setBusy(busy) {
  const form = $("predict-form");
  for (const el of form.querySelectorAll("input, textarea, select, button")) el.disabled = busy;
  $("submit").textContent = busy ? "Predicting…" : "Predict comments";
  $("busy").hidden = !busy;
  form.setAttribute("aria-busy", busy ? "true" : "false");
  document.body.classList.toggle("is-busy", busy);
}

function setFile(file) {
  chosenFile = file || null;
  $("file-chosen").textContent = chosenFile ? `Using file: ${chosenFile.name} (${chosenFile.size} bytes)` : "";
  $("file-chosen").hidden = !chosenFile;
  $("file-clear").hidden = !chosenFile;
  $("transcript").disabled = !!chosenFile;
  if (!chosenFile) $("file").value = "";
}

// The chosen preset as /v1/info describes it: name, description and capabilities (single_output, rerankable, ...).
function chosenPreset() {
  const name = $("preset").value;
  return (info && info.presets.find((x) => x.name === name)) || null;
}

function describePreset() {
  const p = chosenPreset();
  $("preset-help").textContent = p ? p.description : "";
  const n = $("num-comments");
  if (p && p.single_output) { n.value = "1"; n.max = "1"; }  // it gives exactly one comment
  else if (info) n.max = String(info.limits.max_num_comments);
  const rr = $("rerank");
  const rerankable = !p || p.rerankable;  // a single comment leaves nothing to choose from
  if (!rerankable) rr.value = "0";
  rr.disabled = !rerankable;
}

async function loadInfo() {
  try {
    const r = await fetch("/v1/info");
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    info = await r.json();
  } catch (e) {
    $("loaded").textContent = "Could not read /v1/info: " + e.message;
    return;
  }
  const adapter = info.adapter ? `adapter ${info.adapter}` : "no adapter (base model)";
  $("loaded").textContent = `Model: ${info.model} · ${adapter} · ${info.precision || ""}`;
  const sel = $("preset");
  sel.textContent = "";
  for (const p of info.presets) {
    const o = document.createElement("option");
    o.value = p.name; o.textContent = p.name; o.selected = p.name === info.default_preset;
    sel.appendChild(o);
  }
  const L = info.limits;
  Object.assign($("rerank"), {max: L.max_rerank || 0});
  $("rerank-box").hidden = $("rerank-help").hidden = !L.max_rerank;
  Object.assign($("num-comments"), {max: L.max_num_comments, value: L.default_num_comments});
  Object.assign($("max-new-tokens"), {max: L.max_new_tokens_limit, value: L.default_max_new_tokens});
  $("title").maxLength = L.max_title_chars;
  if (Array.isArray(L.upload_suffixes)) $("file").accept = L.upload_suffixes.join(",");
  describePreset();
  const T = info.tiers || {trained: false, choices: ["any"], labels: {}};
  $("tier-box").hidden = !T.trained;
  if (T.trained) {
    const tier = $("tier");
    tier.textContent = "";
    for (const name of T.choices) {
      const o = document.createElement("option");
      o.value = name; o.textContent = T.labels[name] || name; o.selected = name === "any";
      tier.appendChild(o);
    }
  }
}

function chosenTier() {
  return $("tier-box").hidden ? "any" : $("tier").value;
}

function errorText(status, body) {
  if (body && body.message) return `Error ${status}: ${body.message}`;
  return `Error ${status}: the server gave no explanation`;
}

function render(res) {
  const list = $("comments");
  list.textContent = "";
  for (const c of res.comments) {
    const li = document.createElement("li");
    li.className = "comment";
    const text = document.createElement("p");
    text.className = "comment-text";
    text.textContent = c.text || "(empty comment)";
    const meta = document.createElement("span");
    meta.className = "meta";
    meta.textContent = `${c.tokens} tokens · log-prob ${c.logprob.toFixed(2)}` +
      (c.pmi === null || c.pmi === undefined ? "" : ` · fit to the video (PMI) ${c.pmi.toFixed(2)}`) +
      (c.finished ? "" : " · cut at the token limit");
    li.append(text, meta);
    list.appendChild(li);
  }
  const cut = res.transcript_truncated ? ` · transcript cut to fit ${res.prompt_tokens} prompt tokens` : "";
  const notes = (res.notes || []).length ? " · " + res.notes.join(" · ") : "";
  const T = info && info.tiers;
  const tier = res.tier && res.tier !== "any" ? ` · ${(T && T.labels[res.tier]) || res.tier}` : "";
  const best = res.rerank ? ` · best of ${res.rerank}` : "";
  $("summary").textContent = `${res.comments.length} comments · preset ${res.preset}${tier}${best} · ${res.seconds.toFixed(1)} s` +
    (res.queue_seconds > 0.05 ? ` (+${res.queue_seconds.toFixed(1)} s waiting)` : "") + cut + notes;
  $("results").hidden = false;
}

async function submit(ev) {
  ev.preventDefault();
  showError("");
  const title = $("title").value;
  const transcript = $("transcript").value;
  const num = parseInt($("num-comments").value, 10);
  const maxTok = parseInt($("max-new-tokens").value, 10);
  const preset = $("preset").value;
  const tier = chosenTier();
  const chosen = chosenPreset();
  const rerank = $("rerank-box").hidden || (chosen && !chosen.rerankable) ? 0 : parseInt($("rerank").value || "0", 10);
  if (!chosenFile && !transcript.trim()) { showError("Paste a transcript or drop a transcript file first."); return; }
  if (!Number.isInteger(num) || !Number.isInteger(maxTok)) { showError("Comments and max tokens must be whole numbers."); return; }
  if (!Number.isInteger(rerank) || (rerank > 0 && rerank < num)) {
    showError(`Best of N must be 0 (off) or at least the number of comments (${num}).`); return;
  }
  let req;
  if (chosenFile) {
    const fd = new FormData();
    fd.append("file", chosenFile, chosenFile.name);
    fd.append("title", title); fd.append("num_comments", String(num));
    fd.append("preset", preset); fd.append("max_new_tokens", String(maxTok)); fd.append("tier", tier);
    fd.append("rerank", String(rerank));
    req = fetch("/v1/predict/file", {method: "POST", body: fd});
  } else {
    req = fetch("/v1/predict", {method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({title, transcript, num_comments: num, preset, max_new_tokens: maxTok, tier, rerank})});
  }
  setBusy(true);
  const t0 = performance.now();
  const timer = setInterval(() => {
    $("busy-text").textContent = `Predicting… ${Math.round((performance.now() - t0) / 1000)} s`;
  }, 500);
  try {
    const r = await req;
    let body = null;
    try { body = await r.json(); } catch (_) { body = null; }
    if (!r.ok) {
      let msg = errorText(r.status, body);
      const wait = r.headers.get("Retry-After");
      if (r.status === 503 && wait) msg += ` (retry in ${wait} s)`;
      showError(msg);
    } else {
      render(body);
    }
  } catch (e) {
    showError("Could not reach the server: " + e.message);
  } finally {
    clearInterval(timer);
    $("busy-text").textContent = "Predicting…";
    setBusy(false);
    $("transcript").disabled = !!chosenFile;
    describePreset();  // setBusy enabled every field, the rerank of a single-output preset too
  }
}

function initDrop() {
  const zone = $("dropzone");
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    if (e.dataTransfer.files.length) setFile(e.dataTransfer.files[0]);
  });
  $("file").addEventListener("change", (e) => setFile(e.target.files[0]));
  $("file-clear").addEventListener("click", () => setFile(null));
}

document.addEventListener("DOMContentLoaded", () => {
  $("predict-form").addEventListener("submit", submit);
  $("preset").addEventListener("change", describePreset);
  initDrop();
  loadInfo();
});
