"""Attention on numpy arrays: the CPU engine against the double-precision reference (forward and
backward), the dtype / layout policy (any float dtype and any strides are converted; integers are
refused), shape errors naming the argument, outputs handed over without a copy, empty rows, causal."""
import numpy as np
import pytest

import sparsa
from conftest import randn

PATTERN = "heads 3\nlayers 2\nattend = window(17) | global(first(5)) | random(1, seed = 2)\nattend[head 2] = causal & dilated(9, 3)"


@pytest.fixture
def masks():
    return sparsa.compile(PATTERN, n=300, block=32)


@pytest.fixture
def qkv(rng):
    return [randn(rng, (2, 3, 300, 40)) for _ in range(3)]


def test_forward_matches_the_reference(masks, qkv):
    for layer in range(2):
        o, lse = sparsa.attention(*qkv, masks, layer=layer)
        o_ref, lse_ref = sparsa.reference(*qkv, masks, layer=layer)
        assert o.dtype == np.float32 and o.shape == (2, 3, 300, 40) and lse.shape == (2, 3, 300)
        assert o_ref.dtype == np.float64
        assert np.abs(o - o_ref).max() <= 1e-5 * np.abs(o_ref).max()
        assert np.abs(lse - lse_ref).max() <= 1e-5 * max(1.0, np.abs(lse_ref).max())


def test_forward_matches_numpy_softmax(masks, qkv):
    q, k, v = qkv
    o, lse = sparsa.attention(q, k, v, masks, layer=1, scale=0.3)
    for h in range(3):
        allowed = masks.to_dense(1, h)
        s = 0.3 * q[1, h].astype(np.float64) @ k[1, h].T.astype(np.float64)
        s = np.where(allowed, s, -np.inf)
        m = s.max(axis=1, keepdims=True)
        p = np.exp(s - m)
        want = (p / p.sum(axis=1, keepdims=True)) @ v[1, h]
        np.testing.assert_allclose(o[1, h], want, atol=2e-5)
        np.testing.assert_allclose(lse[1, h], (m + np.log(p.sum(axis=1, keepdims=True)))[:, 0], atol=2e-5)


def test_backward_matches_the_reference(masks, qkv, rng):
    d_o = randn(rng, (2, 3, 300, 40))
    o, lse = sparsa.attention(*qkv, masks, layer=0)
    grads = sparsa.attention_backward(*qkv, o, lse, d_o, masks, layer=0)
    refs = sparsa.reference_backward(*qkv, d_o, masks, layer=0)
    for name, g, r in zip(("dq", "dk", "dv"), grads, refs):
        assert g.shape == (2, 3, 300, 40) and g.dtype == np.float32, name
        assert np.abs(g - r).max() <= 2e-5 * max(np.abs(r).max(), 1.0), name
    # lse may also be given as [batch, heads, n, 1].
    again = sparsa.attention_backward(*qkv, o, lse[..., None], d_o, masks, layer=0)
    np.testing.assert_array_equal(again[0], grads[0])


def test_backward_matches_finite_differences(rng):
    masks = sparsa.compile("heads 1\nattend = window(6)", n=40, block=16)
    q, k, v, d_o = (randn(rng, (1, 1, 40, 8), np.float64) for _ in range(4))
    dq, dk, dv = sparsa.reference_backward(q, k, v, d_o, masks)
    eps = 1e-6
    for tensor, grad in ((q, dq), (k, dk), (v, dv)):
        for index in [(0, 0, 3, 1), (0, 0, 20, 7), (0, 0, 39, 0)]:
            saved = tensor[index]
            tensor[index] = saved + eps
            plus = (sparsa.reference(q, k, v, masks)[0] * d_o).sum()
            tensor[index] = saved - eps
            minus = (sparsa.reference(q, k, v, masks)[0] * d_o).sum()
            tensor[index] = saved
            assert (plus - minus) / (2 * eps) == pytest.approx(grad[index], rel=1e-5, abs=1e-7)


