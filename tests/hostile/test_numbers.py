"""Silent wrong numbers: inputs whose scores, values or arguments float32 (or fp16 on the GPU)
cannot hold get a clear error and no output file; inputs just inside the range run and match
the double reference. `sparsa run` with .npy tensors, and the Python module's attention()."""
import math

import numpy as np
import pytest

from conftest import ok, python, refused, run, unchanged, write

N = 64
SHAPE = (2, N, 16)   # [heads, n, d]: the script below has 2 heads
SCRIPT = "heads 2\nattend = window(8)\n"


def tensors(folder, **arrays):
    """Writes each array as NAME.npy (float32) in `folder`."""
    for name, a in arrays.items():
        np.save(folder / f"{name}.npy", np.asarray(a, dtype=np.float32))


def filled(value):
    return np.full(SHAPE, value, dtype=np.float32)


def normal(seed):
    return np.random.default_rng(seed).standard_normal(SHAPE).astype(np.float32)


def run_files(folder, q, k, v, *extra):
    return run(["run", "w.pat", "--n", N, "--q", f"{q}.npy", "--k", f"{k}.npy", "--v", f"{v}.npy",
                "--out", "o.npy", *extra], cwd=folder)


@pytest.mark.parametrize("value", [1e20, 3e38])
def test_scores_beyond_float32_are_refused(scratch, value):
    # the issue: 1e20 gave zeros and lse = -inf, 3e38 all NaN, both with exit 0
    write(scratch, "w.pat", SCRIPT)
    tensors(scratch, big=filled(value), v=normal(1))
    with unchanged(scratch):
        ran = run_files(scratch, "big", "big", "v")
    refused(ran, "attention_forward: Q row [0, 0, 0] and K row [0, 0, 0] have norms", "scores up to",
            "overflow float32", "scale Q or K down")


def test_scores_just_inside_float32_run_and_match_the_reference(scratch):
    # Q = K scaled so that the largest score |q_i|^2 / sqrt(d) is half the engine's limit,
    # FLT_MAX / 4: the softmax is one-hot
    write(scratch, "w.pat", SCRIPT)
    limit = float(np.finfo(np.float32).max) / 4
    x = normal(2).astype(np.float64)
    x *= math.sqrt(0.5 * limit * math.sqrt(16)) / np.linalg.norm(x, axis=-1).max()
    tensors(scratch, near=x, v=normal(3))
    ok(run_files(scratch, "near", "near", "v"), "wrote")
    o = np.load(scratch / "o.npy")
    ok(run(["run", "w.pat", "--n", N, "--q", "near.npy", "--k", "near.npy", "--v", "v.npy", "--out", "ref.npy",
            "--engine", "dense"], cwd=scratch), "wrote")
    ref = np.load(scratch / "ref.npy")
    assert np.isfinite(o).all()
    assert np.abs(o - ref).max() <= 1e-5 * np.abs(ref).max()


def test_values_whose_sums_overflow_are_refused(scratch):
    # Q = K = 0: every key weighs 1, so sum P V over 15 keys of 3e38 leaves float32 (O would be 3e38)
    write(scratch, "w.pat", SCRIPT)
    tensors(scratch, zero=filled(0.0), vmax=filled(3e38))
    with unchanged(scratch):
        ran = run_files(scratch, "zero", "zero", "vmax")
    refused(ran, "attention_forward: O at [0, 0, 0, 0] overflows float32", "scale V down")


def test_negative_threads_are_refused(scratch):
    write(scratch, "w.pat", SCRIPT)
    tensors(scratch, x=normal(4))
    with unchanged(scratch):
        ran = run_files(scratch, "x", "x", "x", "--threads", "-1")
    refused(ran, "--threads", "-1")


