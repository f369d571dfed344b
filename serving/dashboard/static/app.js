// vinspect dashboard: renders result events pushed over Server-Sent Events.
// Everything shown comes from the network, so text goes through textContent and
// attributes through setAttribute only; nothing is ever parsed as HTML.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
// An inline data URL (legacy results) or an annotated image the server fetches from S3.
const IMAGE_URL = /^(data:image\/(jpeg|png);base64,[A-Za-z0-9+/]+={0,2}|\/images\/[A-Za-z0-9._\/-]+\.jpg)$/;
const cards = new Map();
let totals = { total: 0, pass: 0, fail: 0 };
const counts = new Map();

function text(el, value) {
  el.textContent = value === null || value === undefined ? "–" : String(value);
}

function cardFor(camera) {
  let card = cards.get(camera);
  if (card) return card;
  const tpl = document.getElementById("camera-template");
  card = tpl.content.firstElementChild.cloneNode(true);
  card.dataset.camera = camera;
  text(card.querySelector(".camera-id"), camera);
  const main = document.getElementById("cameras");
  const empty = document.getElementById("empty");
  if (empty) empty.remove();
  // The latest frame of this camera, whichever it is when the operator clicks.
  card.querySelector(".flag").addEventListener("click", () => {
    if (card.dataset.imageId) flag(card.dataset.imageId, card.querySelector(".flag-status"));
  });
  // Keep cameras sorted by id so the layout does not jump around.
  const after = [...cards.keys()].sort().find((id) => id > camera);
  main.insertBefore(card, after ? cards.get(after) : null);
  cards.set(camera, card);
  return card;
}

function drawBoxes(svg, view) {
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const w = Number(view.width), h = Number(view.height);
  if (!(w > 0 && h > 0)) return;
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  for (const d of view.detections) {
    if (!Array.isArray(d.box)) continue;
    const [x1, y1, x2, y2] = d.box.map(Number);
    const rect = document.createElementNS(SVG_NS, "rect");
    rect.setAttribute("x", x1);
    rect.setAttribute("y", y1);
    rect.setAttribute("width", Math.max(0, x2 - x1));
    rect.setAttribute("height", Math.max(0, y2 - y1));
    rect.setAttribute("class", `box c${Number(d.class_id) | 0}`);
    rect.dataset.label = d.class_name;
    const title = document.createElementNS(SVG_NS, "title");
    title.textContent = `${d.class_name} ${Number(d.score).toFixed(2)}`;
    rect.appendChild(title);
    svg.appendChild(rect);
  }
}

// The dashboard token (when the server wants one for flags), asked once per browser session.
let flagToken = sessionStorage.getItem("vinspect-dashboard-token");

async function flag(imageId, statusEl) {
  for (let attempt = 0; attempt < 2; attempt++) {
    const headers = { "Content-Type": "application/json" };
    if (flagToken) headers.Authorization = `Bearer ${flagToken}`;
    const r = await fetch("/api/flag", { method: "POST", headers, body: JSON.stringify({ image_id: imageId }) });
    if (r.status === 401 && attempt === 0) {
      flagToken = window.prompt("Dashboard token (to send frames to review)") || "";
      sessionStorage.setItem("vinspect-dashboard-token", flagToken);
      continue;
    }
    const body = await r.json().catch(() => ({}));
    statusEl.dataset.state = r.ok ? (body.queued ? "queued" : "known") : "error";
    text(statusEl, r.ok ? (body.queued ? "queued for review" : body.reason) : (body.error || `HTTP ${r.status}`));
    if (r.ok) refreshReview();
    return;
  }
}

function drawHistory(card, history) {
  const svg = card.querySelector(".history");
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  if (!Array.isArray(history) || !history.length) return;
  // One bar per minute, newest on the right; height = share of failed parts that minute.
  const last = Number(history[history.length - 1][0]);
  let total = 0, fail = 0;
  for (const [minute, n, f] of history) {
    const x = 59 - Math.round((last - Number(minute)) / 60);
    if (x < 0 || !(Number(n) > 0)) continue;
    total += Number(n); fail += Number(f);
    const rate = Number(f) / Number(n);
    const rect = document.createElementNS(SVG_NS, "rect");
    rect.setAttribute("x", x);
    rect.setAttribute("y", 20 - 20 * rate);
    rect.setAttribute("width", 0.9);
    rect.setAttribute("height", 20 * rate);
    rect.dataset.minute = minute;
    rect.dataset.rate = rate.toFixed(3);
    const title = document.createElementNS(SVG_NS, "title");
    title.textContent = `${new Date(Number(minute) * 1000).toLocaleTimeString()}: ${f}/${n} failed`;
    rect.appendChild(title);
    svg.appendChild(rect);
  }
  text(card.querySelector(".rate"), total ? `${((100 * fail) / total).toFixed(1)} % (last hour)` : null);
}

