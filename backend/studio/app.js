// NanoCommander studio: chat with a composite and see which tokens the small models changed.
// Vanilla JS over the server's own API (/api/tags, /api/chat with options.provenance); no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { history: [], running: [], timer: null, lastCompare: null };
const THRESHOLDS = {  // the steering parameter the one threshold slider sets, per mode
  plausible: { key: "beta", min: 0, max: 1, step: 0.01, value: 0.1 },
  gated: { key: "top1", min: 0, max: 1, step: 0.01, value: 0.5 },
  nudge: { key: "reject", min: 0, max: 30, step: 0.5, value: 10 },
};

function setStatus(text, error) {
  $("status").textContent = text;
  $("status").classList.toggle("error", !!error);
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("key").value.trim();
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

async function loadModels() {
  try {
    const r = await fetch("/api/tags", { headers: headers() });
    const body = await r.json();
    if (!r.ok) throw new Error(body.error || r.statusText);
    const select = $("model"), was = select.value;
    select.textContent = "";
    for (const m of body.models || []) select.appendChild(new Option(m.name, m.name));
    if (was) select.value = was;
    setStatus(`${(body.models || []).length} model(s)`);
  } catch (e) {
    setStatus("could not list models: " + e.message, true);
  }
}

function steerOption() {
  const mode = $("mode").value;
  if (!mode) return undefined;
  const t = THRESHOLDS[mode];
  return t ? { mode, [t.key]: Number($("threshold").value) } : { mode };
}

function options(member) {
  const o = {
    provenance: true,
    seed: Number($("seed").value) || 0,
    temperature: Number($("temperature").value) || 0,
    num_predict: Number($("num-predict").value) || 96,
  };
  if (member && member !== "composite") {
    o.member = member;
  } else {
    o.alpha = Number($("alpha").value);
    const steer = steerOption();
    if (steer) o.steer = steer;
  }
  return o;
}

// POST /api/chat and call onItem for every NDJSON line; resolves with the whole reply text.
async function streamChat(messages, opts, onItem, signal) {
  const r = await fetch("/api/chat", {
    method: "POST", headers: headers(), signal,
    body: JSON.stringify({ model: $("model").value, messages, stream: true, options: opts }),
  });
  if (!r.ok) {
    let msg = r.statusText;
    try { msg = (await r.json()).error || msg; } catch (_) { /* not JSON */ }
    throw new Error(`${r.status} ${msg}`);
  }
  const reader = r.body.getReader(), decoder = new TextDecoder();
  let buf = "", text = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let nl;
    while ((nl = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, nl).trim();
      buf = buf.slice(nl + 1);
      if (!line) continue;
      const item = JSON.parse(line);
      if (item.error) throw new Error(item.error);
      text += (item.message && item.message.content) || "";
      onItem(item);
    }
  }
  return text;
}

function pct(p) { return p == null ? "?" : (p * 100).toFixed(1) + "%"; }

function describe(e) {
  let s = `${e.source}: ${JSON.stringify(e.token)} (top p ${pct(e.p_fused)})`;
  if (e.large_token != null) s += `\nlarge's choice: ${JSON.stringify(e.large_token)} (p ${pct(e.p_large)})`;
  return s;
}

function tokenSpan(text, source, title) {
  const span = document.createElement("span");
  span.className = "tok " + source;
  span.textContent = text;
  if (title) span.title = title;
  return span;
}

// One chunk's text, one span per token when the tokens spell the text, else one span for the chunk.
function renderItem(target, item) {
  const text = (item.message && item.message.content) || "";
  const prov = item.provenance || [];
  if (!text) return;
  const whole = prov.every((e) => !e.token.startsWith("bytes:")) && prov.map((e) => e.token).join("") === text;
  if (prov.length && whole) {
    for (const e of prov) target.appendChild(tokenSpan(e.token, e.source, describe(e)));
    return;
  }
  const source = prov.some((e) => e.source === "steered") ? "steered" : prov.some((e) => e.source === "tuned") ? "tuned" : "large";
  target.appendChild(tokenSpan(text, source, prov.map(describe).join("\n\n")));
}

function stopRunning() {
  for (const c of state.running) c.abort();
  state.running = [];
}

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  if (text) div.textContent = text;
  $("log").appendChild(div);
  return div;
}

