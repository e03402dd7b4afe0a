"""The pattern language under hostile scripts, from the CLI and from Python.

Deep scripts (a chain of 3000 lets, of 2000 defs, 10,000 parentheses or `|`, 50,000 lines)
compile or stop with a diagnostic, never a crash. Scripts that are not text files (a FIFO nobody
writes to, /dev/zero, more than 16 MiB) are refused within a bounded time. A byte order mark is
skipped; a NUL byte, a control character and a non-ASCII name are named in the diagnostic; a
selector outside the script's heads or layers is an error with a caret. From Python, a wrong
argument type is one sentence, and deep scripts on a thread never take the interpreter down.
Each case asserts the exit code, the message's key words, and that nothing was written."""
import os
import threading
import time

import pytest

from conftest import CLI, ok, python, refused, run, unchanged, write

COMMANDS = [["check"], ["compile", "--n", "256", "-o", "out.npz"], ["stats", "--n", "256"], ["show", "--n", "256"],
            ["reach", "--n", "256"], ["run", "--n", "256"]]


def let_chain(count):
    lines = ["let a1 = window(1)"] + [f"let a{i} = a{i - 1} | window({i})" for i in range(2, count + 1)]
    return "\n".join(lines + [f"attend = a{count}"]) + "\n"


def def_chain(count):
    lines = ["def f1(x) = x | window(1)"] + [f"def f{i}(x) = f{i - 1}(x) | window({i})" for i in range(2, count + 1)]
    return "\n".join(lines + [f"attend = f{count}(window(0))"]) + "\n"


def cli(scratch, command, name):
    """`sparsa COMMAND name ARGS` for one of COMMANDS (the script goes after the command)."""
    return run([command[0], name] + command[1:], cwd=scratch)


# [SECTION] Deep scripts

@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_a_chain_of_3000_lets_and_2000_defs_works_in_every_command(scratch, command):
    write(scratch, "lets.pat", let_chain(3000))
    write(scratch, "defs.pat", def_chain(2000))
    for name in ("lets.pat", "defs.pat"):
        r = cli(scratch, command, name)
        ok(r)
        if command[0] == "compile":
            os.remove(scratch / "out.npz")


@pytest.mark.parametrize("text, place, words", [
    ("attend = " + "(" * 10000 + "dense" + ")" * 10000 + "\n", "deep.pat:1:110",
     ["expression nested too deeply (more than 100 levels)", "split the expression with let", "^"]),
    ("attend = " + " | ".join(f"window({i})" for i in range(10000)) + "\n", "deep.pat:1:10",
     ["this pattern has more than 10000 parts", "^~~~", "..."]),
    (def_chain(3000), "deep.pat:501:15", ["definitions call each other more than 2500 levels deep here"]),
    ("attend = " + "-" * 10000 + "1\n", "deep.pat:1:110", ["nested too deeply"]),
    ("let a1 = window(1)\n" + "".join(f"let a{i} = a{i - 1} | window({i % 100})\n" for i in range(2, 50001)) +
     "attend = a50000\n", "deep.pat:", ["more than 10000 parts"]),
], ids=["parentheses", "unions", "defs", "negations", "lets"])  # short ids: pytest puts the id in the environment
def test_deeper_scripts_stop_with_a_diagnostic(scratch, text, place, words):
    write(scratch, "deep.pat", text)
    with unchanged(scratch):
        start = time.monotonic()
        r = run(["compile", "deep.pat", "--n", "1024", "-o", "out.npz"], cwd=scratch)
        assert time.monotonic() - start < 30
    refused(r, place, *words)


def test_a_50000_line_script_is_read_in_a_moment(scratch):
    text = "".join(f"let a{i} = a1 | window({i % 100})\n" if i > 1 else "let a1 = window(1)\n" for i in range(1, 50001))
    write(scratch, "long.pat", text + "attend = a50000\n")
    start = time.monotonic()
    ok(run(["check", "long.pat"], cwd=scratch), "long.pat: ok")
    assert time.monotonic() - start < 10
    # 50,000 unknown names: the first 20 are reported, not a did-you-mean search for each.
    write(scratch, "unknown.pat", "".join(f"let a{i} = b{i}\n" for i in range(50000)) + "attend = dense\n")
    with unchanged(scratch):
        start = time.monotonic()
        r = run(["check", "unknown.pat"], cwd=scratch)
        assert time.monotonic() - start < 10
    refused(r, "unknown.pat:1:10: error: unknown name 'b0'", "stopping after 20 errors")


