"""One sentence for a call whose argument has the wrong type, instead of pybind11's list of
signatures: which argument, what it must be, what it got.

    sparsa.compile("attend = window(4)", n="abc")
    TypeError: compile(): n must be an integer, not str 'abc'

wrap_module() replaces the module's functions and its classes' methods with wrappers that call
the original and, only when pybind11 refuses the arguments, work out which one is wrong from the
signature pybind11 writes on the first line of each docstring. A call that succeeds pays one
Python frame. A path given as os.PathLike where the binding takes a str is passed as its string.
"""

import functools
import inspect
import os
import re

_REFUSED = ("incompatible function arguments", "incompatible constructor arguments")
_SIGNATURE = re.compile(r"^(\w+)\((.*)\)\s*->")


def _split_top_level(text):
    """Splits a parameter list at the commas outside brackets and quotes."""
    parts, depth, quote, start = [], 0, None, 0
    for i, c in enumerate(text):
        if quote:
            quote = None if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c in "[(":
            depth += 1
        elif c in "])":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def parameters(function):
    """[(name, annotation, default text or None)] from pybind11's signature line; None when
    there is none to read (overloads, *args)."""
    first = (function.__doc__ or "").lstrip().split("\n", 1)[0]
    match = _SIGNATURE.match(first)
    if not match:
        return None
    out = []
    for part in _split_top_level(match.group(2)):
        if part.startswith("*"):
            return None
        name, _, rest = part.partition(":")
        annotation, _, default = rest.partition("=")
        out.append((name.strip(), annotation.strip(), default.strip() or None))
    return out


def _classes():
    from . import _sparsa
    found = {name: obj for name, obj in vars(_sparsa).items() if inspect.isclass(obj)}
    learn = getattr(_sparsa, "learn", None)
    if learn is not None:
        found.update({name: obj for name, obj in vars(learn).items() if inspect.isclass(obj)})
    return found


# What each annotation asks for, in words, and a test of whether pybind11 would take a value.
def _is_integer(v):
    return isinstance(v, bool) or (hasattr(type(v), "__index__") and not isinstance(v, float))


def _is_number(v):
    return _is_integer(v) or isinstance(v, float) or hasattr(type(v), "__float__")


_SIMPLE = {
    "int": ("an integer", _is_integer),
    "float": ("a number", _is_number),
    "str": ("a string", lambda v: isinstance(v, (str, bytes))),
    "bool": ("True or False", lambda v: v is None or isinstance(v, (bool, int, float)) or hasattr(type(v), "__bool__")),
}
_HOW_TO_GET = {
    "MaskSet": "a sparsa.MaskSet (from sparsa.compile() or sparsa.load())",
    "Script": "a sparsa.Script (from sparsa.parse() or sparsa.load_script())",
}


def _wanted(param, annotation, default):
    """(words, test) for a parameter's annotation; test is None when any value may do."""
    if param == "path" and annotation == "str":
        return "a file name (str or os.PathLike)", lambda v: isinstance(v, (str, bytes, os.PathLike))
    if annotation in _SIMPLE:
        return _SIMPLE[annotation]
    inner = re.match(r"^(?:List|list)\[(.*)\]$", annotation)
    if inner:
        words, test = _wanted("", inner.group(1), None)
        if test is None:
            return "a list", lambda v: isinstance(v, (list, tuple))
        return ("a list of " + words.split(" ", 1)[-1] + "s",
                lambda v: isinstance(v, (list, tuple)) and all(test(x) for x in v))
    name = annotation.rsplit(".", 1)[-1]
    cls = _classes().get(name)
    if cls is None:
        return annotation, None
    words = _HOW_TO_GET.get(name, f"a {cls.__module__}.{name}")
    if default == "None":
        return words + " or None", lambda v: v is None or isinstance(v, cls)
    return words, lambda v: isinstance(v, cls)