def test_fp16_value_beyond_range_is_refused_on_the_gpu(scratch):
    # the issue: 1e5 becomes inf in fp16 after the finite check; the run exited 0 with Inf in O
    write(scratch, "w.pat", SCRIPT)
    v = normal(5)
    v[1, 17, 9] = 1e5
    tensors(scratch, x=normal(6), v=v)
    with unchanged(scratch):
        ran = run_files(scratch, "x", "x", "v", "--engine", "cuda", "--dtype", "fp16")
    if "no CUDA GPU here" in ran.out or "built without the CUDA engine" in ran.out:
        pytest.skip("no CUDA GPU here: " + ran.out.strip())
    refused(ran, "V[0, 1, 17, 9] = 100000 is beyond fp16's range (largest 65504)", "use dtype bf16", "scale V down")


# [SECTION] Python

SETUP = f"""
import math, numpy as np, sparsa
m = sparsa.compile({SCRIPT!r}, n={N})
rng = np.random.default_rng(0)
q = rng.standard_normal((1, 2, {N}, 16)).astype(np.float32)
def refused(call, *words):
    try:
        call()
    except sparsa.Error as e:
        for w in words:
            assert w in str(e), (w, str(e))
        print("refused:", e)
        return
    raise AssertionError("accepted")
"""


def test_python_scale_and_threads_that_are_not_numbers_are_refused():
    ran = python(SETUP + """
refused(lambda: sparsa.attention(q, q, q, m, scale=float("nan")), "attention_forward: scale is nan", "finite softmax scale")
refused(lambda: sparsa.attention(q, q, q, m, scale=float("inf")), "attention_forward: scale is inf")
refused(lambda: sparsa.attention(q, q, q, m, threads=-1), "attention_forward: threads is -1")
refused(lambda: sparsa.reference(q, q, q, m, scale=float("nan")), "reference_forward: scale is nan")
o, lse = sparsa.attention(q, q, q, m)
refused(lambda: sparsa.attention_backward(q, q, q, o, lse, q, m, scale=float("inf")), "attention_backward: scale is inf")
refused(lambda: sparsa.attention_backward(q, q, q, o, lse, q, m, threads=-1), "attention_backward: threads is -1")
o, lse = sparsa.attention(q, q, q, m, scale=-0.5)   # a negative scale is a number: taken, as the reference
ro, rlse = sparsa.reference(q, q, q, m, scale=-0.5)
assert np.abs(o - ro).max() <= 1e-5 * np.abs(ro).max()
print("done")
""")
    ok(ran, "done")
    assert ran.out.count("refused:") == 6


def test_python_scores_beyond_float32_and_a_wrong_lse_are_refused():
    ran = python(SETUP + """
big = np.full(q.shape, 1e20, np.float32)
refused(lambda: sparsa.attention(big, big, q, m), "Q row [0, 0, 0] and K row [0, 0, 0]", "overflow float32")
o, lse = sparsa.reference(big, big, q, m)   # the double reference computes them right
assert np.isfinite(o).all() and np.isfinite(lse).all()
huge = np.full(q.shape, 1e200)                # float64 input: beyond double's range
refused(lambda: sparsa.reference(huge, huge, huge, m), "overflows double")
o, lse = sparsa.attention(q, q, q, m)
d_o = rng.standard_normal(q.shape).astype(np.float32)
refused(lambda: sparsa.attention_backward(q, q, q, o, lse + 100, d_o, m),
        "lse does not match Q, K, the scale and the mask at row [0, 0, 0]", "pass the lse the forward returned")
dq, dk, dv = sparsa.attention_backward(q, q, q, o, lse, d_o, m)   # the forward's lse: taken
assert np.isfinite(dq).all()
print("done")
""")
    ok(ran, "done")
    assert ran.out.count("refused:") == 3


def test_python_attention_cuda_refuses_fp16_overflow():
    ran = python(SETUP + """
if not sparsa.cuda_available()[0]:
    print("skip:", sparsa.cuda_available()[1])
else:
    v = q.copy()
    v[0, 1, 17, 9] = 1e5
    refused(lambda: sparsa.attention_cuda(q, q, v, m, dtype="fp16"), "V[0, 1, 17, 9] = 100000 is beyond fp16's range")
    print("done")
""")
    if "skip:" in ran.out:
        pytest.skip(ran.out.strip())
    ok(ran, "done")
