"""Scripts from Python: parse, load, compile, settings, warnings, and ScriptError carrying the CLI's
exact diagnostic (file, line, column, caret text)."""
import os
import subprocess

import numpy as np
import pytest

import sparsa
from conftest import PATTERNS


def test_parse_and_compile_give_the_script_settings():
    script = sparsa.parse("block 32\nheads 3\nlayers 2\ncausal\nattend = window(40)\n", name="w.pat")
    assert (script.block, script.heads, script.layers, script.causal) == (32, 3, 2, True)
    assert script.name == "w.pat" and "window(40)" in script.text
    masks = script.compile(300)
    assert (masks.n, masks.block, masks.layers, masks.heads) == (300, 32, 2, 3)
    # causal & window(40): query q keeps keys q-40..q.
    dense = masks.to_dense(1, 2)
    q, k = np.indices((300, 300))
    np.testing.assert_array_equal(dense, (k <= q) & (q - k <= 40))
    assert masks.unique_masks == 1  # every (layer, head) is the same mask, stored once


def test_compile_accepts_text_or_script_and_a_block_override():
    a = sparsa.compile("attend = band(1)", n=256, block=16)
    b = sparsa.compile(sparsa.parse("attend = band(1)"), n=256, block=16)
    assert a.block == 16
    np.testing.assert_array_equal(a.to_dense(), b.to_dense())
    with pytest.raises(ValueError, match="block: 48 is not a power of two"):
        sparsa.compile("attend = dense", n=64, block=48)
    with pytest.raises(ValueError, match="n: the sequence length must be >= 1"):
        sparsa.compile("attend = dense", n=0)
    with pytest.raises(TypeError, match=r"^compile\(\): script must be a sparsa.Script or the script's text \(str\), not int 42$"):
        sparsa.compile(42, n=64)


def test_compile_file_reads_the_examples():
    masks = sparsa.compile_file(PATTERNS / "bigbird.pat", n=2048)
    assert (masks.layers, masks.heads, masks.block) == (6, 8, 64)
    assert masks.script_name.endswith("bigbird.pat")
    assert 0 < masks.density < 0.5
    script = sparsa.load_script(str(PATTERNS / "local_window.pat"))
    assert script.layers == 6


def test_compile_refuses_a_file_name_given_as_text():
    with pytest.raises(ValueError, match="compile_file"):
        sparsa.compile(str(PATTERNS / "bigbird.pat"), n=1024)


def test_script_error_carries_file_line_column_and_the_caret():
    text = "block 64\nlet g = 2 * B\nattend = band(1) | gobal(first(g))\n"
    with pytest.raises(sparsa.ScriptError) as info:
        sparsa.parse(text, name="bigbird.pat")
    e = info.value
    assert isinstance(e, sparsa.Error) and isinstance(e, ValueError)
    assert (e.file, e.line, e.column) == ("bigbird.pat", 3, 20)
    assert str(e) == e.message
    assert e.message.splitlines() == [
        "bigbird.pat:3:20: error: unknown pattern 'gobal'",
        "  attend = band(1) | gobal(first(g))",
        "                     ^~~~~",
        "  did you mean 'global'?",
    ]
    d = e.diagnostics[0]
    assert (d.severity, d.file, d.line, d.column, d.message, d.hint) == (
        "error", "bigbird.pat", 3, 20, "unknown pattern 'gobal'", "did you mean 'global'?")


@pytest.mark.skipif(not os.environ.get("SPARSA_CLI"), reason="SPARSA_CLI (the sparsa command) is not set")
def test_script_error_text_is_identical_to_the_cli(tmp_path):
    for name, text in [("typo.pat", "heads 2\nattend = window(8) | gobal(first(4))\n"),
                       ("syntax.pat", "attend = window(8 |\n"),
                       ("arity.pat", "attend = window()\n")]:
        path = tmp_path / name
        path.write_text(text)
        cli = subprocess.run([os.environ["SPARSA_CLI"], "check", str(path)], capture_output=True, text=True)
        assert cli.returncode == 1
        with pytest.raises(sparsa.ScriptError) as info:
            sparsa.load_script(str(path)).evaluate(4096)  # what `sparsa check` runs (n = 4096)
        assert str(info.value) == cli.stderr, name
        assert info.value.file == str(path)


def test_errors_that_depend_on_n_raise_at_compile():
    script = sparsa.parse("attend = window(n / (n - 100))", name="div.pat")
    with pytest.raises(sparsa.ScriptError) as info:
        script.compile(100)
    assert info.value.file == "div.pat" and info.value.line == 1 and "div.pat:1:" in str(info.value)


def test_warnings_are_diagnostics():
    masks = sparsa.compile("attend = rows(first(8))", n=128, block=16)  # queries 8.. attend nobody
    assert masks.warnings, "an empty row must warn"
    w = masks.warnings[0]
    assert w.severity == "warning" and w.text.startswith("<string>:1:") and str(w) == w.text
    assert masks.stats(0, 0).empty_rows == 120


def test_missing_file_is_a_sparsa_error():
    with pytest.raises(sparsa.Error, match="no_such.pat"):
        sparsa.load_script("no_such.pat")
