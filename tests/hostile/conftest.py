"""The hostile-input suite: sparsa run as a new user and a hostile tester would run it.

Every case states the exit code, the key words of the message, and that nothing was created,
changed or left behind that the user did not name as an output. ctest runs it with SPARSA_CLI
set to the built `sparsa` and PYTHONPATH at the built module (tests/CMakeLists.txt).

Helpers:
  run(args, cwd=..., stdin=..., vm_mb=..., timeout=...)  -> Ran(code, out, stdout, stderr)
  snapshot(folder)                                      -> {relative path: what is there}
  unchanged(folder, *paths)                             a context manager: the folder and paths
                                                        are the same after the block as before
  refused(ran, *words, code=1)                          the run failed cleanly, saying `words`
"""
import contextlib
import hashlib
import os
import pathlib
import resource
import signal
import subprocess
import sys
from dataclasses import dataclass

import pytest

SOURCE_DIR = pathlib.Path(os.environ.get("SPARSA_SOURCE_DIR", pathlib.Path(__file__).resolve().parents[2]))
PATTERNS = SOURCE_DIR / "examples" / "patterns"
CLI = os.environ.get("SPARSA_CLI", "")


@dataclass
class Ran:
    code: int          # the exit code; -N when killed by signal N
    stdout: str
    stderr: str

    @property
    def out(self):
        return self.stdout + self.stderr


def _limits(vm_mb):
    def apply():
        if vm_mb is not None:
            b = vm_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (b, b))
    return apply


def run(args, cwd=None, stdin=None, vm_mb=None, timeout=60, env=None, program=None):
    """Runs `sparsa ARGS` (a list of strings) and returns what it did. A run that outlasts
    `timeout` seconds fails the test: sparsa must never hang."""
    if not CLI and program is None:
        pytest.skip("SPARSA_CLI is not set (ctest sets it)")
    cmd = [program or CLI] + [str(a) for a in args]
    try:
        p = subprocess.run(cmd, cwd=cwd, input=stdin, capture_output=True, timeout=timeout,
                           preexec_fn=_limits(vm_mb), env=env,
                           stdin=None if stdin is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail(f"hung: {' '.join(cmd)} ran for more than {timeout} s")
    return Ran(p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace"))


def python(code, cwd=None, vm_mb=None, timeout=120):
    """Runs `python3 -c CODE` with the built module importable (PYTHONPATH from ctest)."""
    return run(["-c", code], cwd=cwd, vm_mb=vm_mb, timeout=timeout, program=sys.executable)


def _describe(path):
    st = os.lstat(path)
    if os.path.islink(path):
        return ("link", os.readlink(path))
    if os.path.isdir(path):
        return ("folder",)
    if not os.path.isfile(path):
        return ("special", st.st_mode, st.st_rdev, st.st_ino)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return ("file", st.st_size, st.st_ino, oct(st.st_mode), h.hexdigest())


def snapshot(folder):
    """Every entry under `folder` (links not followed) with its kind, size, inode and hash."""
    folder = pathlib.Path(folder)
    seen = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = pathlib.Path(root) / name
            seen[str(p.relative_to(folder))] = _describe(p)
    return seen


@contextlib.contextmanager
def unchanged(folder, *paths):
    """Asserts that `folder` (recursively) and each extra path look the same after the block."""
    before = snapshot(folder)
    extra = {str(p): _describe(p) if os.path.lexists(p) else None for p in paths}
    yield
    after = snapshot(folder)
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    assert not (added or removed or changed), f"{folder}: added {added}, removed {removed}, changed {changed}"
    for p, was in extra.items():
        now = _describe(p) if os.path.lexists(p) else None
        assert now == was, f"{p} changed: {was} -> {now}"


def refused(ran, *words, code=1):
    """The run failed with `code`, cleanly (no crash, no internal error), and said every word."""
    assert ran.code == code, f"exit {ran.code}, wanted {code}; output:\n{ran.out}"
    for bad in ("internal error", "terminate called", "Segmentation", "Aborted", "Traceback"):
        assert bad not in ran.out, f"'{bad}' in output:\n{ran.out}"
    for w in words:
        assert w in ran.out, f"'{w}' not in output:\n{ran.out}"


def ok(ran, *words):
    """The run succeeded and said every word."""
    assert ran.code == 0, f"exit {ran.code}; output:\n{ran.out}"
    for w in words:
        assert w in ran.out, f"'{w}' not in output:\n{ran.out}"


@pytest.fixture
def scratch(tmp_path):
    """An empty folder for one case; the run's working folder."""
    return tmp_path


def write(folder, name, text):
    p = pathlib.Path(folder) / name
    p.write_bytes(text.encode() if isinstance(text, str) else text)
    return p


WINDOW = "heads 2\nattend = window(8)\n"
