"""`sparsa anchors fit` as a user and a hostile tester run it: the anchors file numpy reads (unit
rows, the header saying what fitted them, the same bytes for the same seed on any thread count),
and every bad input refused with a message that says what to do, nothing written or changed."""
import json

import numpy as np
import pytest

from conftest import ok, refused, run, unchanged


def arrays(folder, shape=(2, 3, 200, 16), seed=0, **extra):
    rng = np.random.default_rng(seed)
    np.save(folder / "q.npy", rng.standard_normal(shape).astype(np.float32))
    np.save(folder / "k.npy", rng.standard_normal(shape).astype(np.float32))
    for name, value in extra.items():
        np.save(folder / f"{name}.npy", value)


def fit(*args):
    return ["anchors", "fit", "--q", "q.npy", "--k", "k.npy", *args]


def test_fit_writes_unit_anchors_and_header(scratch):
    arrays(scratch)
    ran = run(fit("--anchors", "8", "--rounds", "3", "--seed", "5", "--iterations", "7", "-o", "a.npz"), cwd=scratch)
    ok(ran, "wrote a.npz: anchors [3, 8, 16] from 2400 rows", "round 3/3, iteration 7/7")
    z = np.load(scratch / "a.npz")
    assert sorted(z.files) == ["anchors", "header"]
    a = z["anchors"]
    assert a.dtype == np.float32 and a.shape == (3, 8, 16)
    assert np.allclose(np.linalg.norm(a, axis=-1), 1, atol=1e-5)
    header = json.loads(bytes(z["header"]).decode())
    assert header["format"] == "sparsa-anchors" and header["version"] == 1
    assert (header["rounds"], header["k"], header["d"], header["seed"], header["iterations"]) == (3, 8, 16, 5, 7)
    assert header["calibration"] == {"q": [2, 3, 200, 16], "k": [2, 3, 200, 16], "rows": 2400}
    assert len(header["mean_cosine"]) == 3 and all(0 < c <= 1 for c in header["mean_cosine"])
    # The same seed gives the same bytes, on 1 or 3 threads; round r starts from seed + r, so
    # round 1 of seed 5 is round 0 of seed 6.
    ok(run(fit("--anchors", "8", "--rounds", "3", "--seed", "5", "--iterations", "7", "--threads", "1", "--quiet", "-o", "b.npz"), cwd=scratch))
    assert (scratch / "a.npz").read_bytes() == (scratch / "b.npz").read_bytes()
    ok(run(fit("--anchors", "8", "--seed", "6", "--iterations", "7", "--quiet", "-o", "c.npz"), cwd=scratch))
    assert np.array_equal(np.load(scratch / "c.npz")["anchors"][0], a[1])
    assert run(fit("--anchors", "8", "--quiet", "-o", "d.npz"), cwd=scratch).stderr == ""


