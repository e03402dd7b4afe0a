"""Pictures and the reach resolution, met by a hostile tester: `sparsa show --png`, `sparsa stats
--png` and `sparsa reach --resolution`. A picture is an output like any other: refused before any
work when it is an input, a folder, or in a folder that is missing or cannot be written; written
whole or not at all; and an error leaves what was there before."""
import os
import subprocess

import pytest

from conftest import CLI, ok, refused, run, unchanged, write

SCRIPT = "mix.pat"
MIX = "block 64\nheads 4\nlayers 2\nattend = window(64)\nattend[head 1..3] = dilated(16, 3)\n"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def w(scratch):
    write(scratch, SCRIPT, MIX)
    return scratch


def is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == PNG_MAGIC


@pytest.mark.parametrize("command", [["show"], ["show", "--layer", "1"], ["stats"]])
def test_png_in_a_missing_folder_is_refused_before_any_work(w, command):
    with unchanged(w):
        refused(run(command + [SCRIPT, "--n", "256", "--png", "nope/out.png"], cwd=w),
                "--png nope/out.png", "does not exist (create it first)")


@pytest.mark.parametrize("command", [["show"], ["show", "--head", "2"], ["stats"]])
def test_png_that_is_the_script_is_refused(w, command):
    with unchanged(w):
        refused(run(command + [SCRIPT, "--n", "256", "--png", SCRIPT], cwd=w), "is the script; choose another name")
    os.symlink(SCRIPT, w / "link.png")
    with unchanged(w):
        refused(run(command + [SCRIPT, "--n", "256", "--png", "link.png"], cwd=w), "is the script")


def test_png_that_is_a_folder_is_refused(w):
    (w / "pics").mkdir()
    with unchanged(w):
        refused(run(["show", SCRIPT, "--n", "256", "--png", "pics"], cwd=w), "--png pics is a folder; give a file name inside it")


def test_png_in_a_folder_that_cannot_be_written(w):
    ro = w / "ro"
    ro.mkdir()
    args = ["show", SCRIPT, "--n", "256", "--png", str(ro / "out.png")]
    if os.geteuid() != 0:
        ro.chmod(0o555)
        ran = run(args, cwd=w)
        ro.chmod(0o755)
    else:  # root writes through permissions: a read-only bind mount in a private mount namespace
        mount = ["unshare", "-m", "--propagation", "private", "sh", "-c", 'mount --bind -o ro "$0" "$0" && exec "$@"', str(ro)]
        if subprocess.run(mount + ["true"], capture_output=True).returncode != 0:
            pytest.skip("no read-only bind mount here (unshare -m needs root and CAP_SYS_ADMIN)")
        with unchanged(w):
            ran = run(mount[1:] + [CLI] + args, cwd=w, program="unshare")
    refused(ran, "cannot write in the folder", str(ro))
    assert list(ro.iterdir()) == []


