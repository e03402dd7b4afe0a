"""sparsa.plot and MaskSet's pictures with the mistakes a user makes: each raises one sentence that
names the argument and says what to do; without matplotlib, `import sparsa` and MaskSet.png() still
work and sparsa.plot says how to install it; nothing is written where the user did not ask."""
import pytest

from conftest import ok, python, refused, unchanged

sparsa = pytest.importorskip("sparsa")
matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SCRIPT = "heads 2\nlayers 3\nattend = window(8)\n"


@pytest.fixture(scope="module")
def masks():
    return sparsa.compile(SCRIPT, n=64)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def raises(exc, call, *words):
    with pytest.raises(exc) as e:
        call()
    text = str(e.value)
    assert "\n" not in text, text
    for w in words:
        assert w in text, text


def test_without_matplotlib(scratch):
    # matplotlib hidden: import sparsa works, the C++ pictures work, sparsa.plot says what to install
    code = """
import sys
sys.modules["matplotlib"] = None
import sparsa
m = sparsa.compile("attend = window(8)", n=64)
assert m.png()[:8] == b"\\x89PNG\\r\\n\\x1a\\n" and "base64" in m._repr_html_()
try:
    sparsa.plot.mask(m)
except ImportError as e:
    print(e)
    sys.exit(3)
"""
    with unchanged(scratch):
        ran = python(code, cwd=scratch)
    refused(ran, "sparsa.plot.mask() needs matplotlib", "apt install python3-matplotlib", "MaskSet.png()", code=3)


def test_plotting_writes_nothing(scratch):
    code = """
import matplotlib
matplotlib.use("Agg")
import sparsa
m = sparsa.compile("layers 2\\nattend = window(8)", n=64)
for f in (lambda: sparsa.plot.mask(m), lambda: sparsa.plot.overview(m), lambda: sparsa.plot.coverage(m),
          lambda: sparsa.plot.receptive_field(m, 3), lambda: sparsa.plot.gallery({"w": m}), m.png, m._repr_png_, m._repr_html_):
    f()
print("drawn")
"""
    with unchanged(scratch):
        ran = python(code, cwd=scratch)
    ok(ran, "drawn")


def test_mask_bad_arguments(masks):
    raises(ValueError, lambda: sparsa.plot.mask(masks, layer=3), "layer 3 is out of range", "3 layers (0..2)")
    raises(ValueError, lambda: sparsa.plot.mask(masks, head=-1), "head -1 is out of range", "(0..1)")
    raises(TypeError, lambda: sparsa.plot.mask(masks, layer=True), "layer must be an integer", "bool")
    raises(TypeError, lambda: sparsa.plot.mask(masks, head=1.0), "head must be an integer", "float")
    raises(ValueError, lambda: sparsa.plot.mask(masks, resolution="pixels"), "'auto', 'token' or 'block'", "'pixels'")
    raises(TypeError, lambda: sparsa.plot.mask("attend = window(8)"), "masks must be a sparsa.MaskSet", "str")
    raises(TypeError, lambda: sparsa.plot.mask(masks, title=3), "title must be a str")
    big = sparsa.compile("attend = window(8)", n=16384)
    raises(ValueError, lambda: sparsa.plot.mask(big, resolution="token"), "n <= 8192", "n = 16384", "resolution='block'")


def test_overview_bad_arguments(masks):
    many = sparsa.compile("heads 32\nlayers 12\nattend = window(8)", n=64)
    raises(ValueError, lambda: sparsa.plot.overview(many), "12 layers x 32 heads = 384 panels", "at most 256", "layers=range(")
    raises(ValueError, lambda: sparsa.plot.overview(masks, layers=[]), "layers is empty")
    raises(TypeError, lambda: sparsa.plot.overview(masks, layers=2), "layers must be a list or range")
    raises(ValueError, lambda: sparsa.plot.overview(masks, heads=[0, 2]), "head 2 is out of range")
    assert sparsa.plot.overview(many, layers=range(0, 12, 2)) is not None          # the suggested fix works


def test_receptive_field_bad_arguments(masks):
    raises(ValueError, lambda: sparsa.plot.receptive_field(masks, token=64), "token 64 is out of range", "0..63")
    raises(ValueError, lambda: sparsa.plot.receptive_field(masks, token=0, direction="up"), "'in'", "'out'", "'up'")
    raises(TypeError, lambda: sparsa.plot.receptive_field(None, token=0), "sparsa.MaskSet", "NoneType")


def test_coverage_and_gallery_bad_arguments(masks):
    raises(TypeError, lambda: sparsa.plot.coverage("window"), "sparsa.MaskSet or sparsa.ReachCoverage", "str")
    raises(ValueError, lambda: sparsa.plot.coverage({}), "nothing to draw")
    raises(ValueError, lambda: sparsa.plot.coverage(masks, resolution="exact"), "'auto', 'token' or 'block'")
    raises(ValueError, lambda: sparsa.plot.coverage(masks, shown_layers=0), "shown_layers must be a whole number >= 1")
    raises(TypeError, lambda: sparsa.plot.gallery([masks]), "dict {name: sparsa.MaskSet}", "list")
    raises(ValueError, lambda: sparsa.plot.gallery({"w": masks}, layer=5), "layer 5 is out of range")
    raises(ValueError, lambda: sparsa.plot.gallery({"w": masks}, cols=0), "cols must be a whole number >= 1")


def test_png_bad_arguments(masks):
    raises(ValueError, lambda: masks.png(layer=0), "layer given without head", "give both", "or neither")
    raises(ValueError, lambda: masks.png(head=1), "head given without layer")
    raises(ValueError, lambda: masks.png(3, 0), "layer 3 is out of range")
    raises(TypeError, lambda: masks.png(True, 0), "layer must be an integer or None", "bool")
    raises(TypeError, lambda: masks.png(0, "1"), "head must be an integer or None", "str")
    raises(ValueError, lambda: masks.png(width=100), "100")
    raises(ValueError, lambda: masks.png(0, 0, width=100000), "100000")
    raises(TypeError, lambda: masks.png(width="wide"), "width must be an integer")
