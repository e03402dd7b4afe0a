"""Receptive fields from Python: coverage per layer, one token's field and dense R_l, each against
brute-force boolean matrix products over the masks' dense forms; the window-too-small pitfall."""
import numpy as np
import pytest

import sparsa
from conftest import reach_brute_force

SCRIPT = "heads 2\nlayers 3\nattend = window(4)\nattend[head 1] = dilated(2, 9)\nattend[layer 1] = window(2) | random(1, seed = 4)"


@pytest.fixture
def masks():
    return sparsa.compile(SCRIPT, n=120, block=16)


def test_reach_dense_matches_brute_force(masks):
    want = reach_brute_force(masks, 3)
    got = sparsa.reach_dense(masks)
    assert got.shape == (3, 120, 120) and got.dtype == bool
    np.testing.assert_array_equal(got, want)


def test_coverage_matches_brute_force(masks):
    cov = sparsa.reach_coverage(masks, resolution="token")
    want = reach_brute_force(masks, len(cov.connected) - 1)
    assert cov.resolution == "token" and cov.n == 120 and cov.target_pairs == 120 * 120
    assert cov.connected[0] == 120
    np.testing.assert_array_equal(cov.connected[1:], want.sum(axis=(1, 2)))
    np.testing.assert_allclose(cov.fractions, cov.connected / cov.target_pairs)
    assert cov.out_of_reach == 120 * 120 - want[2].sum()
    if cov.layers_needed >= 0:
        assert want[cov.layers_needed - 1].all() and not want[cov.layers_needed - 2].all()


def test_token_fields_are_rows_and_columns_of_r(masks):
    dense = sparsa.reach_dense(masks)
    t_in = sparsa.reach_token(masks, 37, direction="in", keep_sets=True)
    t_out = sparsa.reach_token(masks, 37, direction="out", keep_sets=True)
    assert t_in.sets.shape == (4, 120) and t_in.sizes[0] == 1
    for l in range(3):
        np.testing.assert_array_equal(t_in.sets[l + 1], dense[l, 37, :])
        np.testing.assert_array_equal(t_out.sets[l + 1], dense[l, :, 37])
        assert t_in.sizes[l + 1] == dense[l, 37].sum()
    assert sparsa.reach_token(masks, 37).sets is None
    with pytest.raises(ValueError, match="token 120 is out of range"):
        sparsa.reach_token(masks, 120)
    with pytest.raises(ValueError, match="direction: expected 'in' or 'out'"):
        sparsa.reach_token(masks, 0, direction="up")


def test_window_too_small_cannot_connect_5000_tokens_in_24_layers():
    masks = sparsa.compile("layers 24\nattend = window(32)", n=5000)
    cov = sparsa.reach_coverage(masks)
    # window(32) moves information at most 32 tokens a layer: 24 layers span 768 tokens.
    assert cov.out_of_reach > 0
    assert cov.layers_needed == -(-4999 // 32)  # ceil(4999 / 32) = 157 layers
    w = sparsa.reach_warning(masks)
    assert w["warn"] and "24 layers" in w["message"]
    t = sparsa.reach_token(masks, 0, direction="out")
    assert t.sizes[24] == 1 + 24 * 32 and t.layers_to_all == -1


def test_global_tokens_connect_everything_in_two_layers():
    masks = sparsa.compile("layers 4\nattend = window(32) | global(first(1))", n=5000)
    cov = sparsa.reach_coverage(masks)
    assert cov.layers_needed == 2 and cov.out_of_reach == 0
    assert not sparsa.reach_warning(masks)["warn"]


def test_bad_options_are_refused(masks):
    with pytest.raises(ValueError, match="resolution: expected 'auto', 'token' or 'block'"):
        sparsa.reach_coverage(masks, resolution="exact")
    big = sparsa.compile("layers 24\nattend = window(4)", n=8000)
    with pytest.raises(ValueError, match="reach_dense: layers x n x n"):
        sparsa.reach_dense(big)