def test_a_failing_command_leaves_the_old_picture(w):
    old = write(w, "old.png", b"not replaced")
    write(w, "bad.pat", "attend = window(\n")
    with unchanged(w):
        refused(run(["show", "bad.pat", "--n", "256", "--png", "old.png"], cwd=w), "bad.pat:1:17: error: expected ')'")
        refused(run(["show", SCRIPT, "--n", "256", "--layer", "7", "--png", "old.png"], cwd=w), "--layer must be from 0 to 1")
        refused(run(["stats", SCRIPT, "--n", "0", "--png", "old.png"], cwd=w), "--n must be from 1")
    assert old.read_bytes() == b"not replaced"
    ok(run(["show", SCRIPT, "--n", "256", "--png", "old.png"], cwd=w), "wrote old.png (2 layers x 4 heads; 1200 x ")
    assert is_png(old)
    assert [p.name for p in w.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_png_with_json(w):
    ran = run(["stats", SCRIPT, "--n", "256", "--json", "--png", "chart.png"], cwd=w)
    ok(ran)
    import json
    assert json.loads(ran.stdout)["heads"] == 4  # stdout is the JSON object and nothing else
    assert is_png(w / "chart.png")
    with unchanged(w):
        refused(run(["show", SCRIPT, "--n", "256", "--json", "--png", "x.png"], cwd=w), "unknown option '--json'")
    ok(run(["reach", SCRIPT, "--n", "256", "--json", "--png", "reach.png"], cwd=w))
    assert is_png(w / "reach.png")


def test_png_to_stdout_keeps_the_message_apart(w):
    ran = subprocess.run([CLI, "show", SCRIPT, "--n", "256", "--png", "/dev/stdout"], cwd=w, capture_output=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith(PNG_MAGIC)
    assert b"wrote /dev/stdout" in ran.stderr


@pytest.mark.parametrize("args,words", [
    (["--png", "x.png", "--width", "wide"], ["--width expects an integer; got 'wide'"]),
    (["--png", "x.png", "--width", "99999"], ["--width must be from 240 to 8192; got 99999"]),
    (["--png", "x.png", "--width", "-5"], ["--width must be from 240 to 8192"]),
    (["--png", "x.png", "--layer", "0", "--height", "10"], ["--height must be from 240 to 8192; got 10"]),
    (["--png", "x.png", "--height", "300"], ["the overview's height follows from --width"]),
    (["--png", "x.png", "--unicode"], ["--unicode chooses the terminal grid's characters"]),
    (["--width", "800"], ["--width sets the size of the --png picture; give --png OUT.png too"]),
    (["--png"], ["--png needs a value"]),
    (["--png", ""], ["--png"]),
])
def test_show_png_options(w, args, words):
    with unchanged(w):
        refused(run(["show", SCRIPT, "--n", "256"] + args, cwd=w), *words)


def test_overview_too_many_heads_for_the_width(w):
    write(w, "many.pat", "block 16\nheads 300\nattend = window(4)\n")
    with unchanged(w):
        refused(run(["show", "many.pat", "--n", "64", "--png", "x.png", "--width", "500"], cwd=w),
                "300 heads do not fit in 500 pixels (use a width of at least")
        refused(run(["stats", "many.pat", "--n", "64", "--png", "x.png", "--width", "500"], cwd=w),
                "300 heads do not fit in 500 pixels")


def test_stats_png_takes_one_script(w):
    write(w, "other.pat", "attend = window(8)\n")
    with unchanged(w):
        refused(run(["stats", SCRIPT, "other.pat", "--n", "256", "--png", "x.png"], cwd=w),
                "--png draws the chart of one script; got 2 scripts")
        refused(run(["stats", SCRIPT, "--n", "256", "--width", "700"], cwd=w), "give --png OUT.png too")


def test_big_picture_under_a_memory_limit(w):
    """An 8192 x 8192 figure is 192 MiB of pixels: under a 150 MiB limit it says so, cleanly."""
    with unchanged(w):
        ran = run(["show", SCRIPT, "--n", "256", "--layer", "0", "--width", "8192", "--height", "8192", "--png", "big.png"],
                  cwd=w, vm_mb=150)
        refused(ran, "out of memory")


@pytest.mark.parametrize("value,words", [
    ("exact", ["--resolution expects token, block or auto; got 'exact'"]),
    ("TOKEN", ["got 'TOKEN'"]),
    ("", ["got ''"]),
    ("token block", ["got 'token block'"]),
])
def test_reach_resolution_values(w, value, words):
    with unchanged(w):
        refused(run(["reach", SCRIPT, "--n", "256", "--resolution", value], cwd=w), *words)


def test_reach_resolution_conflicts(w):
    with unchanged(w):
        refused(run(["reach", SCRIPT, "--n", "256", "--resolution"], cwd=w), "--resolution needs a value")
        refused(run(["reach", SCRIPT, "--n", "256", "--resolution", "token", "--token", "3"], cwd=w),
                "--resolution applies to all pairs")
        refused(run(["reach", SCRIPT, "--n", "100000", "--resolution", "token"], cwd=w),
                "limited to N <= 65536; got N = 100000", "--resolution block")
        refused(run(["reach", SCRIPT, "--n", "256", "--resolution", "block", "--dense", "r.npy"], cwd=w),
                "--dense writes the token-level reach")
        refused(run(["reach", SCRIPT, "--n", "256", "--resolution", "token", "--resolution", "block"], cwd=w),
                "--resolution is given twice")
    ok(run(["reach", SCRIPT, "--n", "256", "--resolution=block"], cwd=w), "block resolution")
    ok(run(["reach", SCRIPT, "--n", "256", "--resolution", "token"], cwd=w), "token resolution (exact)")
