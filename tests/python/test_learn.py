"""sparsa.learn from Python (when learn/ is built): a tiny teacher trains, saves and loads; its
attention comes out with the teacher's shapes; the oracle, search and gate give masks whose recall
is consistent with the masks; evaluate gives a row per method; bad arguments are refused."""
import numpy as np
import pytest

import sparsa

pytestmark = pytest.mark.skipif(not sparsa.learn_built, reason="learn/ is not built in this tree")


@pytest.fixture(scope="module")
def teacher():
    # Bidirectional: the checks below rebuild the dense softmax in numpy (the causal teacher has its own test).
    t, report = sparsa.learn.train_teacher(task="mqar", n=64, d=32, heads=2, layers=2, mlp=32, steps=30, batch=8,
                                           lr=3e-3, seed=3, stop_accuracy=1.01, causal=False, positions="sinusoidal")
    assert report["steps"] == 30 and report["last_loss"] < report["first_loss"]
    return t


@pytest.fixture(scope="module")
def sample(teacher):
    return sparsa.learn.attention_sample(teacher, count=4, block=16)


def test_teacher_shapes_save_and_load(teacher, tmp_path):
    assert (teacher.n, teacher.layers, teacher.heads, teacher.head_dim, teacher.task) == (64, 2, 2, 16, "mqar")
    a = teacher.attention(index=2)
    assert a["q"].shape == (2, 2, 64, 16) and a["lse"].shape == (2, 2, 64) and a["tokens"].shape == (64,)
    # The captured o is the CPU engine's dense attention of the captured q, k, v.
    dense = sparsa.compile("heads 2\nattend = dense", n=64, block=16)
    o, lse = sparsa.attention(a["q"][1][None], a["k"][1][None], a["v"][1][None], dense)
    np.testing.assert_allclose(o[0], a["o"][1], atol=1e-5)
    np.testing.assert_allclose(lse[0], a["lse"][1], atol=1e-5)
    path = tmp_path / "teacher.bin"
    teacher.save(str(path))
    back = sparsa.learn.Teacher.load(str(path))
    assert back.evaluate(sequences=8) == teacher.evaluate(sequences=8)
    with pytest.raises(sparsa.Error, match="nothing.bin"):
        sparsa.learn.Teacher.load(str(tmp_path / "nothing.bin"))


def test_causal_teacher_attention_is_the_engines_causal_attention():
    t, _ = sparsa.learn.train_teacher(task="ruler", n=128, needles=2, pairs=4, queries=4, d=32, heads=4, kv_heads=2, layers=1,
                                      mlp=16, steps=2, batch=4, seed=2, positions="rotary")
    assert (t.causal, t.kv_heads, t.positions, t.head_dim) == (True, 2, "rotary", 8)
    a = t.attention(index=1)
    causal = sparsa.compile("heads 4\ncausal\nattend = dense", n=128, block=16)
    o, lse = sparsa.attention(a["q"][0][None], a["k"][0][None], a["v"][0][None], causal)
    np.testing.assert_allclose(o[0], a["o"][0], atol=1e-5)
    np.testing.assert_allclose(lse[0], a["lse"][0], atol=1e-5)
    # Grouped-query heads: query heads 0 and 1 read the same key/value head.
    np.testing.assert_array_equal(a["v"][0][0], a["v"][0][1])
    assert not np.array_equal(a["v"][0][1], a["v"][0][2])


def test_evaluate_with_masks(teacher):
    dense = teacher.evaluate(sequences=8)
    assert 0 <= dense["accuracy"] <= 1 and dense["answers"] > 0
    masks = sparsa.compile("heads 2\nlayers 2\nattend = dense", n=64, block=16)
    assert teacher.evaluate(masks=masks, sequences=8)["loss"] == pytest.approx(dense["loss"], rel=1e-5)
    diagonal = sparsa.compile("heads 2\nlayers 2\nattend = window(0)", n=64, block=16)
    assert teacher.evaluate(masks=diagonal, sequences=8)["loss"] != pytest.approx(dense["loss"], rel=1e-3)