# [SECTION] What is read as a script

def test_a_fifo_nobody_writes_to_is_refused_within_the_wait(scratch):
    os.mkfifo(scratch / "s.pat")
    with unchanged(scratch):
        start = time.monotonic()
        r = run(["compile", "s.pat", "--n", "64", "-o", "out.npz"], cwd=scratch, timeout=40)
        took = time.monotonic() - start
    refused(r, "s.pat", "nothing arrived on this pipe for 10 s")
    assert 9 < took < 30


def test_a_fifo_with_a_writer_and_process_substitution_are_read(scratch):
    if not CLI:
        pytest.skip("SPARSA_CLI is not set (ctest sets it)")
    os.mkfifo(scratch / "s.pat")

    def writer():
        time.sleep(1)
        with open(scratch / "s.pat", "w") as f:
            f.write("attend = window(4)\n")
    t = threading.Thread(target=writer)
    t.start()
    ok(run(["check", "s.pat"], cwd=scratch), "s.pat: ok")
    t.join()
    write(scratch, "w.pat", "attend = window(4)\n")
    r = run(["bash", "-c", f'"{CLI}" check <(cat w.pat) && cat w.pat | "{CLI}" check /dev/stdin'],
            cwd=scratch, program="/usr/bin/env")
    ok(r, "/dev/fd/", "/dev/stdin: ok")


@pytest.mark.parametrize("path, words", [("/dev/zero", ["not a regular file", "a character device"]),
                                         ("/dev/urandom", ["not a regular file"])])
def test_devices_are_refused_before_reading(scratch, path, words):
    with unchanged(scratch):
        start = time.monotonic()
        r = run(["compile", path, "--n", "64", "-o", "out.npz"], cwd=scratch)
        assert time.monotonic() - start < 5
    refused(r, path, *words)


def test_a_script_over_16_mib_is_refused_naming_the_limit(scratch):
    write(scratch, "big.pat", b"#" + b" " * (16 << 20) + b"\n")
    with unchanged(scratch):
        r = run(["check", "big.pat"], cwd=scratch)
    refused(r, "big.pat", "scripts are limited to 16 MiB")
    # The same from a pipe: read up to the limit, not to the end.
    r = run(["check", "/dev/stdin"], cwd=scratch, stdin=b" " * (17 << 20))
    refused(r, "/dev/stdin", "more than 16 MiB")


# [SECTION] Diagnostics

def test_a_byte_order_mark_is_skipped(scratch):
    write(scratch, "bom.pat", b"\xef\xbb\xbfheads 2\nattend = window(4)\n")
    ok(run(["check", "bom.pat"], cwd=scratch), "bom.pat: ok (1 layer x 2 heads")
    write(scratch, "bom2.pat", b"\xef\xbb\xbfheads 2\nattend = windw(4)\n")
    refused(run(["check", "bom2.pat"], cwd=scratch), "bom2.pat:2:10: error: unknown pattern 'windw'")


