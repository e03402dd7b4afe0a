"""`sparsa run` on content-based heads (lsh, anchors, favor) as a user and a hostile tester run it:
a good run writes O and nothing else; every bad input (favor combined with a mask, odd or too many
buckets, a rotations or features file of the wrong shape, a missing anchors file, q/k/v of the
wrong shape) is refused with its exit code and a message that says where and what to do (a caret
under the script's text where the script is at fault), and nothing is written or changed."""
import json

import numpy as np
import pytest

from conftest import ok, python, refused, run, unchanged, write

LSH = "heads 2\nblock 16\nattend = window(4) | lsh(8, rounds = 2)\n"


def tensors(folder, shape=(2, 100, 16), seed=0, names=("q", "k", "v")):
    rng = np.random.default_rng(seed)
    for name in names:
        np.save(folder / f"{name}.npy", rng.standard_normal(shape).astype(np.float32))


def given(*names):
    out = []
    for name in names or ("q", "k", "v"):
        out += [f"--{name}", f"{name}.npy"]
    return out


def test_a_good_run_writes_o_and_nothing_else(scratch):
    write(scratch, "lsh.pat", LSH)
    tensors(scratch)
    ran = run(["run", "lsh.pat", "--n", "100", *given(), "--out", "o.npy", "--check", "--json", "--runs", "1"], cwd=scratch)
    ok(ran)
    report = json.loads(ran.stdout)
    assert report["check"]["ok"] is True
    assert [h["kind"] for h in report["per_head"]] == ["lsh", "lsh"]
    assert all(h["fixed_part"] for h in report["per_head"])
    o = np.load(scratch / "o.npy")
    assert o.shape == (2, 100, 16) and o.dtype == np.float32 and np.isfinite(o).all()
    assert sorted(p.name for p in scratch.iterdir()) == ["k.npy", "lsh.pat", "o.npy", "q.npy", "v.npy"]


@pytest.mark.parametrize("script, where, words", [
    ("heads 2\nattend = window(8) | favor(32)\n", "s.pat:2:20:",
     ["favor(...) cannot be combined with '|'", "FAVOR+ approximates dense attention"]),
    ("heads 2\nattend = favor(32) & window(8)\n", "s.pat:2:", ["favor"]),
    ("heads 2\nattend = lsh(7)\n", "s.pat:2:14:", ["buckets must be even; got 7"]),
    ("heads 2\nattend = lsh(128)\n", "s.pat:2:14:", ["128 buckets is more than the n = 100 tokens"]),
    ('heads 2\nattend = anchors(4, fit = "nothere.npz")\n', "s.pat:2:27:",
     ["'nothere.npz' not found", "sparsa anchors fit"]),
    ('heads 2\nattend = lsh(8, rounds = 2, file = "r_rank.npy")\n', "s.pat:2:36:",
     ["r_rank.npy has shape [8, 4]", "[2, d, 4]"]),
    ('heads 2\nattend = lsh(8, rounds = 2, file = "r_d8.npy")\n', "s.pat:2:36:",
     ["lsh: r_d8.npy has shape [2, 8, 4] but these inputs need [2, 16, 4]", "head dimension 16"]),
    ('heads 2\nattend = favor(32, file = "f_d8.npy")\n', "s.pat:2:27:",
     ["favor: f_d8.npy has shape [32, 8] but these inputs need [32, 16]"]),
])
def test_bad_scripts_get_a_caret_and_nothing_is_written(scratch, script, where, words):
    write(scratch, "s.pat", script)
    tensors(scratch)
    np.save(scratch / "r_rank.npy", np.ones((8, 4), np.float32))
    np.save(scratch / "r_d8.npy", np.ones((2, 8, 4), np.float32))
    np.save(scratch / "f_d8.npy", np.ones((32, 8), np.float32))
    with unchanged(scratch):
        ran = run(["run", "s.pat", "--n", "100", *given(), "--out", "o.npy", "--check"], cwd=scratch)
    refused(ran, where, "^", *words)
    assert ran.stdout == ""


