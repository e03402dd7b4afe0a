"""sparsa from Python: pattern scripts, block-sparse masks, attention engines, receptive fields.

    import numpy as np, sparsa
    masks = sparsa.compile("heads 2\\nlayers 4\\nattend = window(32) | global(first(16))", n=1024)
    print(masks, masks.stats(layer=0, head=0))
    q, k, v = (np.random.default_rng(0).standard_normal((1, 2, 1024, 64), dtype=np.float32) for _ in range(3))
    o, lse = sparsa.attention(q, k, v, masks, layer=0)
    print(sparsa.reach_coverage(masks).layers_needed)

Errors: sparsa.Error (a ValueError) for bad input, sparsa.ScriptError (a sparsa.Error) for a script
that does not check or compile; str(e) is the CLI's diagnostic with its caret. docs/python.md has the
whole interface.
"""

import os as _os

from ._sparsa import (  # noqa: F401  (re-exported)
    Diagnostic,
    Error,
    MaskSet,
    MaskStats,
    ReachCoverage,
    Script,
    ScriptError,
    TokenReach,
    attention,
    attention_backward,
    attention_cuda,
    cuda_available,
    cuda_built,
    load_script,
    mask_set_from_dense,
    parse,
    reach_coverage,
    reach_dense,
    reach_token,
    reach_warning,
    reference,
    reference_backward,
    thread_count,
)
from .flex import to_flex_block_mask, flex_arrays  # noqa: F401

# Shown as sparsa.ScriptError (not sparsa._sparsa.ScriptError) in tracebacks and reprs.
for _type in (Diagnostic, Error, MaskSet, MaskStats, ReachCoverage, Script, ScriptError, TokenReach):
    _type.__module__ = "sparsa"

if cuda_built:
    from ._sparsa import cuda_device_name, round_to  # noqa: F401

from ._sparsa import learn_built  # noqa: E402
if learn_built:
    import sys as _sys
    from ._sparsa import learn  # noqa: F401  (sparsa.learn: teacher, oracle, search, gate, evaluate)
    _sys.modules[__name__ + ".learn"] = learn
    for _type in (learn.Teacher, learn.AttentionSample, learn.SearchTable, learn.Gate):
        _type.__module__ = "sparsa.learn"

# compile() is left out of __all__: a star import must not hide Python's builtin compile.
__all__ = [
    "Diagnostic", "Error", "learn_built", "MaskSet", "MaskStats", "ReachCoverage", "Script", "ScriptError", "TokenReach",
    "attention", "attention_backward", "attention_cuda", "compile_file", "cuda_available", "cuda_built",
    "flex_arrays", "load", "load_script", "mask_set_from_dense", "parse", "reach_coverage", "reach_dense",
    "reach_token", "reach_warning", "reference", "reference_backward", "thread_count", "to_flex_block_mask",
]


def compile(script, n, block=0, threads=0):  # noqa: A001  (the word students know)
    """Compiles a pattern script for sequence length n: a MaskSet.

    script: a Script (from parse() or load_script()), or the script's text as a str. To compile a
    file, use compile_file(path, n). block 0 uses the script's `block` statement (default 64).
    Raises ScriptError (with the CLI's diagnostic) for a script that does not check or compile.
    """
    if isinstance(script, Script):
        return script.compile(n, block=block, threads=threads)
    if isinstance(script, str):
        if script.endswith(".pat") and "\n" not in script and _os.path.exists(script):
            raise ValueError(f"compile: {script!r} looks like a file name; use sparsa.compile_file({script!r}, n) "
                             "(compile() takes the script's text)")
        return parse(script).compile(n, block=block, threads=threads)
    raise ValueError(f"compile: script must be a sparsa.Script or the script's text (str), got {type(script).__name__}")


def compile_file(path, n, block=0, threads=0):
    """Reads, checks and compiles a script file for sequence length n: a MaskSet."""
    return load_script(_os.fspath(path)).compile(n, block=block, threads=threads)


def load(path):
    """Loads a MaskSet saved by MaskSet.save() or `sparsa compile -o FILE.npz`."""
    return MaskSet.load(_os.fspath(path))
