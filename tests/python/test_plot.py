"""sparsa.plot's figures and MaskSet's own pictures: labels and titles are there, and what is drawn
equals what the bindings say (to_dense, block_grid, densities, reach_token, reach_coverage)."""
import base64
import io
import re
import struct
import time

import numpy as np
import pytest

import sparsa

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import sparsa.plot  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# heads differ (dilations: partial blocks with holes), layer 1 adds globals (full blocks once wide)
SCRIPT = """block 16
heads 3
layers 2
attend = dilated(6, 1 + h) | window(2)
attend[layer 1] = window(20) | global(first(16))
"""


@pytest.fixture(scope="module")
def masks():
    return sparsa.compile(SCRIPT, n=100)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def image_of(ax):
    return np.asarray(ax.images[0].get_array())


def expected_token_image(m, layer, head):
    """0 not kept, 1 masked pair of a partial block, 2 kept pair of a partial block, 3 pair of a full block."""
    grid = m.block_grid(layer, head)
    kind = np.kron(grid, np.ones((m.block, m.block), np.int8))[:m.n, :m.n]
    kept = m.to_dense(layer, head)
    out = np.zeros((m.n, m.n), np.int8)
    out[kind == 2] = 3
    out[(kind == 1) & kept] = 2
    out[(kind == 1) & ~kept] = 1
    return out


def legend_texts(legend):
    return [t.get_text() for t in legend.get_texts()]


# [SECTION] mask

def test_mask_axes_title_and_legend(masks):
    fig = sparsa.plot.mask(masks, layer=1, head=2)
    ax = fig.axes[0]
    assert "Query" in ax.get_ylabel() and "tokens" in ax.get_ylabel()
    assert "Key" in ax.get_xlabel() and "tokens" in ax.get_xlabel()
    density = masks.stats(1, 2).density
    assert f"layer 1, head 2: density {100 * density:.3g}%" in ax.get_title()
    texts = legend_texts(ax.get_legend())
    assert "not kept" in texts and "full block" in texts and "partial block: kept pair" in texts


def test_mask_token_cells_equal_to_dense_and_blocks(masks):
    for layer in range(masks.layers):
        for head in range(masks.heads):
            fig = sparsa.plot.mask(masks, layer, head, resolution="token")
            image = image_of(fig.axes[0])
            assert image.shape == (masks.n, masks.n)
            np.testing.assert_array_equal(image >= 2, masks.to_dense(layer, head))
            np.testing.assert_array_equal(image, expected_token_image(masks, layer, head))
            plt.close(fig)


def test_mask_block_cells_equal_block_grid(masks):
    fig = sparsa.plot.mask(masks, 1, 0, resolution="block")
    image = image_of(fig.axes[0])
    grid = masks.block_grid(1, 0)
    np.testing.assert_array_equal(image, np.choose(grid, [0, 2, 3]))
    assert "each cell one 16 x 16 block" in fig.axes[0].get_title()
    assert fig.axes[0].get_xlim() == (0, masks.n) and fig.axes[0].get_ylim() == (masks.n, 0)