def test_float64_and_non_contiguous_inputs_are_converted(masks, qkv):
    q, k, v = qkv
    o, lse = sparsa.attention(q, k, v, masks)
    # float64: rounded to float32 (exactly the float32 inputs here), same result.
    o64, lse64 = sparsa.attention(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64), masks)
    np.testing.assert_array_equal(o64, o)
    # Non-contiguous: a transposed view and a strided slice of bigger arrays.
    qt = np.ascontiguousarray(q.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    big_k = np.zeros((2, 3, 300, 80), np.float32)
    big_k[..., ::2] = k
    assert not qt.flags.c_contiguous and not big_k[..., ::2].flags.c_contiguous
    o2, _ = sparsa.attention(qt, big_k[..., ::2], v, masks)
    np.testing.assert_array_equal(o2, o)
    # float16 is converted too; integers are refused naming the argument.
    sparsa.attention(q.astype(np.float16), k, v, masks)
    with pytest.raises(ValueError, match=r"^v: dtype int64 is not a floating type \(pass v.astype\(np.float32\)\)"):
        sparsa.attention(q, k, v.astype(np.int64), masks)


def test_outputs_are_handed_over_without_a_copy(masks, qkv):
    o, lse = sparsa.attention(*qkv, masks)
    # The arrays own no memory of their own: they keep the engine's buffers alive.
    assert not o.flags.owndata and o.base is not None and o.flags.c_contiguous and o.flags.writeable
    o[0, 0, 0, 0] = 5.0  # ours to change
    assert not lse.flags.owndata


def test_wrong_shapes_name_the_argument(masks, qkv):
    q, k, v = qkv
    with pytest.raises(ValueError, match=r"^q: expected 4 dimensions \[batch, heads, n, d\], got shape \(3, 300, 40\)"):
        sparsa.attention(q[0], k, v, masks)
    with pytest.raises(ValueError, match=r"^k: shape \(2, 3, 300, 39\) differs from q's"):
        sparsa.attention(q, k[..., :39], v, masks)
    with pytest.raises(ValueError, match=r"^q: n = 299 but the mask set was compiled for n = 300"):
        sparsa.attention(q[:, :, :299], k[:, :, :299], v[:, :, :299], masks)
    with pytest.raises(ValueError, match=r"^q: 2 heads but the mask set has 3"):
        sparsa.attention(q[:, :2], k[:, :2], v[:, :2], masks)
    with pytest.raises(ValueError, match=r"^layer 2 is out of range: the mask set has 2 layers"):
        sparsa.attention(q, k, v, masks, layer=2)
    with pytest.raises(ValueError, match=r"^v: expected a numpy array"):
        sparsa.attention(q, k, v.tolist(), masks)
    o, lse = sparsa.attention(q, k, v, masks)
    with pytest.raises(ValueError, match=r"^lse: shape \(2, 3, 10\) does not match"):
        sparsa.attention_backward(q, k, v, o, lse[..., :10], o, masks)
    with pytest.raises(ValueError, match=r"^d_o: shape"):
        sparsa.attention_backward(q, k, v, o, lse, o[:1], masks)


def test_nan_inputs_raise_a_sparsa_error(masks, qkv):
    q, k, v = qkv
    k = k.copy()
    k[1, 2, 7, 3] = np.nan
    with pytest.raises(sparsa.Error, match=r"K has NaN at \[1, 2, 7, 3\]|k has NaN at \[1, 2, 7, 3\]"):
        sparsa.attention(q, k, v, masks)


def test_empty_rows_give_zeros_and_minus_infinity(rng):
    masks = sparsa.compile("attend = rows(first(10))", n=64, block=16)
    q, k, v = (randn(rng, (1, 1, 64, 16)) for _ in range(3))
    o, lse = sparsa.attention(q, k, v, masks)
    assert np.all(o[0, 0, 10:] == 0) and np.all(np.isneginf(lse[0, 0, 10:]))
    assert np.all(np.isfinite(lse[0, 0, :10]))


def test_causal_output_ignores_the_future(rng):
    masks = sparsa.compile("causal\nattend = dense", n=128, block=32)
    q, k, v = (randn(rng, (1, 1, 128, 16)) for _ in range(3))
    o, _ = sparsa.attention(q, k, v, masks)
    k2, v2 = k.copy(), v.copy()
    k2[..., 100:, :] += 3.0
    v2[..., 100:, :] -= 2.0
    o2, _ = sparsa.attention(q, k2, v2, masks)
    np.testing.assert_array_equal(o2[..., :100, :], o[..., :100, :])
    assert not np.allclose(o2[..., 100:, :], o[..., 100:, :])


def test_thread_count_does_not_change_results(masks, qkv):
    one, _ = sparsa.attention(*qkv, masks, threads=1)
    two, _ = sparsa.attention(*qkv, masks, threads=2)
    np.testing.assert_array_equal(one, two)
    assert sparsa.thread_count() >= 1
