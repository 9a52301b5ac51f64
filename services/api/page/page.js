// The thumbnail page: makes a task through POST /thumbnail, shows its status live, keeps this browser's
// recent thumbnails and shows the service's statistics when it has any. No framework, no build step.
"use strict";

const GALLERY_KEY = "thumbs.gallery";
const GALLERY_SIZE = 12;
const API_KEY = "thumbs.apiKey";
const POLL_MS = 1000;
const POLL_LIMIT_MS = 10 * 60 * 1000; // as long as the server keeps an event stream open
const STAGES = { PENDING: "waiting to be fetched", FETCHED: "fetched, being resized" };

const $ = (id) => document.getElementById(id);
let current = null; // the task being watched, as { stop() }

function el(tag, text) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  return node;
}

function show(...nodes) {
  $("status").replaceChildren(...nodes);
}

function apiKey() {
  return sessionStorage.getItem(API_KEY) || "";
}

function authHeaders() {
  const key = apiKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function errorOf(response) {
  // The API answers {"error": {"code", "message"}}; anything in front of it may answer otherwise.
  try {
    const body = await response.json();
    if (body.error) return body.error;
  } catch { /* not JSON */ }
  return { code: `HTTP ${response.status}`, message: response.statusText || "unexpected answer" };
}

function showError(what, error) {
  const p = el("p", `${what}: `);
  p.className = "error";
  p.append(el("code", error.code || "FAILED"), error.message ? ` — ${error.message}` : "");
  show(p);
}

async function submit(event) {
  event.preventDefault();
  const body = { source_image_url: $("url").value.trim() };
  for (const name of ["width", "height"]) if ($(name).value) body[name] = Number($(name).value);
  if ($("format").value) body.format = $("format").value;
  if ($("fit").value) body.fit = $("fit").value;
  if (!$("key-field").hidden) sessionStorage.setItem(API_KEY, $("api-key").value.trim());
  current?.stop();
  $("result").hidden = true;
  const button = $("request").querySelector("button");
  button.disabled = true;
  show(el("p", "Sending the request…"));
  let response;
  try {
    response = await fetch("/thumbnail", {
      method: "POST",
      headers: { "Content-Type": "application/json", ...authHeaders() },
      body: JSON.stringify(body),
    });
  } catch (err) {
    showError("Could not reach the service", { code: "NETWORK", message: err.message });
    return;
  } finally {
    button.disabled = false;
  }
  if (response.status === 401) { // this deployment requires API keys: ask for one
    $("key-field").hidden = false;
    showError("This service needs an API key", await errorOf(response));
    $("api-key").focus();
    return;
  }
  if (!response.ok) {
    showError(`The request was refused (HTTP ${response.status})`, await errorOf(response));
    return;
  }
  const task = { id: (await response.json()).task_id, url: body.source_image_url };
  show(el("p", `Task ${task.id}: accepted.`));
  // EventSource cannot send an Authorization header, so with a key the status is polled instead.
  current = apiKey() ? poll(task) : stream(task);
}

function stream(task) {
  const source = new EventSource(`/thumbnail/events?task_id=${encodeURIComponent(task.id)}`);
  let fallback = null;
  const toPolling = () => {
    source.close();
    fallback = poll(task);
  };
  source.addEventListener("status", (e) => {
    const data = JSON.parse(e.data);
    if (data.status !== "PENDING") source.close(); // else EventSource reconnects once the server ends the stream
    update(task, data);
  });
  source.addEventListener("timeout", toPolling);
  source.addEventListener("error", (e) => {
    if (e.data) { // the server's own `event: error`: the task store failed
      source.close();
      showError("The status stream ended", JSON.parse(e.data).error);
    } else if (source.readyState === EventSource.CLOSED) {
      toPolling(); // the stream was refused (e.g. 503 TOO_MANY_STREAMS); otherwise EventSource retries by itself
    }
  });
  return { stop() { source.close(); fallback?.stop(); } };
}

function poll(task) {
  const deadline = Date.now() + POLL_LIMIT_MS;
  let timer = null;
  let stopped = false;
  const tick = async () => {
    try {
      const response = await fetch(`/thumbnail?task_id=${encodeURIComponent(task.id)}`, { headers: authHeaders() });
      if (stopped) return;
      if (response.status !== 200 && response.status !== 202) {
        showError("Could not read the task", await errorOf(response));
        return;
      }
      const data = await response.json();
      update(task, data);
      if (data.status !== "PENDING") return;
    } catch { /* a network blip: try again at the next tick */ }
    if (stopped) return;
    if (Date.now() >= deadline) {
      show(el("p", `Task ${task.id} is still in progress after 10 minutes; stopped watching it.`));
      return;
    }
    timer = setTimeout(tick, POLL_MS);
  };
  tick();
  return { stop() { stopped = true; clearTimeout(timer); } };
}

function update(task, data) {
  if (data.status === "PENDING") {
    show(el("p", `Task ${task.id}: in progress (${STAGES[data.stage] || data.stage}).`));
  } else if (data.status === "FAILURE") {
    showError(`Task ${task.id} failed`, data.error || {});
  } else if (data.status === "SUCCESS") {
    const done = el("p", `Task ${task.id}: done.`);
    done.className = "done";
    show(done);
    const entry = {
      task_id: task.id, url: task.url, content_type: data.content_type, width: data.width, height: data.height,
      source_sha256: data.source_sha256, deduplicated: data.renditions?.[0]?.deduplicated,
    };
    showResult(entry);
    remember(entry);
  }
}

function showResult(entry) {
  const img = $("result-image");
  img.alt = `Thumbnail of ${entry.url}`;
  loadImage(img, entry.task_id);
  const rows = [
    ["Size", `${entry.width} × ${entry.height} px`],
    ["Format", entry.content_type],
    ["Source SHA-256", entry.source_sha256],
  ];
  // Gallery entries saved before the status carried it have none.
  if (typeof entry.deduplicated === "boolean") rows.push(["Deduplicated", entry.deduplicated ? "yes" : "no"]);
  $("result-facts").replaceChildren(...rows.flatMap(([term, value]) => [el("dt", term), el("dd", value)]));
  $("result").hidden = false;
}

async function loadImage(img, taskId) {
  const url = `/thumbnail/file?task_id=${encodeURIComponent(taskId)}`;
  if (!apiKey()) {
    img.src = url;
    return;
  }
  // An <img> cannot send the Authorization header: fetch the bytes and show them from a blob URL.
  try {
    const response = await fetch(url, { headers: authHeaders() });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const blobUrl = URL.createObjectURL(await response.blob());
    img.addEventListener("load", () => URL.revokeObjectURL(blobUrl), { once: true });
    img.src = blobUrl;
  } catch {
    img.removeAttribute("src"); // the alt text stands in
  }
}

function gallery() {
  try {
    return JSON.parse(localStorage.getItem(GALLERY_KEY)) || [];
  } catch {
    return [];
  }
}

function remember(entry) {
  const entries = [entry, ...gallery().filter((e) => e.task_id !== entry.task_id)].slice(0, GALLERY_SIZE);
  localStorage.setItem(GALLERY_KEY, JSON.stringify(entries));
  renderGallery();
}

function renderGallery() {
  const entries = gallery();
  $("gallery").replaceChildren(...(entries.length ? entries.map(galleryItem) : [el("li", "None yet.")]));
}

function galleryItem(entry) {
  const img = el("img");
  img.alt = `Thumbnail of ${entry.url}`;
  img.dataset.taskId = entry.task_id;
  loadImage(img, entry.task_id);
  const figure = el("figure");
  figure.append(img, el("figcaption", `${entry.width} × ${entry.height}, ${entry.content_type}`));
  const item = el("li");
  item.append(figure);
  return item;
}

// The statistics panel: GET /stats (the stats stage's Faust tables) every STATS_EVERY_MS; when it answers
// 503 the panel says so rather than show stale or made-up numbers.
const STATS_EVERY_MS = 10 * 1000;
const CHART_MINUTES = 15;

function fact(name, value) {
  return [el("dt", name), el("dd", value)];
}

function percent(part, whole) {
  return whole ? `${Math.round((100 * part) / whole)} %` : "–";
}

// Tasks finished (succeeded + failed) per 10-second window over the last CHART_MINUTES, empty windows as 0.
function throughputChart(windows, windowSeconds) {
  const slots = (CHART_MINUTES * 60) / windowSeconds;
  const newest = Math.floor(Date.now() / 1000 / windowSeconds) * windowSeconds;
  const byStart = new Map(windows.map((w) => [Date.parse(w.start) / 1000, w.succeeded + w.failed]));
  const counts = Array.from({ length: slots }, (_, i) => byStart.get(newest - (slots - 1 - i) * windowSeconds) || 0);
  const peak = Math.max(1, ...counts);
  const chart = el("div");
  chart.id = "throughput";
  chart.setAttribute("role", "img");
  chart.setAttribute("aria-label", `Tasks finished per ${windowSeconds} s over the last ${CHART_MINUTES} minutes; peak ${peak}`);
  chart.append(...counts.map((count) => {
    const bar = el("span");
    bar.style.height = `${(100 * count) / peak}%`;
    bar.dataset.count = String(count);
    return bar;
  }));
  const figure = el("figure");
  figure.append(chart, el("figcaption", `Tasks finished per ${windowSeconds} s, last ${CHART_MINUTES} minutes (peak ${peak}).`));
  return figure;
}

// Records each stage is behind, as the stats stage last read it (every 10 s).
function lagText(lag) {
  const stages = Object.entries(lag);
  return stages.length ? stages.map(([stage, records]) => `${stage} ${records}`).join(" · ") : "not read yet";
}

async function loadStats() {
  let answer;
  try {
    const response = await fetch(`/stats?minutes=${CHART_MINUTES}`, { headers: authHeaders() });
    if (!response.ok) throw new Error((await errorOf(response)).message);
    answer = await response.json();
  } catch (error) {
    $("stats").replaceChildren(el("p", `Live statistics are not available: ${error.message}`));
    return;
  }
  const { totals, windows, window_seconds: windowSeconds } = answer;
  const latest = [...windows].reverse().find((w) => w.latency_ms);
  const facts = el("dl");
  facts.id = "stats-totals";
  facts.append(
    ...fact("Requested", String(totals.requested)),
    ...fact("Succeeded", String(totals.succeeded)),
    ...fact("Failed", String(totals.failed)),
    ...fact("Deduplicated", `${totals.deduplicated} (${percent(totals.deduplicated, totals.succeeded)} of successes)`),
    ...fact("Latency", latest ? `p50 ${latest.latency_ms.p50} ms, p95 ${latest.latency_ms.p95} ms (window of ${latest.start})` : "no task finished in the last 15 minutes"),
    ...fact("Replayed / repeated", `${totals.replayed} records replayed, ${totals.repeated} outcomes published again`),
    ...fact("Consumer lag", lagText(answer.consumer_lag || {})),
  );
  const codes = Object.entries(totals.failures_by_code);
  const failures = el("ul");
  failures.id = "stats-failures";
  failures.append(...(codes.length ? codes.map(([code, n]) => el("li", `${code}: ${n}`)) : [el("li", "No failures.")]));
  const heading = el("h3", "Failures by code");
  $("stats").replaceChildren(facts, throughputChart(windows, windowSeconds), heading, failures);
}

if (apiKey()) {
  $("key-field").hidden = false;
  $("api-key").value = apiKey();
}
$("request").addEventListener("submit", submit);
renderGallery();
loadStats();
setInterval(loadStats, STATS_EVERY_MS);