async function ask() {
  stopRunning();
  const ctl = new AbortController();
  state.running.push(ctl);
  const div = addMessage("assistant");
  const counts = { large: 0, steered: 0, tuned: 0 };
  state.items = 0;  // NDJSON lines of the reply (more than one: it streamed)
  setStatus("generating...");
  try {
    const text = await streamChat(state.history, options("composite"), (item) => {
      renderItem(div, item);
      state.items += 1;
      for (const e of item.provenance || []) counts[e.source] += 1;
      $("log").scrollTop = $("log").scrollHeight;
    }, ctl.signal);
    state.history.push({ role: "assistant", content: text });
    const n = counts.large + counts.steered + counts.tuned;
    setStatus(`${n} tokens: ${counts.steered} steered, ${counts.tuned} tuned`);
  } catch (e) {
    if (e.name !== "AbortError") setStatus(e.message, true);
    div.remove();
  }
}

function send(ev) {
  ev.preventDefault();
  const text = $("prompt").value.trim();
  if (!text) return;
  $("prompt").value = "";
  state.history.push({ role: "user", content: text });
  addMessage("user", text);
  ask();
}

function reaskChat() {
  const last = state.history[state.history.length - 1];
  if (!last) return;
  if (last.role === "assistant") {
    state.history.pop();
    const msgs = $("log").querySelectorAll(".msg.assistant");
    if (msgs.length) msgs[msgs.length - 1].remove();
  }
  ask();
}

async function compare() {
  const typed = $("prompt").value.trim();
  const lastUser = [...state.history].reverse().find((m) => m.role === "user");
  const prompt = typed || (lastUser && lastUser.content) || state.lastCompare;
  if (!prompt) { setStatus("type a prompt to compare", true); return; }
  state.lastCompare = prompt;
  stopRunning();
  $("compare-view").hidden = false;
  setStatus("comparing...");
  const runs = [...$("compare-view").querySelectorAll(".col")].map(async (col) => {
    const out = col.querySelector(".out"), ctl = new AbortController();
    state.running.push(ctl);
    out.textContent = "";
    await streamChat([{ role: "user", content: prompt }], options(col.dataset.member), (item) => renderItem(out, item), ctl.signal);
  });
  try {
    await Promise.all(runs);
    setStatus("compared: same prompt, seed " + $("seed").value);
  } catch (e) {
    if (e.name !== "AbortError") setStatus(e.message, true);
  }
}

function onSettingChange() {
  $("alpha-out").textContent = $("alpha").value;
  $("threshold-out").textContent = $("threshold").value;
  if (!$("reask").checked) return;
  clearTimeout(state.timer);
  state.timer = setTimeout(() => {
    if (!$("compare-view").hidden && state.lastCompare) compare();
    else if (state.history.length) reaskChat();
  }, 400);
}

function onModeChange() {
  const t = THRESHOLDS[$("mode").value];
  const slider = $("threshold");
  slider.disabled = !t;
  if (t) {
    Object.assign(slider, { min: t.min, max: t.max, step: t.step });
    slider.value = t.value;
    $("threshold-label").firstChild.textContent = t.key + " ";
  }
  onSettingChange();
}

function showSweep(text) {
  try {
    window.NanoChart.drawSweep(JSON.parse(text), $("chart"));
  } catch (e) {
    $("chart").textContent = "not a sweep JSON file: " + e.message;
  }
}

function readFile(file) {
  if (file) file.text().then(showSweep);
}

function setup() {
  $("key").value = sessionStorage.getItem("nanocommander-key") || "";
  $("key").addEventListener("change", () => { sessionStorage.setItem("nanocommander-key", $("key").value); loadModels(); });
  $("refresh").addEventListener("click", loadModels);
  $("ask").addEventListener("submit", send);
  $("compare").addEventListener("click", compare);
  $("clear").addEventListener("click", () => { stopRunning(); state.history = []; $("log").textContent = ""; $("compare-view").hidden = true; });
  for (const id of ["alpha", "threshold", "seed", "temperature", "num-predict"]) $(id).addEventListener("input", onSettingChange);
  $("mode").addEventListener("change", onModeChange);
  $("sweep-file").addEventListener("change", (ev) => readFile(ev.target.files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => { ev.preventDefault(); drop.classList.remove("over"); readFile(ev.dataTransfer.files[0]); });
  $("prompt").addEventListener("keydown", (ev) => { if (ev.key === "Enter" && !ev.shiftKey) send(ev); });
  onModeChange();
  loadModels();
}

window.NanoStudio = { showSweep, state };
setup();
