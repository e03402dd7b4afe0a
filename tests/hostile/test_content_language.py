"""Content-based families (issue 14: lsh, anchors, favor) in scripts and mask files, under hostile input.

Every command that reads a script refuses what the language forbids (favor combined with a mask,
a family under & - !, two in a line, one in random's outside, odd or too many buckets, counts below
1, wrong types, missing fit files) with the place, a caret, and how to fix it, and writes nothing;
extreme but legal numbers compile into the mask file exactly; a mask file whose content header was
tampered with, or whose anchors file changed, is refused by name. A rotation file of the wrong
shape for attention itself (its d) is the engine's case (tests/hostile of engine/content).
"""
import json
import os
import zipfile

import pytest

from conftest import ok, python, refused, run, unchanged, write

COMMANDS = [["check", "--n", "256"], ["compile", "--n", "256", "-o", "out.npz"], ["stats", "--n", "256"],
            ["show", "--n", "256"], ["reach", "--n", "256"], ["run", "--n", "256"]]


def cli(scratch, command, name):
    """`sparsa COMMAND name ARGS` for one of COMMANDS (the script goes after the command)."""
    return run([command[0], name] + command[1:], cwd=scratch)


def anchors_file(folder, name="anchors.npz", rounds=1, k=4, d=8):
    """A fitted-anchors file as `sparsa anchors fit` writes it (an .npz with `anchors` float32
    [rounds, k, d]), written with numpy alone."""
    import numpy as np
    a = np.random.default_rng(0).standard_normal((rounds, k, d))
    a /= np.linalg.norm(a, axis=-1, keepdims=True)
    np.savez(os.path.join(folder, name), anchors=a.astype(np.float32))
    return name


# [SECTION] What the language forbids: refused by every command, a caret, nothing written

