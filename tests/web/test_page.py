"""The page (web/) in a real browser: headless Chromium loads build/web/index.html from file://,
a script is TYPED into the editor, and the page must draw the same mask as
`sparsa compile --dense`, show a bad script's diagnostic while keeping the last good mask, keep
the script in its address, and answer a typical script within 3 seconds of the last key.

ctest runs it (tests/web/CMakeLists.txt) with
  SPARSA_WEB_PAGE  the built index.html      SPARSA_CLI   the built `sparsa`
  SPARSA_WEB_OUT   where screenshots go      (SPARSA_WEB_SCREENSHOT: also copy the page's there)
By hand:
  SPARSA_WEB_PAGE=$PWD/build/web/index.html SPARSA_CLI=$PWD/build/cli/sparsa \\
    /usr/bin/python3 -m pytest -q tests/web
"""
import base64
import functools
import http.server
import json
import os
import pathlib
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from cdp import Browser, chromium_path  # noqa: E402

SOURCE_DIR = pathlib.Path(__file__).resolve().parents[2]
PAGE = os.environ.get("SPARSA_WEB_PAGE", "")
CLI = os.environ.get("SPARSA_CLI", "")
OUT = pathlib.Path(os.environ.get("SPARSA_WEB_OUT") or tempfile.mkdtemp(prefix="sparsa-web-"))

if not PAGE or not pathlib.Path(PAGE).is_file() or not CLI or chromium_path() is None:
    pytest.skip("needs SPARSA_WEB_PAGE (the built index.html), SPARSA_CLI and Chromium (ctest sets them)",
                allow_module_level=True)

URL = pathlib.Path(PAGE).resolve().as_uri()
WIDTH, HEIGHT = 1280, 800

# Dilation and strides: token-level structure inside blocks, one token a pixel at n = 256.
DILATED = """# typed by tests/web/test_page.py
block 16
heads 2
layers 2
attend = dilated(4, 3) | global(first(8))
attend[head 1] = strided(5) & causal
"""
# Random blocks, several heads, a picture of several tokens a pixel (fractional cell edges).
MIXED = """block 32
heads 3
layers 2
attend = band(1) | global(first(2 * B)) | random(2, seed = 11)
"""


@pytest.fixture(scope="module")
def browser():
    with Browser.start() as b:
        yield b


@pytest.fixture(autouse=True)
def no_page_errors(browser):
    """Every test ends with no uncaught JavaScript exception and no console error in any page."""
    browser.events.clear()
    yield
    errors = [params.get("exceptionDetails", params) for _, method, params in browser.events
              if method == "Runtime.exceptionThrown"
              or (method == "Runtime.consoleAPICalled" and params.get("type") == "error")]
    assert not errors, errors


def open_page(browser, fragment="", url=URL):
    page = browser.new_page(WIDTH, HEIGHT)
    page.navigate(url + fragment)
    page.wait_for("window.sparsaPage !== undefined && sparsaPage.status().state === 'ready'", timeout=60)
    return page


def status(page):
    return page.evaluate("sparsaPage.status()")


def set_value(page, element_id, value):
    """Sets an <input>'s value as a user would, firing its input event."""
    page.evaluate("(() => { const e = document.getElementById(%s); e.value = %s; "
                  "e.dispatchEvent(new Event('input')); })()" % (json.dumps(element_id), json.dumps(str(value))))


def type_script(page, text, n=None):
    """Clears the editor, then types `text` key by key (Enter for each new line). Returns the
    time of the last key (time.monotonic())."""
    if n is not None:
        set_value(page, "n", n)
    page.evaluate("(() => { const t = document.getElementById('script'); t.focus(); t.select(); })()")
    page.press("Delete", "Delete", 46)
    for i, line in enumerate(text.split("\n")):
        if i:
            page.press("Enter", "Enter", 13, "\r")
        for ch in line:
            page.insert_text(ch)
    return time.monotonic()