function drawFailures(card, failures) {
  const list = card.querySelector(".failures");
  while (list.firstChild) list.removeChild(list.firstChild);
  for (const f of failures || []) {
    const li = document.createElement("li");
    li.className = "failure";
    li.dataset.imageId = f.image_id || "";
    const classes = (f.detections || []).map((d) => `${d.class_name} ${(Number(d.score) * 100).toFixed(0)}%`);
    const span = document.createElement("span");
    span.textContent = `${f.captured_at || ""} ${classes.join(", ")}`;
    li.appendChild(span);
    if (f.image_id) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "flag-failure";
      button.textContent = "flag";
      button.addEventListener("click", () => flag(f.image_id, card.querySelector(".flag-status")));
      li.appendChild(button);
    }
    list.appendChild(li);
  }
}

async function refreshReview() {
  const el = document.getElementById("review-queue");
  try {
    const r = await fetch("/api/review");
    const body = await r.json();
    if (!body.enabled) { el.hidden = true; return; }
    el.hidden = false;
    el.dataset.size = body.queue_size ?? "";
    text(el, body.queue_size === null || body.queue_size === undefined
      ? "review queue unavailable" : `review queue: ${body.queue_size}`);
  } catch (e) {
    el.hidden = false;
    text(el, "review queue unavailable");
  }
}

function render(view, camCounts, history, failures) {
  const card = cardFor(view.camera);
  card.dataset.imageId = view.image_id || "";
  if (history !== undefined) drawHistory(card, history);
  if (failures !== undefined) drawFailures(card, failures);
  const verdict = card.querySelector(".verdict");
  verdict.className = `verdict ${view.passed ? "pass" : "fail"}`;
  text(verdict, view.passed ? "PASS" : "FAIL");
  const img = card.querySelector(".picture");
  if (typeof view.image === "string" && IMAGE_URL.test(view.image)) {
    img.setAttribute("src", view.image);
    img.setAttribute("alt", "latest inspected image");
  } else {
    // The result went out without its picture (S3 down, store busy): say why.
    img.removeAttribute("src");
    img.setAttribute("alt", view.image_status ? `no image: ${view.image_status}` : "no image");
  }
  drawBoxes(card.querySelector(".boxes"), view);
  const model = view.model_name ? `${view.model_name} v${view.model_version ?? "?"}` : null;
  text(card.querySelector(".model"), model);
  text(card.querySelector(".latency"),
       view.latency_ms === null ? null : `${Number(view.latency_ms).toFixed(1)} ms`);
  text(card.querySelector(".label"), view.label);
  text(card.querySelector(".captured"), view.captured_at);
  if (camCounts) {
    counts.set(view.camera, camCounts);
    text(card.querySelector(".counts"),
         `${camCounts.total} seen, ${camCounts.pass} pass, ${camCounts.fail} fail`);
  }
  const list = card.querySelector(".detections");
  while (list.firstChild) list.removeChild(list.firstChild);
  for (const d of view.detections) {
    const li = document.createElement("li");
    li.className = "detection";
    li.textContent = `${d.class_name} ${(Number(d.score) * 100).toFixed(0)}%`;
    list.appendChild(li);
  }
  updateTotals();
}

function updateTotals() {
  totals = { total: 0, pass: 0, fail: 0 };
  for (const c of counts.values()) {
    totals.total += c.total; totals.pass += c.pass; totals.fail += c.fail;
  }
  const el = document.getElementById("totals");
  el.dataset.total = totals.total;
  text(el, `${totals.total} inspected · ${totals.pass} pass · ${totals.fail} fail`);
}

function connect() {
  const status = document.getElementById("status");
  const source = new EventSource("/events");
  source.addEventListener("open", () => { status.dataset.state = "live"; text(status, "live"); });
  source.addEventListener("error", () => { status.dataset.state = "lost"; text(status, "reconnecting…"); });
  source.addEventListener("snapshot", (e) => {
    const snap = JSON.parse(e.data);
    for (const view of snap.cameras) {
      render(view, snap.counts[view.camera], (snap.history || {})[view.camera], (snap.failures || {})[view.camera]);
    }
  });
  source.addEventListener("result", (e) => {
    const msg = JSON.parse(e.data);
    render(msg.view, msg.counts, msg.history, msg.failures);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  connect();
  refreshReview();
  setInterval(refreshReview, 10000);
});
