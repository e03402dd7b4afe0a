"""sparsa.selectors (python/sparsa/selectors.py): the block scores against brute force, the top-k
rule, vertical-slash against a port of the C++ walk, and planted patterns that the selectors, the
trained pooled gate and the trained indexer must recover (the diagonal and untrained ones miss)."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import sparsa  # noqa: E402
from conftest import cuda_skip_reason  # noqa: E402

if not sparsa.learn_built:
    pytest.skip("sparsa.selectors is tested with sparsa.learn", allow_module_level=True)

import sparsa.selectors as sel  # noqa: E402


def random_qk(n=50, heads=2, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, heads, n, d, generator=g), torch.randn(1, heads, n, d, generator=g)


def block_of(i, block):
    return i // block


def test_blocks_per_row_matches_the_causal_share():
    assert sel.blocks_per_row(1.0, 16) == 16
    assert sel.blocks_per_row(1e-6, 16) == 1
    # n = 4,096 with 16-token blocks: 12.5% is 17 blocks a row, 6.25% is 8 (docs/learn.md, "At n = 4,096")
    assert sel.blocks_per_row(0.125, 256) == 17
    assert sel.blocks_per_row(0.0625, 256) == 8


@pytest.mark.parametrize("n, block", [(50, 16), (64, 16), (33, 32)])
def test_block_scores_match_brute_force(n, block):
    q, k = random_qk(n)
    blocks = (n + block - 1) // block
    qn, kn = q[0].double().numpy(), k[0].double().numpy()
    moba = sel.moba_scores(q, k, block)[0].double().numpy()
    quest = sel.quest_scores(q, k, block)[0].double().numpy()
    exact = sel.exact_scores(q, k, block, chunk_rows=block)[0].double().numpy()
    target = sel.pooled_target(q, k, block, causal=True, chunk_rows=block)[0].double().numpy()
    both = sel.pooled_targets(q, k, block, causal=True, chunk_rows=block, pools=("sum", "max"))
    assert torch.equal(both["sum"][0], torch.from_numpy(target).float())
    target_max = both["max"][0].double().numpy()
    for h in range(q.shape[1]):
        s = qn[h] @ kn[h].T / math.sqrt(q.shape[-1])
        p_all = np.exp(s - s.max(1, keepdims=True))
        p_all /= p_all.sum(1, keepdims=True)
        causal = np.where(np.arange(n)[None, :] <= np.arange(n)[:, None], s, -np.inf)
        p_causal = np.exp(causal - causal.max(1, keepdims=True))
        p_causal /= p_causal.sum(1, keepdims=True)
        for r in range(blocks):
            rows = slice(r * block, min(n, (r + 1) * block))
            for c in range(blocks):
                cols = slice(c * block, min(n, (c + 1) * block))
                assert moba[h, r, c] == pytest.approx(qn[h, rows].mean(0) @ kn[h, cols].mean(0), abs=1e-4)
                bound = max(sum(max(qe * kn[h, cols, e].min(), qe * kn[h, cols, e].max()) for e, qe in enumerate(qn[h, i]))
                            for i in range(rows.start, rows.stop))
                assert quest[h, r, c] == pytest.approx(bound, abs=1e-4)
                assert bound >= (qn[h, rows] @ kn[h, cols].T).max() - 1e-6   # a bound of every pair
                assert exact[h, r, c] == pytest.approx(p_all[rows, cols].sum(1).max(), abs=1e-5)
                assert target[h, r, c] == pytest.approx(p_causal[rows, cols].sum() / (rows.stop - rows.start), abs=1e-5)
            largest = [p_causal[rows, c * block:min(n, (c + 1) * block)].sum(1).max() for c in range(blocks)]
            assert target_max[h, r] == pytest.approx(np.array(largest) / sum(largest), abs=1e-5)
        assert np.allclose(target[h].sum(1), 1.0)
    with pytest.raises(ValueError, match="pools must be of sum, max"):
        sel.pooled_targets(q, k, block, pools=("mean",))


def test_top_k_keeps_the_diagonal_then_the_best_earlier_blocks_ties_to_the_lower():
    g = torch.Generator().manual_seed(3)
    scores = torch.randn(2, 3, 9, 9, generator=g)
    scores[0, 0, 8] = 1.0    # a row of ties: the lowest blocks win
    grid = sel.top_k_grid(scores, keep=4)
    for b in range(2):
        for h in range(3):
            for r in range(9):
                kept = set(torch.nonzero(grid[b, h, r]).flatten().tolist())
                assert r in kept and len(kept) == min(4, r + 1) and max(kept) <= r
                others = sorted(range(r), key=lambda c: (-float(scores[b, h, r, c]), c))[:3]
                assert kept == {r, *others}
    assert set(torch.nonzero(grid[0, 0, 8]).flatten().tolist()) == {0, 1, 2, 8}
    both = sel.top_k_grid(scores, keep=3, causal=False)
    assert int(both[0, 0, 0].sum()) == 3
    # the grid's masks are kept between calls: the scores given are never written
    before = scores.clone()
    sel.top_k_blocks(scores, keep=4)
    assert torch.equal(scores, before)


def test_the_gates_float32_maps_follow_its_parameters():
    gate = sel.PooledGate(1, 2, 8, width=4, block=16, seed=5)
    q, k = (torch.randn(1, 2, 64, 8, generator=torch.Generator().manual_seed(s)) for s in (1, 2))

    def explicit():
        return gate.scores(0, sel._block_means(q, 16), sel._block_keys(k, 16, "mean"), gate.wq[0].float(), gate.wk[0].float())
    assert torch.equal(gate.block_scores(0, q, k), explicit())
    gate.wq.mul_(2.0)                        # changed in place
    assert torch.equal(gate.block_scores(0, q, k), explicit())
    gate.wk = gate.wk + 1.0                  # replaced, as train() does
    assert torch.equal(gate.block_scores(0, q, k), explicit())


def planted(inputs, seed, n=128, block=16, d=8, noise=0.3):
    """q, k [inputs, 1, n, d] where query block r >= 1 looks for key block r // 2: the keys of block c
    carry direction c, the queries of block r direction r // 2 (one orthonormal basis, times 3, for
    every seed; the seed draws the noise)."""
    blocks = n // block
    basis = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(1234)))[0] * 3.0
    g = torch.Generator().manual_seed(seed)
    key_dir = torch.stack([basis[c % d] for c in range(blocks)])
    query_dir = torch.stack([basis[(r // 2) % d] for r in range(blocks)])
    k = key_dir.repeat_interleave(block, 0)[None, None] + noise * torch.randn(inputs, 1, n, d, generator=g)
    q = query_dir.repeat_interleave(block, 0)[None, None] + noise * torch.randn(inputs, 1, n, d, generator=g)
    return q, k


def test_every_selector_recovers_a_planted_pattern_and_the_diagonal_does_not():
    block, blocks = 16, 8
    q, k = planted(1, seed=11)
    want = torch.zeros(blocks, blocks, dtype=torch.bool)
    for r in range(blocks):
        want[r, r] = want[r, r // 2] = True
    for name, scores in (("moba", sel.moba_scores(q, k, block)), ("quest", sel.quest_scores(q, k, block)),
                         ("exact", sel.exact_scores(q, k, block))):
        assert torch.equal(sel.top_k_grid(scores, keep=2)[0, 0], want), name
    # the pooled gate, untrained, does not find it; trained on planted inputs, it does on new ones
    examples = lambda qq, kk: (sel._block_means(qq, block)[:, None].double(), sel._block_means(kk, block)[:, None].double(),  # noqa: E731
                               sel.pooled_target(qq, kk, block)[:, None].double())
    gate = sel.PooledGate(1, 1, 8, width=8, block=block, seed=5)
    fresh_q, fresh_k = planted(1, seed=99)
    untrained = gate.select(0, fresh_q, fresh_k, 2)[0, 0]
    assert not torch.equal(untrained, want)
    r = gate.train(examples(*planted(16, seed=1)), examples(*planted(4, seed=2)), steps=300, lr=0.05, eval_every=10)
    assert r["best_validation"] < 0.5 * r["first_validation"]
    assert torch.equal(gate.select(0, fresh_q, fresh_k, 2)[0, 0], want)
    diagonal = torch.eye(blocks, dtype=torch.bool)
    assert int((diagonal & want).sum()) == blocks and int((want & ~diagonal).sum()) == blocks - 1   # what the diagonal misses


def test_the_gate_reading_mean_max_and_min_keys_recovers_the_planted_pattern_too():
    block, blocks = 16, 8
    examples = lambda qq, kk: (sel._block_means(qq, block)[:, None].double(),  # noqa: E731
                               sel._block_keys(kk, block, "mean+max+min")[:, None].double(),
                               sel.pooled_target(qq, kk, block)[:, None].double())
    gate = sel.PooledGate(1, 1, 8, width=8, block=block, seed=5, key_pool="mean+max+min")
    assert gate.wk.shape == (1, 1, 24, 8)
    gate.train(examples(*planted(16, seed=1)), examples(*planted(4, seed=2)), steps=300, lr=0.05, eval_every=10)
    want = torch.zeros(blocks, blocks, dtype=torch.bool)
    for r in range(blocks):
        want[r, r] = want[r, r // 2] = True
    assert torch.equal(gate.select(0, *planted(1, seed=99), 2)[0, 0], want)
    with pytest.raises(ValueError, match="key_pool must be one of"):
        sel.PooledGate(1, 1, 8, key_pool="max")


@pytest.mark.skipif(cuda_skip_reason() is not None, reason=str(cuda_skip_reason()))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_on_the_gpu_one_kernel_pools_as_torch_does(dtype):
    """_pool_cuda (engine/cuda/select/block_pool.hpp) against the torch path it replaces, on a strided view
    (heads and rows of a [batch, n, heads, d] projection) with a short last block: the bounds bit for
    bit, the means up to float32's rounding of another summation order; and the gate's scores."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 1000, 4, 64, generator=g).to(device="cuda", dtype=dtype).transpose(1, 2)   # [2, 4, 1000, 64], not contiguous
    assert not x.is_contiguous() and sel._pool_cuda(x, 64, True) is not None
    for block in (16, 64):
        xb, counts = sel._blocked(x, block)
        means = xb.sum(3, dtype=torch.float32) / counts[:, None]
        hi, lo = sel._block_bounds(x, block)
        got = sel._pool_cuda(x, block, True)
        assert got.shape == (2, 4, -(-1000 // block), 192) and got.dtype == torch.float32
        assert torch.allclose(got[..., :64], means, rtol=1e-5, atol=1e-6)
        assert torch.equal(got[..., 64:128], hi) and torch.equal(got[..., 128:], lo)
        assert torch.equal(sel._block_means(x, block), sel._pool_cuda(x, block, False))
        assert torch.equal(sel._block_keys(x, block, "mean+max+min"), got)
    gate = sel.PooledGate(1, 4, 64, 32, 64, True, 1, "cuda", "mean+max+min")
    q = torch.randn(2, 4, 1000, 64, generator=g).to(device="cuda", dtype=dtype)
    with torch.no_grad():
        scores = gate.block_scores(0, q, x)
        a, b = gate._maps32(0)
        want = gate.scores(0, sel._blocked(q, 64)[0].sum(3, dtype=torch.float32) / sel._blocked(q, 64)[1][:, None],
                           torch.cat([sel._blocked(x, 64)[0].sum(3, dtype=torch.float32) / sel._blocked(x, 64)[1][:, None],
                                      *sel._block_bounds(x, 64)], -1), a, b)
    finite = torch.isfinite(want)
    assert torch.equal(finite, torch.isfinite(scores)) and torch.allclose(scores[finite], want[finite], rtol=1e-4, atol=1e-4)
    with torch.enable_grad():   # a gradient wanted: the torch path, which has one
        assert sel._pool_cuda(x.float().requires_grad_(), 64, False) is None


def test_a_gate_with_row_queries_pools_each_blocks_row_scores_by_log_sum_exp():
    n, heads, d, block, width = 70, 2, 8, 16, 4
    q, k = random_qk(n=n, heads=heads, d=d, seed=5)
    gate = sel.PooledGate(1, heads, d, width, block, True, 3, "cpu", "mean+max+min", "rows")
    with torch.no_grad():
        got = gate.block_scores(0, q, k).double()
        wq, wk = gate._maps32(0)
        b = sel._block_keys(k, block, "mean+max+min").float() @ wk   # [1, heads, blocks, width]
        blocks = -(-n // block)
        for h in range(heads):
            a = q[0, h].float() @ wq[h]   # [n, width]
            for r in range(blocks):
                rows = a[r * block:min(n, (r + 1) * block)]
                for c in range(blocks):
                    want = torch.logsumexp(rows @ b[0, h, c] / math.sqrt(width), 0) if c <= r else -math.inf
                    assert float(got[0, h, r, c]) == pytest.approx(float(want), abs=1e-4)
    # it trains (its examples are the rows), and its KL falls
    tq, tk = random_qk(n=n, heads=heads, d=d, seed=6)
    examples = lambda q, k: (q[:, None].double(), sel._block_keys(k, block, "mean+max+min")[:, None].double(),   # noqa: E731
                             sel.pooled_target(q, k, block)[:, None].double())
    r = gate.train(examples(tq, tk), examples(q, k), steps=30, eval_every=5)
    assert r["last_train"] < r["first_train"] and r["best_validation"] <= r["first_validation"]
    with pytest.raises(ValueError, match="query_pool must be one of mean, rows"):
        sel.PooledGate(1, 1, 8, query_pool="max")


def test_the_gates_top_k_on_the_cpu_is_select_top_k_of_its_scores():
    import sparsa.torch as st
    q, k = random_qk(n=300, heads=2, d=8, seed=3)
    for pool in sel.KEY_POOLS:
        gate = sel.PooledGate(1, 2, 8, 4, 16, True, 2, "cpu", pool)
        with torch.no_grad():
            chosen = gate.top_k(0, q, k, 5)
        assert isinstance(chosen, st.TopK) and torch.equal(chosen.top, sel.top_k_blocks(gate.block_scores(0, q, k), 5))
    with pytest.raises(ValueError, match="a top-k layout is causal"):
        sel.PooledGate(1, 2, 8, 4, 16, False, 2, "cpu").top_k(0, q, k, 5)


def _rows_of(columns, grids, blocks, keep):
    """A TopK's columns as one list of kept blocks per (grid, row)."""
    flat, out, i = columns.tolist(), [], 0
    for _ in range(grids):
        for r in range(blocks):
            out.append(flat[i:i + min(keep, r + 1)])
            i += min(keep, r + 1)
    return out


@pytest.mark.parametrize("query", sel.QUERY_POOLS)
def test_the_gates_scores_stay_float32_inside_a_models_autocast(query):
    """A model's bfloat16 autocast region (sparsa.lab's on CUDA) must not turn the gate's products
    into bfloat16: its scores would round to 8 bits and tie at the cut, and the CUDA kernels read
    float32 (a bfloat16 tensor there read past its end). On the CPU the same autocast rule applies."""
    g = torch.Generator().manual_seed(4)
    q, k = (torch.randn(2, 3, 100, 16, generator=g) for _ in range(2))
    gate = sel.PooledGate(1, 3, 16, 8, 16, True, 2, "cpu", "mean+max+min", query)
    plain = gate.block_scores(0, q, k)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = gate.block_scores(0, q, k)
        chosen = gate.top_k(0, q, k, 3)
    assert inside.dtype == torch.float32 and torch.equal(inside, plain)
    assert torch.equal(chosen.top, sel.top_k_blocks(plain, 3))


@pytest.mark.skipif(cuda_skip_reason() is not None, reason=str(cuda_skip_reason()))
@pytest.mark.parametrize("pool,query,autocast", [(p, qp, a) for p in sel.KEY_POOLS for qp in sel.QUERY_POOLS for a in (False, True)])
def test_on_the_gpu_the_gates_fused_top_k_keeps_its_scores_blocks(pool, query, autocast):
    """PooledGate.top_k on CUDA (the pooling kernel with the maps, then a matmul and the top-k
    kernel, or each row's a_i . b scored and pooled by log-sum-exp in the top-k kernel) against
    select_top_k of block_scores: the same kept blocks but where two blocks' scores tie at the cut
    to float32's rounding (other summation orders), also inside a model's bfloat16 autocast region
    (sparsa.ruler's teacher runs there); and the same inside a CUDA graph."""
    import contextlib
    import sparsa.torch as st
    g = torch.Generator().manual_seed(9)
    batch, heads, n, d, block, keep = 2, 4, 4000, 64, 64, 9
    q = torch.randn(batch, n, heads, d, generator=g).to("cuda", torch.bfloat16).transpose(1, 2)   # strided, as a projection's view
    k = torch.randn(batch, heads, n, d, generator=g).to("cuda", torch.bfloat16)
    gate = sel.PooledGate(1, heads, d, 32, block, True, 3, "cuda", pool, query)
    blocks = -(-n // block)
    with torch.no_grad():
        with torch.autocast("cuda", dtype=torch.bfloat16) if autocast else contextlib.nullcontext():
            fused = gate.top_k(0, q, k, keep)
        scores = gate.block_scores(0, q, k)
        plain = st.select_top_k(scores, keep)
    assert fused.columns is not None and fused.columns.shape == plain.columns.shape
    got, want = _rows_of(fused.columns, batch * heads, blocks, keep), _rows_of(plain.columns, batch * heads, blocks, keep)
    s = scores.reshape(batch * heads, blocks, blocks).cpu()
    differ = [i for i in range(len(got)) if got[i] != want[i]]
    assert len(differ) <= len(got) // 100, f"{len(differ)} of {len(got)} rows differ"
    for i in differ:
        row = s[i // blocks, i % blocks]
        odd = sorted(set(got[i]) ^ set(want[i]))
        spread = float(row[odd].max() - row[odd].min())
        assert spread <= 1e-4 * max(1.0, float(row[odd].abs().max())), (i, odd, row[odd])
    with torch.no_grad():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            gate.top_k(0, q, k, keep)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = gate.top_k(0, q, k, keep)
        graph.replay()
        torch.cuda.synchronize()
    assert torch.equal(captured.columns, fused.columns)


def test_block_keys_bounds_ignore_the_padding_of_a_short_last_block():
    k = -torch.ones(1, 1, 20, 4) - torch.arange(20.0)[None, None, :, None]   # every key negative: padding zeros would win max
    feats = sel._block_keys(k, 16, "mean+max+min")
    assert feats.shape == (1, 1, 2, 12)
    assert torch.allclose(feats[0, 0, 1, 4:8], torch.full((4,), -17.0))   # the largest of keys 16..19
    assert torch.allclose(feats[0, 0, 1, 8:], torch.full((4,), -20.0))


def test_the_pooled_gate_keeps_a_stopped_heads_best_parameters():
    block = 16
    q, k = planted(8, seed=3)
    ex = (sel._block_means(q, block)[:, None].double(), sel._block_means(k, block)[:, None].double(),
          sel.pooled_target(q, k, block)[:, None].double())
    gate = sel.PooledGate(1, 1, 8, width=8, block=block, seed=2)
    r = gate.train(ex, ex, steps=50, lr=0.05, eval_every=5, patience=2)
    assert r["best_validation"] == pytest.approx(float(gate._kl(gate.wq, gate.wk, *ex).mean()), rel=1e-9)


def vertical_slash_walk(q, k, block, keep, last_queries):
    """learn/selectors.cpp's select_vertical_slash, causal, in numpy loops: one ranking of columns and
    diagonals walked per row. Returns bool [heads, blocks, blocks]."""
    heads, n, d = q.shape
    m = min(last_queries, n)
    blocks = (n + block - 1) // block
    out = np.zeros((heads, blocks, blocks), dtype=bool)
    for h in range(heads):
        vertical, slash = np.zeros(n), np.zeros(n)
        for i in range(n - m, n):
            s = q[h, i] @ k[h, :i + 1].T / math.sqrt(d)
            p = np.exp(s - s.max())
            p /= p.sum()
            vertical[:i + 1] += p
            slash[:i + 1] += p[::-1]   # offset i - j for j = i .. 0
        score = np.zeros(blocks + 2 * blocks - 1)
        for j in range(n):
            score[j // block] += vertical[j]
        for o in range(n):
            for D in (o // block, o // block + 1):
                w = (block - abs(o - D * block)) / block
                if w > 0 and -blocks < D < blocks:
                    score[blocks + D + blocks - 1] += w * slash[o]
        order = sorted(range(len(score)), key=lambda a: -score[a])   # stable: ties keep index order
        for r in range(blocks):
            out[h, r, r] = True
            taken = 1
            for cand in order:
                if taken >= min(keep, r + 1):
                    break
                c = cand if cand < blocks else r - (cand - blocks - (blocks - 1))
                if c < 0 or c >= blocks or c > r or out[h, r, c]:
                    continue
                out[h, r, c] = True
                taken += 1
    return out


@pytest.mark.parametrize("n, block, keep, last", [(96, 16, 3, 20), (100, 16, 4, 64), (64, 32, 2, 10)])
def test_vertical_slash_keeps_the_blocks_of_the_cpp_walk(n, block, keep, last):
    q, k = random_qk(n, heads=3, d=8, seed=n + keep)
    grid = sel.top_k_grid(sel.vertical_slash_scores(q, k, block, last_queries=last), keep)[0].numpy()
    want = vertical_slash_walk(q[0].double().numpy(), k[0].double().numpy(), block, keep, last)
    assert np.array_equal(grid, want)


def test_the_indexer_recovers_a_planted_pattern():
    """Query block r looks for key block r // 2 (planted): the trained indexer keeps it, the untrained one does not."""
    block, blocks = 16, 8
    want = torch.zeros(blocks, blocks, dtype=torch.bool)
    for r in range(blocks):
        want[r, r] = want[r, r // 2] = True
    ex = lambda seed, count: [[sel.Indexer.examples(*planted(count, seed=seed), block, rows=64, seed=seed)]]  # noqa: E731
    ix = sel.Indexer(1, 1, 8, index_heads=2, width=8, block=block, seed=3)
    fresh = planted(1, seed=99)
    assert not torch.equal(ix.select(0, *fresh, 2)[0, 0], want)
    r = ix.train(ex(1, 16), ex(2, 4), steps=300, lr=0.05, eval_every=10, patience=10)
    assert r["best_validation"] < 0.5 * r["first_validation"]
    grid = ix.select(0, *fresh, 2)
    assert grid.shape == (1, 1, blocks, blocks) and torch.equal(grid[0, 0], want)


# FAVOR+: sparsa.selectors.favor_attention against the CPU engine's favor heads (engine/content/favor.cpp)


def favor_inputs(n, d, seed, k_norm=1.0):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal((2, 2, n, d)).astype(np.float32) for _ in range(3))
    return q, k * np.float32(k_norm), v


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("n, d, m, seed, scale, chunk, k_norm", [
    (200, 16, 64, 3, None, 64, 1.0),    # chunks of 64 over n = 200: a short last chunk
    (130, 8, 20, 0, -0.3, 37, 1.0),     # m = 20 features of d = 8: a truncated orthogonal block; a negative scale
    (150, 16, 64, 1, None, 256, 12.0),  # keys of norm 48: features below exp(-87) stored as 0, rows with D = 0
])
def test_favor_attention_matches_the_engines_favor_heads(causal, n, d, m, seed, scale, chunk, k_norm):
    script = f"heads 2\n{'causal' if causal else ''}\nattend = favor(features = {m}, seed = {seed})"
    masks = sparsa.compile(script, n=n)
    q, k, v = favor_inputs(n, d, seed + n, k_norm)
    scale = None if scale is None else float(np.float32(scale))   # the engine takes a float32 scale
    want, lse = sparsa.attention(q, k, v, masks, scale=scale or 0.0)
    assert np.isnan(lse).all()   # a favor head has no softmax normaliser
    omega = np.stack([sparsa.favor_features(seed, 0, h, m, d) for h in range(2)])
    got = sel.favor_attention(*(torch.from_numpy(x) for x in (q, k, v)), torch.from_numpy(omega), causal=causal, scale=scale,
                              chunk=chunk)
    assert got.dtype == torch.float32 and got.shape == q.shape
    got = got.numpy()
    # measured: at most 3e-6 of max |o| in these cases (float32 products summed in another order)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    zero = lambda o: (o == 0).all(-1)   # noqa: E731  (rows whose denominator is 0: o = 0 in both)
    assert np.array_equal(zero(got), zero(want))
    if k_norm > 1 and causal:
        assert zero(want).any()   # the case reaches the engine's D = 0 rows


def test_favor_attention_keeps_the_inputs_dtype_and_checks_its_arguments():
    q, k, v = (torch.from_numpy(x) for x in favor_inputs(70, 8, 5))
    omega = torch.from_numpy(np.stack([sparsa.favor_features(0, 0, h, 16, 8) for h in range(2)]))
    o32 = sel.favor_attention(q, k, v, omega)
    assert torch.equal(sel.favor_attention(q.double(), k.double(), v.double(), omega).float(), o32)
    half = sel.favor_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), omega)
    assert half.dtype == torch.bfloat16
    assert (half.float() - o32).abs().max() <= 0.1 * o32.abs().max()
    with pytest.raises(ValueError, match=r"omega is \(2, 16, 4\) but q has 2 heads of d = 8"):
        sel.favor_attention(q, k, v, omega[..., :4])
    with pytest.raises(ValueError, match="all three"):
        sel.favor_attention(q, k[:, :1], v, omega)


def test_favor_features_are_the_scripts_orthogonal_rows():
    omega = sparsa.favor_features(7, 2, 1, 20, 8)
    assert omega.shape == (20, 8) and omega.dtype == np.float32
    assert np.array_equal(omega, sparsa.favor_features(7, 2, 1, 20, 8, draw=0))
    assert not np.array_equal(omega, sparsa.favor_features(7, 2, 0, 20, 8))           # another head
    assert not np.array_equal(omega, sparsa.favor_features(7, 2, 1, 20, 8, draw=1))   # another draw
    for first in (0, 8, 16):   # blocks of d rows, orthogonal within a block
        rows = omega[first:first + 8].astype(np.float64)
        gram = rows @ rows.T
        assert np.abs(gram - np.diag(np.diag(gram))).max() <= 1e-5 * np.diag(gram).max()
    for arguments, name in (((0, 0, 0, 0, 8), "m = 0"), ((0, 0, 0, 4, 0), "d = 0"), ((-1, 0, 0, 4, 8), "seed = -1")):
        with pytest.raises(ValueError, match=name):
            sparsa.favor_features(*arguments)
    with pytest.raises(ValueError, match="draw = -1"):
        sparsa.favor_features(0, 0, 0, 4, 8, draw=-1)