@pytest.mark.parametrize("content, words", [
    (b"attend = window(4)\x00 | dense\n",
     ["n.pat:1:19: error: a NUL byte (shown as \\0)", "attend = window(4)\\0 | dense", "^~"]),
    (b"heads 2\x00\nattend = dense\n", ["n.pat:1:8: error: a NUL byte", "heads 2\\0"]),
    (b"attend = window(4) \x1b[2J\n", ["n.pat:1:20: error: unexpected control character \\x1B", "\\x1B[2J"]),
    ("let café = window(4)\nattend = café\n".encode(),
     ["n.pat:1:8: error: unexpected character 'é' (U+00E9): identifiers are ASCII letters, digits and '_'"]),
    (b"let caf\xe9 = window(4)\n", ["n.pat:1:8: error: unexpected byte 0xE9 (not UTF-8)", "let caf\\xE9 ="]),
    (b"heads 2\nattend = window(4)\nattend[head 5] = dense\n",
     ["n.pat:3:13: error: head 5 is outside 0 to 1 (heads 2)", "^"]),
    (b"layers 3\nattend = window(4)\nattend[layer 3..6] = dense\n",
     ["n.pat:3:14: error: layers 3 to 5 are outside 0 to 2 (layers 3)", "  ^~~~\n"]),
    (b"heads 2\nattend = window(4)\nattend[head n / 100] = dense\n",  # needs n: found when compiling
     ["n.pat:3:13: error: head 2 is outside 0 to 1 (heads 2)"]),
], ids=["nul", "nul_at_end_of_line", "escape", "non_ascii_name", "latin1", "head", "layers", "head_with_n"])
@pytest.mark.parametrize("command", [["check", "--n", "256"], ["compile", "--n", "256", "-o", "out.npz"]],
                         ids=lambda c: c[0])
def test_diagnostics_name_what_is_wrong(scratch, content, words, command):
    write(scratch, "n.pat", content)
    with unchanged(scratch):
        r = cli(scratch, command, "n.pat")
    refused(r, *words)
    assert "\x00" not in r.out and "\x1b" not in r.out  # escaped, never cut short or sent to the terminal


# [SECTION] Python

def test_python_wrong_types_are_one_sentence(scratch):
    r = python("""
import sparsa
for call in ["sparsa.compile(None, 64)", "sparsa.compile('attend = dense', n='abc')",
             "sparsa.parse('attend = dense').compile(None)", "sparsa.attention(1, 2, 3, None)",
             "sparsa.load_script(None)"]:
    try:
        eval(call)
    except (TypeError, ValueError) as e:
        print(type(e).__name__, '|', str(e).replace(chr(10), ' NEWLINE '))
""", cwd=scratch)
    ok(r)
    lines = r.stdout.splitlines()
    assert lines == [
        "TypeError | compile(): script must be a sparsa.Script or the script's text (str), not None",
        "TypeError | compile(): n must be an integer (the sequence length), not str 'abc'",
        "TypeError | Script.compile(): n must be an integer, not None",
        "TypeError | attention(): masks must be a sparsa.MaskSet (from sparsa.compile() or sparsa.load()), not None",
        "TypeError | load_script(): path must be a file name (str or os.PathLike), not None",
    ], r.out


def test_python_deep_scripts_on_a_thread_do_not_take_the_interpreter_down(scratch):
    write(scratch, "lets.pat", let_chain(3000))
    write(scratch, "defs.pat", def_chain(2000))
    write(scratch, "deeper.pat", def_chain(3000))
    r = python("""
import threading, sparsa
def attempt(name, stack=0):
    threading.stack_size(stack)  # 0: the default
    out = []
    def body():
        try:
            out.append(f"ok {sparsa.compile_file(name, 4096).stats().kept_blocks}")
        except sparsa.ScriptError as e:
            out.append(f"ScriptError {e.line}:{e.column} {e.diagnostics[0].message}")
    t = threading.Thread(target=body)
    t.start()
    t.join()
    print(name, out[0])
attempt("defs.pat", stack=1 << 20)   # a small stack first: glibc may reuse a larger one later
for name in ("lets.pat", "defs.pat", "deeper.pat"):
    attempt(name)
print(sparsa.compile_file("lets.pat", 4096).stats().kept_blocks)
""", cwd=scratch)
    ok(r)
    lines = r.stdout.splitlines()
    assert lines[0].startswith("defs.pat ScriptError") and "stack of this thread" in lines[0], r.out
    assert lines[1].startswith("lets.pat ok ") and lines[2].startswith("defs.pat ok "), r.out
    assert lines[3] == "deeper.pat ScriptError 501:15 definitions call each other more than 2500 levels deep here"
    assert lines[1] == f"lets.pat ok {lines[4]}"
