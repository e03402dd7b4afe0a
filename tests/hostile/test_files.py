"""Outputs never replace what the user did not name, and a command's outputs are one set.

As root: -o /dev/null and /dev/full stay devices, --out /dev/stdout stays a link (each in a
private mount namespace whose /dev is a folder of our own: a regression must never replace the
machine's /dev/null), a symlinked
output is written through, an output that is an input (or another output) is refused before any
work, one failing output leaves the others unwritten, SIGINT and SIGTERM leave no temporary file.
Also: every command under a memory limit (ulimit -v) either works or says "out of memory", and
--token / --block say what they allow."""
import io
import os
import signal
import stat
import subprocess
import time
import zipfile

import numpy as np
import pytest

from conftest import CLI, WINDOW, ok, refused, run, snapshot, unchanged, write

SCRIPT = "w.pat"


@pytest.fixture
def w(scratch):
    write(scratch, SCRIPT, WINDOW)
    return scratch


def node(folder, name, kind, major, minor):
    """A device node of our own (root only): cases write to these, never to the system's."""
    try:
        os.mknod(folder / name, kind | 0o666, os.makedev(major, minor))
    except PermissionError:
        pytest.skip("making device nodes needs root (CAP_MKNOD)")
    return folder / name


@pytest.fixture
def dev(scratch):
    """A folder that stands for /dev: null and full of our own, stdout, stderr, stdin and fd as
    links into /proc/self/fd. run_with_dev() mounts it over /dev in a private mount namespace, so
    that literal names (-o /dev/null, --out /dev/stdout) are tested while a regression could only
    replace what is in this folder, never the machine's /dev."""
    if subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True).returncode != 0:
        pytest.skip("no private mount namespace here (unshare -m needs root and CAP_SYS_ADMIN)")
    d = scratch / "dev"
    d.mkdir()
    node(d, "null", stat.S_IFCHR, 1, 3)
    node(d, "full", stat.S_IFCHR, 1, 7)
    for name, target in [("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"),
                         ("fd", "/proc/self/fd")]:
        os.symlink(target, d / name)
    return d


def with_dev(dev, args):
    """The command line that runs `sparsa ARGS` with `dev` mounted over /dev."""
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", 'mount --bind "$0" /dev && exec "$@"', str(dev), CLI] + \
        [str(a) for a in args]


def run_with_dev(dev, args, cwd):
    if not CLI:
        pytest.skip("SPARSA_CLI is not set (ctest sets it)")
    return run(with_dev(dev, args)[1:], cwd=cwd, program="unshare")


# [SECTION] devices, descriptors, links

@pytest.mark.parametrize("name", ["null", "full"])
def test_device_output_stays_a_device(w, dev, name):
    with unchanged(w):   # dev is inside w: its nodes are still the same nodes, and nothing was added
        r = run_with_dev(dev, ["compile", SCRIPT, "--n", "256", "-o", f"/dev/{name}"], cwd=w)
    if name == "null":
        ok(r, "wrote /dev/null")
    else:
        refused(r, "cannot write '/dev/full': No space left on device")
        assert "wrote" not in r.out and "compiled in" not in r.out, "a success line printed before the error:\n" + r.out


