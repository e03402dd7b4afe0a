"""Content-based heads (lsh, anchors, favor) from Python: sparsa.attention and attention_backward
against the double reference over the same allowed pairs (content_allowed -> mask_set_from_dense
-> reference), sparsa.reference on such layers, per-(batch, head) reports, files the specs name
read automatically, FAVOR+'s error curve, and sparsa.torch's gradients on an lsh script."""
import numpy as np
import pytest

import sparsa
from conftest import PATTERNS, randn

try:
    import torch
    import sparsa.torch as st
except ImportError:  # only torch can be missing: sparsa itself comes from the build
    torch = None

RTOL_FORWARD = 1e-5
RTOL_GRADIENTS = 2e-5

# Head 0: lsh alone (2 rounds); head 1: a causal-free window | lsh(6, 4 rounds, chunk 20); head 2:
# a window; head 3: FAVOR+. n = 150 is not a multiple of the chunks.
MIXED = """heads 4
block 32
attend = lsh(8, rounds = 2)
attend[head 1] = window(16) | lsh(6, rounds = 4, chunk = 20)
attend[head 2] = window(8)
attend[head 3] = favor(features = 64)
"""


def close(got, want, rtol):
    """max |got - want| <= rtol * max(|want|, 1)."""
    return np.abs(got - want).max() <= rtol * max(np.abs(want).max(), 1.0)


def allowed_masks(q, k, masks, b, heads):
    """The reference's masks for batch b: each pair head's allowed set A as a plain mask."""
    dense = np.stack([sparsa.content_allowed(q, k, masks, batch=b, head=h) for h in heads])
    return sparsa.mask_set_from_dense(dense[None], block=masks.block)


def test_attention_on_lsh_heads_matches_the_reference_over_the_allowed_pairs(rng):
    masks = sparsa.compile(MIXED, n=150)
    q, k, v, d_o = (randn(rng, (2, 4, 150, 16)) for _ in range(4))
    o, lse = sparsa.attention(q, k, v, masks)
    dq, dk, dv = sparsa.attention_backward(q, k, v, o, lse, d_o, masks)
    pair_heads = [0, 1, 2]
    for b in range(2):
        ref_masks = allowed_masks(q, k, masks, b, pair_heads)
        sl = (slice(b, b + 1), pair_heads)
        want_o, want_lse = sparsa.reference(q[sl], k[sl], v[sl], ref_masks)
        assert close(o[sl], want_o, RTOL_FORWARD)
        assert close(lse[sl], want_lse, RTOL_FORWARD)
        want = sparsa.reference_backward(q[sl], k[sl], v[sl], d_o[sl], ref_masks)
        for got, exact in zip((dq, dk, dv), want):
            assert close(got[sl], exact, RTOL_GRADIENTS)
    # FAVOR+ gives O but no softmax normaliser: lse is NaN on its head, O finite.
    assert np.isnan(lse[:, 3]).all()
    assert np.isfinite(o).all() and np.isfinite(dq).all()
    # The lsh heads' pairs are not its fixed part's: they came from the buckets.
    assert sparsa.content_allowed(q, k, masks, head=0).sum() > 0
    assert masks.stats(0, 0).kept_pairs == 0


def test_reference_runs_over_the_allowed_pairs_and_refuses_favor(rng):
    masks = sparsa.compile("heads 2\ncausal\nattend = window(8) | lsh(8, rounds = 2, chunk = 16)", n=100)
    q, k, v, d_o = (randn(rng, (1, 2, 100, 8), np.float64) for _ in range(4))
    o, lse = sparsa.reference(q, k, v, masks)
    o32, lse32 = sparsa.attention(q, k, v, masks)
    assert close(o32, o, RTOL_FORWARD)
    grads = sparsa.reference_backward(q, k, v, d_o, masks)
    grads32 = sparsa.attention_backward(q, k, v, o32, lse32, d_o, masks)
    for got, want in zip(grads32, grads):
        assert close(got, want, RTOL_GRADIENTS)
    # causal: nothing above the diagonal.
    assert not np.triu(sparsa.content_allowed(q, k, masks, head=1), 1).any()
    favor = sparsa.compile(MIXED, n=150)
    x = randn(rng, (1, 4, 150, 16), np.float64)
    with pytest.raises(sparsa.Error, match="head 3 is favor.*no double-precision reference"):
        sparsa.reference(x, x, x, favor)


