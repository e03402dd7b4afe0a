// The page's pictures on <canvas>: a mask (queries x keys), a token's receptive field as a light
// cone (layers x positions) and the coverage curve (layers x fraction of pairs), each with
// labelled axes. The pixels of the mask canvas are what tests/web/test_page.py compares with
// `sparsa compile --dense`, so its colours are defined here once (pageDraw.colors).
"use strict";

const pageDraw = (() => {
  // 0xRRGGBB, as viz/mask_image.hpp: nothing kept, and the two ends of the kept shading.
  const colors = {background: 0xF4F4F4, light: 0xB9D3EE, full: 0x1F5FA8};
  const ink = "#222", faint = "#888", grid = "#ddd";
  const font = "12px system-ui, sans-serif";

  // Channel values of a pixel for a fraction f of kept pairs: background at 0, else
  // light + (full - light) * f per channel, rounded (f = 1: full).
  function shade(f) {
    if (f <= 0) return [colors.background >> 16, (colors.background >> 8) & 255, colors.background & 255];
    const out = [];
    for (const shift of [16, 8, 0]) {
      const a = (colors.light >> shift) & 255, b = (colors.full >> shift) & 255;
      out.push(Math.round(a + (b - a) * Math.min(f, 1)));
    }
    return out;
  }

  // fractions: [rows * cols] row-major -> the canvas's pixels (canvas becomes cols x rows).
  function paintFractions(canvas, fractions, cols, rows) {
    canvas.width = cols;
    canvas.height = rows;
    const ctx = canvas.getContext("2d");
    const image = ctx.createImageData(cols, rows);
    for (let i = 0; i < rows * cols; ++i) {
      const [r, g, b] = shade(fractions[i]);
      image.data[4 * i] = r;
      image.data[4 * i + 1] = g;
      image.data[4 * i + 2] = b;
      image.data[4 * i + 3] = 255;
    }
    ctx.putImageData(image, 0, 0);
  }

  // A canvas's 2D context drawing in CSS pixels at the screen's resolution.
  function context2d(canvas) {
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth, h = canvas.clientHeight;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    ctx.font = font;
    return {ctx, w, h};
  }

  // About `count` round tick values in [lo, hi] (1, 2 or 5 times a power of ten apart; whole
  // numbers only when `integers`).
  function niceTicks(lo, hi, count, integers = true) {
    if (hi <= lo) return [lo];
    const raw = Math.max((hi - lo) / Math.max(count, 1), integers ? 1 : 0);
    const power = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw);
    const ticks = [];
    for (let t = Math.ceil(lo / step) * step; t <= hi + 1e-9; t += step) ticks.push(Math.round(t * 1e6) / 1e6);
    return ticks;
  }

  function formatCount(v) {
    if (v >= 1e6 && v % 1e5 === 0) return v / 1e6 + "M";
    if (v >= 10000 && v % 1000 === 0) return v / 1000 + "k";
    return String(v);
  }

  // Axes around rect {x, y, w, h}: x ticks under it, y ticks left of it (yDown: values grow
  // downward, as matrix rows do), and the axis titles.
  function axes(ctx, rect, opts) {
    ctx.strokeStyle = faint;
    ctx.lineWidth = 1;
    ctx.strokeRect(rect.x - 0.5, rect.y - 0.5, rect.w + 1, rect.h + 1);
    ctx.fillStyle = ink;
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (const t of opts.xTicks) {
      const x = rect.x + ((t - opts.x0) / (opts.x1 - opts.x0)) * rect.w;
      ctx.beginPath();
      ctx.moveTo(x, rect.y + rect.h);
      ctx.lineTo(x, rect.y + rect.h + 4);
      ctx.stroke();
      ctx.fillText(opts.xFormat(t), x, rect.y + rect.h + 6);
    }
    ctx.fillText(opts.xTitle, rect.x + rect.w / 2, rect.y + rect.h + 22);
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (const t of opts.yTicks) {
      const f = (t - opts.y0) / (opts.y1 - opts.y0);
      const y = opts.yDown ? rect.y + f * rect.h : rect.y + rect.h - f * rect.h;
      ctx.beginPath();
      ctx.moveTo(rect.x - 4, y);
      ctx.lineTo(rect.x, y);
      ctx.stroke();
      ctx.fillText(opts.yFormat(t), rect.x - 6, y);
    }
    ctx.save();
    ctx.translate(12, rect.y + rect.h / 2);
    ctx.rotate(-Math.PI / 2);
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    ctx.fillText(opts.yTitle, 0, 0);
    ctx.restore();
  }

  // The frame around the mask canvas: its rect inside `frame` must match the CSS that places
  // the mask canvas (index.html, .mask-frame): left 64, top 8, size = frame width - 72.
  const maskMargin = {left: 64, top: 8, right: 14};

  function maskFrame(frame, n, token) {
    const {ctx, w} = context2d(frame);
    const side = w - maskMargin.left - maskMargin.right;
    const rect = {x: maskMargin.left, y: maskMargin.top, w: side, h: side};
    const ticks = niceTicks(0, n, 4);
    axes(ctx, rect, {
      x0: 0, x1: n, y0: 0, y1: n, yDown: true, xTicks: ticks, yTicks: ticks,
      xFormat: formatCount, yFormat: formatCount,
      xTitle: "Key position (attended to) \u2192", yTitle: "\u2190 Query position (attending)",
    });
    if (token !== null && token >= 0 && token < n) {  // the chosen token's query row, right of the mask
      const x = rect.x + rect.w + 1, y = rect.y + ((token + 0.5) / n) * rect.h;
      ctx.fillStyle = "#d33";
      ctx.beginPath();
      ctx.moveTo(x, y);
      ctx.lineTo(x + 9, y - 5);
      ctx.lineTo(x + 9, y + 5);
      ctx.fill();
    }
  }

  // A horizontal colour bar of the shading, with its end labels, at (x, y).
  function legend(ctx, x, y, label, lo, hi) {
    const width = 90, height = 10;
    for (let i = 0; i < width; ++i) {
      const [r, g, b] = shade(i === 0 ? 1 / width : (i + 1) / width);
      ctx.fillStyle = `rgb(${r},${g},${b})`;
      ctx.fillRect(x + i, y, 1, height);
    }
    ctx.strokeStyle = faint;
    ctx.strokeRect(x - 0.5, y - 0.5, width + 1, height + 1);
    ctx.fillStyle = ink;
    ctx.textBaseline = "middle";
    ctx.textAlign = "right";
    ctx.fillText(label + "  " + lo, x - 4, y + height / 2);
    ctx.textAlign = "left";
    ctx.fillText(hi, x + width + 4, y + height / 2);
  }

  // The light cone: field.fractions [(layers + 1) * width], row l = layer l, drawn with layer 0
  // (the token alone) at the bottom.
  function lightCone(canvas, field, n, direction) {
    const {ctx, w, h} = context2d(canvas);
    const rows = field.sizes.length, width = field.width;
    const rect = {x: 64, y: 30, w: w - 72, h: h - 30 - 40};
    const image = document.createElement("canvas");
    const flipped = new Float32Array(rows * width);  // layer 0 in the bottom row
    for (let l = 0; l < rows; ++l) flipped.set(field.fractions.subarray(l * width, (l + 1) * width), (rows - 1 - l) * width);
    paintFractions(image, flipped, width, rows);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(image, rect.x, rect.y, rect.w, rect.h);
    const layerTicks = rows - 1 <= 8 ? [...Array(rows).keys()] : niceTicks(0, rows - 1, 6);
    axes(ctx, {...rect, h: rect.h}, {
      x0: 0, x1: n, y0: -0.5, y1: rows - 0.5, yDown: false, xTicks: niceTicks(0, n, 4), yTicks: layerTicks,
      xFormat: formatCount, yFormat: String,
      xTitle: direction === "in" ? "Key position (seen by the token)" : "Query position (that has seen the token)",
      yTitle: "Layer",
    });
    const x = rect.x + ((field.token + 0.5) / n) * rect.w;  // the token
    ctx.strokeStyle = "#d33";
    ctx.setLineDash([4, 3]);
    ctx.beginPath();
    ctx.moveTo(x, rect.y);
    ctx.lineTo(x, rect.y + rect.h);
    ctx.stroke();
    ctx.setLineDash([]);
    legend(ctx, w - 8 - 90 - 22, 8, "share of positions in the field:", "0", "1");
  }

  // The coverage curve: fractions [computed + 1] of the pairs connected after each layer.
  function coverageCurve(canvas, cov) {
    const {ctx, w, h} = context2d(canvas);
    const rect = {x: 64, y: 30, w: w - 72, h: h - 30 - 40};
    const last = Math.max(cov.fractions.length - 1, 1);
    for (const t of [0.25, 0.5, 0.75]) {  // grid
      ctx.strokeStyle = grid;
      ctx.beginPath();
      ctx.moveTo(rect.x, rect.y + rect.h * (1 - t));
      ctx.lineTo(rect.x + rect.w, rect.y + rect.h * (1 - t));
      ctx.stroke();
    }
    axes(ctx, rect, {
      x0: 0, x1: last, y0: 0, y1: 1, yDown: false, xTicks: niceTicks(0, last, 6), yTicks: [0, 0.5, 1],
      xFormat: String, yFormat: (t) => Math.round(t * 100) + "%",
      xTitle: "Layers stacked", yTitle: cov.causal ? "Pairs k \u2264 q connected" : "Pairs connected",
    });
    const px = (l) => rect.x + (l / last) * rect.w, py = (f) => rect.y + rect.h * (1 - f);
    if (cov.layers <= last) {  // the script's depth
      ctx.strokeStyle = "#d33";
      ctx.setLineDash([4, 3]);
      ctx.beginPath();
      ctx.moveTo(px(cov.layers), rect.y);
      ctx.lineTo(px(cov.layers), rect.y + rect.h);
      ctx.stroke();
      ctx.setLineDash([]);
      ctx.fillStyle = "#d33";
      ctx.textAlign = cov.layers > last / 2 ? "right" : "left";
      ctx.textBaseline = "top";
      ctx.fillText(" the script's " + cov.layers + " layers ", px(cov.layers), rect.y + 4);
    }
    ctx.strokeStyle = "#" + colors.full.toString(16).padStart(6, "0");
    ctx.lineWidth = 2;
    ctx.beginPath();
    cov.fractions.forEach((f, l) => (l === 0 ? ctx.moveTo(px(l), py(f)) : ctx.lineTo(px(l), py(f))));
    ctx.stroke();
    ctx.lineWidth = 1;
    ctx.fillStyle = ink;
    ctx.textAlign = "left";
    ctx.textBaseline = "top";
    let note;
    if (cov.layersNeeded >= 0) note = `every pair connected after ${cov.layersNeeded} layer${cov.layersNeeded === 1 ? "" : "s"}`;
    else if (cov.stopped) note = `not every pair within ${last} layers`;
    else note = `never every pair: ${cov.neverReason}`;
    ctx.fillText(note, rect.x, 6);
  }

  return {colors, shade, paintFractions, maskFrame, maskMargin, lightCone, coverageCurve};
})();