def wait_drawn(page, text, drawn_before, timeout=30):
    """Waits until the page has drawn the mask and field of `text`; returns the status."""
    try:
        page.wait_for("(() => { const s = sparsaPage.status(); return s.state === 'ready' && s.good && "
                      "s.good.script === %s && s.counts.drawn > %d; })()" % (json.dumps(text), drawn_before),
                      timeout=timeout)
    except TimeoutError:
        said = page.evaluate("document.getElementById('status').textContent + ' | ' + "
                             "document.getElementById('diagnostics').textContent")
        raise AssertionError("the page did not draw the typed script; it says: " + said) from None
    return status(page)


def mask_pixels(page):
    """The mask canvas as (layer, head, [side, side, 3] uint8 RGB)."""
    got = page.evaluate("""(() => {
        const c = document.getElementById('mask');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let s = '';
        for (let i = 0; i < d.length; i += 4) s += String.fromCharCode(d[i], d[i + 1], d[i + 2]);
        return {w: c.width, h: c.height, layer: +c.dataset.layer, head: +c.dataset.head, rgb: btoa(s)};
    })()""")
    rgb = np.frombuffer(base64.b64decode(got["rgb"]), dtype=np.uint8).reshape(got["h"], got["w"], 3)
    return got["layer"], got["head"], rgb


