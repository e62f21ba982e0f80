// Charts drawn as inline SVG by hand: no library, no CDN (the console works offline).
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const PALETTE = ["#2f6fed", "#e8590c", "#12b76a", "#7a5af8", "#f04438", "#0ba5ec", "#667085"];

function svgEl(name, attrs, text) {
  const el = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

function niceTicks(lo, hi, n) {
  if (hi <= lo) hi = lo + 1;
  const step = (hi - lo) / n;
  return Array.from({ length: n + 1 }, (_, i) => lo + i * step);
}

function fmt(v) {
  const a = Math.abs(v);
  if (a >= 1e6) return (v / 1e6).toFixed(1) + "M";
  if (a >= 1e3) return (v / 1e3).toFixed(1) + "k";
  if (a >= 10 || v === 0) return String(Math.round(v));
  return v.toFixed(2);
}

function frame(width, height, pad, yLo, yHi, title) {
  const svg = svgEl("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img" });
  if (title) svg.appendChild(svgEl("title", {}, title));
  for (const t of niceTicks(yLo, yHi, 4)) {
    const y = pad.t + (height - pad.t - pad.b) * (1 - (t - yLo) / (yHi - yLo || 1));
    svg.appendChild(svgEl("line", { class: "grid", x1: pad.l, x2: width - pad.r, y1: y, y2: y }));
    svg.appendChild(svgEl("text", { x: pad.l - 6, y: y + 4, "text-anchor": "end" }, fmt(t)));
  }
  svg.appendChild(svgEl("line", { class: "axis", x1: pad.l, x2: pad.l, y1: pad.t, y2: height - pad.b }));
  svg.appendChild(svgEl("line", { class: "axis", x1: pad.l, x2: width - pad.r, y1: height - pad.b, y2: height - pad.b }));
  return svg;
}

// series: [{name, points: [[x, y], ...]}] → an SVG line chart with axes and a legend.
function lineChart(series, opts) {
  const o = Object.assign({ width: 640, height: 260, xLabel: "", title: "" }, opts || {});
  const pad = { l: 48, r: 12, t: 12, b: 32 };
  const all = series.flatMap((s) => s.points);
  const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
  const xLo = Math.min(...xs), xHi = Math.max(...xs);
  let yLo = Math.min(...ys), yHi = Math.max(...ys);
  if (yLo === yHi) { yLo -= 0.5; yHi += 0.5; }
  const svg = frame(o.width, o.height, pad, yLo, yHi, o.title);
  const X = (x) => pad.l + (o.width - pad.l - pad.r) * (xHi === xLo ? 0.5 : (x - xLo) / (xHi - xLo));
  const Y = (y) => pad.t + (o.height - pad.t - pad.b) * (1 - (y - yLo) / (yHi - yLo));
  svg.appendChild(svgEl("text", { x: pad.l, y: o.height - 8 }, fmt(xLo)));
  svg.appendChild(svgEl("text", { x: o.width - pad.r, y: o.height - 8, "text-anchor": "end" }, fmt(xHi)));
  svg.appendChild(svgEl("text", { x: o.width / 2, y: o.height - 8, "text-anchor": "middle" }, o.xLabel));
  series.forEach((s, i) => {
    if (!s.points.length) return;
    const d = s.points.map((p, j) => (j ? "L" : "M") + X(p[0]).toFixed(1) + " " + Y(p[1]).toFixed(1)).join(" ");
    svg.appendChild(svgEl("path", {
      d, fill: "none", stroke: PALETTE[i % PALETTE.length], "stroke-width": 2, "data-series": s.name,
    }));
    for (const p of s.points.length <= 60 ? s.points : []) {
      svg.appendChild(svgEl("circle", { cx: X(p[0]), cy: Y(p[1]), r: 2.5, fill: PALETTE[i % PALETTE.length] }));
    }
  });
  return withLegend(svg, series.map((s) => s.name));
}

// groups: [{label, values: {seriesName: number}}] → grouped bar chart (e.g. tokens per day per model).
function barChart(groups, seriesNames, opts) {
  const o = Object.assign({ width: 640, height: 260, title: "" }, opts || {});
  const pad = { l: 56, r: 12, t: 12, b: 36 };
  const max = Math.max(1, ...groups.flatMap((g) => seriesNames.map((n) => g.values[n] || 0)));
  const svg = frame(o.width, o.height, pad, 0, max, o.title);
  const plotW = o.width - pad.l - pad.r, plotH = o.height - pad.t - pad.b;
  const gw = plotW / Math.max(1, groups.length);
  const bw = Math.max(2, (gw * 0.8) / Math.max(1, seriesNames.length));
  groups.forEach((g, gi) => {
    const x0 = pad.l + gi * gw + gw * 0.1;
    seriesNames.forEach((n, si) => {
      const v = g.values[n] || 0, h = (plotH * v) / max;
      svg.appendChild(svgEl("rect", {
        x: x0 + si * bw, y: pad.t + plotH - h, width: bw - 1, height: h,
        fill: PALETTE[si % PALETTE.length], "data-series": n,
      }, undefined)).appendChild(svgEl("title", {}, `${n} ${g.label}: ${v}`));
    });
    svg.appendChild(svgEl("text", { x: x0 + (gw * 0.8) / 2, y: o.height - 14, "text-anchor": "middle" }, g.label));
  });
  return withLegend(svg, seriesNames);
}

function withLegend(svg, names) {
  const box = document.createElement("div");
  box.appendChild(svg);
  const legend = document.createElement("div");
  legend.className = "legend";
  names.forEach((n, i) => {
    const s = document.createElement("span");
    const sw = document.createElement("i");
    sw.style.background = PALETTE[i % PALETTE.length];
    s.append(sw, n);
    legend.appendChild(s);
  });
  box.appendChild(legend);
  return box;
}
