"""sparsa.ruler (python/sparsa/ruler.py): the identity gate keeping every block is the dense teacher,
the fixed families and DuoAttention's masks, the cost at a model's shape, and the evaluation end to
end on tiny teachers with its report and pictures (CPU torch here; the same code runs on the GPU
machine). The selectors themselves: test_selectors.py."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import sparsa  # noqa: E402

if not sparsa.learn_built:
    pytest.skip("sparsa.ruler needs sparsa.learn", allow_module_level=True)

import sparsa.lab as lab  # noqa: E402
import sparsa.ruler as ruler  # noqa: E402
import sparsa.ruler_families as families  # noqa: E402

TINY = dict(task="ruler", n=128, needles=2, pairs=4, queries=4, d=16, heads=2, kv_heads=1, layers=1, mlp=16)


def test_identity_gate_keeping_every_block_is_the_dense_teacher():
    t = lab.LabTeacher.new(**TINY, seed=2)
    runner = ruler._Runner(t, 128, 16, "float32")
    data = lab.task_batch(t.task, "test", 0, 3)
    tokens = torch.from_numpy(data["tokens"])
    dense, density = runner.logits(tokens, None)
    everything = ruler._Method("identity gate", 1.0, "", keep=8, scores=lambda l, q, k: ruler.exact_scores(q, k, 16))
    full, kept = runner.logits(tokens, everything)
    assert kept == pytest.approx(1.0) and density == 1.0
    assert torch.allclose(dense, full, atol=1e-4)
    diagonal = ruler._Method("diagonal", 1 / 8, "", keep=1, scores=lambda l, q, k: torch.zeros(q.shape[0], q.shape[1], 8, 8))
    own, kept = runner.logits(tokens, diagonal)
    assert kept == pytest.approx(8 / 36)
    assert not torch.allclose(dense, own, atol=1e-3)
    # a row without a mask runs its attention in place of each layer's, k and v per query head; no kept share
    seen = []
    exact = ruler._Method("exact", 1.0, "", attention=lambda l, q, k, v: seen.append(k.shape[1]) or t._attend(q, k, v))
    same, kept = runner.logits(tokens, exact)
    assert kept is None and seen == [TINY["heads"]] * TINY["layers"]
    assert torch.allclose(dense, same, atol=1e-4)
    favor = families._favor_method(TINY["layers"], TINY["heads"], t.model["head_width"], 64, "cpu")
    estimate, kept = runner.logits(tokens, favor)
    assert kept is None and torch.isfinite(estimate).all() and not torch.allclose(dense, estimate, atol=1e-3)


def test_the_evaluation_end_to_end_on_a_tiny_teacher(tmp_path):
    teachers = [lab.LabTeacher.new(**TINY, seed=s) for s in (2, 3)]
    report = ruler.evaluate(teachers, n=128, labels=["a", "b"], progress=None, densities=[0.25], block=16, test_inputs=6,
                            validation_inputs=3, batch=4, pooled_gate_inputs=4, pooled_gate_steps=5, indexer_inputs=4, indexer_steps=3,
                            indexer_rows=16, time_repeats=1)
    names = [r["method"] for r in report["evals"][0]["rows"]]
    assert names == ["dense", "diagonal", "identity gate", "best fixed", "moba", "quest", "vertical-slash", "duo", "window",
                     "longformer", "bigbird", "pooled gate", "indexer", "search script", "lsh", "anchors", "favor+"]
    for e in report["evals"]:
        assert e["rows"][0]["answers"] > 0 and all(r["answers"] == e["rows"][0]["answers"] for r in e["rows"])
        for r in e["rows"][2:-1]:
            assert r["density"] <= 0.25 + 0.2   # blocks_per_row's nearest share, cut to causal
        favor = e["rows"][-1]
        assert favor["density"] is None and "256 positive orthogonal random features" in favor["detail"]
        assert "dense_ms" in e["timing"] and "quest 0.25" in e["timing"]["methods"]
        assert e["timing"]["methods"]["favor+ 1.0"]["attention_ms"] > 0
        for row in e["rows"][-3:-1]:
            assert "chosen on validation" in row["detail"] and "shared_qk = false" in row["detail"]
            assert any(note.startswith(row["method"] + " at 25%: ") for note in e["notes"])
            assert e["timing"]["methods"][row["method"] + " 0.25"]["engine"] == "CPU content engine, the whole call"
        assert any(note.startswith("anchors: k = n / chunk per layer and head, fitted") for note in e["notes"])
        search = e["rows"][-4]
        assert search["method"] == "search script" and search["density"] <= 0.25 + 1e-9
        assert "L0H1 " in search["detail"] and "(training recall " in search["detail"]
        assert any(note.startswith("search script: each head's recall of the search's ") for note in e["notes"])
    rows = ruler.report_write(report, str(tmp_path / "out"), command="test")
    # several gates: the one kept is named, each with its validation accuracy
    one = ruler.evaluate_teacher(teachers[0], 128, densities=[0.25], block=16, test_inputs=2, validation_inputs=3, batch=4, families=False,
                                 pooled_gate_inputs=4, pooled_gate_steps=3, pooled_gate_configs=[(8, "mean"), (8, "mean+max+min"), (8, "mean", 6), (8, "mean", None, "max"),
                                                                          (8, "mean+max+min", None, None, "rows")],
                                 indexer_inputs=0, time_repeats=1, progress=None)
    assert sum("validation accuracy at 25.00%" in note for note in one["notes"]) == 5
    assert sum("trained on 4 training-stream sequences" in note for note in one["notes"]) == 4
    assert any(note.startswith("pooled gate (width 8, keys mean+max+min, queries row by row): trained on 4") for note in one["notes"])
    assert any(note.startswith("pooled gate (width 8, keys mean, target max): trained on 4") for note in one["notes"])
    assert any(note.startswith("pooled gate (width 8, keys mean, 6 training sequences): trained on 6 training-stream") for note in one["notes"])
    assert any("(chosen on validation)" in note for note in one["notes"])
    # a long run of the bar's rows alone: the skipped rows are left out, the trivial baselines stay
    bar = ruler.evaluate_teacher(teachers[0], 128, densities=[0.25], block=16, test_inputs=2, validation_inputs=3, batch=4,
                                 pooled_gate_inputs=4, pooled_gate_steps=3, skip=ruler.SKIPPABLE, time_repeats=1, progress=None)
    assert [r["method"] for r in bar["rows"]] == ["dense", "diagonal", "identity gate", "best fixed", "pooled gate"]
    with pytest.raises(ValueError, match="cannot skip dense"):
        ruler.evaluate_teacher(teachers[0], 128, skip=["dense"], progress=None)
    # a density that affords a dense head: DuoAttention ranks the heads on validation
    wide = ruler.evaluate_teacher(teachers[0], 128, densities=[0.8], block=16, test_inputs=2, validation_inputs=3, batch=4,
                                  families=False, pooled_gate_inputs=0, indexer_inputs=0, time_repeats=1, progress=None)
    duo = [r for r in wide["rows"] if r["method"] == "duo"][0]
    assert "1 of 2 heads dense" in duo["detail"] and "each head alone streaming" in duo["detail"]
    text = (tmp_path / "out" / "report.md").read_text()
    assert "| pooled gate | 25.00% |" in text and " ± " in text and "by the depth of the asked needle" in text
    assert "| favor+ | - | - | " in text and "- favor+: Performer's FAVOR+" in text
    assert len(rows[0]["needle_by_depth"]) == 10
    assert len(rows) == 17 and (tmp_path / "out" / "report.json").exists()
    pytest.importorskip("matplotlib")
    for picture in ("depth.png", "cost.png"):
        data = (tmp_path / "out" / picture).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and b"diagonal" in data and b"identity gate" in data and b"best fixed" in data
    assert "Pictures: depth.png, cost.png" in text


def test_lsh_is_chosen_on_validation_within_the_density_by_its_pairs(monkeypatch):
    """The LSH row (learn/ruler_families.cpp's grid): each candidate's density is the pairs the
    content engine allows over the causal pairs, on the first CONTENT_COUNT_INPUTS validation
    sequences (2 here, of 3); the row is the most accurate candidate within the target on all of
    them, or the least dense where none fits."""
    monkeypatch.setattr(families, "CONTENT_COUNT_INPUTS", 2)
    t = lab.LabTeacher.new(**TINY, seed=2)
    n, block = 128, 16
    runner = ruler._Runner(t, n, block, "float32")
    validation = lab.task_batch(t.task, "validation", 0, 3, n=n)
    notes = []
    grid = [families._lsh_masks(n, TINY["layers"], TINY["heads"], block, chunk, rounds) for chunk in families._content_chunks(n)
            for rounds in families.LSH_ROUNDS]
    roomy, tight = families._content_methods("lsh", grid, "seed 0", runner, validation, 4, n, TINY["layers"], TINY["heads"], [1.0, 1e-4],
                                          notes)
    within, chosen = notes[0].split("each candidate within it: ")[1].split("; chosen ")
    tried = [e if e.startswith("lsh(") else "lsh(" + e for e in within.split(", lsh(")]
    assert len(tried) == 4 * len(families.LSH_ROUNDS)   # chunks 8 to 64 at n = 128, every one within 100%
    parsed = [(e.rsplit(" ", 2)[0], float(e.rsplit(" ", 2)[1]), float(e.rsplit(" ", 2)[2].rstrip("%"))) for e in tried]
    best = max(parsed, key=lambda p: (p[2], p[1]))   # the most accurate, ties to the denser
    assert chosen == best[0] and roomy.detail.startswith(best[0])
    assert notes[1].startswith("lsh at 0.01%: no candidate within the density") and tight.fixed_density > 1e-4
    assert notes[2].startswith(f"lsh: the pairs of {len(grid)} candidates counted on 2 validation sequences in ")
    assert notes[2].endswith(" s") and f"the validation accuracy of {len(tried)} of them on 3 in " in notes[2]
    # the density is the engine's pair count over the causal pairs, on the first 2 validation sequences' q and k
    expression, masks = families._lsh_masks(n, TINY["layers"], TINY["heads"], block, 8, 1)
    counted = []
    ruler._dense_layers(runner, {"tokens": validation["tokens"][:2]}, 4, lambda first, layer, q, k: counted.extend(
        r["pairs"] / (n * (n + 1) / 2) for r in sparsa.content_report(q.float().numpy(), k.float().numpy(), masks, layer)))
    assert tight.detail.startswith("lsh(16, rounds = 1, chunk = 8")   # the least dense: the smallest chunk, one round
    assert tight.fixed_density == pytest.approx(sum(counted) / len(counted), rel=1e-12)
    # its rows run the content engine: the runner's logits under it are the teacher's with lsh attention
    tokens = torch.from_numpy(validation["tokens"][:2])
    logits, kept = runner.logits(tokens, tight)
    assert kept == pytest.approx(tight.fixed_density) and torch.isfinite(logits).all()


def test_the_content_grid_grows_with_n_so_its_densest_candidates_reach_the_densities_of_short_sequences():
    """The C++ grid's chunks (8 to 128, 2 to 512 buckets), then larger chunks doubling while they
    leave at least 16 buckets: at 16,384 chunks up to 1,024, so that LSH's densest candidate (4 rounds)
    is not held at 6% of the causal pairs as with chunks up to 128."""
    assert families._content_chunks(128) == [8, 16, 32, 64]
    assert families._content_chunks(2048) == [8, 16, 32, 64, 128]
    assert families._content_chunks(4096) == [8, 16, 32, 64, 128, 256]
    assert families._content_chunks(16384) == [32, 64, 128, 256, 512, 1024]
    assert families._content_chunks(65536) == [128, 256, 512, 1024, 2048, 4096]


def test_the_search_script_keeps_each_heads_best_candidate_within_the_density():
    """sparsa.learn.search_script (the C++ ruler_search_script): per head the candidate of most
    recall among those whose causal density is within the target, its masks cut to causal, its
    density the kept blocks over the causal blocks."""
    t = lab.LabTeacher.new(**TINY, seed=2)
    n, block = 128, 16
    runner = ruler._Runner(t, n, block, "float32")
    notes = []
    roomy, tight = families._search_methods(runner, n, TINY["layers"], TINY["heads"], block, 2, [1.0, 0.3], 2, notes)
    assert notes[0].startswith("search script: each head's recall of the search's ") and "on 2 training-stream" in notes[0]
    causal = (n // block) * (n // block + 1) / 2
    for m, target in ((roomy, 1.0), (tight, 0.3)):
        assert isinstance(m.fixed, list) and len(m.fixed) == TINY["layers"]
        kept = [m.fixed[l].stats(0, h).kept_blocks for l in range(TINY["layers"]) for h in range(TINY["heads"])]
        assert m.fixed_density == pytest.approx(sum(kept) / (causal * len(kept))) and m.fixed_density <= target + 1e-9
        for l in range(TINY["layers"]):
            for h in range(TINY["heads"]):
                dense = m.fixed[l].to_dense(0, h)
                assert not np.triu(dense, 1).any()   # cut to causal
    assert "training recall 1.000" in roomy.detail   # with the whole budget some candidate keeps all of the attention


def test_anchors_are_fitted_per_head_on_the_training_stream_and_their_buckets_are_the_nearest_anchor(tmp_path):
    """The anchors grid: one anchors file per (layer, head) and chunk, unit rows fitted on that head's
    q and k; the MaskSet's heads read their own file; a token's bucket is its nearest anchor (the
    engine's assignment, balanced: no bucket above its share)."""
    t = lab.LabTeacher.new(**TINY, seed=3)
    n, block = 128, 16
    runner = ruler._Runner(t, n, block, "float32")
    grid, note = families._anchor_grid(runner, n, TINY["layers"], TINY["heads"], block, 1, str(tmp_path))
    assert [e for e, _ in grid] == [f"anchors({n // c}, 1, {c}, shared_qk = false)" for c in families._content_chunks(n)]
    assert note.startswith(f"anchors: k = n / chunk per layer and head, fitted (spherical k-means, {families.ANCHOR_ITERATIONS} iterations)")
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == sorted(f"L{l}H{h}-k{n // c}.npz" for c in families._content_chunks(n) for l in range(TINY["layers"])
                           for h in range(TINY["heads"]))
    _, masks = grid[0]
    specs = masks.content
    assert specs[0][1]["fit"].endswith(f"L0H1-k{n // 8}.npz") and specs[0][0]["fit"].endswith(f"L0H0-k{n // 8}.npz")
    with np.load(specs[0][1]["fit"]) as f:
        anchors = f["anchors"]
    assert anchors.shape == (1, n // 8, TINY["d"] // TINY["heads"])
    assert np.allclose(np.linalg.norm(anchors[0], axis=1), 1, atol=1e-4)
    q, k = (torch.randn(1, TINY["heads"], n, TINY["d"] // TINY["heads"]) for _ in range(2))
    report = sparsa.content_report(q.numpy(), k.numpy(), masks, 0)
    assert [r["kind"] for r in report] == ["anchors"] * TINY["heads"]
    assert all(r["bucket_max"] <= -(-n // (n // 8)) for r in report)   # balanced: at most ceil(n / k) a bucket


def test_a_selection_budget_leaves_out_the_gates_that_cost_too_much():
    configs = [(32, "mean", 64, "sum", "mean"), (32, "mean+max+min", 64, "sum", "rows"), (64, "mean+max+min", 64, "sum", "mean")]
    share = {"mean": 0.1, "rows": 6.0}
    kept, lines = ruler._within_budget(configs, 0.2, lambda c: share[c[4]] * (1.5 if c[0] == 64 else 1.0))
    assert kept == [configs[0], configs[2]]
    assert lines[1] == "selection budget 20% of dense: width 32, keys mean+max+min, queries rows: selection 600.0% at the model's shape, left out"
    assert lines[0].endswith("10.0% at the model's shape, kept")
    kept, lines = ruler._within_budget(configs, 0.01, lambda c: share[c[4]] * (1.5 if c[0] == 64 else 1.0))
    assert kept == [configs[0]] and lines[-1].endswith("no configuration within it; the cheapest alone is tried")
    t = lab.LabTeacher.new(**TINY, seed=2)
    with pytest.raises(ValueError, match="selection budget is a fraction in \\(0, 1\\] measured against cuDNN"):
        ruler.evaluate_teacher(t, 128, selection_budget=0.2, progress=None)
    with pytest.raises(SystemExit):
        ruler.main(["--teachers", "x.bin", "--n", "128", "--device", "cpu", "--selection-budget", "0.2", "-o", "out"])


def test_the_reports_cost_sentence_reads_right_both_ways_and_flags_small_blocks():
    from sparsa.ruler_report import _at_shape_line
    shape = {"shape": [1, 16, 16384, 128], "block": 64, "keep": 17, "width": 32, "key_pool": "mean", "query_pool": "mean",
             "select_ms": 0.3, "attention_ms": 0.4, "graph_ms": 0.5, "select_graph_ms": 0.2, "dense_ms": 2.3, "cudnn_ms": 1.5}
    line = _at_shape_line(shape)
    assert "is 2.14x faster than cuDNN eager, 3.00x faster than it as a graph" in line and "13.3% as a graph" in line
    assert "simple kernel" not in line
    slow = dict(shape, block=16, attention_ms=2.8, graph_ms=2.9, cudnn_ms=0.175)
    line = _at_shape_line(slow)
    assert "is 17.71x slower than cuDNN eager, 16.57x slower than it as a graph" in line
    assert "(Blocks of 16: sparsa's tensor-core kernels take blocks of 64, 128 or 256" in line
    assert "queries row by row" in _at_shape_line(dict(shape, query_pool="rows"))


def test_the_cost_at_a_models_shape_is_timed_on_the_cpu_too():
    t = ruler.time_at_shape(256, heads=2, head_dim=16, block=16, density=0.25, device="cpu", repeats=1)
    assert t["keep"] == ruler.blocks_per_row(0.25, 16) and t["shape"] == [1, 2, 256, 16]
    assert all(t[key] > 0 for key in ("select_ms", "attention_ms", "dense_ms"))
    assert not {"cudnn_ms", "graph_ms", "select_graph_ms"} & set(t)   # CUDA only


@pytest.mark.skipif(not (torch.cuda.is_available() and sparsa.cuda_built), reason="needs a CUDA GPU and the CUDA engine")
def test_the_cost_at_a_models_shape_on_the_gpu_has_graph_times():
    t = ruler.time_at_shape(1024, heads=2, head_dim=64, block=64, density=0.25, device="cuda", repeats=3)
    assert t.get("graph_error") is None and t["graph_ms"] > 0 and t["select_graph_ms"] > 0
    assert t["select_graph_ms"] < t["graph_ms"] * 2   # the selection alone, not a second copy of both


def test_the_fixed_families_fit_the_density_after_the_causal_cut():
    families = sparsa.learn.fixed_families(1024, 2, 0.125, 16, True)
    assert [f[0] for f in families] == ["window", "longformer", "bigbird"]
    for name, detail, masks, density in families:
        assert 0 < density <= 0.125 + 1e-9 and "within the density" in detail
        assert masks.heads == 2
    with pytest.raises(ValueError, match="target density"):
        sparsa.learn.fixed_families(1024, 2, 0.0)


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


def test_a_run_split_over_calls_merges_into_one_report_and_a_cut_run_keeps_its_finished_teachers(tmp_path, capsys):
    paths = []
    for s in (2, 3):
        paths.append(str(tmp_path / f"teacher-seed{s}.bin"))
        lab.LabTeacher.new(**TINY, seed=s).save(paths[-1])
    common = ["--n", "128", "--block", "16", "--densities", "0.25", "--test-inputs", "4", "--validation-inputs", "2", "--batch", "4",
              "--pooled-gate-inputs", "2", "--pooled-gate-steps", "2", "--indexer-inputs", "0", "--families", "none", "--device", "cpu"]
    for i, p in enumerate(paths):
        ruler.main(["--teachers", p, *common, "-o", str(tmp_path / f"part{i}")])
    both = tmp_path / "both"
    ruler.main(["--merge", f"{tmp_path / 'part0'},{tmp_path / 'part1'}", "-o", str(both)])
    import json
    merged = json.loads((both / "report.json").read_text())
    assert merged["teachers"] == ["teacher-seed2.bin", "teacher-seed3.bin"] and len(merged["commands"]) == 2
    one = json.loads((tmp_path / "part0" / "report.json").read_text())
    assert merged["evals"][0] == one["evals"][0]
    text = (both / "report.md").read_text()
    assert "Merged (`python3 -m sparsa.ruler --merge`)" in text and " ± " in text and "Partial" not in text
    # runs made another way, or the same teacher twice, do not merge
    ruler.main(["--teachers", paths[1], *[("8" if x == "4" and common[i - 1] == "--test-inputs" else x) for i, x in enumerate(common)],
                "-o", str(tmp_path / "other")])
    for parts, words in (((tmp_path / "part0", tmp_path / "other"), "test_inputs"), ((tmp_path / "part0", tmp_path / "part0"), "two of")):
        with pytest.raises(SystemExit, match=words):
            ruler.main(["--merge", ",".join(str(x) for x in parts), "-o", str(tmp_path / "bad")])
    assert not (tmp_path / "bad").exists()
    with pytest.raises(SystemExit):
        ruler.main(["--teachers", paths[0], *common, "--skip", "moba,identity gate", "-o", str(tmp_path / "bad")])
    assert "rows that can be left out are moba" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    for bad in ("8:mean:0", "8:mean:x", "8:max", "mean", "8:mean:max:6", "8:mean:6:6", "8:mean:max:sum", "8:mean:rows:max",
                "8:mean:rows:rows"):
        with pytest.raises(SystemExit):
            ruler.main(["--teachers", paths[0], *common, "--pooled-gate-configs", f"8:mean,{bad}", "-o", str(tmp_path / "bad")])
        assert "is not WIDTH:KEYS[:SEQUENCES][:TARGET][:rows]" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    ruler.main(["--teachers", paths[0], *common, "--pooled-gate-configs", "8:mean:3:max,8:mean+max+min:max:rows", "-o", str(tmp_path / "t")])
    notes = (tmp_path / "t" / "report.md").read_text()
    assert "pooled gate (width 8, keys mean, 3 training sequences, target max)" in notes
    assert "keys mean+max+min, target max, queries row by row" in notes
    # a report written after the first of two teachers says which are still to come, and does not merge
    partial = dict(one, teachers=one["teachers"], pending=["teacher-seed3.bin"])
    ruler.report_write(partial, str(tmp_path / "cut"))
    assert "**Partial:** 1 of 2 teachers" in (tmp_path / "cut" / "report.md").read_text()
    with pytest.raises(ValueError, match="partial"):
        ruler.merge([partial])


def test_the_search_recall_is_the_causal_attention_kept_as_the_cpp_table_measures_it():
    """_search_recall (sparsa.ruler's search table, on the runner's device) against the C++ table on a
    causal sample of the same q and k (learn::search_table_build, attention_sample_from_qk with
    causal), and one candidate against the causal softmax itself: the diagonal block alone (band(0))
    keeps the attention mass of each row's own block and the keys before it there."""
    torch.manual_seed(4)
    n, block, heads, d = 64, 16, 2, 16
    qs = [torch.randn(2, heads, n, d) for _ in range(2)]
    ks = [torch.randn(2, heads, n, d) for _ in range(2)]
    candidates, recall = families._search_recall(qs, ks, n, block)
    q = torch.stack(qs, 1).numpy()   # [inputs, layers, heads, n, d]
    k = torch.stack(ks, 1).numpy()
    table = sparsa.learn.search_table(sparsa.learn.attention_sample_from_qk(q, k, block, causal=True))
    assert table.expressions == [e for e, _, _ in candidates]
    np.testing.assert_allclose(recall, table.recall, atol=2e-6)
    # band(0) by hand: softmax over the causal keys, the mass of the query's own block
    c = [e for e, _, _ in candidates].index("band(0)")
    for l in range(2):
        s = (qs[l].double() @ ks[l].double().transpose(-1, -2)) / d ** 0.5
        i = torch.arange(n)
        s = s.masked_fill(i[None, :] > i[:, None], float("-inf"))
        p = torch.softmax(s, dim=-1)
        own = (i[None, :] // block == i[:, None] // block)
        expect = (p * own).sum(-1).mean(dim=(0, 2)).numpy()
        np.testing.assert_allclose(recall[c, l], expect, atol=1e-6)
    # a non-causal sample of the same q and k measures something else (the old sparsa.ruler table)
    assert not np.allclose(sparsa.learn.search_table(sparsa.learn.attention_sample_from_qk(q, k, block)).recall, recall, atol=1e-3)
    table = sparsa.learn.search_table_from_recall(recall, n, block, True)
    assert table.recall == pytest.approx(recall)
    with pytest.raises(sparsa.Error, match="recall values given"):
        sparsa.learn.search_table_from_recall(recall[1:], n, block, True)
    with pytest.raises(ValueError, match="recall must be in"):
        sparsa.learn.search_table_from_recall(recall + 2, n, block, True)
