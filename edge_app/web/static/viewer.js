// The study viewer: zoom and pan (touch and mouse), window/level by dragging on greyscale images, the heatmap
// as a red overlay with on/off and opacity. Plain canvas, no library.
"use strict";

// An <img> once loaded (its load event before the page's: the browser's scroll to #review sees the viewer sized).
// decode(): no load event to miss, whenever the image came in (before or after this script ran); it rejects on error.
function loaded(img) {
  return img.complete && img.naturalWidth ? Promise.resolve(img) : img.decode().then(() => img);
}

function loadImage(url) {
  const img = new Image();
  img.src = url;
  return loaded(img);
}

function canvasOf(width, height) {
  const c = document.createElement("canvas");
  c.width = width; c.height = height;
  return c;
}

async function setUp(box) {
  const canvas = box.querySelector("canvas");
  const ctx = canvas.getContext("2d");
  // The preview and the first heatmap are the page's own (hidden) <img>: fetched while the page is still parsed,
  // both at once, not one after the other once the scripts have run.
  const img = box.querySelector("img.preview");
  const first = box.querySelector("img.heatmap");
  await Promise.all([loaded(img), first ? loaded(first) : null]);
  const base = canvasOf(img.width, img.height);
  const bctx = base.getContext("2d", {willReadFrequently: true});
  bctx.drawImage(img, 0, 0);
  let size = {width: img.width, height: img.height};  // of what is shown: the preview, or the diagnostic view
  // The preview's pixels, read only once window/level needs them: 4 MB read back on a slow tablet's first screen.
  let original = null;
  const pixels = () => (original ??= bctx.getImageData(0, 0, img.width, img.height));
  let full = null;  // the diagnostic view, once asked for: the image's values at full bit depth
  let grey = true;
  const probe = canvasOf(32, 32).getContext("2d", {willReadFrequently: true});
  probe.drawImage(img, 0, 0, 32, 32);
  const sample = probe.getImageData(0, 0, 32, 32).data;
  for (let i = 0; i < sample.length; i += 4) { if (sample[i] !== sample[i + 1] || sample[i] !== sample[i + 2]) { grey = false; break; } }
  box.dataset.grey = grey ? "1" : "0";

  // Each finding's heatmap, loaded when first picked: red, its alpha the model's local probability.
  const heatmaps = new Map();
  const red = (h) => {
    const c = canvasOf(h.width, h.height);
    const hctx = c.getContext("2d");
    hctx.drawImage(h, 0, 0);
    const d = hctx.getImageData(0, 0, h.width, h.height);
    for (let i = 0; i < d.data.length; i += 4) { const v = d.data[i]; d.data[i] = 255; d.data[i + 1] = 0; d.data[i + 2] = 0; d.data[i + 3] = v; }
    hctx.putImageData(d, 0, 0);
    return c;
  };
  if (first) heatmaps.set(first.getAttribute("src"), red(first));
  const heatmapOf = async (url) => {
    if (!heatmaps.has(url)) heatmaps.set(url, red(await loadImage(url)));
    return heatmaps.get(url);
  };
  let heat = first ? heatmaps.get(first.getAttribute("src")) : null;
  const toggle = box.querySelector(".heatmap-toggle");
  const opacity = box.querySelector(".heatmap-opacity");
  const choice = box.querySelector(".heatmap-choice");

  const view = {scale: 1, x: 0, y: 0, width: 255, level: 127.5};
  const fit = () => {
    // The whole image in view, its proportions kept: as wide as its column allows, and its bottom on the first
    // screen (at least half the screen tall, for an image further down the page).
    // Side by side (landscape, the stylesheet's --side): the image's column is as wide as the image, at most 62 %
    // of the row, and the findings take the rest.
    const layout = box.closest(".image-layout");
    const side = layout !== null && getComputedStyle(layout).getPropertyValue("--side").trim() === "1";
    let width = side ? layout.clientWidth * 0.62 : box.clientWidth, height = width * size.height / size.width;
    const top = box.getBoundingClientRect().top + window.scrollY;
    const tallest = Math.max(window.innerHeight * 0.5, window.innerHeight - top - 8);
    if (height > tallest) { height = tallest; width = height * size.width / size.height; }
    if (layout !== null) layout.style.setProperty("--view-width", side ? `${Math.floor(width)}px` : "");
    canvas.style.width = `${width}px`; canvas.style.height = `${height}px`;
    canvas.width = Math.max(1, Math.round(width * devicePixelRatio));
    canvas.height = Math.max(1, Math.round(height * devicePixelRatio));
    view.scale = canvas.width / size.width; view.x = 0; view.y = 0;
  };
  const applyWindow = () => {
    if (full) { applyFullWindow(); return; }
    const out = bctx.createImageData(pixels()), px = original.data;
    const lo = view.level - view.width / 2;
    const lut = new Uint8ClampedArray(256);
    for (let v = 0; v < 256; v++) lut[v] = ((v - lo) / view.width) * 255;
    for (let i = 0; i < px.length; i += 4) {
      out.data[i] = lut[px[i]]; out.data[i + 1] = lut[px[i + 1]]; out.data[i + 2] = lut[px[i + 2]]; out.data[i + 3] = 255;
    }
    bctx.putImageData(out, 0, 0);
  };
  const draw = () => {
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.setTransform(view.scale, 0, 0, view.scale, view.x, view.y);
    ctx.drawImage(base, 0, 0);
    if (heat && toggle && toggle.checked) {
      ctx.globalAlpha = Number(opacity ? opacity.value : 45) / 100;
      ctx.imageSmoothingEnabled = true;
      ctx.drawImage(heat, 0, 0, size.width, size.height);
      ctx.globalAlpha = 1;
    }
    box.dataset.drawn = String(Date.now());
  };
  const zoomAt = (factor, cx, cy) => {
    const s = Math.min(Math.max(view.scale * factor, 0.1), 40);
    view.x = cx - (cx - view.x) * (s / view.scale);
    view.y = cy - (cy - view.y) * (s / view.scale);
    view.scale = s;
    draw();
  };

  const pointers = new Map();
  let pinch = 0;
  const local = (e) => {
    const r = canvas.getBoundingClientRect();
    return [(e.clientX - r.left) * devicePixelRatio, (e.clientY - r.top) * devicePixelRatio];
  };
  if (choice) {
    choice.addEventListener("change", async () => {
      heat = await heatmapOf(choice.value);
      // The printed report shows the heatmap the clinician looks at.
      const report = document.getElementById("report");
      const picked = choice.selectedOptions[0];
      if (report && picked) {
        const url = new URL(report.href, location.href);
        url.searchParams.set("heatmap", picked.dataset.label);
        report.href = url.pathname + url.search;
      }
      draw();
    });
  }
  canvas.addEventListener("contextmenu", (e) => e.preventDefault());
  canvas.addEventListener("pointerdown", (e) => {
    canvas.setPointerCapture(e.pointerId);
    pointers.set(e.pointerId, {x: e.clientX, y: e.clientY, button: e.button});
  });
  canvas.addEventListener("pointermove", (e) => {
    const p = pointers.get(e.pointerId);
    if (!p) return;
    const dx = e.clientX - p.x, dy = e.clientY - p.y;
    p.x = e.clientX; p.y = e.clientY;
    if (pointers.size === 2) {
      const [a, b] = [...pointers.values()];
      const d = Math.hypot(a.x - b.x, a.y - b.y);
      if (pinch) { const [cx, cy] = local(e); zoomAt(d / pinch, cx, cy); }
      pinch = d;
    } else if (grey && (p.button === 2 || box.classList.contains("wl-mode"))) {
      // One CSS pixel moves the window by 1/256 of the values' range: 1 on the 8-bit preview.
      const range = full ? full.range : 256, unit = range / 256, bottom = full ? full.offset : 0;
      view.width = Math.min(Math.max(view.width + dx * unit, unit), 2 * range);
      view.level = Math.min(Math.max(view.level - dy * unit, bottom - range / 2), bottom + 1.5 * range);
      applyWindow(); draw();
    } else {
      view.x += dx * devicePixelRatio; view.y += dy * devicePixelRatio; draw();
    }
  });
  const up = (e) => { pointers.delete(e.pointerId); if (pointers.size < 2) pinch = 0; };
  canvas.addEventListener("pointerup", up);
  canvas.addEventListener("pointercancel", up);
  canvas.addEventListener("wheel", (e) => {
    e.preventDefault();
    const [cx, cy] = local(e);
    zoomAt(e.deltaY < 0 ? 1.15 : 1 / 1.15, cx, cy);
  }, {passive: false});
  if (toggle) toggle.addEventListener("change", draw);
  if (opacity) opacity.addEventListener("input", draw);
  const mode = box.querySelector(".wl");
  if (mode) {
    mode.hidden = !grey;
    mode.addEventListener("click", () => { box.classList.toggle("wl-mode"); mode.setAttribute("aria-pressed", String(box.classList.contains("wl-mode"))); });
  }
  box.querySelector(".reset").addEventListener("click", () => {
    if (full) { view.width = full.window; view.level = full.center; applyFullWindow(); }
    else { view.width = 255; view.level = 127.5; if (original) bctx.putImageData(original, 0, 0); }
    fit(); draw();
  });

  // The diagnostic view: 16-bit values (little-endian, as every tablet's processor is) windowed here through a
  // 65536-entry table, the header's window first.
  const applyFullWindow = () => {
    const lut = new Uint8ClampedArray(65536), lo = view.level - view.width / 2;
    for (let v = 0; v < 65536; v++) {
      const shown = ((v * full.step + full.offset - lo) / view.width) * 255;
      lut[v] = full.inverted ? 255 - shown : shown;
    }
    const out = bctx.createImageData(size.width, size.height), d = out.data, values = full.values;
    for (let i = 0, j = 0; i < values.length; i++, j += 4) { const g = lut[values[i]]; d[j] = g; d[j + 1] = g; d[j + 2] = g; d[j + 3] = 255; }
    bctx.putImageData(out, 0, 0);
  };
  const diagnostic = box.querySelector(".full-depth");
  if (diagnostic) {
    diagnostic.hidden = !grey;
    const loadFull = async () => {
      diagnostic.disabled = true;
      const r = await fetch(diagnostic.dataset.url, {credentials: "same-origin"});
      if (!r.ok) { diagnostic.textContent = await r.text(); return; }
      const h = (name) => Number(r.headers.get(`X-Full-${name}`));
      const values = new Uint16Array(await r.arrayBuffer());
      let top = 1;
      for (let i = 0; i < values.length; i++) if (values[i] > top) top = values[i];
      full = {values, offset: h("Offset"), step: h("Step"), center: h("Center"), window: h("Window"),
              inverted: h("Inverted") === 1, range: top * h("Step")};
      size = {width: h("Width"), height: h("Height")};
      base.width = size.width; base.height = size.height;
      view.width = full.window; view.level = full.center;
      applyFullWindow(); fit(); draw();
      box.dataset.full = "1";
      diagnostic.hidden = true;
      box.querySelector(".preview-note").hidden = true;
      box.querySelector(".full-note").hidden = false;
    };
    // The box restarting or the Wi-Fi dropping: the button is there to try again.
    diagnostic.addEventListener("click", () => loadFull().catch(() => { diagnostic.disabled = false; }));
  }
  window.addEventListener("resize", () => { fit(); draw(); });
  fit();
  draw();
}

document.addEventListener("DOMContentLoaded", () => {
  const boxes = [...document.querySelectorAll(".viewer")];
  Promise.all(boxes.map((box) => setUp(box).catch(() => { box.classList.add("broken"); }))).then(() => {
    // The viewers sized: the part the address names (#review after a save) is put in view again, wherever the
    // browser's own scroll to it left it while an image was still loading.
    const target = location.hash && document.getElementById(location.hash.slice(1));
    if (target) target.scrollIntoView();
  });
});