def dense_masks(text, n, tmp_path):
    """`sparsa compile --dense` of the script: bool [layers, heads, n, n]."""
    script = tmp_path / "typed.pat"
    script.write_text(text)
    out = tmp_path / "dense.npy"
    ran = subprocess.run([CLI, "compile", str(script), "--n", str(n), "--dense", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    return np.load(out)


def expected_pixels(dense, side, colors):
    """The picture web/page_draw.js promises: cell (y, x) covers queries [y*n//side, (y+1)*n//side)
    and keys likewise; background when no pair is kept, else light + (full - light) * fraction."""
    n = dense.shape[0]
    edges = (np.arange(side + 1) * n) // side
    counts = np.add.reduceat(np.add.reduceat(dense.astype(np.int64), edges[:-1], axis=0), edges[:-1], axis=1)
    sizes = np.diff(edges)
    fraction = counts / (sizes[:, None] * sizes[None, :])
    channel = lambda c, s: (c >> s) & 255  # noqa: E731
    out = np.empty((side, side, 3), dtype=np.int64)
    for i, shift in enumerate((16, 8, 0)):
        light, full = channel(colors["light"], shift), channel(colors["full"], shift)
        shaded = np.floor(light + (full - light) * fraction + 0.5)
        out[:, :, i] = np.where(counts == 0, channel(colors["background"], shift), shaded)
    return out, counts


def assert_mask_matches(page, dense, layer, head):
    colors = page.evaluate("sparsaPage.colors")
    got_layer, got_head, rgb = mask_pixels(page)
    assert (got_layer, got_head) == (layer, head)
    side = rgb.shape[0]
    assert rgb.shape == (side, side, 3) and side == min(dense.shape[-1], side)
    want, counts = expected_pixels(dense[layer, head], side, colors)
    background = np.array([(colors["background"] >> s) & 255 for s in (16, 8, 0)])
    drawn_empty = np.all(rgb == background, axis=2)
    # Which pixels hold kept pairs is exact; the shade may differ by one from float rounding.
    assert np.array_equal(drawn_empty, counts == 0), \
        "pixels empty on the page but not in --dense: %d, the other way: %d" % (
            np.sum(drawn_empty & (counts > 0)), np.sum(~drawn_empty & (counts == 0)))
    diff = np.abs(rgb.astype(np.int64) - want)
    assert diff.max() <= 1, "shade differs by %d at %s" % (diff.max(), np.argwhere(diff > 1)[:5].tolist())
    return side


def assert_stats_match(page, dense, block):
    """The module's stats() and maskBlocks() of every (layer, head) against the dense masks."""
    layers, heads, n, _ = dense.shape
    nb = -(-n // block)
    padded = np.zeros((nb * block, nb * block), dtype=bool)
    valid = np.zeros_like(padded)
    valid[:n, :n] = True
    valid_per_block = valid.reshape(nb, block, nb, block).sum(axis=(1, 3))
    for layer in range(layers):
        for head in range(heads):
            padded[:n, :n] = dense[layer, head]
            per_block = padded.reshape(nb, block, nb, block).sum(axis=(1, 3))
            got = page.evaluate("(() => { const m = sparsaPage.module(); const s = m.stats(%d, %d); "
                                "const b = m.maskBlocks(%d, %d); return {s, rows: b.rowPtr.length, "
                                "cols: Array.from(b.colIdx), partial: Array.from(b.partialIdx)}; })()"
                                % (layer, head, layer, head))
            s = got["s"]
            assert s["ok"] and s["keptPairs"] == int(dense[layer, head].sum())
            assert s["keptBlocks"] == int((per_block > 0).sum()) == len(got["cols"])
            assert s["fullBlocks"] == int((per_block == valid_per_block).sum())
            assert s["partialBlocks"] == sum(1 for p in got["partial"] if p >= 0)
            assert got["rows"] == nb + 1
            assert got["cols"] == [int(kb) for qb in range(nb) for kb in np.nonzero(per_block[qb])[0]]


def test_typed_script_draws_the_mask_of_sparsa_compile_dense(browser, tmp_path):
    page = open_page(browser)
    n = 256
    before = status(page)["counts"]["drawn"]
    type_script(page, DILATED, n=n)
    s = wait_drawn(page, DILATED, before)
    assert s["good"]["n"] == n and (s["good"]["layers"], s["good"]["heads"]) == (2, 2)
    dense = dense_masks(DILATED, n, tmp_path)
    # n = 256 fits the canvas: one token a pixel, so dilation and strides show pair by pair.
    assert assert_mask_matches(page, dense, 0, 0) == n
    set_value(page, "head", 1)
    assert_mask_matches(page, dense, 0, 1)
    set_value(page, "head", 0)
    assert_stats_match(page, dense, 16)

    n = 1000  # several tokens a pixel, cells of unequal size
    before = status(page)["counts"]["drawn"]
    type_script(page, MIXED, n=n)
    wait_drawn(page, MIXED, before)
    dense = dense_masks(MIXED, n, tmp_path)
    for layer, head in [(0, 0), (1, 2)]:
        set_value(page, "layer", layer)
        set_value(page, "head", head)
        side = assert_mask_matches(page, dense, layer, head)
        assert side < n
    assert_stats_match(page, dense, 32)
    (OUT / "web-mixed.png").write_bytes(page.screenshot())


def test_bad_script_shows_its_diagnostic_and_keeps_the_last_good_mask(browser):
    page = open_page(browser)
    before = status(page)["counts"]["drawn"]
    type_script(page, MIXED, n=1024)
    wait_drawn(page, MIXED, before)
    _, _, good_pixels = mask_pixels(page)
    failed = status(page)["counts"]["failed"]
    bad = MIXED.replace("band(1)", "bnad(1)")  # line 4
    type_script(page, bad)
    page.wait_for("sparsaPage.status().counts.failed > %d && sparsaPage.status().state === 'error'" % failed)
    items = page.evaluate("Array.from(document.querySelectorAll('#diagnostics li')).map(li => li.textContent)")
    assert any("line 4, column 10" in t and "unknown pattern 'bnad'" in t and "did you mean 'band'" in t
               for t in items), items
    marked = page.evaluate("Array.from(document.querySelectorAll('#gutter .error')).map(e => e.textContent)")
    assert marked == ["4"]
    assert page.evaluate("document.querySelector('#backdrop mark.error').textContent") == "bnad"
    assert "showing the last good mask" in page.evaluate("document.getElementById('status').textContent")
    _, _, kept = mask_pixels(page)
    assert np.array_equal(kept, good_pixels)
    (OUT / "web-diagnostic.png").write_bytes(page.screenshot())

    # Fixing the typo draws again.
    before = status(page)["counts"]["drawn"]
    page.evaluate("(() => { const t = document.getElementById('script'); const at = t.value.indexOf('bnad');"
                  " t.focus(); t.setSelectionRange(at, at + 4); })()")
    page.insert_text("band")
    wait_drawn(page, MIXED, before)
    assert page.evaluate("document.querySelectorAll('#gutter .error').length") == 0


def test_the_address_holds_the_script(browser):
    page = open_page(browser)
    text = MIXED.replace("seed = 11", "seed = 12") + "# a comment with \u00e9 and \u2192\n"
    before = status(page)["counts"]["drawn"]
    type_script(page, text, n=2048)
    wait_drawn(page, text, before)
    page.wait_for("location.hash.includes('n=2048&')")
    url = page.evaluate("location.href")
    assert url.startswith(URL + "#n=2048&")
    other = open_page(browser, url[len(URL):])
    assert other.evaluate("document.getElementById('script').value") == text
    assert other.evaluate("document.getElementById('n').value") == "2048"
    s = status(other)
    assert s["good"]["script"] == text and s["good"]["n"] == 2048
    # A damaged link says so, and the page still works (with the default example).
    broken = open_page(browser, "#n=64&z=AAAA")
    said = broken.evaluate("document.getElementById('status').textContent")
    assert "the link's script could not be read" in said and "showing the bigbird example" in said, said


def png_size(data):
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_a_typical_script_is_drawn_within_3_seconds_of_the_last_key(browser):
    """bigbird.pat (6 layers x 8 heads) at n = 4096: from the last key to the mask and the
    field on screen (the page's own measure, and this test's from outside)."""
    page = open_page(browser)
    text = (SOURCE_DIR / "examples" / "patterns" / "bigbird.pat").read_text()
    text = text.replace("seed = 7", "seed = 8")  # differs from the example the page opened with
    before = status(page)["counts"]["drawn"]
    last_key = type_script(page, text, n=4096)
    s = wait_drawn(page, text, before)
    outside_ms = (time.monotonic() - last_key) * 1000
    page.wait_for("sparsaPage.status().counts.coverage > 0")
    s = status(page)
    t = s["timings"]
    print("\nweb page, bigbird.pat at n = 4096: last key -> mask and field drawn %.0f ms (page), %.0f ms "
          "(test, with polling); compile %.0f ms, mask picture %.0f ms, field %.0f ms, coverage %.0f ms"
          % (t["keyToDrawnMs"], outside_ms, t["compileMs"], t["maskMs"], t["fieldMs"], t["coverageMs"]))
    assert t["keyToDrawnMs"] is not None and t["keyToDrawnMs"] < 3000
    assert outside_ms < 3000
    shot = page.screenshot()
    assert png_size(shot) == (WIDTH, HEIGHT)
    (OUT / "web-bigbird.png").write_bytes(shot)


def test_screenshot_for_the_readme(browser):
    """The README's picture (docs/images/web-page.png when SPARSA_WEB_SCREENSHOT names it): the
    examples menu's longformer_growing, a layer whose window is wide, token 3000's light cone."""
    page = open_page(browser)
    name = "longformer_growing"
    text = (SOURCE_DIR / "examples" / "patterns" / (name + ".pat")).read_text()
    before = status(page)["counts"]
    page.evaluate("(() => { const e = document.getElementById('examples'); e.value = %s; "
                  "e.dispatchEvent(new Event('change')); })()" % json.dumps(name))
    wait_drawn(page, text, before["drawn"])
    page.wait_for("sparsaPage.status().counts.coverage > %d" % before["coverage"])
    set_value(page, "layer", 9)
    set_value(page, "head", 5)
    set_value(page, "token", 3000)
    assert page.evaluate("document.getElementById('cone-title').textContent").startswith(
        "Receptive field of token 3000 (in)")
    assert page.evaluate("document.getElementById('mask-title').textContent").startswith("Mask of layer 9, head 5")
    shot = page.screenshot()
    assert png_size(shot) == (WIDTH, HEIGHT)
    (OUT / "web-page.png").write_bytes(shot)
    if os.environ.get("SPARSA_WEB_SCREENSHOT"):
        target = pathlib.Path(os.environ["SPARSA_WEB_SCREENSHOT"])
        try:  # a palette PNG is a third of the size; Pillow comes with matplotlib
            from PIL import Image
            Image.open(OUT / "web-page.png").convert("RGB").quantize(
                colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(target, optimize=True)
        except ImportError:
            shutil.copyfile(OUT / "web-page.png", target)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


# A script line (not a comment) that calls a content-based family.
CONTENT_FAMILY = re.compile(r"^[^#\n]*\b(lsh|anchors|favor)\s*\(", re.M)


def test_served_as_a_static_site_every_example_compiles(browser):
    """The same page from a plain HTTP server; each entry of the examples menu compiles in it."""
    handler = functools.partial(QuietHandler, directory=str(pathlib.Path(PAGE).parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        page = open_page(browser, url="http://127.0.0.1:%d/index.html" % server.server_address[1])
        names = page.evaluate("Array.from(document.querySelectorAll('#examples option')).map(o => o.value).filter(v => v)")
        bundled = sorted(p.stem for p in (SOURCE_DIR / "examples" / "patterns").glob("*.pat"))
        assert sorted(names) == bundled
        for name in names:
            text = (SOURCE_DIR / "examples" / "patterns" / (name + ".pat")).read_text()
            if status(page)["good"]["script"] == text:  # the example the page opened with
                continue
            before = status(page)["counts"]["drawn"]
            page.evaluate("(() => { const e = document.getElementById('examples'); e.value = %s; "
                          "e.dispatchEvent(new Event('change')); })()" % json.dumps(name))
            if CONTENT_FAMILY.search(text):
                # lsh, anchors, favor: their pairs come from Q and K (and anchors needs a file, which
                # the page has not): refused with the language's diagnostic, the last good mask kept
                page.wait_for("document.querySelectorAll('#diagnostics li.error').length > 0", timeout=30)
                said = page.evaluate("document.getElementById('diagnostics').textContent")
                assert "needs every pair beforehand" in said or "cannot be read in the page" in said, (name, said)
                assert status(page)["counts"]["drawn"] == before, name
                continue
            wait_drawn(page, text, before)
            errors = page.evaluate("document.querySelectorAll('#diagnostics li.error').length")
            assert errors == 0, name
    finally:
        server.shutdown()
        server.server_close()


def test_a_script_too_deep_for_the_browser_stack_is_said_and_the_page_recovers(browser):
    """2,600 definitions each calling the one before: in the page the language stops at 1,000
    (dsl/eval.hpp: the browser's call stack ran out at about 2,000), with its own diagnostic, not a
    trap; the page keeps the last good mask and works again with the next script."""
    page = open_page(browser)
    before = status(page)["counts"]
    deep = "def f0() = window(1)\n" + "".join("def f%d() = f%d()\n" % (i + 1, i) for i in range(2600)) + \
           "attend = f2600()\n"
    # Pasted, not typed: Chromium inserts text into a textarea in time quadratic in its lines.
    page.evaluate("(() => { const t = document.getElementById('script'); t.value = %s; "
                  "t.dispatchEvent(new InputEvent('input', {inputType: 'insertFromPaste'})); })()" % json.dumps(deep))
    page.wait_for("sparsaPage.status().counts.failed > %d" % before["failed"])
    said = page.evaluate("document.getElementById('status').textContent")
    assert "more than 1000 levels deep" in said, said
    before = status(page)["counts"]["drawn"]
    type_script(page, MIXED, n=512)
    wait_drawn(page, MIXED, before)
    set_value(page, "head", 2)
    assert page.evaluate("document.getElementById('mask-title').textContent").startswith("Mask of layer 0, head 2")