BAD = [
    ("attend = window(64) | favor(256)\n", "bad.pat:1:21",
     ["favor(...) cannot be combined with '|'", "FAVOR+ approximates dense attention and has no pairs to combine",
      "give favor its own attend line"]),
    ("heads 2\nattend = window(8)\nattend[head 1] = favor() & causal\n", "bad.pat:3:26", ["favor(...) cannot be combined with '&'"]),
    ("attend = !favor(16)\n", "bad.pat:1:10", ["favor(...) cannot be combined with '!'"]),
    ("let f = favor(64)\nattend = band(1) - f\n", "bad.pat:2:18", ["favor(...) cannot be combined with '-'"]),
    ("attend = window(64) | lsh(7)\n", "bad.pat:1:27", ["lsh: buckets must be even; got 7", "use 6 or 8"]),
    ("attend = lsh(1)\n", "bad.pat:1:14", ["lsh: buckets must be at least 2; got 1"]),
    ("attend = lsh(512)\n", "bad.pat:1:14", ["lsh: 512 buckets is more than the n = 256 tokens", "use at most n buckets"]),
    ("attend = lsh(8, rounds = 0)\n", "bad.pat:1:26", ["lsh: rounds must be at least 1; got 0"]),
    ("attend = lsh(8, chunk = -64)\n", "bad.pat:1:25", ["lsh: chunk must be at least 1; got -64"]),
    ("attend = lsh(8, seed = -1)\n", "bad.pat:1:24", ["lsh: seed must be at least 0; got -1"]),
    ("attend = lsh(8.0)\n", "bad.pat:1:14", ["lsh: buckets must be an integer; got 8.0", "floor(...)"]),
    ("attend = lsh(8, shared_qk = 0)\n", "bad.pat:1:29", ["lsh: shared_qk must be true or false; got an integer"]),
    ('attend = lsh(8, shared_qk = "yes")\n', "bad.pat:1:29", ["shared_qk must be true or false; got a string"]),
    ("attend = lsh(8, file = band(1))\n", "bad.pat:1:24", ["lsh: file takes a file name in quotes; got a pattern"]),
    ('attend = lsh(8, file = "rot.npy")\n', "bad.pat:1:24",
     ["lsh: file 'rot.npy' not found (looked for rot.npy, relative to the script's folder)"]),
    ("attend = favor(0)\n", "bad.pat:1:16", ["favor: features must be at least 1; got 0"]),
    ("attend = favor(redraw = -5)\n", "bad.pat:1:25", ["favor: redraw must be at least 0; got -5"]),
    ("attend = anchors(0, fit = \"a.npz\")\n", "bad.pat:1:18", ["anchors: k must be at least 1; got 0"]),
    ("attend = window(8) | anchors(4)\n", "bad.pat:1:22", ["anchors needs fit = \"FILE.npz\"", "sparsa anchors fit"]),
    ('attend = anchors(4, fit = "sub/missing.npz")\n', "bad.pat:1:27",
     ["anchors: fit 'sub/missing.npz' not found (looked for sub/missing.npz, relative to the script's folder)",
      "fit them first: sparsa anchors fit"]),
    ("attend = (window(4) | lsh(8)) & causal\n", "bad.pat:1:31",
     ["'&' cannot take lsh(...)", "united with fixed patterns (|) but not intersected", "write the `causal` statement"]),
    ("attend = dense - lsh(8)\n", "bad.pat:1:16", ["'-' cannot take lsh(...)"]),
    ("attend = window(2) | !lsh(8)\n", "bad.pat:1:22", ["'!' cannot take lsh(...)", "complemented"]),
    ("attend = lsh(8) | lsh(16, rounds = 2)\n", "bad.pat:1:17",
     ["'|' joins two content-based families (lsh(...) and lsh(...))", "write rounds = r in one family"]),
    ("def twice(p) = p | p\nattend = twice(lsh(8))\n", "bad.pat:1:18", ["'|' joins two content-based families"]),
    ("attend = band(1) | random(3, outside = lsh(8) | band(1))\n", "bad.pat:1:40",
     ["random: outside must be a fixed pattern; lsh(...) depends on Q and K", "leave lsh out"]),
    ("let true = 2\nattend = lsh(8)\n", "bad.pat:1:5", ["'true' is part of the language and cannot be redefined"]),
    ("attend = lsh(8, buckts = 8)\n", "bad.pat:1:17", ["lsh has no parameter 'buckts'", "did you mean 'buckets'?"]),
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
@pytest.mark.parametrize("text, place, words", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_content_lines_are_refused_with_a_caret_in_every_command(scratch, command, text, place, words):
    write(scratch, "bad.pat", text)
    with unchanged(scratch):
        r = cli(scratch, command, "bad.pat")
    refused(r, place, "error:", *words)
    assert "^" in r.out, r.out


def test_more_buckets_than_tokens_waits_for_n_in_check_and_is_refused_at_compile(scratch):
    write(scratch, "b.pat", "block 16\nattend = window(4) | lsh(64)\n")
    ok(run(["check", "b.pat"], cwd=scratch), "b.pat: ok")                  # n is not known yet
    with unchanged(scratch):
        refused(run(["compile", "b.pat", "--n", "63", "-o", "m.npz"], cwd=scratch),
                "b.pat:2:26: error: lsh: 64 buckets is more than the n = 63 tokens", "^~")
        refused(run(["compile", "b.pat", "--n", "40", "--block", "32", "-o", "m.npz"], cwd=scratch), "n = 40 tokens")
    ok(run(["compile", "b.pat", "--n", "64", "-o", "m.npz"], cwd=scratch), "wrote m.npz")


# [SECTION] Legal extremes: compile exactly into the mask file

def header_of(path):
    with zipfile.ZipFile(path) as z:
        import numpy as np
        import io
        return json.loads(np.load(io.BytesIO(z.read("header.npy"))).tobytes())


def test_extreme_numbers_compile_into_the_file_exactly(scratch):
    big = 9223372036854775807
    write(scratch, "x.pat", f"heads 3\nattend = lsh(1024, rounds = {big}, chunk = {big}, "
                            f"seed = {big}, shared_qk = false)\nattend[head 1] = favor({big}, seed = {big}, redraw = {big})\n"
                            "attend[head 2] = lsh(2, chunk = 1)\n")
    ok(run(["compile", "x.pat", "--n", "1024", "-o", "m.npz"], cwd=scratch), "3 of 3 heads are content-based")
    h = header_of(scratch / "m.npz")
    assert h["version"] == 3
    assert h["content"][0] == {"kind": "lsh", "buckets": 1024, "rounds": big, "chunk": big, "seed": big,
                               "shared_qk": False, "causal": False, "file": ""}
    assert h["content"][1] == {"kind": "favor", "features": big, "seed": big, "redraw": big, "causal": False, "file": ""}
    assert h["content"][2]["buckets"] == 2 and h["content"][2]["chunk"] == 1
    assert h["content_index"] == [[0, 1, 2]]


def test_a_thousand_heads_share_one_spec_and_the_file_stays_small(scratch):
    write(scratch, "many.pat", "heads 1024\nlayers 8\ncausal\nattend = window(64) | lsh(64, rounds = 4)\n"
                               "attend[head 0..512] = favor(128)\n")
    ok(run(["compile", "many.pat", "--n", "4096", "-o", "m.npz"], cwd=scratch, timeout=120))
    h = header_of(scratch / "m.npz")
    assert len(h["content"]) == 2
    assert sum(row.count(0) + row.count(1) for row in h["content_index"]) == 8 * 1024
    assert os.path.getsize(scratch / "m.npz") < 2_000_000


# [SECTION] Mask files with content: tampered headers and changed anchors are refused by name

def rewrite_header(path, change):
    """Rewrites the JSON header of a mask file with numpy alone (np.savez keeps the other arrays)."""
    import numpy as np
    with np.load(path) as z:
        arrays = {name: z[name] for name in z.files}
    header = json.loads(arrays["header"].tobytes())
    change(header)
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    np.savez(path, **arrays)


@pytest.mark.parametrize("change, words", [
    (lambda h: h["content"][0].update(kind="sinkhorn"),
     ["content spec 0 is of kind 'sinkhorn', which this sparsa does not know (it knows lsh, anchors and favor)"]),
    (lambda h: h["content"][0].update(temperature=2), ["has a field 'temperature' this sparsa does not know"]),
    (lambda h: h["content"][0].update(buckets=7), ["lsh: buckets = 7 is odd"]),
    (lambda h: h.update(version=4), ["written by a newer sparsa (mask format version 4; this build reads versions 1 to 3)"]),
    (lambda h: h.update(version=2), ["header has content-based heads ('content') but says version 2"]),
    (lambda h: h["content_index"][0].__setitem__(1, 5), ["'content_index' at layer 0, head 1 is 5"]),
], ids=["kind", "field", "odd", "newer", "older", "index"])
def test_a_tampered_content_header_is_refused_by_name(scratch, change, words):
    write(scratch, "c.pat", "heads 2\nattend = window(8) | lsh(8)\nattend[head 1] = window(8)\n")
    ok(run(["compile", "c.pat", "--n", "128", "-o", "m.npz"], cwd=scratch))
    rewrite_header(scratch / "m.npz", change)
    r = python("import sparsa\nsparsa.load('m.npz')\n", cwd=scratch)
    assert r.code == 1 and "m.npz" in r.out, r.out
    for w in words:
        assert w in r.out, r.out


def test_an_anchors_file_that_changed_is_refused_and_a_missing_one_loads(scratch):
    name = anchors_file(scratch)
    write(scratch, "a.pat", f'heads 2\nattend = window(8) | anchors(4, fit = "{name}")\nattend[head 1] = favor(32)\n')
    ok(run(["compile", "a.pat", "--n", "128", "-o", "m.npz"], cwd=scratch), "anchors(4, chunk = 64, fit = ")
    r = python("import sparsa\nm = sparsa.load('m.npz')\nprint(m.content[0][0]['kind'], m.content[0][0]['k'], "
               "m.content[0][1]['features'])\n", cwd=scratch)
    ok(r, "anchors 4 32")
    import numpy as np
    a = np.load(scratch / name)["anchors"]
    np.savez(scratch / name, anchors=-a)  # refitted: same shape, other numbers
    r = python("import sparsa\nsparsa.load('m.npz')\n", cwd=scratch)
    assert r.code == 1, r.out
    assert "changed since the masks were saved" in r.out and "compile the script again (sparsa compile a.pat --n 128" in r.out
    os.remove(scratch / name)
    ok(python("import sparsa\nprint(sparsa.load('m.npz').content[0][0]['fit'].endswith('anchors.npz'))\n", cwd=scratch), "True")


def test_a_fit_file_that_is_not_an_anchors_file_is_refused_with_a_caret(scratch):
    import numpy as np
    np.savez(scratch / "other.npz", weights=np.zeros(3, dtype=np.float32))
    anchors_file(scratch, "two.npz", rounds=2, k=4)
    (scratch / "notzip.npz").write_text("not a zip")
    cases = [('anchors(4, fit = "other.npz")', "has no 'anchors' array"),
             ('anchors(4, fit = "two.npz")', "two.npz array 'anchors' has shape [2, 4, 8], but this call needs [1, 4, d]"),
             ('anchors(8, rounds = 2, fit = "two.npz")', "needs [2, 8, d]"),
             ('anchors(4, fit = "notzip.npz")', "anchors: notzip.npz"),
             ('anchors(4, fit = ".")', "is not a regular file")]
    for call, words in cases:
        write(scratch, "f.pat", f"attend = {call}\n")
        with unchanged(scratch):
            r = run(["compile", "f.pat", "--n", "64", "-o", "m.npz"], cwd=scratch)
        refused(r, "f.pat:1:", words, "^~")
    write(scratch, "f.pat", 'attend = anchors(4, rounds = 2, fit = "two.npz")\n')
    ok(run(["compile", "f.pat", "--n", "64", "-o", "m.npz"], cwd=scratch))


# [SECTION] Python

def test_python_sees_each_heads_spec_and_refuses_bad_lines_with_a_caret(scratch):
    r = python("import sparsa\nm = sparsa.parse('heads 2\\nattend = window(3) | lsh(8)\\nattend[head 1] = window(3)\\n', "
               "'p.pat').compile(64)\nprint(m.content[0][0]['kind'], m.content[0][0]['chunk'], m.content[0][1])\n", cwd=scratch)
    ok(r, "lsh 64 None")
    r = python("import sparsa\ntry:\n    sparsa.parse('attend = window(3) | favor(8)\\n', 'p.pat').compile(64)\n"
               "except sparsa.ScriptError as e:\n    print('refused:', e)\n", cwd=scratch)
    ok(r, "refused:", "p.pat:1:20: error: favor(...) cannot be combined with '|'", "^")
    r = python("import sparsa\nm = sparsa.parse('attend = window(3)\\n', 'p.pat').compile(64)\nprint(m.content)\n", cwd=scratch)
    ok(r, "[[None]]")
