"""Bad mask files given to `load("FILE")`, the one way a command reads masks from disk: every
command that runs a script (check --n, compile, stats, show, reach, run) refuses a cut-short
.npz, a newer format, an .npy, a header that asks for zero layers, a FIFO and more, with exit 1,
the file named as the script names it, and nothing written (compile's -o included)."""
import json
import os
import shutil

import numpy as np
import pytest

from conftest import SOURCE_DIR, ok, refused, run, unchanged, write

SCRIPT = 'heads 2\nattend = load("{}")\n'

# Each command with the options it needs; compile names an output that must not appear.
COMMANDS = {
    "check": ["--n", "64"],
    "compile": ["--n", "64", "-o", "out.npz"],
    "stats": ["--n", "64"],
    "show": ["--n", "64"],
    "reach": ["--n", "64"],
    "run": ["--n", "64"],
}


@pytest.fixture
def good(scratch):
    """A mask file that sparsa compile wrote (n = 64, block 16, 1 layer x 2 heads), outside the
    folder the cases watch."""
    src = scratch / "src"
    src.mkdir()
    write(src, "w.pat", "heads 2\nattend = window(8)\n")
    ok(run(["compile", "w.pat", "--n", "64", "--block", "16", "-o", "good.npz"], cwd=src))
    return src / "good.npz"


def arrays_with_header(good, change):
    """The arrays of `good`, with its JSON header changed by change(header)."""
    arrays = dict(np.load(good))
    header = json.loads(arrays["header"].tobytes().decode("utf-8"))
    change(header)
    arrays["header"] = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)
    return arrays


def make_bad(case, folder, good):
    """Writes the bad file of `case` in `folder`; returns its name and the message's key words."""
    data = good.read_bytes()
    if case == "truncated":
        write(folder, "cut.npz", data[: len(data) // 2])
        return "cut.npz", ["truncated", "write the file again"]
    if case == "version 99":
        np.savez(folder / "v99.npz", **arrays_with_header(good, lambda h: h.update(version=99)))
        return "v99.npz", ["mask format version 99", "sparsa compile w.pat --n 64 -o v99.npz"]
    if case == "npy":
        np.save(folder / "masks.npy", np.zeros((2, 64, 64), dtype=bool))
        return "masks.npy", ["an .npy file", "not a mask set", "sparsa compile"]
    if case == "npy named npz":
        with open(folder / "dense.npz", "wb") as f:
            np.save(f, np.zeros((2, 64, 64), dtype=bool))
        return "dense.npz", ["an .npy file", "not a mask set"]
    if case == "zero layers":  # divided by zero (SIGFPE) before the header's bounds held for 0
        np.savez(folder / "l0.npz", **arrays_with_header(good, lambda h: h.update(layers=0)))
        return "l0.npz", ["header field 'layers' = 0 is out of range"]
    if case == "not a mask set":
        np.savez(folder / "plain.npz", a=np.arange(4))
        return "plain.npz", ["not a sparsa mask file"]
    if case == "empty":
        write(folder, "empty.npz", b"")
        return "empty.npz", ["not a zip archive"]
    if case == "folder":
        (folder / "d.npz").mkdir()
        return "d.npz", ["it is a folder"]
    if case == "fifo":
        os.mkfifo(folder / "pipe.npz")
        return "pipe.npz", ["not a regular file"]
    raise ValueError(case)


CASES = ["truncated", "version 99", "npy", "npy named npz", "zero layers", "not a mask set", "empty", "folder", "fifo"]


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("case", CASES)
def test_bad_mask_file_is_refused_by_name(scratch, good, command, case):
    work = scratch / "work"
    work.mkdir()
    name, words = make_bad(case, work, good)
    write(work, "l.pat", SCRIPT.format(name))
    with unchanged(work):
        ran = run([command, "l.pat"] + COMMANDS[command], cwd=work, timeout=20)
    refused(ran, f"load: {name}" if case not in ("folder", "fifo") else f"'{name}'", *words)
    assert "l.pat:2:" in ran.stderr, ran.out   # the diagnostic points at the load(...) line


def test_version_1_file_still_loads(scratch):
    """A file of the previous format (version 1, with FlexAttention's arrays) loads, and compiling
    a script that reads it writes a version 2 file of the same masks."""
    shutil.copy(SOURCE_DIR / "tests" / "io" / "data" / "mask_set_v1.npz", scratch / "v1.npz")
    write(scratch, "l.pat", 'heads 2\nlayers 2\nattend = load("v1.npz")\n')
    ok(run(["compile", "l.pat", "--n", "100", "--block", "32", "-o", "v2.npz"], cwd=scratch), "wrote")
    v1, v2 = np.load(scratch / "v1.npz"), np.load(scratch / "v2.npz")
    assert json.loads(v2["header"].tobytes())["version"] == 2
    assert v2.files == ["header", "mask_index", "row_ptr", "col_idx", "partial_idx", "bitmask"]
    for name in ("mask_index", "row_ptr", "col_idx", "partial_idx", "bitmask"):
        np.testing.assert_array_equal(v1[name], v2[name])