def test_content_report_per_batch_and_head(rng):
    masks = sparsa.compile(MIXED, n=150)
    q, k = (randn(rng, (2, 4, 150, 16)) for _ in range(2))
    reports = sparsa.content_report(q, k, masks)
    assert [(r["batch"], r["head"]) for r in reports] == [(b, h) for b in range(2) for h in range(4)]
    assert [r["kind"] for r in reports[:4]] == ["lsh", "lsh", "fixed", "favor"]
    lsh = reports[1]
    assert (lsh["buckets"], lsh["rounds"], lsh["chunk"]) == (6, 4, 20)
    assert lsh["bucket_min"] <= lsh["bucket_max"] and lsh["imbalance"] >= 1
    assert lsh["pairs"] == sparsa.content_allowed(q, k, masks, batch=0, head=1).sum()
    assert lsh["density"] == pytest.approx(lsh["pairs"] / 150 ** 2)
    assert lsh["recall_mean"] is None   # not asked for
    assert reports[2]["pairs"] == masks.stats(0, 2).kept_pairs
    favor = reports[3]
    assert favor["features"] == 64 and favor["rows"] == 150 and favor["predicted_error"] > 0
    assert "pairs" not in favor
    measured = sparsa.content_report(q, k, masks, recall=True)
    for r in measured:
        if r["kind"] == "lsh":
            assert 0 < r["recall_min"] <= r["recall_mean"] <= 1 + 1e-9
    # Recall against a hand computation: the softmax mass of A, row by row, in double.
    a = sparsa.content_allowed(q, k, masks, batch=1, head=0)
    s = (q[1, 0].astype(np.float64) @ k[1, 0].astype(np.float64).T) / 4.0
    p = np.exp(s - s.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    assert measured[4]["recall_mean"] == pytest.approx((p * a).sum(axis=1).mean(), rel=1e-6)


def test_files_named_by_the_script_are_read_automatically(rng, tmp_path):
    rotations = rng.standard_normal((2, 16, 4)).astype(np.float32)
    np.save(tmp_path / "r1.npy", rotations)
    np.save(tmp_path / "r2.npy", -rotations[:, :, ::-1].copy())
    q, k, v = (randn(rng, (1, 2, 100, 16)) for _ in range(3))
    outs = []
    for name in ("r1.npy", "r2.npy"):
        script = tmp_path / f"lsh_{name}.pat"
        script.write_text(f'heads 2\nattend = lsh(8, rounds = 2, chunk = 16, file = "{name}")\n')
        masks = sparsa.compile_file(script, n=100)
        outs.append(sparsa.attention(q, k, v, masks)[0])
        assert sparsa.content_report(q, k, masks)[0]["pairs"] > 0
    assert not np.array_equal(outs[0], outs[1])   # the file's rotations were used
    # A file made for another d: the message names it with both shapes.
    x = randn(rng, (1, 2, 100, 8))
    with pytest.raises(sparsa.Error, match=r"r2.npy has shape \[2, 16, 4\] but this head needs \[2, 8, 4\]"):
        sparsa.attention(x, x, x, masks)
    # The example's fitted anchors (d = 64).
    anchors = sparsa.compile_file(PATTERNS / "anchors.pat", n=256)
    q, k, v = (randn(rng, (1, 8, 256, 64)) for _ in range(3))
    o, lse = sparsa.attention(q, k, v, anchors, layer=1)
    assert np.isfinite(o).all()
    assert sparsa.content_report(q, k, anchors)[0]["kind"] == "anchors"


def test_anchors_fit_writes_a_file_that_anchors_read_and_refuses_bad_input(rng, tmp_path):
    # Three tight clusters in q and k: three anchors find them (mean cosine near 1), each a unit row.
    centres = rng.standard_normal((3, 8))
    q = (np.repeat(centres, 40, axis=0) + 0.01 * rng.standard_normal((120, 8))).astype(np.float32)
    k = (np.repeat(centres, 30, axis=0) + 0.01 * rng.standard_normal((90, 8))).astype(np.float32)
    path = tmp_path / "fit.npz"
    cosine = sparsa.anchors_fit(q, k, 3, str(path), seed=2, iterations=10)
    assert cosine > 0.99
    with np.load(path) as f:
        anchors = f["anchors"]
    assert anchors.shape == (1, 3, 8) and np.allclose(np.linalg.norm(anchors[0], axis=1), 1, atol=1e-5)
    unit = centres / np.linalg.norm(centres, axis=1, keepdims=True)
    assert np.allclose(np.sort((anchors[0] @ unit.T).max(0)), 1, atol=1e-3)   # every centre has its anchor
    masks = sparsa.compile(f'heads 1\ncausal\nattend = anchors(3, chunk = 16, fit = "{path}", shared_qk = false)', n=64)
    x = randn(rng, (1, 1, 64, 8))
    assert np.isfinite(sparsa.attention(x, x, x, masks)[0]).all()
    with pytest.raises(ValueError, match="q rows have d = 8 but k rows d = 4"):
        sparsa.anchors_fit(q, k[:, :4], 3, str(tmp_path / "bad.npz"))
    with pytest.raises(ValueError, match="k must be >= 1"):
        sparsa.anchors_fit(q, k, 0, str(tmp_path / "bad.npz"))
    with pytest.raises(sparsa.Error):   # fewer nonzero rows than anchors
        sparsa.anchors_fit(np.zeros((5, 8), np.float32), np.zeros((5, 8), np.float32), 3, str(tmp_path / "bad.npz"))
    assert not (tmp_path / "bad.npz").exists()


def test_favor_error_curve_falls_with_features(rng):
    q, k, v = (randn(rng, (1, 2, 128, 16)) * s for s in (0.5, 0.5, 1.0))
    curve = sparsa.favor_error_curve(q, k, v, features=[16, 64, 256, 1024], seed=3)
    assert [p["features"] for p in curve] == [16, 64, 256, 1024]
    errors = [p["error"] for p in curve]
    # Monte Carlo: about 1 / sqrt(m), so 64 times the features is well under half the error.
    assert errors[-1] < 0.5 * errors[0]
    assert all(p["predicted_error"] > 0 for p in curve)
    default = sparsa.favor_error_curve(q[:, :1, :32], k[:, :1, :32], v[:, :1, :32])
    assert [p["features"] for p in default] == [16, 32, 64, 128, 256, 512, 1024]


def test_bad_input_names_the_argument(rng):
    masks = sparsa.compile(MIXED, n=150)
    q = randn(rng, (1, 4, 150, 16))
    with pytest.raises(ValueError, match="k: shape"):
        sparsa.attention(q, q[:, :, :100], q, masks)
    with pytest.raises(ValueError, match="3 heads but the mask set has 4"):
        sparsa.content_report(q[:, :3], q[:, :3], masks)
    with pytest.raises(sparsa.Error, match="favor, which has no allowed pairs"):
        sparsa.content_allowed(q, q, masks, head=3)
    with pytest.raises(ValueError, match="batch 1 is out of range"):
        sparsa.content_allowed(q, q, masks, batch=1)
    with pytest.raises(ValueError, match="v: shape"):
        sparsa.favor_error_curve(q, q, q[:, :, :10])
    with pytest.raises(sparsa.Error, match=r"need m >= 1"):
        sparsa.favor_error_curve(q, q, q, features=[0])


@pytest.mark.skipif(torch is None, reason="PyTorch is not installed for this Python (apt install python3-torch)")
def test_torch_gradients_on_an_lsh_script_match_the_reference_over_the_allowed_pairs():
    masks = sparsa.compile("heads 2\nblock 16\nattend = window(4) | lsh(8, rounds = 2, chunk = 16)", n=90)
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 2, 90, 8, generator=g, requires_grad=True) for _ in range(3))
    d_o = torch.randn(2, 2, 90, 8, generator=g)
    o = st.attention(q, k, v, masks)
    o.backward(d_o)
    qn, kn, vn, don = (t.detach().numpy() for t in (q, k, v, d_o))
    for b in range(2):
        ref_masks = allowed_masks(qn, kn, masks, b, [0, 1])
        sl = slice(b, b + 1)
        want_o, _ = sparsa.reference(qn[sl], kn[sl], vn[sl], ref_masks)
        assert close(o.detach().numpy()[sl], want_o, RTOL_FORWARD)
        want = sparsa.reference_backward(qn[sl], kn[sl], vn[sl], don[sl], ref_masks)
        for t, exact in zip((q, k, v), want):
            assert close(t.grad.numpy()[sl], exact, RTOL_GRADIENTS)
    # float64 runs the reference over A; gradcheck against finite differences (the buckets stay
    # put under steps of 1e-6 on these inputs).
    q64, k64, v64 = (t.detach().double()[:1, :, :40].requires_grad_(True) for t in (q, k, v))
    small = sparsa.compile("heads 2\nblock 16\nattend = window(4) | lsh(8, rounds = 2, chunk = 16)", n=40)
    assert torch.autograd.gradcheck(lambda a, b_, c: st.attention(a, b_, c, small), (q64, k64, v64), eps=1e-6, atol=1e-5)
