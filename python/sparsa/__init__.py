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
    anchors_fit,
    attention,
    attention_backward,
    attention_cuda,
    content_attention_cuda,
    content_allowed,
    content_report,
    cuda_available,
    cuda_built,
    favor_error_curve,
    favor_features,
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
from . import plot  # noqa: F401  (sparsa.plot: matplotlib figures; matplotlib itself is imported on first use)

# Shown as sparsa.ScriptError (not sparsa._sparsa.ScriptError) in tracebacks and reprs.
for _type in (Diagnostic, Error, MaskSet, MaskStats, ReachCoverage, Script, ScriptError, TokenReach):
    _type.__module__ = "sparsa"

if cuda_built:
    from ._sparsa import cuda_device_name, round_to  # noqa: F401


def _mask_set_html(self, png=None):
    """The summary (script, n, block, layers x heads, density) above the overview PNG: what a notebook
    shows for a MaskSet. png: _repr_png_()'s bytes when already drawn."""
    import base64
    import html
    png = self._repr_png_() if png is None else png
    name = "" if self.script_name in ("", "<string>") else f"{self.script_name}: "
    summary = (f"n = {self.n:,}, block {self.block}, {self.layers} layers x {self.heads} heads, "
               f"density {100 * self.density:.3g}%, {self.unique_masks} distinct masks")
    image = base64.b64encode(png).decode("ascii")
    return (f'<div class="sparsa-maskset"><div>MaskSet <b>{html.escape(name)}</b>{summary}</div>'
            f'<img src="data:image/png;base64,{image}" alt="{html.escape(name + summary, quote=True)}" '
            'style="max-width: 100%"></div>')


def _mask_set_mimebundle(self, include=None, exclude=None):
    """PNG and HTML from one drawing (IPython would otherwise call _repr_png_ and _repr_html_, drawing twice)."""
    png = self._repr_png_()
    return {"text/html": _mask_set_html(self, png), "image/png": png, "text/plain": repr(self)}


MaskSet._repr_html_ = _mask_set_html
MaskSet._repr_mimebundle_ = _mask_set_mimebundle

# A wrong argument type raises one sentence naming the argument (not pybind11's signatures).
from . import _arguments, _sparsa  # noqa: E402
_arguments.wrap_module(_sparsa, globals())

from ._sparsa import learn_built  # noqa: E402
if learn_built:
    import sys as _sys
    from ._sparsa import learn  # noqa: F401  (sparsa.learn: teacher, oracle, search, gate, evaluate)
    _sys.modules[__name__ + ".learn"] = learn
    for _type in (learn.Teacher, learn.AttentionSample, learn.SearchTable, learn.Gate):
        _type.__module__ = "sparsa.learn"
    _arguments.wrap_module(learn)

# compile() is left out of __all__: a star import must not hide Python's builtin compile.
__all__ = [
    "Diagnostic", "Error", "learn_built", "MaskSet", "MaskStats", "ReachCoverage", "Script", "ScriptError", "TokenReach",
    "anchors_fit", "attention", "attention_backward", "attention_cuda", "compile_file", "content_attention_cuda", "content_allowed", "content_report",
    "cuda_available", "cuda_built", "favor_error_curve", "favor_features", "flex_arrays", "load", "plot", "load_script",
    "mask_set_from_dense", "parse", "reach_coverage", "reach_dense", "reach_token", "reach_warning", "reference",
    "reference_backward", "thread_count", "to_flex_block_mask",
]


def compile(script, n, block=0, threads=0):  # noqa: A001  (the word students know)
    """Compiles a pattern script for sequence length n: a MaskSet.

    script: a Script (from parse() or load_script()), or the script's text as a str. To compile a
    file, use compile_file(path, n). block 0 uses the script's `block` statement (default 64).
    Raises ScriptError (with the CLI's diagnostic) for a script that does not check or compile.
    """
    _compile_args_check("compile", n, block, threads)
    if isinstance(script, Script):
        return script.compile(n, block=block, threads=threads)
    if isinstance(script, str):
        if script.endswith(".pat") and "\n" not in script and _os.path.exists(script):
            raise ValueError(f"compile: {script!r} looks like a file name; use sparsa.compile_file({script!r}, n) "
                             "(compile() takes the script's text)")
        return parse(script).compile(n, block=block, threads=threads)
    if isinstance(script, _os.PathLike):
        raise TypeError(f"compile(): script is a path ({_os.fspath(script)!r}); use sparsa.compile_file(path, n) "
                        "(compile() takes the script's text or a sparsa.Script)")
    raise TypeError(f"compile(): script must be a sparsa.Script or the script's text (str), not {_arguments.describe(script)}")


def compile_file(path, n, block=0, threads=0):
    """Reads, checks and compiles a script file for sequence length n: a MaskSet."""
    _compile_args_check("compile_file", n, block, threads)
    if not isinstance(path, (str, bytes, _os.PathLike)):
        raise TypeError(f"compile_file(): path must be a file name (str or os.PathLike), not {_arguments.describe(path)}")
    return load_script(_os.fsdecode(path)).compile(n, block=block, threads=threads)


def _compile_args_check(name, n, block, threads):
    """n, block and threads are integers (a bool or a float is a mistake here, not a number)."""
    meaning = {"n": "the sequence length", "block": "16 to 256, or 0 for the script's", "threads": "0 for all cores"}
    for arg, value in (("n", n), ("block", block), ("threads", threads)):
        if isinstance(value, bool) or not hasattr(type(value), "__index__"):
            raise TypeError(f"{name}(): {arg} must be an integer ({meaning[arg]}), not {_arguments.describe(value)}")
        if not -2**31 <= value < (2**63 if arg == "n" else 2**31):
            raise ValueError(f"{name}(): {arg} = {value} is out of range ({meaning[arg]})")


def load(path):
    """Loads a MaskSet saved by MaskSet.save() or `sparsa compile -o FILE.npz`."""
    if not isinstance(path, (str, bytes, _os.PathLike)):
        raise TypeError(f"load(): path must be a file name (str or os.PathLike), not {_arguments.describe(path)}")
    return MaskSet.load(_os.fsdecode(path))
