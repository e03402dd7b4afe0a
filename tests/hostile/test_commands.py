"""A walkthrough of each command with the mistakes a user makes: every one is refused with a
message that names the option or file, exit 1 (2 for an unknown command), and nothing written."""
import numpy as np
import pytest

from conftest import WINDOW, refused, run, unchanged, write


@pytest.fixture
def pat(scratch):
    return write(scratch, "w.pat", WINDOW)


# (arguments after the script, key words the message must hold)
BAD_OPTIONS = {
    "show": [(["--n", "64", "--layer", "3"], ["--layer", "0 to 0", "3"]),
             (["--n", "64", "--head", "9"], ["--head", "0 to 1", "9"]),
             (["--n", "0"], ["--n", "0"]),
             (["--n", "-5"], ["--n", "-5"]),
             (["--n", "64", "--layer", "abc"], ["--layer", "integer", "abc"])],
    "stats": [([], ["--n is required"]),
              (["--n", "1e3"], ["--n", "integer", "1e3"]),
              (["--n", "64", "--bogus"], ["unknown option", "--bogus"])],
    "compile": [(["--n", "64", "--block", "48"], ["--block 48", "16, 32, 64, 128 or 256"]),
                (["--n", "64", "--block", "4096"], ["--block 4096", "16, 32, 64, 128 or 256"]),
                (["--n"], ["--n"])],
    "reach": [(["--n", "64", "--direction", "up"], ["--direction"]),
              (["--n", "64", "--token", "64"], ["--token 64", "0 to 63"]),
              (["--n", "4096", "--token", "5000"], ["--token 5000", "0 to 4095"])],
    "run": [(["--n", "64", "--threads", "-1"], ["--threads", "-1"]),
            (["--n", "64", "--layer", "5"], ["--layer", "5"]),
            (["--n", "64", "--engine", "gpu"], ["--engine", "gpu"]),
            (["--n", "64", "--dtype", "int8"], ["--dtype"]),
            (["--n", "64", "--q", "missing.npy", "--k", "missing.npy", "--v", "missing.npy"], ["missing.npy"])],
}


@pytest.mark.parametrize("command,args,words",
                         [(c, a, w) for c, cases in BAD_OPTIONS.items() for a, w in cases],
                         ids=lambda x: " ".join(x) if isinstance(x, list) else str(x))
def test_bad_option_is_named(scratch, pat, command, args, words):
    with unchanged(scratch):
        refused(run([command, pat.name] + args, cwd=scratch), *words)


def test_unknown_command_exits_2(scratch):
    with unchanged(scratch):
        r = run(["compiel", "w.pat"], cwd=scratch)
    assert r.code == 2 and "unknown command 'compiel'" in r.out


@pytest.mark.parametrize("command", ["check", "compile", "stats", "show", "reach", "run"])
def test_missing_script_is_named(scratch, command):
    with unchanged(scratch):
        refused(run([command, "nope.pat", "--n", "64"], cwd=scratch), "nope.pat")


@pytest.mark.parametrize("command", ["check", "compile", "stats", "reach"])
def test_folder_as_script(scratch, command):
    (scratch / "d.pat").mkdir()
    with unchanged(scratch):
        refused(run([command, "d.pat", "--n", "64"], cwd=scratch), "d.pat", "folder")


@pytest.mark.parametrize("content", [b"", b"\x00\x01\x02\xff\xfe" * 100, b"heads 2\nattend = \n"])
def test_garbage_script_is_a_diagnostic(scratch, content):
    write(scratch, "g.pat", content)
    with unchanged(scratch):
        r = run(["compile", "g.pat", "--n", "64", "-o", "g.npz"], cwd=scratch)
    refused(r, "g.pat")


@pytest.mark.parametrize("shape,words", [((2, 64, 8), None), ((3, 64, 8), ["heads"]), ((2, 60, 8), ["n"]),
                                         ((2, 64), ["[heads, n, d]"])])
def test_run_checks_tensor_shapes(scratch, pat, shape, words):
    rng = np.random.default_rng(0)
    for name in "qkv":
        np.save(scratch / f"{name}.npy", rng.standard_normal(shape).astype(np.float32))
    args = ["run", pat.name, "--n", "64", "--q", "q.npy", "--k", "k.npy", "--v", "v.npy", "--out", "o.npy"]
    if words is None:
        r = run(args, cwd=scratch)
        assert r.code == 0, r.out
        assert np.load(scratch / "o.npy").shape == shape
        return
    with unchanged(scratch):
        refused(run(args, cwd=scratch), *words)


def test_run_refuses_integer_and_nonfinite_tensors(scratch, pat):
    good = np.ones((2, 64, 8), np.float32)
    np.save(scratch / "k.npy", good)
    np.save(scratch / "v.npy", good)
    np.save(scratch / "qi.npy", np.ones((2, 64, 8), np.int32))
    bad = good.copy()
    bad[1, 5, 3] = np.nan
    np.save(scratch / "qn.npy", bad)
    for q, words in (("qi.npy", ["qi.npy", "int32"]), ("qn.npy", ["NaN", "[0, 1, 5, 3]"])):
        with unchanged(scratch):
            refused(run(["run", pat.name, "--n", "64", "--q", q, "--k", "k.npy", "--v", "v.npy",
                         "--out", "o.npy"], cwd=scratch), *words)


@pytest.mark.parametrize("args,words", [(["bogus"], ["bogus", "teacher, pool, distill, eval, ruler or demo"]),
                                        (["teacher", "--steps", "-1"], ["--steps", "-1"]),
                                        (["pool", "--teacher", "missing.bin", "-o", "p.npy"], ["missing.bin"]),
                                        (["eval", "--teacher", "t.bin", "--gate", "g.json", "-o", "out"], ["t.bin"])])
def test_learn_bad_input(scratch, args, words):
    with unchanged(scratch):
        refused(run(["learn"] + args, cwd=scratch), *words)


def test_learn_refuses_a_teacher_that_is_not_one(scratch):
    write(scratch, "t.bin", b"not a teacher" * 10)
    with unchanged(scratch):
        refused(run(["learn", "pool", "--teacher", "t.bin", "-o", "p.npy"], cwd=scratch), "t.bin")