def test_oracle_keeps_the_most_mass_per_row(teacher):
    masks, recall = sparsa.learn.oracle_masks(teacher, index=0, density=0.5, block=16)
    assert (masks.n, masks.layers, masks.heads) == (64, 2, 2) and recall.shape == (2, 2)
    assert np.all(masks.densities() == 0.5)  # 2 of 4 blocks in every row
    # Its recall is the share of the dense softmax mass on the kept pairs of held-out input 0.
    a = teacher.attention(index=0)
    for l in range(2):
        for h in range(2):
            s = a["q"][l, h].astype(np.float64) @ a["k"][l, h].T.astype(np.float64) / 4.0
            p = np.exp(s - s.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            assert recall[l, h] == pytest.approx((p * masks.to_dense(l, h)).sum() / 64, rel=1e-4)
    with pytest.raises(ValueError, match="density: expected a fraction"):
        sparsa.learn.oracle_masks(teacher, density=0)


def test_search_and_gate(teacher, sample):
    table = sparsa.learn.search_table(sample)
    assert len(table.expressions) == len(table.densities) == table.recall.shape[0]
    assert np.all((table.recall >= 0) & (table.recall <= 1 + 1e-9))
    r = sparsa.learn.search(table, density=0.5)
    assert r["masks"].layers == 2 and "attend" in r["script"] and r["recall"].shape == (2, 2)
    assert sparsa.compile(r["script"], n=64).layers == 2  # the script compiles
    for row in r["expressions"]:
        for e in row:
            assert e in table.expressions
    full = sparsa.learn.search(table, share=1.0)
    assert np.all(full["recall"] >= 1 - 1e-9)
    with pytest.raises(ValueError, match="exactly one of share= .* or density="):
        sparsa.learn.search(table)
    gate, report = sparsa.learn.gate_train(sample, steps=40)
    assert report["last_loss"] < report["first_loss"]
    a = teacher.attention(index=1)
    m = gate.masks(teacher, a["q"][0][None], a["k"][0][None], layer=0, keep=2)
    assert (m.layers, m.heads, m.n) == (1, 2, 64) and np.all(m.densities() == 0.5)
    with pytest.raises(ValueError, match=r"q: shape \(1, 2, 64, 8\) is not the teacher's"):
        gate.masks(teacher, a["q"][0][None, :, :, :8], a["k"][0][None], layer=0)
    rows = sparsa.learn.evaluate(teacher, gate, table, densities=[0.5], inputs=4, time_repeats=1)
    assert {row["method"] for row in rows} == {"dense", "oracle", "gate", "search", "longformer", "bigbird"}
    assert all(0 <= row["recall"] <= 1 + 1e-9 for row in rows)


def test_bad_teacher_config_is_refused():
    with pytest.raises(sparsa.Error, match="mqar, passkey|mix"):
        sparsa.learn.train_teacher(task="copy", steps=1)


def test_a_sample_from_any_models_queries_and_keys(teacher):
    a = teacher.attention(index=0)
    sample = sparsa.learn.attention_sample_from_qk(a["q"], a["k"], block=16)   # one input [layers, heads, n, d]
    assert (sample.inputs, sample.layers, sample.block) == (1, 2, 16)
    table = sparsa.learn.search_table(sample)
    dense = table.expressions.index("dense")
    np.testing.assert_allclose(table.recall[dense], 1.0, rtol=1e-6)
    # Recall of a window candidate equals the share of the softmax mass it keeps, computed with numpy.
    c = next(i for i, e in enumerate(table.expressions) if e.startswith("band("))
    masks = sparsa.compile(f"heads 2\nattend = {table.expressions[c]}", n=64, block=16)
    for l in range(2):
        for h in range(2):
            s = a["q"][l, h].astype(np.float64) @ a["k"][l, h].T.astype(np.float64) / 4.0
            p = np.exp(s - s.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            assert table.recall[c, l, h] == pytest.approx((p * masks.to_dense(0, h)).sum() / 64, rel=1e-4)
    two = sparsa.learn.attention_sample_from_qk(np.stack([a["q"], a["q"]]), np.stack([a["k"], a["k"]]))
    assert two.inputs == 2
    with pytest.raises(ValueError, match=r"k: shape .* differs from q's"):
        sparsa.learn.attention_sample_from_qk(a["q"], a["k"][:, :1])
    with pytest.raises(ValueError, match=r"q: expected 5 dimensions"):
        sparsa.learn.attention_sample_from_qk(a["q"][0], a["k"][0])
