"""A walkthrough of the Python module with the mistakes a user makes: each raises a Python
exception of a sensible type whose message names the argument, and nothing is written."""
import numpy as np
import pytest

from conftest import python, unchanged, write

sparsa = pytest.importorskip("sparsa")

SCRIPT = "heads 2\nlayers 2\nattend = window(8)\n"


@pytest.fixture(scope="module")
def masks():
    return sparsa.compile(SCRIPT, n=64)


def tensors(shape=(1, 2, 64, 8), dtype=np.float32):
    rng = np.random.default_rng(0)
    return [rng.standard_normal(shape).astype(dtype) for _ in range(3)]


@pytest.mark.parametrize("change,exc,words", [
    (lambda q, k, v: (q[0], k, v), ValueError, ["q", "4 dimensions"]),
    (lambda q, k, v: (q, k[..., :7], v), ValueError, ["k", "differs"]),
    (lambda q, k, v: (q[:, :, :60], k[:, :, :60], v[:, :, :60]), ValueError, ["n = 60", "n = 64"]),
    (lambda q, k, v: (q.astype(np.int64), k, v), ValueError, ["q", "int64"]),
    (lambda q, k, v: (q, k, np.where(v > 2, np.inf, v)), ValueError, ["inf"]),
])
def test_attention_bad_tensors(masks, change, exc, words):
    q, k, v = change(*tensors())
    with pytest.raises(exc) as e:
        sparsa.attention(q, k, v, masks, layer=0)
    for w in words:
        assert w.lower() in str(e.value).lower(), str(e.value)


def test_attention_bad_layer(masks):
    q, k, v = tensors()
    with pytest.raises(ValueError, match="layer 5"):
        sparsa.attention(q, k, v, masks, layer=5)


def test_to_dense_refuses_huge_n():
    big = sparsa.compile("attend = window(8)\n", n=16384)
    with pytest.raises(ValueError, match="block_grid"):
        big.to_dense(0, 0)


def test_load_missing_and_foreign_files(scratch):
    with pytest.raises(ValueError, match="nope.npz"):
        sparsa.load(str(scratch / "nope.npz"))
    write(scratch, "x.npz", b"PK\x03\x04 not really a zip")
    with unchanged(scratch):
        with pytest.raises(ValueError, match="x.npz"):
            sparsa.load(str(scratch / "x.npz"))
    np.save(scratch / "a.npy", np.zeros(3))
    with unchanged(scratch):
        with pytest.raises(ValueError, match="a.npy"):
            sparsa.load(str(scratch / "a.npy"))


def test_save_into_a_missing_folder_leaves_nothing(scratch, masks):
    with unchanged(scratch):
        with pytest.raises(ValueError, match="does the folder exist"):
            masks.save(str(scratch / "missing" / "m.npz"))


def test_script_errors_are_script_errors():
    with pytest.raises(sparsa.ScriptError) as e:
        sparsa.compile("heads 2\nattend = window(8) | globl(first(4))\n", n=64)
    assert "unknown pattern 'globl'" in str(e.value)
    assert isinstance(e.value, ValueError)


def test_bad_input_does_not_take_the_interpreter_down(scratch):
    # Every call above, in a fresh interpreter that must exit 0 after catching each error.
    code = (
        "import numpy as np, sparsa\n"
        "m = sparsa.compile('heads 2\\nattend = window(8)\\n', n=64)\n"
        "bad = [lambda: sparsa.attention(np.ones((1,2,64,8),np.float32), np.ones((1,2,64,8),np.float32), "
        "np.ones((1,2,64,7),np.float32), m),\n"
        "       lambda: sparsa.load('nope.npz'),\n"
        "       lambda: sparsa.compile('attend = window(', n=64),\n"
        "       lambda: m.to_dense(0, 9)]\n"
        "for f in bad:\n"
        "    try:\n"
        "        f()\n"
        "    except (ValueError, IndexError, TypeError):\n"
        "        pass\n"
        "    else:\n"
        "        raise SystemExit('no error raised')\n"
        "print('survived')\n")
    r = python(code, cwd=scratch)
    assert r.code == 0 and "survived" in r.out, r.out
