// The page: the editor with live diagnostics, the views of the last good compile, the examples
// menu and the script in the address. Compiling runs off the typing path: kDebounceMs after the
// last keystroke; the mask and the field are drawn first, the coverage curve after them.
//
// window.sparsaPage.status() tells tests where the page is (see tests/web/test_page.py).
"use strict";

(() => {
  const kDebounceMs = 150;
  const kDefaultExample = "bigbird";
  const $ = (id) => document.getElementById(id);
  const ui = {
    script: $("script"), gutter: $("gutter"), backdrop: $("backdrop"), status: $("status"),
    diagnostics: $("diagnostics"), examples: $("examples"), n: $("n"), layer: $("layer"), head: $("head"),
    token: $("token"), direction: $("direction"), summary: $("summary"), headStats: $("head-stats"),
    maskFrame: $("mask-frame"), maskAxes: $("mask-axes"), mask: $("mask"), maskTitle: $("mask-title"),
    cone: $("cone"), coneTitle: $("cone-title"), coverage: $("coverage"), share: $("share"), shareNote: $("share-note"),
  };

  let sparsa = null;          // the wasm module (createSparsa)
  let good = null;            // the last good compile: {script, ...compile()'s result}
  let tokenChosen = false;    // the user picked a token: keep it across compiles
  let timer = 0;
  let inputAt = null;         // performance.now() of the last keystroke not yet drawn
  let compiledText = null, compiledN = null;
  const counts = {compiles: 0, drawn: 0, failed: 0, coverage: 0};
  const timings = {compileMs: 0, maskMs: 0, fieldMs: 0, coverageMs: 0, keyToDrawnMs: null};

  // [SECTION] editor: line numbers and diagnostics drawn behind the transparent textarea

  function escapeHtml(text) {
    return text.replace(/[&<>"]/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]));
  }

  // Diagnostics of the script's own lines (not the prelude's), marked in the gutter and the text.
  let marks = [];

  function renderEditor() {
    const lines = ui.script.value.split("\n");
    const byLine = new Map();
    for (const d of marks) {
      if (d.line < 1 || d.line > lines.length) continue;
      const prev = byLine.get(d.line);
      if (!prev || (prev.severity === "warning" && d.severity === "error")) byLine.set(d.line, d);
    }
    let gutter = "";
    let backdrop = "";
    lines.forEach((text, i) => {
      const d = byLine.get(i + 1);
      gutter += d ? `<div class="${d.severity}">${i + 1}</div>` : `<div>${i + 1}</div>`;
      if (!d) {
        backdrop += `<div>${escapeHtml(text) || " "}</div>`;
        return;
      }
      // Columns count characters (code points), as the compiler does.
      const chars = Array.from(text);
      const from = Math.min(Math.max(d.column - 1, 0), chars.length);
      let to = d.endLine === d.line ? d.endColumn - 1 : chars.length;
      if (to <= from) to = Math.min(from + 1, chars.length);
      const before = chars.slice(0, from).join(""), span = chars.slice(from, to).join(""), after = chars.slice(to).join("");
      const marked = span ? `<mark class="${d.severity}">${escapeHtml(span)}</mark>` : "";
      backdrop += `<div class="${d.severity}-line">${escapeHtml(before)}${marked}${escapeHtml(after) || (span || before ? "" : " ")}</div>`;
    });
    ui.gutter.innerHTML = gutter;
    ui.backdrop.innerHTML = backdrop;
    syncScroll();
  }

  // Redraws the gutter and backdrop once per frame however many input events come (a paste of
  // many lines fires one per line).
  let renderPending = false;
  function scheduleRender() {
    if (renderPending) return;
    renderPending = true;
    requestAnimationFrame(() => {
      renderPending = false;
      renderEditor();
    });
  }

  function syncScroll() {
    ui.backdrop.scrollTop = ui.gutter.scrollTop = ui.script.scrollTop;
    ui.backdrop.scrollLeft = ui.script.scrollLeft;
  }

  // Moves the caret to a diagnostic's line and column.
  function reveal(d) {
    const lines = ui.script.value.split("\n");
    let at = 0;
    for (let i = 0; i < d.line - 1 && i < lines.length; ++i) at += lines[i].length + 1;
    const line = lines[d.line - 1] || "";
    at += Array.from(line).slice(0, Math.max(d.column - 1, 0)).join("").length;
    ui.script.focus();
    ui.script.setSelectionRange(at, at);
  }

  function showDiagnostics(list) {
    marks = list.filter((d) => d.source === "script.pat" && d.line > 0);
    ui.diagnostics.replaceChildren(...list.map((d) => {
      const li = document.createElement("li");
      li.className = d.severity;
      const where = d.line > 0 ? (d.source === "script.pat" ? "" : d.source + " ") + `line ${d.line}, column ${d.column}: ` : "";
      li.innerHTML = `<span class="where">${escapeHtml(where + d.severity)}:</span> ${escapeHtml(d.message)}` +
                     (d.hint ? `<div class="hint">${escapeHtml(d.hint)}</div>` : "");
      li.dataset.line = d.line;
      if (d.line > 0 && d.source === "script.pat") li.addEventListener("click", () => reveal(d));
      return li;
    }));
    renderEditor();
  }

  // [SECTION] views

  function clampInput(input, max) {
    input.max = Math.max(max - 1, 0);
    const v = Math.min(Math.max(Math.floor(Number(input.value) || 0), 0), Math.max(max - 1, 0));
    input.value = v;
    return v;
  }

  function percent(f) {
    return f > 0 && f < 0.001 ? (100 * f).toFixed(4) + "%" : (100 * f).toFixed(2) + "%";
  }

  function bytes(b) {
    return b < 1024 ? b + " B" : b < 1 << 20 ? (b / 1024).toFixed(1) + " KiB" : (b / (1 << 20)).toFixed(1) + " MiB";
  }

  // Sizes the mask frame from its width: the mask square sits at pageDraw.maskMargin.
  function layoutMask() {
    const m = pageDraw.maskMargin;
    const width = ui.maskFrame.clientWidth;
    const side = Math.max(width - m.left - m.right, 50);
    ui.maskFrame.style.height = side + m.top + 42 + "px";
    Object.assign(ui.mask.style, {left: m.left + "px", top: m.top + "px", width: side + "px", height: side + "px"});
    return side;
  }

  function drawMask() {
    const t0 = performance.now();
    const layer = clampInput(ui.layer, good.layers), head = clampInput(ui.head, good.heads);
    const side = layoutMask();
    const dpr = window.devicePixelRatio || 1;
    const picture = sparsa.maskPicture(layer, head, Math.min(Math.round(side * dpr), 1024));
    if (!picture.ok) throw new Error(picture.diagnostics[0].message);
    pageDraw.paintFractions(ui.mask, picture.fractions, picture.side, picture.side);
    ui.mask.dataset.side = picture.side;
    ui.mask.dataset.layer = layer;
    ui.mask.dataset.head = head;
    pageDraw.maskFrame(ui.maskAxes, good.n, Number(ui.token.value));
    const s = sparsa.stats(layer, head);
    ui.maskTitle.textContent = `Mask of layer ${layer}, head ${head}: density ${percent(s.density)}`;
    ui.headStats.textContent = `${s.keptBlocks} kept blocks of ${good.block} x ${good.block} (${s.fullBlocks} full, ` +
      `${s.partialBlocks} partial), ${s.keptPairs.toLocaleString("en-US")} pairs, ${s.emptyRows} empty rows, ` +
      `${bytes(s.maskBytes)} of mask; ${picture.side < good.n ? (good.n / picture.side).toFixed(1).replace(/\.0$/, "") +
      " x " + (good.n / picture.side).toFixed(1).replace(/\.0$/, "") + " tokens a pixel" : "one token a pixel"}.`;
    timings.maskMs = performance.now() - t0;
  }

  function drawField() {
    const t0 = performance.now();
    if (!tokenChosen) ui.token.value = Math.floor(good.n / 2);
    const token = clampInput(ui.token, good.n);
    const direction = ui.direction.value;
    const dpr = window.devicePixelRatio || 1;
    const f = sparsa.field(token, direction, Math.round((ui.cone.clientWidth - 72) * dpr));
    if (!f.ok) throw new Error(f.diagnostics[0].message);
    pageDraw.lightCone(ui.cone, f, good.n, direction);
    const last = f.sizes[f.sizes.length - 1];
    ui.coneTitle.textContent = `Receptive field of token ${token} (${direction}): ` +
      (f.layersToAll >= 0 ? `all ${good.n} positions after ${f.layersToAll} layers`
                          : `${last.toLocaleString("en-US")} of ${good.n} positions after ${f.sizes.length - 1} layers`);
    pageDraw.maskFrame(ui.maskAxes, good.n, token);
    timings.fieldMs = performance.now() - t0;
  }

  function drawCoverage() {
    const c = sparsa.coverage();
    if (!c.ok) throw new Error(c.diagnostics[0].message);
    pageDraw.coverageCurve(ui.coverage, c);
    timings.coverageMs = c.ms;
    counts.coverage++;
  }

  // keyAt: performance.now() of the keystroke this compile answers (null: not typed).
  function drawAll(keyAt = null) {
    drawMask();
    drawField();
    // The coverage curve waits for the next frame, so the mask and field show first.
    const drawnAt = counts.drawn + 1;
    requestAnimationFrame(() => {
      if (keyAt !== null) {
        timings.keyToDrawnMs = performance.now() - keyAt;
        ui.status.textContent += `, drawn ${Math.round(timings.keyToDrawnMs)} ms after the last key`;
      }
      counts.drawn = drawnAt;
      setTimeout(() => guard(drawCoverage), 0);
    });
  }

  // [SECTION] compiling

  function setStatus(text, isError) {
    ui.status.textContent = text;
    ui.status.className = isError ? "error" : "";
  }

  // A failure of the module itself (a trap, not a diagnostic): said on the page, and the module
  // is started again, with the last good script compiled, so that the views and the next edit work.
  // The browser's stack is smaller than a native thread's: a chain of some 2,000 definitions
  // calling each other overflows it before the language's own limit (dsl/eval.hpp) stops it.
  function guard(work) {
    try {
      work();
    } catch (e) {
      const deep = e instanceof RangeError && /call stack/i.test(e.message);
      setStatus(deep ? "the script nests too deeply for the browser's stack (a long chain of definitions " +
                       "calling each other?): shorten it, or use the sparsa command, which has more stack"
                     : "internal error: " + e.message + " (please report it with the link of this page)", true);
      document.body.dataset.state = "error";
      counts.failed++;
      createSparsa().then((m) => {
        sparsa = m;
        if (good) sparsa.compile(good.script, good.n);
      });
    }
  }

  function compileNow() {
    clearTimeout(timer);
    timer = 0;
    const keyAt = inputAt;
    inputAt = null;
    const text = ui.script.value;
    const n = Math.floor(Number(ui.n.value));
    if (text === compiledText && n === compiledN) return;
    compiledText = text;
    compiledN = n;
    saveToAddress(text, n);
    guard(() => {
      counts.compiles++;
      const t0 = performance.now();
      const r = sparsa.compile(text, n);
      timings.compileMs = performance.now() - t0;
      showDiagnostics(r.diagnostics);
      if (!r.ok) {
        counts.failed++;
        document.body.dataset.state = "error";
        const first = r.diagnostics.find((d) => d.severity === "error") || r.diagnostics[0];
        const where = first && first.line > 0 && first.source === "script.pat" ? `line ${first.line}: ` : "";
        setStatus(where + (first ? first.message : "error") + (good ? "  (showing the last good mask)" : ""), true);
        return;
      }
      good = {...r, script: text};
      document.body.dataset.state = "ready";
      const warn = r.diagnostics.length ? `, ${r.diagnostics.length} warning${r.diagnostics.length > 1 ? "s" : ""}` : "";
      setStatus(`compiled in ${Math.round(timings.compileMs)} ms${warn}`, false);
      const distinct = new Set(r.distinct).size;
      const mean = r.density.reduce((a, b) => a + b, 0) / r.density.length;
      ui.summary.textContent = `${r.layers} layer${r.layers > 1 ? "s" : ""} x ${r.heads} head${r.heads > 1 ? "s" : ""} ` +
        `(${distinct} distinct mask${distinct > 1 ? "s" : ""}), n = ${r.n}, block ${r.block}${r.causal ? ", causal" : ""}; ` +
        `mean density ${percent(mean)}.`;
      drawAll(keyAt);
    });
  }

  function scheduleCompile() {
    inputAt = performance.now();
    clearTimeout(timer);
    timer = setTimeout(compileNow, kDebounceMs);
  }

  // [SECTION] the address and the examples

  let addressVersion = 0;
  function saveToAddress(text, n) {
    const version = ++addressVersion;
    pageHash.encode(text, n).then((hash) => {
      if (version === addressVersion) history.replaceState(null, "", "#" + hash);
    });
  }

  function loadScript(text, n) {
    ui.script.value = text;
    if (n) ui.n.value = n;
    marks = [];
    renderEditor();
    compileNow();
  }

  // Loads the script of the address, if it holds one: "loaded", "none", or the error's message.
  async function loadFromAddress() {
    if (!location.hash) return "none";
    try {
      const {script, n} = await pageHash.decode(location.hash);
      if (script === null) return "none";
      loadScript(script, n);
      return "loaded";
    } catch (e) {
      return e.message;
    }
  }

  function loadDefault(why) {
    const example = SPARSA_EXAMPLES.find(([name]) => name === kDefaultExample) || SPARSA_EXAMPLES[0];
    ui.examples.value = example[0];
    loadScript(example[1]);
    if (why) setStatus(why + " (showing the " + example[0] + " example)", true);
  }

  function examplesMenu() {
    for (const [name] of SPARSA_EXAMPLES) {
      const option = document.createElement("option");
      option.value = option.textContent = name;
      ui.examples.append(option);
    }
    ui.examples.addEventListener("change", () => {
      const found = SPARSA_EXAMPLES.find(([name]) => name === ui.examples.value);
      if (found) {
        tokenChosen = false;
        loadScript(found[1]);
      }
    });
  }

  // [SECTION] start

  function wire() {
    ui.script.addEventListener("input", () => {
      scheduleRender();
      scheduleCompile();
    });
    ui.script.addEventListener("scroll", syncScroll);
    ui.script.addEventListener("keydown", (e) => {  // Tab indents instead of leaving the editor
      if (e.key === "Tab" && !e.shiftKey && !e.ctrlKey && !e.altKey && !e.metaKey) {
        e.preventDefault();
        document.execCommand("insertText", false, "    ");
      }
    });
    ui.n.addEventListener("input", scheduleCompile);
    for (const input of [ui.layer, ui.head]) input.addEventListener("input", () => good && guard(drawMask));
    ui.token.addEventListener("input", () => {
      tokenChosen = true;
      if (good) guard(drawField);
    });
    ui.direction.addEventListener("change", () => good && guard(drawField));
    ui.mask.addEventListener("click", (e) => {
      if (!good) return;
      const rect = ui.mask.getBoundingClientRect();
      ui.token.value = Math.min(good.n - 1, Math.floor(((e.clientY - rect.top) / rect.height) * good.n));
      tokenChosen = true;
      guard(drawField);
    });
    ui.share.addEventListener("click", async () => {
      const link = location.href.split("#")[0] + "#" + (await pageHash.encode(ui.script.value, ui.n.value));
      try {
        await navigator.clipboard.writeText(link);
        ui.shareNote.textContent = "link copied";
      } catch (e) {
        ui.shareNote.textContent = "copy the address bar: it holds the script";
      }
    });
    window.addEventListener("hashchange", async () => {
      const result = await loadFromAddress();
      if (result !== "loaded" && result !== "none") setStatus(result, true);
    });
    let resize = 0;
    window.addEventListener("resize", () => {
      clearTimeout(resize);
      resize = setTimeout(() => good && guard(drawAll), 100);
    });
  }

  window.sparsaPage = {
    module: () => sparsa,  // the wasm module's API (web/sparsa_web.cpp), for tests and the console
    status: () => ({state: document.body.dataset.state, counts: {...counts}, timings: {...timings},
                    good: good && {script: good.script, n: good.n, layers: good.layers, heads: good.heads}}),
    colors: pageDraw.colors,
  };

  createSparsa().then(async (module) => {
    sparsa = module;
    examplesMenu();
    wire();
    const result = await loadFromAddress();
    if (result !== "loaded") loadDefault(result === "none" ? null : result);
  });
})();