def test_mask_pools_many_blocks_keeping_thin_lines():
    # 2048 blocks pooled 6 x 6 into 342 cells: the one-block global row and column must survive
    big = sparsa.compile("block 16\nattend = window(40) | global(first(16))", n=32768)
    fig = sparsa.plot.mask(big)                                   # auto: blocks above n = 1024
    image = image_of(fig.axes[0])
    per = -(-2048 // 400)
    side = -(-2048 // per)
    assert image.shape == (side, side) and "each cell 6 x 6 blocks of 16" in fig.axes[0].get_title()
    kinds = np.choose(big.block_grid(), [0, 2, 3])
    padded = np.zeros((side * per, side * per), np.int8)
    padded[:2048, :2048] = kinds
    np.testing.assert_array_equal(image, padded.reshape(side, per, side, per).max(axis=(1, 3)))
    assert (image[0] > 0).all() and (image[:, 0] > 0).all()


def test_mask_into_given_axes(masks):
    fig, (a, b) = plt.subplots(1, 2)
    assert sparsa.plot.mask(masks, 0, 0, ax=b) is fig
    assert not a.images and b.images and "Query" in b.get_ylabel()


# [SECTION] overview

def test_overview_grid_densities_and_cells(masks):
    fig = sparsa.plot.overview(masks)
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == masks.layers * masks.heads
    densities = masks.densities()
    for i, ax in enumerate(panels):
        layer, head = divmod(i, masks.heads)
        assert ax.get_xlabel() == f"{100 * densities[layer, head]:.3g}%"
        np.testing.assert_array_equal(image_of(ax), expected_token_image(masks, layer, head))   # n <= 256: tokens
        if head == 0:
            assert ax.get_ylabel() == f"layer {layer}"
        if layer == 0:
            assert ax.get_title() == f"head {head}"
    assert "2 layers x 3 heads" in fig._suptitle.get_text() and "n = 100" in fig._suptitle.get_text()
    assert "full block" in legend_texts(fig.legends[0])


def test_overview_blocks_and_a_selection():
    m = sparsa.compile("block 32\nheads 4\nlayers 3\nattend = window(16 * (h + 1))", n=1024)
    fig = sparsa.plot.overview(m, layers=[2], heads=range(1, 3))
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 2 and panels[0].get_title() == "head 1" and panels[0].get_ylabel() == "layer 2"
    np.testing.assert_array_equal(image_of(panels[1]), np.choose(m.block_grid(2, 2), [0, 2, 3]))


# [SECTION] receptive field

@pytest.mark.parametrize("direction,label", [("in", "Key position k"), ("out", "Query position q")])
def test_receptive_field_is_reach_token(direction, label):
    m = sparsa.compile("layers 5\nattend = window(8) | random(1, seed = 2)", n=300)
    fig = sparsa.plot.receptive_field(m, token=123, direction=direction)
    cone, sizes = fig.axes[0], fig.axes[1]
    field = sparsa.reach_token(m, 123, direction=direction, keep_sets=True)
    np.testing.assert_array_equal(image_of(cone), field.sets)
    assert cone.get_xlabel() == label + " (tokens)" and "layer" in cone.get_ylabel()
    assert f"token 123 ({direction})" in cone.get_title()
    np.testing.assert_array_equal(sizes.lines[0].get_xdata(), field.sizes)
    assert sizes.get_xlabel() == "Tokens in the field" and sizes.get_title()


def test_receptive_field_pools_long_sequences():
    m = sparsa.compile("layers 3\nattend = window(100)", n=100000)
    fig = sparsa.plot.receptive_field(m, token=50000)
    image = image_of(fig.axes[0])
    assert image.shape[0] == 4 and image.shape[1] <= 800
    per = -(-100000 // 800)
    reached = np.flatnonzero(image[3])
    assert reached[0] == (50000 - 300) // per and reached[-1] == (50000 + 300) // per


# [SECTION] coverage

def test_coverage_curve_is_reach_coverage():
    m = sparsa.compile("layers 4\nattend = window(16)", n=256)
    cov = sparsa.reach_coverage(m)
    fig = sparsa.plot.coverage(m)
    ax = fig.axes[0]
    line = ax.lines[0]
    np.testing.assert_allclose(line.get_ydata(), 100 * cov.fractions[:len(line.get_ydata())])
    assert len(line.get_ydata()) == cov.saturation_layers + 1
    assert ax.get_xlabel().startswith("Layers") and ax.get_ylabel() == "Pairs connected (%)"
    assert "n = 256" in ax.get_title()
    assert f"all after {cov.layers_needed}" in legend_texts(ax.get_legend())[0]


def test_coverage_causal_plateau_is_explained():
    m = sparsa.compile("causal\nlayers 3\nattend = window(16)", n=256)
    fig = sparsa.plot.coverage(m)
    ax = fig.axes[0]
    solid, dashed = ax.lines[0], ax.lines[1]
    assert solid.get_ydata()[-1] == pytest.approx(100)
    assert dashed.get_ydata()[-1] == pytest.approx(100 * (256 * 257 / 2) / 256**2)    # about 50%
    texts = " ".join(legend_texts(ax.get_legend()))
    assert "50%" in texts and "k <= q" in texts
    assert "causal" in ax.get_legend().get_title().get_text()


def test_coverage_of_several_patterns():
    a = sparsa.compile("layers 2\nattend = window(8)", n=128)
    b = sparsa.compile("layers 2\nattend = window(8) | global(first(1))", n=128)
    fig = sparsa.plot.coverage({"window": a, "global": sparsa.reach_coverage(b)})
    texts = legend_texts(fig.axes[0].get_legend())
    assert texts[0].startswith("window: all after") and texts[1] == "global: all after 2"


def test_coverage_block_resolution_is_said():
    m = sparsa.compile("layers 2\nattend = window(64)", n=4096)
    fig = sparsa.plot.coverage(m, resolution="block")
    assert "block resolution" in fig.axes[0].get_legend().get_title().get_text()


# [SECTION] MaskSet.png, _repr_png_, _repr_html_

def png_size(data):
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def decode(data):
    import matplotlib.image
    return matplotlib.image.imread(io.BytesIO(data), format="png")


def test_png_of_one_mask_decodes_to_its_size(masks):
    data = masks.png(layer=1, head=2, width=320)
    assert png_size(data) == (320, 320)
    assert decode(data).shape[:2] == (320, 320)
    assert masks.png(1, 2) != masks.png(0, 2)
    assert png_size(masks.png(0, 0)) == (640, 640)


def test_png_overview_and_repr(masks):
    data = masks.png(width=900)
    width, height = png_size(data)
    assert width == 900 and decode(data).shape[:2] == (height, 900)
    shown = masks._repr_png_()
    assert png_size(shown)[0] == 800 and decode(shown).shape[1] == 800


def test_repr_html_has_the_summary_and_the_png(masks):
    page = masks._repr_html_()
    assert "n = 100, block 16, 2 layers x 3 heads" in page
    assert f"density {100 * masks.density:.3g}%" in page
    image = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page).group(1)
    assert base64.b64decode(image) == masks._repr_png_()
    bundle = masks._repr_mimebundle_()
    assert bundle["image/png"] == masks._repr_png_() and bundle["text/html"] == page and bundle["text/plain"] == repr(masks)


def test_repr_png_is_bounded_for_huge_sets():
    # 48 layers x 32 heads at n = 1M: the notebook shows the first 16 heads of the first 4 layers
    big = sparsa.compile("layers 48\nheads 32\nattend = window(256) | global(first(64))", n=1 << 20)
    start = time.perf_counter()
    data = big._repr_png_()
    seconds = time.perf_counter() - start
    width, height = png_size(data)
    assert width == 800 and height < 1200, (width, height)
    assert len(data) < 200_000, len(data)
    assert seconds < 5, seconds


def test_a_notebook_picture_labels_content_based_heads():
    """_repr_png_ of a set with lsh heads has the title line saying only their fixed part is drawn
    (the picture gets the heads' specs), so it is taller than the same fixed masks without lsh."""
    def height(text):
        png = sparsa.parse(text).compile(n=512)._repr_png_()
        return struct.unpack(">II", png[16:24])[1]   # IHDR: width, height
    assert height("block 64\nheads 2\nattend = window(64) | lsh(8)\n") > height("block 64\nheads 2\nattend = window(64)\n")