@pytest.mark.parametrize("shapes, words", [
    ({"q": (3, 100, 16)}, ["heads"]),                         # the script has 2 heads
    ({"k": (2, 90, 16)}, ["--k 'k.npy' is [1, 2, 90, 16] but --q is [1, 2, 100, 16]"]),   # k's n differs
    ({"v": (2, 100, 8)}, ["--v 'v.npy' is [1, 2, 100, 8] but --q is [1, 2, 100, 16]"]),    # v's d differs
    ({"q": (100, 16), "k": (100, 16), "v": (100, 16)}, ["give [heads, n, d] or [batch, heads, n, d]"]),
])
def test_tensors_of_the_wrong_shape_are_refused(scratch, shapes, words):
    write(scratch, "lsh.pat", LSH)
    tensors(scratch)
    rng = np.random.default_rng(1)
    for name, shape in shapes.items():
        np.save(scratch / f"{name}.npy", rng.standard_normal(shape).astype(np.float32))
    with unchanged(scratch):
        ran = run(["run", "lsh.pat", "--n", "100", *given(), "--out", "o.npy"], cwd=scratch)
    refused(ran, *words)
    assert ran.stdout == ""


def test_check_beyond_8192_and_other_engines_are_refused_before_any_work(scratch):
    write(scratch, "lsh.pat", LSH)
    with unchanged(scratch):
        big = run(["run", "lsh.pat", "--n", "9000", "--d", "8", "--check", "--out", "o.npy"], cwd=scratch, timeout=20)
        dense = run(["run", "lsh.pat", "--n", "100", "--engine", "dense", "--out", "o.npy"], cwd=scratch)
        recall = run(["run", "lsh.pat", "--n", "100", "--recall", "--q", "missing.npy", "--k", "k.npy", "--v", "v.npy"],
                     cwd=scratch)
    refused(big, "--check on content-based heads takes n up to 8192", "leave out --check")
    refused(dense, "content-based heads", "use --engine cpu --check")
    refused(recall, "missing.npy")


def test_the_output_cannot_replace_a_file_the_script_names(scratch):
    write(scratch, "s.pat", 'heads 2\nattend = lsh(8, rounds = 2, file = "r.npy")\n')
    np.save(scratch / "r.npy", np.ones((2, 16, 4), np.float32))
    with unchanged(scratch):
        ran = run(["run", "s.pat", "--n", "100", "--d", "16", "--out", "r.npy"], cwd=scratch)
    refused(ran, "r.npy")


def test_python_refuses_bad_content_input_naming_it(scratch):
    write(scratch, "s.pat", 'heads 2\nattend = lsh(8, rounds = 2, file = "r.npy")\n')
    np.save(scratch / "r.npy", np.ones((2, 16, 4), np.float32))
    code = """
import numpy as np, sparsa
m = sparsa.compile_file("s.pat", n=100)
x = np.ones((1, 2, 100, 8), np.float32)
for call in (lambda: sparsa.attention(x, x, x, m), lambda: sparsa.content_report(x, x[:, :, :50], m),
             lambda: sparsa.compile("heads 2\\nattend = lsh(7)", n=100)):
    try:
        call()
    except Exception as e:
        print(type(e).__name__ + ": " + str(e).splitlines()[0])
"""
    with unchanged(scratch):
        ran = python(code, cwd=scratch)
    ok(ran, "Error: content_attention_forward: layer 0, head ",   # whichever head's thread failed first
       "lsh rotations:",
       "r.npy has shape [2, 16, 4] but this head needs [2, 8, 4]",
       "ValueError: k: shape (1, 2, 50, 8) differs from q's (1, 2, 100, 8)",
       "ScriptError: <string>:2:14: error: lsh: buckets must be even; got 7")
