"""A wrong argument type raises one sentence naming the argument and what it must be (TypeError),
an integer too large for its parameter a ValueError; never pybind11's list of signatures."""
import pathlib

import numpy as np
import pytest

import sparsa


@pytest.fixture(scope="module")
def masks():
    return sparsa.compile("heads 2\nattend = window(4)", n=64, block=16)


def one_sentence(error):
    text = str(error)
    assert "\n" not in text and "incompatible function arguments" not in text and "Invoked with" not in text, text
    return text


@pytest.mark.parametrize("call, kind, message", [
    (lambda m: sparsa.compile(None, 64),
     TypeError, "compile(): script must be a sparsa.Script or the script's text (str), not None"),
    (lambda m: sparsa.compile("attend = dense", n="abc"),
     TypeError, "compile(): n must be an integer (the sequence length), not str 'abc'"),
    (lambda m: sparsa.compile("attend = dense", 64, block=1.5),
     TypeError, "compile(): block must be an integer (16 to 256, or 0 for the script's), not float 1.5"),
    (lambda m: sparsa.compile("attend = dense", n=10**30),
     ValueError, "compile(): n = 1000000000000000000000000000000 is out of range (the sequence length)"),
    (lambda m: sparsa.compile(pathlib.Path("x.pat"), 64),
     TypeError, "compile(): script is a path ('x.pat'); use sparsa.compile_file(path, n)"),
    (lambda m: sparsa.compile_file(None, 64),
     TypeError, "compile_file(): path must be a file name (str or os.PathLike), not None"),
    (lambda m: sparsa.load(3),
     TypeError, "load(): path must be a file name (str or os.PathLike), not int 3"),
    (lambda m: sparsa.parse(None),
     TypeError, "parse(): text must be a string, not None"),
    (lambda m: sparsa.load_script(None),
     TypeError, "load_script(): path must be a file name (str or os.PathLike), not None"),
    (lambda m: sparsa.parse("attend = dense").compile(None),
     TypeError, "Script.compile(): n must be an integer, not None"),
    (lambda m: sparsa.parse("attend = dense").compile(64, blok=16),
     TypeError, "Script.compile() has no argument 'blok' (it takes n, block, threads)"),
    (lambda m: sparsa.parse("attend = dense").compile(64, 0, 0, 1),
     TypeError, "Script.compile() takes at most 3 arguments (n, block, threads); 4 were given"),
    (lambda m: sparsa.parse("attend = dense").compile(64, block=2**40),
     ValueError, "Script.compile(): block = 1099511627776 is out of range"),
    (lambda m: sparsa.attention(np.zeros((1, 2, 64, 8)), 2, 3, None),
     TypeError, "attention(): masks must be a sparsa.MaskSet (from sparsa.compile() or sparsa.load()), not None"),
    (lambda m: sparsa.attention(1, 2, 3, m, layer="0"),
     TypeError, "attention(): layer must be an integer, not str '0'"),
    (lambda m: sparsa.reference(1, 2, 3, m, scale="big"),
     TypeError, "reference(): scale must be a number, not str 'big'"),
    (lambda m: m.stats(layer=1.0),
     TypeError, "MaskSet.stats(): layer must be an integer, not float 1.0"),
    (lambda m: m.allowed(0, 0, 0),
     TypeError, "MaskSet.allowed() needs k"),
    (lambda m: m.save(None),
     TypeError, "MaskSet.save(): path must be a file name (str or os.PathLike), not None"),
    (lambda m: sparsa.MaskSet.load([]),
     TypeError, "MaskSet.load(): path must be a file name (str or os.PathLike), not list []"),
    (lambda m: sparsa.reach_token(m, "5"),
     TypeError, "reach_token(): token must be an integer, not str '5'"),
    (lambda m: sparsa.reach_coverage(m, resolution=None),
     TypeError, "reach_coverage(): resolution must be a string, not None"),
    (lambda m: sparsa.reach_token(m, 1, keep_sets="yes"),
     TypeError, "reach_token(): keep_sets must be True or False, not str 'yes'"),
])
def test_a_wrong_argument_is_named_in_one_sentence(masks, call, kind, message):
    with pytest.raises(kind) as caught:
        call(masks)
    assert type(caught.value) is kind
    assert one_sentence(caught.value) == message or one_sentence(caught.value).startswith(message)


def test_learn_functions_name_the_argument_too():
    if not sparsa.learn_built:
        pytest.skip("this build has no sparsa.learn")
    with pytest.raises(TypeError) as caught:
        sparsa.learn.search(None)
    assert one_sentence(caught.value) == "search(): table must be a sparsa.learn.SearchTable, not None"
    with pytest.raises(TypeError) as caught:
        sparsa.learn.Teacher.load(None)
    assert one_sentence(caught.value) == "Teacher.load(): path must be a file name (str or os.PathLike), not None"


def test_paths_may_be_path_objects(masks, tmp_path):
    masks.save(tmp_path / "m.npz")  # MaskSet.save takes a str in C++
    again = sparsa.MaskSet.load(tmp_path / "m.npz")
    np.testing.assert_array_equal(again.to_dense(0, 1), masks.to_dense(0, 1))
    (tmp_path / "w.pat").write_text("attend = window(2)\n")
    assert sparsa.load_script(tmp_path / "w.pat").name.endswith("w.pat")


def test_calls_that_work_are_unchanged(masks):
    # numpy integers are integers; ints are numbers; help() still shows the signature.
    assert masks.stats(np.int64(0), np.int32(1)).kept_blocks == masks.stats(0, 1).kept_blocks
    q = np.ones((1, 2, 64, 8), np.float32)
    o, _ = sparsa.attention(q, q, q, masks, layer=np.int64(0), scale=1)
    assert o.shape == (1, 2, 64, 8)
    assert sparsa.attention.__doc__.startswith("attention(q: handle")
    # Errors raised inside a call keep their own message and type.
    with pytest.raises(ValueError, match="layer 5 is out of range"):
        masks.stats(layer=5)