def describe(value):
    """A value as an error message shows it: its type, and its repr when short."""
    if value is None:
        return "None"
    text = repr(value)
    kind = type(value).__name__
    return f"{kind} {text}" if len(text) <= 40 and not text.startswith("<") else kind


def explain(name, params, args, kwargs):
    """(exception type, one sentence) for a call pybind11 refused, or None when no argument is
    found to be at fault."""
    names = [p[0] for p in params]
    shown = [p for p in names if p != "self"]
    if len(args) > len(params):
        given = len(args) - (len(names) - len(shown))
        return TypeError, f"{name}() takes at most {len(shown)} arguments ({', '.join(shown)}); {given} were given"
    bound = dict(zip(names, args))
    for key, value in kwargs.items():
        if key not in names:
            return TypeError, f"{name}() has no argument '{key}' (it takes {', '.join(shown)})"
        if key in bound:
            return TypeError, f"{name}(): {key} is given twice"
        bound[key] = value
    for param, annotation, default in params:
        if param not in bound:
            if default is None:
                return TypeError, f"{name}() needs {param}"
            continue
        words, test = _wanted(param, annotation, default)
        if test is not None and not test(bound[param]):
            return TypeError, f"{name}(): {param} must be {words}, not {describe(bound[param])}"
    # Every type fits: an integer too large for the C++ parameter (64 bits, or 32 for most).
    for bits in (64, 32):
        for param, annotation, _ in params:
            value = bound.get(param)
            if annotation == "int" and value is not None and not -2**(bits - 1) <= int(value) < 2**(bits - 1):
                return ValueError, f"{name}(): {param} = {int(value)} is out of range"
    return None


def _pathlike_to_str(params, args, kwargs):
    """The arguments with os.PathLike values of str parameters as strings, or None if none is."""
    names = [p[0] for p in params]
    wants_str = {p[0] for p in params if p[1] == "str"}
    changed = False
    args = list(args)
    for i, value in enumerate(args):
        if i < len(names) and names[i] in wants_str and isinstance(value, os.PathLike):
            args[i], changed = os.fspath(value), True
    kwargs = dict(kwargs)
    for key, value in kwargs.items():
        if key in wants_str and isinstance(value, os.PathLike):
            kwargs[key], changed = os.fspath(value), True
    return (args, kwargs) if changed else None


def checked(function, name=None):
    """function, wrapped so that refused arguments raise one sentence (see the module's doc)."""
    params = parameters(function)
    if params is None:
        return function
    name = name or function.__name__

    @functools.wraps(function)
    def call(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except TypeError as e:
            if not any(words in str(e) for words in _REFUSED):
                raise
            as_str = _pathlike_to_str(params, args, kwargs)
            if as_str is not None:
                return call(*as_str[0], **as_str[1])
            found = explain(name, params, args, kwargs)
            if found is None:
                signature = ", ".join(p[0] for p in params if p[0] != "self")
                found = TypeError, f"{name}() does not take these arguments (it takes {signature}; see help())"
        raise found[0](found[1]) from None
    return call


def wrap_module(module, namespace=None):
    """Wraps module's functions (in place, and where namespace re-exports them) and the methods
    and static methods of its classes."""
    for attr, obj in list(vars(module).items()):
        if attr.startswith("_"):
            continue
        if inspect.isclass(obj):
            _wrap_class(obj)
        elif inspect.isbuiltin(obj):
            wrapped = checked(obj)
            setattr(module, attr, wrapped)
            if namespace is not None and namespace.get(attr) is obj:
                namespace[attr] = wrapped


def _wrap_class(cls):
    for attr, raw in list(vars(cls).items()):
        if attr.startswith("_"):
            continue
        if isinstance(raw, staticmethod):
            setattr(cls, attr, staticmethod(checked(raw.__func__, f"{cls.__name__}.{attr}")))
        elif type(raw).__name__ == "instancemethod":  # pybind11's methods
            setattr(cls, attr, checked(getattr(cls, attr), f"{cls.__name__}.{attr}"))
