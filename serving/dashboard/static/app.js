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

function render(view, camCounts) {
  const card = cardFor(view.camera);
  card.dataset.imageId = view.image_id || "";
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
    for (const view of snap.cameras) render(view, snap.counts[view.camera]);
  });
  source.addEventListener("result", (e) => {
    const msg = JSON.parse(e.data);
    render(msg.view, msg.counts);
  });
}

document.addEventListener("DOMContentLoaded", connect);
