"""sparsa.ruler (python/sparsa/ruler.py): the block scores against brute force, the top-k rule, the
pooled gate on a planted pattern it must recover, and the evaluation end to end on a tiny teacher
(CPU torch here; the same code runs on the GPU machine)."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import sparsa  # noqa: E402

if not sparsa.learn_built:
    pytest.skip("sparsa.ruler needs sparsa.learn", allow_module_level=True)

import sparsa.lab as lab  # noqa: E402
import sparsa.ruler as ruler  # noqa: E402


def random_qk(n=50, heads=2, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, heads, n, d, generator=g), torch.randn(1, heads, n, d, generator=g)


def block_of(i, block):
    return i // block


def test_blocks_per_row_matches_the_causal_share():
    assert ruler.blocks_per_row(1.0, 16) == 16
    assert ruler.blocks_per_row(1e-6, 16) == 1
    # n = 4,096 with 16-token blocks: 12.5% is 17 blocks a row, 6.25% is 8 (docs/learn.md, "At n = 4,096")
    assert ruler.blocks_per_row(0.125, 256) == 17
    assert ruler.blocks_per_row(0.0625, 256) == 8


@pytest.mark.parametrize("n, block", [(50, 16), (64, 16), (33, 32)])
def test_block_scores_match_brute_force(n, block):
    q, k = random_qk(n)
    blocks = (n + block - 1) // block
    qn, kn = q[0].double().numpy(), k[0].double().numpy()
    moba = ruler.moba_scores(q, k, block)[0].double().numpy()
    quest = ruler.quest_scores(q, k, block)[0].double().numpy()
    exact = ruler.exact_scores(q, k, block, chunk_rows=block)[0].double().numpy()
    target = ruler.pooled_target(q, k, block, causal=True, chunk_rows=block)[0].double().numpy()
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
        assert np.allclose(target[h].sum(1), 1.0)


def test_top_k_keeps_the_diagonal_then_the_best_earlier_blocks_ties_to_the_lower():
    g = torch.Generator().manual_seed(3)
    scores = torch.randn(2, 3, 9, 9, generator=g)
    scores[0, 0, 8] = 1.0    # a row of ties: the lowest blocks win
    grid = ruler.top_k_grid(scores, keep=4)
    for b in range(2):
        for h in range(3):
            for r in range(9):
                kept = set(torch.nonzero(grid[b, h, r]).flatten().tolist())
                assert r in kept and len(kept) == min(4, r + 1) and max(kept) <= r
                others = sorted(range(r), key=lambda c: (-float(scores[b, h, r, c]), c))[:3]
                assert kept == {r, *others}
    assert set(torch.nonzero(grid[0, 0, 8]).flatten().tolist()) == {0, 1, 2, 8}
    both = ruler.top_k_grid(scores, keep=3, causal=False)
    assert int(both[0, 0, 0].sum()) == 3


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
    for name, scores in (("moba", ruler.moba_scores(q, k, block)), ("quest", ruler.quest_scores(q, k, block)),
                         ("exact", ruler.exact_scores(q, k, block))):
        assert torch.equal(ruler.top_k_grid(scores, keep=2)[0, 0], want), name
    # the pooled gate, untrained, does not find it; trained on planted inputs, it does on new ones
    examples = lambda qq, kk: (ruler._block_means(qq, block)[:, None].double(), ruler._block_means(kk, block)[:, None].double(),  # noqa: E731
                               ruler.pooled_target(qq, kk, block)[:, None].double())
    gate = ruler.PooledGate(1, 1, 8, width=8, block=block, seed=5)
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
    examples = lambda qq, kk: (ruler._block_means(qq, block)[:, None].double(),  # noqa: E731
                               ruler._block_keys(kk, block, "mean+max+min")[:, None].double(),
                               ruler.pooled_target(qq, kk, block)[:, None].double())
    gate = ruler.PooledGate(1, 1, 8, width=8, block=block, seed=5, key_pool="mean+max+min")
    assert gate.wk.shape == (1, 1, 24, 8)
    gate.train(examples(*planted(16, seed=1)), examples(*planted(4, seed=2)), steps=300, lr=0.05, eval_every=10)
    want = torch.zeros(blocks, blocks, dtype=torch.bool)
    for r in range(blocks):
        want[r, r] = want[r, r // 2] = True
    assert torch.equal(gate.select(0, *planted(1, seed=99), 2)[0, 0], want)
    with pytest.raises(ValueError, match="key_pool must be one of"):
        ruler.PooledGate(1, 1, 8, key_pool="max")


def test_block_keys_bounds_ignore_the_padding_of_a_short_last_block():
    k = -torch.ones(1, 1, 20, 4) - torch.arange(20.0)[None, None, :, None]   # every key negative: padding zeros would win max
    feats = ruler._block_keys(k, 16, "mean+max+min")
    assert feats.shape == (1, 1, 2, 12)
    assert torch.allclose(feats[0, 0, 1, 4:8], torch.full((4,), -17.0))   # the largest of keys 16..19
    assert torch.allclose(feats[0, 0, 1, 8:], torch.full((4,), -20.0))


def test_the_pooled_gate_keeps_a_stopped_heads_best_parameters():
    block = 16
    q, k = planted(8, seed=3)
    ex = (ruler._block_means(q, block)[:, None].double(), ruler._block_means(k, block)[:, None].double(),
          ruler.pooled_target(q, k, block)[:, None].double())
    gate = ruler.PooledGate(1, 1, 8, width=8, block=block, seed=2)
    r = gate.train(ex, ex, steps=50, lr=0.05, eval_every=5, patience=2)
    assert r["best_validation"] == pytest.approx(float(gate._kl(gate.wq, gate.wk, *ex).mean()), rel=1e-9)


TINY = dict(task="ruler", n=128, needles=2, pairs=4, queries=4, d=16, heads=2, kv_heads=1, layers=1, mlp=16)


def test_identity_gate_keeping_every_block_is_the_dense_teacher():
    t = lab.LabTeacher.new(**TINY, seed=2)
    runner = ruler._Runner(t, 128, 16, "float32")
    data = lab.task_batch(t.task, "test", 0, 3)
    tokens = torch.from_numpy(data["tokens"])
    dense, density = runner.logits(tokens, None)
    everything = ruler._Method("identity gate", 1.0, "", select=lambda l, q, k: ruler.top_k_grid(ruler.exact_scores(q, k, 16), 8))
    full, kept = runner.logits(tokens, everything)
    assert kept == pytest.approx(1.0) and density == 1.0
    assert torch.allclose(dense, full, atol=1e-4)
    diagonal = ruler._Method("diagonal", 1 / 8, "", select=lambda l, q, k: torch.eye(8, dtype=torch.bool).expand(q.shape[0], q.shape[1], 8, 8))
    own, kept = runner.logits(tokens, diagonal)
    assert kept == pytest.approx(8 / 36)
    assert not torch.allclose(dense, own, atol=1e-3)


def test_the_evaluation_end_to_end_on_a_tiny_teacher(tmp_path):
    teachers = [lab.LabTeacher.new(**TINY, seed=s) for s in (2, 3)]
    report = ruler.evaluate(teachers, n=128, labels=["a", "b"], progress=None, densities=[0.25], block=16, test_inputs=6,
                            validation_inputs=3, batch=4, pooled_gate_inputs=4, pooled_gate_steps=5, indexer_inputs=4, indexer_steps=3,
                            indexer_rows=16, time_repeats=1)
    names = [r["method"] for r in report["evals"][0]["rows"]]
    assert names == ["dense", "diagonal", "identity gate", "best fixed", "moba", "quest", "vertical-slash", "duo", "window",
                     "longformer", "bigbird", "pooled gate", "indexer"]
    for e in report["evals"]:
        assert e["rows"][0]["answers"] > 0 and all(r["answers"] == e["rows"][0]["answers"] for r in e["rows"])
        for r in e["rows"][2:]:
            assert r["density"] <= 0.25 + 0.2   # blocks_per_row's nearest share, cut to causal
        assert "dense_ms" in e["timing"] and "quest 0.25" in e["timing"]["methods"]
    rows = ruler.report_write(report, str(tmp_path / "out"), command="test")
    # several gates: the one kept is named, each with its validation accuracy
    one = ruler.evaluate_teacher(teachers[0], 128, densities=[0.25], block=16, test_inputs=2, validation_inputs=3, batch=4, families=False,
                                 pooled_gate_inputs=4, pooled_gate_steps=3, pooled_gate_configs=[(8, "mean"), (8, "mean+max+min")], indexer_inputs=0,
                                 time_repeats=1, progress=None)
    assert sum("validation accuracy at 25.00%" in note for note in one["notes"]) == 2
    assert any("(chosen on validation)" in note for note in one["notes"])
    # a density that affords a dense head: DuoAttention ranks the heads on validation
    wide = ruler.evaluate_teacher(teachers[0], 128, densities=[0.8], block=16, test_inputs=2, validation_inputs=3, batch=4,
                                  families=False, pooled_gate_inputs=0, indexer_inputs=0, time_repeats=1, progress=None)
    duo = [r for r in wide["rows"] if r["method"] == "duo"][0]
    assert "1 of 2 heads dense" in duo["detail"] and "each head alone streaming" in duo["detail"]
    text = (tmp_path / "out" / "report.md").read_text()
    assert "| pooled gate | 25.00% |" in text and " ± " in text and "by the depth of the asked needle" in text
    assert len(rows[0]["needle_by_depth"]) == 10
    assert len(rows) == 13 and (tmp_path / "out" / "report.json").exists()
    pytest.importorskip("matplotlib")
    for picture in ("depth.png", "cost.png"):
        assert (tmp_path / "out" / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Pictures: depth.png, cost.png" in text


def test_the_cost_at_a_models_shape_is_timed_on_the_cpu_too():
    t = ruler.time_at_shape(256, heads=2, head_dim=16, block=16, density=0.25, device="cpu", repeats=1)
    assert t["keep"] == ruler.blocks_per_row(0.25, 16) and t["shape"] == [1, 2, 256, 16]
    assert all(t[key] > 0 for key in ("select_ms", "masks_ms", "sparse_ms", "dense_ms"))
    assert "cudnn_ms" not in t


def test_the_fixed_families_fit_the_density_after_the_causal_cut():
    families = sparsa.learn.fixed_families(1024, 2, 0.125, 16, True)
    assert [f[0] for f in families] == ["window", "longformer", "bigbird"]
    for name, detail, masks, density in families:
        assert 0 < density <= 0.125 + 1e-9 and "within the density" in detail
        assert masks.heads == 2
    with pytest.raises(ValueError, match="target density"):
        sparsa.learn.fixed_families(1024, 2, 0.0)


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
    grid = ruler.top_k_grid(ruler.vertical_slash_scores(q, k, block, last_queries=last), keep)[0].numpy()
    want = vertical_slash_walk(q[0].double().numpy(), k[0].double().numpy(), block, keep, last)
    assert np.array_equal(grid, want)


def test_duo_masks_give_the_budgets_dense_heads_and_stream_the_rest():
    budget, sets = sparsa.learn.duo_masks(1024, 2, 4, 0.30, [True, False, False, False, False, False, False, False], 16, True)
    assert budget["retrieval"] >= 1 and len(sets) == 2
    causal = sparsa.learn.causal_masks(1024, 4, 16)
    assert sets[0].stats(0, 0).kept_blocks == causal.stats(0, 0).kept_blocks            # the retrieval head: dense causal
    assert sets[0].stats(0, 1).kept_blocks < causal.stats(0, 1).kept_blocks             # a streaming head
    none, _ = sparsa.learn.duo_masks(1024, 2, 2, 0.125)
    assert none["retrieval"] == 0   # with 4 heads in all, one dense head is over 12.5%
    with pytest.raises(ValueError, match="retrieval has 3 entries"):
        sparsa.learn.duo_masks(1024, 2, 2, 0.125, [True, False, True])


def test_the_indexer_recovers_a_planted_pattern():
    """Query block r looks for key block r // 2 (planted): the trained indexer keeps it, the untrained one does not."""
    block, blocks = 16, 8
    want = torch.zeros(blocks, blocks, dtype=torch.bool)
    for r in range(blocks):
        want[r, r] = want[r, r // 2] = True
    ex = lambda seed, count: [[ruler.Indexer.examples(*planted(count, seed=seed), block, rows=64, seed=seed)]]  # noqa: E731
    ix = ruler.Indexer(1, 1, 8, index_heads=2, width=8, block=block, seed=3)
    fresh = planted(1, seed=99)
    assert not torch.equal(ix.select(0, *fresh, 2)[0, 0], want)
    r = ix.train(ex(1, 16), ex(2, 4), steps=300, lr=0.05, eval_every=10, patience=10)
    assert r["best_validation"] < 0.5 * r["first_validation"]
    grid = ix.select(0, *fresh, 2)
    assert grid.shape == (1, 1, blocks, blocks) and torch.equal(grid[0, 0], want)
