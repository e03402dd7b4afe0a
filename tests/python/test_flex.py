"""The FlexAttention helper: flex_arrays' layout rebuilds every mask exactly (numpy only), and
to_flex_block_mask raises a clear ImportError without torch, or gives a BlockMask with it."""
import importlib.util

import numpy as np
import pytest

import sparsa

SCRIPT = "heads 3\nlayers 2\nattend = window(20) | global(first(7))\nattend[head 1] = causal & band(1)\nattend[layer 1, head 2] = empty"


@pytest.fixture
def masks():
    return sparsa.compile(SCRIPT, n=200, block=32)


def test_flex_arrays_rebuild_the_masks(masks):
    for layer in range(2):
        a = sparsa.flex_arrays(masks, layer)
        blocks = (200 + 31) // 32
        assert a["kv_num_blocks"].shape == (1, 3, blocks) and a["kv_indices"].shape == (1, 3, blocks, blocks)
        q, k = np.indices((200, 200))
        for h in range(3):
            # The mask_mod's lookup, on every pair.
            via_lookup = a["bits"][a["lookup"][h, q // 32, k // 32], q % 32, k % 32]
            np.testing.assert_array_equal(via_lookup, masks.to_dense(layer, h))
            # The kv_* / full_kv_* block lists name exactly the partial / full blocks.
            grid = masks.block_grid(layer, h)
            for r in range(blocks):
                full = a["full_kv_indices"][0, h, r, :a["full_kv_num_blocks"][0, h, r]]
                partial = a["kv_indices"][0, h, r, :a["kv_num_blocks"][0, h, r]]
                np.testing.assert_array_equal(np.sort(full), np.flatnonzero(grid[r] == 2))
                np.testing.assert_array_equal(np.sort(partial), np.flatnonzero(grid[r] == 1))
    with pytest.raises(ValueError, match="layer 2 is out of range"):
        sparsa.flex_arrays(masks, 2)


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None, reason="torch is importable here")
def test_without_torch_the_import_error_says_what_to_do(masks):
    with pytest.raises(ImportError, match=r"to_flex_block_mask needs PyTorch 2.5 or newer.*flex_arrays"):
        sparsa.to_flex_block_mask(masks, 0)


def test_with_torch_the_block_mask_allows_the_same_pairs(masks):
    torch = pytest.importorskip("torch")
    pytest.importorskip("torch.nn.attention.flex_attention")
    bm = sparsa.to_flex_block_mask(masks, 0)
    q = torch.arange(200).view(-1, 1)
    k = torch.arange(200).view(1, -1)
    dense_blocks = bm.to_dense()[0]  # [heads, q_blocks, k_blocks]: kept blocks
    for h in range(3):
        pairs = bm.mask_mod(0, h, q, k) & dense_blocks[h].repeat_interleave(32, 0).repeat_interleave(32, 1)[:200, :200].bool()
        np.testing.assert_array_equal(pairs.numpy(), masks.to_dense(0, h))


def test_with_torch_flex_attention_gives_sparsa_attention():
    torch = pytest.importorskip("torch")
    flex = pytest.importorskip("torch.nn.attention.flex_attention")
    masks = sparsa.compile("heads 2\nattend = window(100) | global(first(7)) | random(1, seed = 5)", n=512, block=128)
    rng = np.random.default_rng(7)
    q, k, v = (rng.standard_normal((1, 2, 512, 64)).astype(np.float32) for _ in range(3))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    bm = sparsa.to_flex_block_mask(masks, 0, device=device)
    tq, tk, tv = (torch.from_numpy(x).to(device) for x in (q, k, v))
    o_flex = flex.flex_attention(tq, tk, tv, block_mask=bm).cpu().numpy()
    o, _ = sparsa.attention(q, k, v, masks)
    np.testing.assert_allclose(o_flex, o, atol=2e-3)  # GPU float32 matmuls may use TF32