def test_out_dev_stdout_gets_the_bytes_and_stays_a_link(w, dev):
    with unchanged(w):
        p = subprocess.run(with_dev(dev, ["run", SCRIPT, "--n", "64", "--d", "8", "--out", "/dev/stdout"]), cwd=w,
                           capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr.decode()
    o = np.load(io.BytesIO(p.stdout))   # only the array on stdout: the report went to stderr
    assert o.shape == (1, 2, 64, 8) and np.isfinite(o).all()
    assert b"wrote" in p.stderr


@pytest.mark.parametrize("out", ["/dev/stdout", "/dev/fd/1", "/proc/self/fd/1"])
def test_masks_through_a_pipe_need_no_seek(w, dev, out):
    """An .npz's header is patched after its data; a pipe cannot seek, so the bytes wait."""
    with unchanged(w):
        p = subprocess.run(with_dev(dev, ["compile", SCRIPT, "--n", "256", "-o", out]), cwd=w, capture_output=True,
                           timeout=60, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr.decode()
    assert zipfile.ZipFile(io.BytesIO(p.stdout)).testzip() is None


def test_a_fifo_output_is_written_to_not_replaced(w):
    fifo = w / "masks.fifo"
    os.mkfifo(fifo)
    # The reader opens first, without waiting for a writer; the masks (7 KB) fit the pipe's buffer.
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        with unchanged(w):
            r = run(["compile", SCRIPT, "--n", "256", "-o", fifo], cwd=w)
        ok(r)
        os.set_blocking(reader, True)
        got = b"".join(iter(lambda: os.read(reader, 1 << 16), b""))
    finally:
        os.close(reader)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert zipfile.ZipFile(io.BytesIO(got)).testzip() is None


def test_a_block_device_is_refused(w):
    disk = node(w, "disk", stat.S_IFBLK, 7, 255)   # loop255: not attached, nothing could be written
    with unchanged(w):
        refused(run(["compile", SCRIPT, "--n", "256", "-o", disk], cwd=w), "is a block device (a disk), not a file")


def test_symlinks_are_written_through(w):
    (w / "real").mkdir()
    write(w / "real", "old.npz", "old")
    os.symlink("real/old.npz", w / "link.npz")          # to an existing file
    os.symlink("link.npz", w / "chain.npz")             # a chain of links
    os.symlink("real/new.npy", w / "dangling.npy")      # to a file not yet there
    ok(run(["compile", SCRIPT, "--n", "256", "-o", "chain.npz", "--dense", "dangling.npy"], cwd=w))
    for link, target in [("link.npz", "real/old.npz"), ("chain.npz", "link.npz"), ("dangling.npy", "real/new.npy")]:
        assert os.path.islink(w / link) and os.readlink(w / link) == target, f"{link} is no longer a link to {target}"
    assert zipfile.ZipFile(w / "real" / "old.npz").testzip() is None
    assert np.load(w / "real" / "new.npy").shape == (1, 2, 256, 256)
    assert sorted(os.listdir(w / "real")) == ["new.npy", "old.npz"]   # the temporary files went too


# [SECTION] inputs and outputs as one set

def test_compile_onto_its_own_script_is_refused(w):
    os.link(w / SCRIPT, w / "hard.pat")
    os.symlink(SCRIPT, w / "soft.pat")
    with unchanged(w):
        r = run(["compile", SCRIPT, "--n", "256", "-o", SCRIPT], cwd=w)
        refused(r, "-o w.pat is the script being compiled; choose another name")
        assert r.stdout == ""
        # The same file by another name: a hard link, a symlink, a path through ".."
        refused(run(["compile", SCRIPT, "--n", "256", "-o", "hard.pat"], cwd=w), "is the script being compiled")
        refused(run(["compile", SCRIPT, "--n", "256", "--dense", "soft.pat"], cwd=w), "is the script being compiled")
        refused(run(["compile", SCRIPT, "--n", "256", "-o", f"../{w.name}/{SCRIPT}"], cwd=w), "is the script being compiled")
        refused(run(["reach", SCRIPT, "--n", "256", "--png", SCRIPT], cwd=w), "--png w.pat is the script")
        refused(run(["run", SCRIPT, "--n", "64", "--out", SCRIPT], cwd=w), "--out w.pat is the script being run")


def test_run_out_onto_an_input_tensor_is_refused(w):
    q = np.random.default_rng(0).standard_normal((2, 64, 8)).astype(np.float32)
    for name in ("q.npy", "k.npy", "v.npy"):
        np.save(w / name, q)
    with unchanged(w):
        refused(run(["run", SCRIPT, "--n", "64", "--q", "q.npy", "--k", "k.npy", "--v", "v.npy", "--out", "k.npy"], cwd=w),
                "--out k.npy is the --k tensor; choose another name")


def test_learn_output_onto_its_teacher_is_refused(w):
    ok(run(["learn", "teacher", "--steps", "1", "--n", "64", "--quiet", "-o", "t.bin"], cwd=w))
    with unchanged(w):
        refused(run(["learn", "pool", "--teacher", "t.bin", "-o", "t.bin"], cwd=w), "-o t.bin is the teacher (--teacher)")
        refused(run(["learn", "eval", "--teacher", "t.bin", "--gate", "g.json", "-o", "t.bin"], cwd=w), "is a file, not a folder")


def test_two_options_naming_one_file_are_refused(w):
    with unchanged(w):
        refused(run(["compile", SCRIPT, "--n", "256", "-o", "X", "--dense", "X"], cwd=w),
                "-o X and --dense X name the same file; choose another name for one of them")
        refused(run(["reach", SCRIPT, "--n", "256", "--png", "X", "--dense", "./X"], cwd=w), "name the same file")
    # Two outputs to a null device discard both: that is not a clash.
    node(w, "null", stat.S_IFCHR, 1, 3)
    with unchanged(w):
        ok(run(["compile", SCRIPT, "--n", "256", "-o", "null", "--dense", "null"], cwd=w))


def test_one_failing_output_leaves_none(w):
    node(w, "full", stat.S_IFCHR, 1, 7)
    with unchanged(w):
        # Fails while writing: the first output was complete, but it is never renamed into place.
        r = run(["compile", SCRIPT, "--n", "256", "-o", "a.npz", "--dense", "full"], cwd=w)
        refused(r, "No space left on device")
        assert "compiled in" not in r.out and "wrote" not in r.out
        refused(run(["reach", SCRIPT, "--n", "256", "--png", "p.png", "--dense", "full"], cwd=w), "No space left on device")
        # Refused before any work: a folder that does not exist.
        r = run(["compile", SCRIPT, "--n", "256", "-o", "a.npz", "--dense", "no/such/d.npy"], cwd=w)
        refused(r, "--dense no/such/d.npy: the folder 'no/such' does not exist (create it first)")
        assert "warning" not in r.out, "the script was compiled before the outputs were checked"


def test_output_a_folder_prints_no_summary(w):
    (w / "out").mkdir()
    with unchanged(w):
        r = run(["compile", SCRIPT, "--n", "256", "-o", "out"], cwd=w)
    refused(r, "-o out is a folder; give a file name inside it")
    assert r.stdout == "", "a success-looking line on stdout:\n" + r.stdout


# [SECTION] signals

@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_mid_write_leaves_no_temporary_file(scratch, sig):
    if not CLI:
        pytest.skip("SPARSA_CLI is not set (ctest sets it)")
    # 4 layers x 16 heads x 8192^2 bytes = 4 GiB of --dense: seconds of writing.
    write(scratch, "big.pat", "layers 4\nheads 16\nattend = window(64)\n")
    before = snapshot(scratch)
    p = subprocess.Popen([CLI, "compile", "big.pat", "--n", "8192", "-o", "big.npz", "--dense", "big.npy"], cwd=scratch,
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not any(n.startswith(".big.npy.tmp-") for n in os.listdir(scratch)):
            assert p.poll() is None, "finished before the write could be interrupted"
            assert time.monotonic() < deadline, "no temporary file appeared"
            time.sleep(0.01)
        time.sleep(0.2)   # well into the write
        p.send_signal(sig)
        p.wait(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == -sig, f"exit {p.returncode}, wanted death by signal {sig}"
    assert snapshot(scratch) == before, f"left behind: {sorted(set(snapshot(scratch)) - set(before))}"


# [SECTION] memory limits

MEMORY_CASES = {
    "check": ["check", SCRIPT, "--n", "4096"],
    "compile": ["compile", SCRIPT, "--n", "4096", "-o", "m.npz"],
    "stats": ["stats", SCRIPT, "--n", "4096"],
    "reach": ["reach", SCRIPT, "--n", "4096", "--png", "p.png"],
    "run": ["run", SCRIPT, "--n", "1024", "--out", "o.npy"],
}


@pytest.mark.parametrize("mb", [10, 20, 30, 60])
@pytest.mark.parametrize("command", sorted(MEMORY_CASES))
def test_memory_limit_gives_a_result_or_out_of_memory(w, command, mb):
    """Many threads (as on a machine with many cores) under ulimit -v: each thread's stack is
    address space, so threads that cannot start must not abort the run."""
    env = dict(os.environ, SPARSA_THREADS="16")
    # The kernel maps the executable and the loader its libraries before any code of ours runs:
    # sparsa must be small enough to start at 10 MB. A CUDA build once linked its engine in
    # (about 10 MB of segments: execve's SIGSEGV); the engine is now libsparsa_cli_cuda.so,
    # mapped only by --engine cuda (cli/cuda_module.hpp).
    starts = run(["--help"], vm_mb=mb)
    assert starts.code == 0, f"sparsa cannot even start under {mb} MB (exit {starts.code}): {starts.out.strip()[:200]!r}"
    before = snapshot(w)
    r = run(MEMORY_CASES[command], cwd=w, vm_mb=mb, env=env)
    if r.code == 0:
        return
    refused(r, "out of memory")
    assert snapshot(w) == before, "a failed run left files"


def test_check_works_at_10_mb(w):
    """issue 17: at 10 MB every command, check included, was killed at exec in a CUDA build."""
    ok(run(["check", SCRIPT], cwd=w, vm_mb=10), "w.pat: ok")
    ok(run(["check", SCRIPT, "--n", "4096"], cwd=w, vm_mb=10, env=dict(os.environ, SPARSA_THREADS="16")), "w.pat: ok")


def test_engine_cuda_at_10_mb_says_out_of_memory_or_not_built(w):
    """The CUDA engine (libsparsa_cli_cuda.so, about 9 MB) cannot be mapped in 10 MB: a clean
    "out of memory", not a crash nor "rebuild"; a build without it says so, as without a limit."""
    with unchanged(w):
        r = run(["run", SCRIPT, "--n", "256", "--engine", "cuda", "--out", "o.npy"], cwd=w, vm_mb=10)
    if "built without the CUDA engine" in r.out:
        refused(r, "--engine cuda: this sparsa was built without the CUDA engine")
    else:
        refused(r, "--engine cuda: out of memory", "libsparsa_cli_cuda.so", "ulimit -v")
        assert "rebuild" not in r.out


def test_memory_limit_enough_for_every_command_to_work(w):
    env = dict(os.environ, SPARSA_THREADS="16")
    for command, args in MEMORY_CASES.items():
        ok(run(args, cwd=w, vm_mb=60, env=env))


# [SECTION] option messages

def test_token_outside_n_says_the_range(w):
    with unchanged(w):
        refused(run(["reach", SCRIPT, "--n", "4096", "--token", "5000"], cwd=w), "--token 5000 is outside 0 to 4095 (n = 4096)")
        refused(run(["reach", SCRIPT, "--n", "4096", "--token", "-1"], cwd=w), "--token -1 is outside 0 to 4095 (n = 4096)")
    ok(run(["reach", SCRIPT, "--n", "4096", "--token", "4095"], cwd=w), "token 4095")


@pytest.mark.parametrize("block", ["4096", "48", "0", "8", "-64"])
@pytest.mark.parametrize("command", ["check", "compile", "stats", "show", "reach", "run"])
def test_block_says_which_sizes_exist(w, command, block):
    with unchanged(w):
        r = run([command, SCRIPT, "--n", "256", "--block", block], cwd=w)
    refused(r, f"--block {block} is not a block size sparsa supports (use 16, 32, 64, 128 or 256)")
    assert "power of two" not in r.out
