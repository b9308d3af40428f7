// The sweep chart: `nanocommander eval --sweep --json` drawn by hand as SVG, no library.
// x: style loss (mean NLL per reference token, lower is more in style); y: accuracy on general questions.
// The marked region is the sweep's own rule (tune/sweep.py `mark`): style loss within 10 % of the
// tuned model's and accuracy at least 95 % of the large model's.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";

function svgEl(name, attrs, text) {
  const el = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

function sweepPoints(report) {
  const rows = Array.isArray(report) ? report : (report && report.settings) || [];
  return rows
    .filter((r) => typeof r.style_nll === "number" && typeof r.general_accuracy === "number")
    .map((r) => ({ label: String(r.setting), x: r.style_nll, y: r.general_accuracy, marked: !!r.marked, row: r }));
}

function drawSweep(report, container) {
  container.textContent = "";
  const pts = sweepPoints(report);
  if (!pts.length) {
    container.textContent = "no setting in this file has both a style loss and an accuracy";
    return null;
  }
  const W = 480, H = 320, L = 48, R = 12, T = 14, B = 36;
  const xs = pts.map((p) => p.x), ys = pts.map((p) => p.y);
  const byLabel = Object.fromEntries(pts.map((p) => [p.label, p]));
  let x0 = Math.min(...xs), x1 = Math.max(...xs);
  if (byLabel.tuned) x1 = Math.max(x1, byLabel.tuned.x * 1.1);
  const pad = (x1 - x0) * 0.08 || 0.5;
  x0 -= pad; x1 += pad;
  const y0 = Math.max(0, Math.min(...ys) - 0.1), y1 = 1;
  const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const sy = (y) => T + (1 - (y - y0) / (y1 - y0 || 1)) * (H - T - B);
  const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "style against accuracy" });
  if (byLabel.tuned && byLabel.large) {  // the marked region, shaded
    const xr = byLabel.tuned.x * 1.1, yr = byLabel.large.y * 0.95;
    svg.appendChild(svgEl("rect", {
      class: "region", x: sx(x0), y: sy(y1), width: Math.max(0, sx(xr) - sx(x0)), height: Math.max(0, sy(yr) - sy(y1)),
    }));
  }
  svg.appendChild(svgEl("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }));
  svg.appendChild(svgEl("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B }));
  for (let i = 0; i <= 4; i++) {
    const xv = x0 + ((x1 - x0) * i) / 4, yv = y0 + ((y1 - y0) * i) / 4;
    svg.appendChild(svgEl("text", { x: sx(xv), y: H - B + 14, "text-anchor": "middle" }, xv.toFixed(2)));
    svg.appendChild(svgEl("text", { x: L - 4, y: sy(yv) + 3, "text-anchor": "end" }, Math.round(yv * 100) + "%"));
  }
  svg.appendChild(svgEl("text", { x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle" }, "style loss (NLL/token, lower = more in style)"));
  svg.appendChild(svgEl("text", { x: 12, y: (T + H - B) / 2, transform: `rotate(-90 12 ${(T + H - B) / 2})`, "text-anchor": "middle" }, "general accuracy"));
  for (const p of pts) {
    const g = svgEl("g", { class: "point" });
    const c = svgEl("circle", { class: "pt" + (p.marked ? " marked" : ""), cx: sx(p.x), cy: sy(p.y), r: p.marked ? 5 : 4 });
    c.appendChild(svgEl("title", {}, `${p.label}: style ${p.x.toFixed(3)}, accuracy ${(p.y * 100).toFixed(1)}%` +
      (p.row.steered_fraction != null ? `, steered ${(p.row.steered_fraction * 100).toFixed(0)}%` : "") + (p.marked ? " (marked)" : "")));
    g.appendChild(c);
    g.appendChild(svgEl("text", { x: sx(p.x) + 6, y: sy(p.y) - 5 }, p.label));
    svg.appendChild(g);
  }
  container.appendChild(svg);
  return svg;
}

window.NanoChart = { drawSweep, sweepPoints };