@pytest.mark.parametrize("args, words", [
    (["anchors", "fit", "--k", "k.npy", "--anchors", "4", "-o", "a.npz"], ["--q and --k are required"]),
    (fit("-o", "a.npz"), ["--anchors K is required"]),
    (fit("--anchors", "4"), ["-o FILE.npz is required"]),
    (fit("--anchors", "0", "-o", "a.npz"), ["--anchors"]),
    (fit("--anchors", "4", "--rounds", "0", "-o", "a.npz"), ["--rounds"]),
    (fit("--anchors", "4", "--iterations", "-1", "-o", "a.npz"), ["--iterations"]),
    (fit("--anchors", "4", "--seed", "x", "-o", "a.npz"), ["--seed"]),
    (fit("--anchors", "4", "--colour", "red", "-o", "a.npz"), ["unknown option '--colour'"]),
    (fit("--anchors", "4", "extra", "-o", "a.npz"), ["unexpected argument 'extra'"]),
    (fit("--anchors", "100000", "-o", "a.npz"), ["2400 nonzero rows", "100000 anchors", "fewer anchors"]),
    (fit("--anchors", "4", "-o", "q.npy"), ["-o"]),
    (fit("--anchors", "4", "-o", "missing/a.npz"), ["missing"]),
    (["anchors", "fot"], ["unknown step 'fot'"]),
    (["anchors", "fit", "--q", "nothere.npy", "--k", "k.npy", "--anchors", "4", "-o", "a.npz"], ["nothere.npy"]),
    (["anchors", "fit", "--q", "q.npy", "--k", "d8.npy", "--anchors", "4", "-o", "a.npz"], ["d = 16", "d = 8", "same heads"]),
    (["anchors", "fit", "--q", "q.npy", "--k", "f64.npy", "--anchors", "4", "-o", "a.npz"], ["float64", "astype(numpy.float32)"]),
    (["anchors", "fit", "--q", "nan.npy", "--k", "k.npy", "--anchors", "4", "-o", "a.npz"], ["NaN in row 5", "finite"]),
    (["anchors", "fit", "--q", "flat.npy", "--k", "k.npy", "--anchors", "4", "-o", "a.npz"], ["[16]", "rows of d values"]),
    (["anchors", "fit", "--q", "zeros.npy", "--k", "zeros.npy", "--anchors", "4", "-o", "a.npz"], ["0 nonzero rows"]),
])
def test_bad_input_is_refused_and_nothing_is_written(scratch, args, words):
    nan = np.ones((10, 16), np.float32)
    nan[5, 3] = np.nan
    arrays(scratch, d8=np.ones((5, 8), np.float32), f64=np.ones((5, 16)), nan=nan,
           flat=np.ones(16, np.float32), zeros=np.zeros((5, 16), np.float32))
    with unchanged(scratch):
        refused(run(args, cwd=scratch), *words)


def test_a_failed_fit_leaves_an_existing_output_as_it_was(scratch):
    arrays(scratch)
    (scratch / "a.npz").write_bytes(b"the user's file")
    with unchanged(scratch):
        refused(run(fit("--anchors", "100000", "-o", "a.npz"), cwd=scratch), "fewer anchors")


def test_help(scratch):
    ok(run(["anchors", "--help"], cwd=scratch), "spherical k-means", "--iterations")
    ran = run(["anchors"], cwd=scratch)
    assert ran.code == 2 and "usage: sparsa anchors fit" in ran.stderr


def test_restarts_keep_the_best_start_of_each_round(scratch):
    """--restarts N tries seeds seed + r + i * rounds in round r and keeps the highest mean cosine:
    the file must equal the best of the single-start fits, and its header must name that seed."""
    arrays(scratch, shape=(1, 2, 300, 8), seed=3)
    singles = {}
    for start in range(4):
        ok(run(fit("--anchors", "12", "--seed", str(start), "--iterations", "6", "--quiet", "-o", f"s{start}.npz"), cwd=scratch))
        z = np.load(scratch / f"s{start}.npz")
        singles[start] = (json.loads(bytes(z["header"]).decode())["mean_cosine"][0], z["anchors"][0])
    ran = run(fit("--anchors", "12", "--rounds", "2", "--restarts", "2", "--iterations", "6", "-o", "r.npz"), cwd=scratch)
    ok(ran, "round 2/2, start 2/2")
    z = np.load(scratch / "r.npz")
    header = json.loads(bytes(z["header"]).decode())
    assert header["restarts"] == 2
    for r, tried in ((0, (0, 2)), (1, (1, 3))):   # round r: seeds r and r + rounds
        best = max(tried, key=lambda s: (singles[s][0], -s))
        assert header["start_seed"][r] == best
        assert header["mean_cosine"][r] == pytest.approx(singles[best][0], abs=0)
        assert np.array_equal(z["anchors"][r], singles[best][1])
    assert len({singles[s][0] for s in range(4)}) > 1   # the starts differ, so the choice is tested
    refused(run(fit("--anchors", "4", "--restarts", "0", "-o", "x.npz"), cwd=scratch), "--restarts")
