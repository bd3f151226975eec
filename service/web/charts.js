// Small SVG charts drawn from API responses: horizontal bars with interval whiskers, and a log-log
// roofline. No figures are computed here beyond placing the API's numbers on axes.
"use strict";

const SVG = "http://www.w3.org/2000/svg";

function el(name, attrs, text) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function fmt(value) {
  return Math.abs(value) >= 1000 || Math.abs(value) < 0.01 ? value.toExponential(2) : value.toPrecision(3);
}

// items: [{label, value, low, high}]; one bar per item, on a linear axis from 0.
function barChart(container, items, unit) {
  container.replaceChildren();
  const rowHeight = 22, left = 190, width = 620, right = 70;
  const height = rowHeight * items.length + 30;
  const svg = el("svg", { width: left + width + right, height, role: "img" });
  const max = Math.max(...items.map((d) => d.high ?? d.value)) || 1;
  const x = (v) => left + (v / max) * width;
  items.forEach((d, i) => {
    const y = 10 + i * rowHeight;
    svg.append(el("text", { x: left - 6, y: y + 13, "text-anchor": "end" }, d.label));
    svg.append(el("rect", {
      x: left, y, width: Math.max(1, x(d.value) - left), height: rowHeight - 6, fill: "#4a90d9",
      "data-label": d.label, "data-value": d.value,
    }));
    if (d.low !== undefined && d.high !== undefined) {
      const cy = y + (rowHeight - 6) / 2;
      svg.append(el("line", { x1: x(d.low), x2: x(d.high), y1: cy, y2: cy, stroke: "#222" }));
      for (const v of [d.low, d.high]) {
        svg.append(el("line", { x1: x(v), x2: x(v), y1: cy - 5, y2: cy + 5, stroke: "#222" }));
      }
    }
    svg.append(el("text", { x: x(d.high ?? d.value) + 4, y: y + 13 }, `${fmt(d.value)} ${unit}`));
  });
  container.append(svg);
}

// roof: {peak_gflops, bandwidth_gbps}; point: {intensity, gflops, low, high} (FLOP/byte, GFLOP/s).
function rooflineChart(container, roof, point) {
  container.replaceChildren();
  const w = 420, h = 300, pad = 45;
  const svg = el("svg", { width: w, height: h, role: "img" });
  const ridge = roof.peak_gflops / roof.bandwidth_gbps;
  const xs = [Math.min(point.intensity, ridge) / 100, Math.max(point.intensity, ridge) * 100];
  const ys = [Math.min(point.low, roof.bandwidth_gbps * xs[0]) / 2, roof.peak_gflops * 2];
  const lx = (v) => pad + (Math.log10(v / xs[0]) / Math.log10(xs[1] / xs[0])) * (w - 2 * pad);
  const ly = (v) => h - pad - (Math.log10(v / ys[0]) / Math.log10(ys[1] / ys[0])) * (h - 2 * pad);
  const roofAt = (i) => Math.min(roof.peak_gflops, roof.bandwidth_gbps * i);
  const steps = 40;
  let path = "";
  for (let s = 0; s <= steps; s++) {
    const i = xs[0] * Math.pow(xs[1] / xs[0], s / steps);
    path += `${s ? "L" : "M"}${lx(i).toFixed(1)},${ly(roofAt(i)).toFixed(1)}`;
  }
  svg.append(el("path", { d: path, fill: "none", stroke: "#888", "stroke-width": 2 }));
  svg.append(el("line", { x1: pad, x2: w - pad, y1: h - pad, y2: h - pad, stroke: "#222" }));
  svg.append(el("line", { x1: pad, x2: pad, y1: pad, y2: h - pad, stroke: "#222" }));
  svg.append(el("text", { x: w / 2, y: h - 10, "text-anchor": "middle" }, "arithmetic intensity (FLOP/byte, log)"));
  svg.append(el("text", { x: 12, y: h / 2, transform: `rotate(-90 12 ${h / 2})`, "text-anchor": "middle" }, "GFLOP/s (log)"));
  svg.append(el("line", { x1: lx(point.intensity), x2: lx(point.intensity), y1: ly(point.low), y2: ly(point.high), stroke: "#d9534f" }));
  svg.append(el("circle", { cx: lx(point.intensity), cy: ly(point.gflops), r: 5, fill: "#d9534f", id: "roofline-point" }));
  svg.append(el("text", { x: lx(point.intensity) + 8, y: ly(point.gflops) - 6 }, `${fmt(point.gflops)} GFLOP/s`));
  svg.append(el("text", { x: w - pad, y: ly(roof.peak_gflops) - 4, "text-anchor": "end" }, `peak ${fmt(roof.peak_gflops)}`));
  container.append(svg);
}
