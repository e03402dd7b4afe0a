"""MaskSet from Python: statistics, dense and block pictures (with the refusal above n = 8192),
CSR arrays, save / load through .npz, and MaskSets built from dense numpy masks."""
import numpy as np
import pytest

import sparsa


def window_dense(n, w):
    q, k = np.indices((n, n))
    return np.abs(q - k) <= w


def test_to_dense_matches_the_pattern_and_allowed():
    masks = sparsa.compile("heads 2\nattend = window(5)\nattend[head 1] = strided(7)", n=100, block=16)
    np.testing.assert_array_equal(masks.to_dense(0, 0), window_dense(100, 5))
    q, k = np.indices((100, 100))
    np.testing.assert_array_equal(masks.to_dense(0, 1), (q - k) % 7 == 0)
    assert masks.allowed(0, 1, 14, 0) and not masks.allowed(0, 1, 14, 1)
    with pytest.raises(ValueError, match="head 2 is out of range"):
        masks.to_dense(0, 2)
    with pytest.raises(ValueError, match="layer 1 is out of range"):
        masks.stats(1, 0)


def test_to_dense_refuses_above_8192_and_block_grid_works_at_any_n():
    masks = sparsa.compile("attend = window(64)", n=8193)
    with pytest.raises(ValueError, match=r"to_dense: n = 8193 is above 8192.*block_grid"):
        masks.to_dense(0, 0)
    grid = masks.block_grid(0, 0)
    assert grid.shape == (129, 129) and grid.dtype == np.int8
    assert set(np.unique(grid)) == {0, 1, 2}


def test_stats_and_block_grid_agree_with_the_dense_mask():
    masks = sparsa.compile("attend = window(20) | global(first(3))", n=200, block=32)
    dense = masks.to_dense()
    s = masks.stats()
    assert s.kept_pairs == dense.sum()
    assert s.density == pytest.approx(dense.sum() / 200 ** 2)
    assert masks.density == pytest.approx(s.density)
    grid = masks.block_grid()
    blocks = (200 + 31) // 32
    padded = np.zeros((blocks * 32, blocks * 32), bool)
    padded[:200, :200] = dense
    per_block = padded.reshape(blocks, 32, blocks, 32).sum(axis=(1, 3))
    valid = np.zeros_like(padded)
    valid[:200, :200] = True
    valid_per_block = valid.reshape(blocks, 32, blocks, 32).sum(axis=(1, 3))
    expected = np.where(per_block == 0, 0, np.where(per_block == valid_per_block, 2, 1))
    np.testing.assert_array_equal(grid, expected)
    assert s.kept_blocks == (grid > 0).sum() and s.full_blocks == (grid == 2).sum()
    np.testing.assert_allclose(masks.densities(), [[s.density]])


def test_csr_arrays_rebuild_the_mask():
    masks = sparsa.compile("attend = dilated(3, 5) | causal & window(40)", n=150, block=16)
    csr = masks.csr()
    bits = np.unpackbits(csr["bits"].view(np.uint8), axis=1, bitorder="little").astype(bool).reshape(-1, 16, 16)
    blocks = (150 + 15) // 16
    rebuilt = np.zeros((blocks * 16, blocks * 16), bool)
    for r in range(blocks):
        for e in range(csr["row_ptr"][r], csr["row_ptr"][r + 1]):
            c, p = csr["col_idx"][e], csr["partial_idx"][e]
            rebuilt[r * 16:(r + 1) * 16, c * 16:(c + 1) * 16] = True if p < 0 else bits[p]
    np.testing.assert_array_equal(rebuilt[:150, :150], masks.to_dense())


def test_save_and_load_round_trip(tmp_path):
    masks = sparsa.compile("heads 2\nlayers 3\nattend = window(10 + 7 * l + h) | random(1, seed = 3)", n=333, block=16)
    path = tmp_path / "m.npz"
    masks.save(str(path))
    back = sparsa.load(path)
    assert (back.n, back.block, back.layers, back.heads) == (333, 16, 3, 2)
    assert back.script_text == masks.script_text
    for l in range(3):
        for h in range(2):
            np.testing.assert_array_equal(back.to_dense(l, h), masks.to_dense(l, h))
    # numpy reads the file with no sparsa (docs/formats.md): the CSR arrays and bitmasks only
    # (format version 2; FlexAttention's block lists are built in memory by flex_arrays).
    z = np.load(path)
    assert z.files == ["header", "mask_index", "row_ptr", "col_idx", "partial_idx", "bitmask"]


def test_load_refuses_a_foreign_file_and_leaves_no_partial_output(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(sparsa.Error, match="bad.npz"):
        sparsa.load(bad)
    masks = sparsa.compile("attend = window(4)", n=64, block=16)
    with pytest.raises(sparsa.Error):
        masks.save(str(tmp_path / "no_such_dir" / "m.npz"))
    assert not (tmp_path / "no_such_dir").exists()


def test_mask_set_from_dense_round_trips():
    rng = np.random.default_rng(5)
    dense = rng.random((2, 3, 70, 70)) < 0.2
    masks = sparsa.mask_set_from_dense(dense, block=16)
    assert (masks.layers, masks.heads, masks.n) == (2, 3, 70)
    for l in range(2):
        for h in range(3):
            np.testing.assert_array_equal(masks.to_dense(l, h), dense[l, h])
    one = sparsa.mask_set_from_dense(np.eye(40, dtype=bool), block=16)
    assert (one.layers, one.heads) == (1, 1) and one.stats().kept_pairs == 40
    with pytest.raises(ValueError, match="square"):
        sparsa.mask_set_from_dense(np.ones((3, 4), bool))
    with pytest.raises(ValueError, match="block: 20"):
        sparsa.mask_set_from_dense(np.ones((4, 4), bool), block=20)
