"""Deep scripts never take Python down: a chain of 3000 lets and one of 2000 defs compile, on the
main thread and on a threading.Thread; deeper nesting, or a thread with a small stack, raises
ScriptError with a caret. Each case runs in its own interpreter, so a crash fails the case
instead of the whole run."""
import subprocess
import sys
import textwrap

PRELUDE = textwrap.dedent("""
    import threading, sparsa

    def let_chain(count):
        lines = ["let a1 = window(1)"] + [f"let a{i} = a{i - 1} | window({i})" for i in range(2, count + 1)]
        return "\\n".join(lines + [f"attend = a{count}"]) + "\\n"

    def def_chain(count):
        lines = ["def f1(x) = x | window(1)"] + [f"def f{i}(x) = f{i - 1}(x) | window({i})" for i in range(2, count + 1)]
        return "\\n".join(lines + [f"attend = f{count}(window(0))"]) + "\\n"

    def outcome(text):
        try:
            masks = sparsa.compile(text, n=4096)
            return f"ok {masks.stats().kept_blocks}"
        except sparsa.ScriptError as e:
            return f"ScriptError {e.line}:{e.column} {e.diagnostics[0].message}"

    def on_thread(text, stack=0):
        threading.stack_size(stack)  # 0: the default
        got = []
        t = threading.Thread(target=lambda: got.append(outcome(text)))
        t.start()
        t.join()
        return got[0]
""")


def run(code):
    """Runs PRELUDE + code in a fresh interpreter; its stdout lines. A crash fails the test."""
    p = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code)], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stderr}"
    return p.stdout.splitlines()


def test_long_chains_compile_on_the_main_thread_and_on_a_thread():
    kept = run("print(outcome('attend = window(3000)')); print(outcome('attend = window(2000)'))")
    lines = run("""
        print(outcome(let_chain(3000)))
        print(outcome(def_chain(2000)))
        print(on_thread(let_chain(3000)))
        print(on_thread(def_chain(2000)))
    """)
    assert lines == [kept[0], kept[1], kept[0], kept[1]]
    assert kept[0].startswith("ok ")


def test_deeper_chains_and_nesting_raise_script_error_with_a_place():
    lines = run("""
        print(outcome(def_chain(3000)))
        print(on_thread(def_chain(3000)))
        print(outcome("attend = " + "(" * 10000 + "dense" + ")" * 10000))
        print(on_thread("attend = " + " | ".join(f"window({i})" for i in range(10000))))
    """)
    # The 2501st call: f500 in the body of f501, on line 501.
    assert lines[0] == "ScriptError 501:15 definitions call each other more than 2500 levels deep here"
    assert lines[1] == lines[0]
    assert lines[2] == "ScriptError 1:110 expression nested too deeply (more than 100 levels)"
    assert lines[3] == "ScriptError 1:10 this pattern has more than 10000 parts"


def test_a_thread_with_a_small_stack_gets_an_error_not_a_crash():
    # Smallest first: glibc may give a new thread the larger stack of one that has ended.
    lines = run("""
        print(on_thread("attend = window(" + "max(1, " * 80 + "1" + ")" * 80 + ")", stack=320 << 10))
        print(on_thread(def_chain(2000), stack=1 << 20))
        print(on_thread(let_chain(3000), stack=1 << 20))
    """)
    assert lines[0].startswith("ScriptError 1:") and "expression nested too deeply for the stack of this thread" in lines[0]
    assert lines[1].startswith("ScriptError ") and "evaluating this expression nests too deeply for the stack of this thread" in lines[1]
    assert lines[2].startswith("ok ")
