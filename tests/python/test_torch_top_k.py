"""sparsa.torch.attention_top_k: per-input block selections. On the CPU (CI): the result is
sparsa.torch.attention's under sparsa.learn.block_masks of the same grid, the column list it writes
is the grid's col_idx row by row, and bad selections and arguments are refused. On a GPU (skipped
elsewhere, saying why): the masks uploaded once with the selection written on the device give the
same output as attention() under the host-built masks, bf16 / fp16 / float32, blocks of 16 and 64,
n not a multiple of the block, grouped-query attention, several batches of one layout."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import sparsa  # noqa: E402
from conftest import cuda_skip_reason  # noqa: E402

if not sparsa.learn_built:
    pytest.skip("attention_top_k's layout comes from sparsa.learn", allow_module_level=True)

import sparsa.selectors as sel  # noqa: E402
import sparsa.torch as st  # noqa: E402


def qkv(batch, heads, kv_heads, n, d, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, n, d, generator=g)
    k, v = (torch.randn(batch, kv_heads, n, d, generator=g) for _ in range(2))
    return [t.to(device=device, dtype=dtype) for t in (q, k, v)]


def selection(batch, heads, n, block, keep, seed=1, device="cpu"):
    blocks = -(-n // block)
    scores = torch.randn(batch, heads, blocks, blocks, generator=torch.Generator().manual_seed(seed))
    return sel.top_k_blocks(scores.to(device), keep), sel.top_k_grid(scores, keep)


def by_masks(q, k, v, grid, block):
    """attention() under the host-built masks of the grid (batch folded into heads)."""
    batch, heads, n, d = q.shape
    group = heads // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    masks = sparsa.learn.block_masks(grid.reshape(batch * heads, *grid.shape[2:]).cpu().numpy(), n, block, True)
    with torch.no_grad():
        return st.attention(*(t.reshape(1, batch * heads, n, d) for t in (q, k, v)), masks, 0).reshape(q.shape)


@pytest.mark.parametrize("n,block,keep", [(100, 16, 3), (256, 64, 2), (37, 16, 1), (200, 16, 13)])
def test_the_cpu_result_is_attention_under_the_grids_masks(n, block, keep):
    q, k, v = qkv(2, 4, 2, n, 8)
    top, grid = selection(2, 4, n, block, keep)
    with torch.no_grad():
        got = st.attention_top_k(q, k, v, top, block, check=True)
    assert torch.equal(got, by_masks(q, k, v, grid, block))


@pytest.mark.parametrize("n,block,keep", [(100, 16, 3), (1000, 64, 5), (64, 64, 1)])
def test_the_columns_are_each_rows_blocks_ascending_as_block_masks_lists_them(n, block, keep):
    top, grid = selection(2, 3, n, block, keep, seed=5)
    blocks = -(-n // block)
    columns = st._top_k_columns(top, st._top_k_gather(blocks, keep, top.device))
    want = sparsa.learn.block_masks(grid.reshape(6, blocks, blocks).numpy(), n, block, True)
    layout = sparsa.learn.top_k_layout(n, 6, block, keep)
    expected = []
    for h in range(6):
        rows = [sorted(torch.nonzero(grid.reshape(6, blocks, blocks)[h, r]).flatten().tolist()) for r in range(blocks)]
        assert [len(r) for r in rows] == [min(keep, r + 1) for r in range(blocks)]
        expected += [c for row in rows for c in row]
        assert np.array_equal(want.csr(0, h)["col_idx"], np.array([c for row in rows for c in row]))
        assert np.array_equal(layout.csr(0, h)["row_ptr"], want.csr(0, h)["row_ptr"])
    assert columns.dtype == torch.int32 and columns.tolist() == expected


def test_bad_selections_and_arguments_are_refused():
    q, k, v = qkv(1, 2, 2, 64, 8)
    top, _ = selection(1, 2, 64, 16, 2)
    with torch.no_grad():
        no_diagonal = top.clone()
        no_diagonal[0, 0, 3] = torch.tensor([1, 2])
        with pytest.raises(ValueError, match="diagonal"):
            st.attention_top_k(q, k, v, no_diagonal, 16, check=True)
        twice = top.clone()
        twice[0, 1, 2] = torch.tensor([2, 2])
        with pytest.raises(ValueError, match="twice|too few"):
            st.attention_top_k(q, k, v, twice, 16, check=True)
        later = top.clone()
        later[0, 0, 2] = torch.tensor([2, 3])
        with pytest.raises(ValueError, match="too few"):
            st.attention_top_k(q, k, v, later, 16, check=True)
        with pytest.raises(ValueError, match=r"\[1, 2, 4, 1 to 4\]"):
            st.attention_top_k(q, k, v, top[:, :, :3], 16)
        with pytest.raises(ValueError, match="integer tensor"):
            st.attention_top_k(q, k, v, top.float(), 16)
        with pytest.raises(ValueError, match="scale"):
            st.attention_top_k(q, k, v, top, 16, scale=float("nan"))
    with pytest.raises(ValueError, match="forward only"):
        st.attention_top_k(q.requires_grad_(), k, v, top, 16)
    with pytest.raises(ValueError, match="keep must be 1 to"):
        sparsa.learn.top_k_layout(64, 2, 16, 5)


def tied_scores(batch, heads, blocks, seed, device="cpu", nans=True):
    """Scores from few levels (ties everywhere), some -inf, -0.0 and, with `nans`, NaNs in column 0
    (at most one a row: with keep or more, top_k_blocks drops the row's own block and select_top_k
    does not, so keep 1 takes none)."""
    g = torch.Generator().manual_seed(seed)
    s = (torch.randint(-6, 7, (batch, heads, blocks, blocks), generator=g) * 0.25).float()
    special = torch.randint(0, 300, s.shape, generator=g)
    s[special == 0] = float("-inf")
    s[special == 1] = -0.0
    if nans:
        s[(special == 2) & (torch.arange(blocks) < 1)] = float("nan")   # column 0 only
    return s.to(device)


def test_select_top_k_on_the_cpu_is_top_k_blocks_and_attention_takes_it():
    q, k, v = qkv(2, 2, 1, 300, 8)
    scores = tied_scores(2, 2, 19, seed=3)
    chosen = st.select_top_k(scores, 4)
    assert isinstance(chosen, st.TopK) and chosen.shape == (2, 2, 19) and chosen.keep == 4 and chosen.columns is None
    assert torch.equal(chosen.top, sel.top_k_blocks(scores, 4))
    with torch.no_grad():
        assert torch.equal(st.attention_top_k(q, k, v, chosen, 16), st.attention_top_k(q, k, v, chosen.top, 16))
        with pytest.raises(ValueError, match=r"the selection is for \[batch, heads, blocks\] = \[2, 2, 19\]"):
            st.attention_top_k(q[:, :, :200], k[:, :, :200], v[:, :, :200], chosen, 16)
    with pytest.raises(ValueError, match="keep must be an integer from 1 to blocks = 19"):
        st.select_top_k(scores, 0)
    with pytest.raises(ValueError, match="keep must be an integer from 1 to blocks = 19"):
        st.select_top_k(scores, 20)
    with pytest.raises(ValueError, match=r"\[batch, heads, blocks, blocks\]"):
        st.select_top_k(scores[..., :5], 2)
    with pytest.raises(ValueError, match="or a TopK from select_top_k"):
        st.attention_top_k(q, k, v, [1, 2], 16)


needs_gpu = pytest.mark.skipif(cuda_skip_reason() is not None, reason=str(cuda_skip_reason()))


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("n,block,keep,heads,kv_heads", [(1000, 64, 5, 4, 2), (4096, 64, 17, 2, 2), (1000, 16, 9, 2, 1),
                                                         (16384, 64, 17, 2, 2)])
def test_on_the_gpu_the_device_columns_give_attentions_result(dtype, n, block, keep, heads, kv_heads):
    d = 64 if dtype != torch.float32 else 32
    q, k, v = qkv(3, heads, kv_heads, n, d, dtype, "cuda", seed=n + keep)
    for seed in (1, 2):   # two selections on one uploaded layout
        top, grid = selection(3, heads, n, block, keep, seed=seed, device="cuda")
        with torch.no_grad():
            got = st.attention_top_k(q, k, v, top, block, check=True)
        torch.cuda.synchronize()
        want = by_masks(q, k, v, grid.cuda(), block)
        err = float((got.float() - want.float()).abs().max())
        scale = float(want.float().abs().max())
        print(f"attention_top_k {dtype} n={n} block={block} keep={keep} seed={seed}: max |error| {err:.3g} of {scale:.3g}")
        assert err <= (1e-5 if dtype == torch.float32 else 2e-2) * scale


@needs_gpu
@pytest.mark.parametrize("blocks,keep", [(1, 1), (7, 1), (7, 3), (7, 7), (256, 17), (300, 66), (1024, 66), (4096, 257)])
def test_on_the_gpu_select_top_k_writes_the_columns_the_sort_gives(blocks, keep):
    """One kernel (engine/cuda/select/top_k_columns.hpp) against top_k_blocks and the reordering attention_top_k
    does to its result: the same columns, entry for entry, ties, -0.0, -inf and NaNs included."""
    batch, heads = (1, 1) if blocks == 4096 else (2, 3)
    scores = tied_scores(batch, heads, blocks, seed=blocks + keep, device="cuda", nans=keep > 1)
    chosen = st.select_top_k(scores, keep)
    assert chosen.top is None and chosen.columns.dtype == torch.int32 and chosen.columns.is_cuda
    want = st._top_k_columns(sel.top_k_blocks(scores, keep), st._top_k_gather(blocks, keep, scores.device))
    assert torch.equal(chosen.columns, want)
    assert torch.equal(st.select_top_k(scores.to(torch.bfloat16), keep).columns,
                       st._top_k_columns(sel.top_k_blocks(scores.to(torch.bfloat16), keep), st._top_k_gather(blocks, keep, scores.device)))


@needs_gpu
def test_on_the_gpu_attention_under_select_top_k_is_attention_under_the_grid_and_runs_in_a_graph():
    n, block, keep = 4096, 64, 9
    q, k, v = qkv(2, 4, 2, n, 64, torch.bfloat16, "cuda", seed=7)
    scores = tied_scores(2, 4, n // block, seed=8, device="cuda")
    with torch.no_grad():
        got = st.attention_top_k(q, k, v, st.select_top_k(scores, keep), block)
        want = st.attention_top_k(q, k, v, sel.top_k_blocks(scores, keep), block)
        assert torch.equal(got, want)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            st.attention_top_k(q, k, v, st.select_top_k(scores, keep), block)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = st.attention_top_k(q, k, v, st.select_top_k(scores, keep), block)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, want)
