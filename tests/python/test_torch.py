"""sparsa.torch on the CPU: the forward is sparsa.attention's bit for bit, the gradients match the
double-precision reference on example patterns, gradcheck in float64 (odd n, per-head masks, an
empty row, grouped-query attention), GQA against explicitly repeated k and v, half precision,
strides, requires_grad combinations, and an error naming the argument for every bad input.
Skipped only where PyTorch is missing (CI installs Debian's python3-torch)."""
import subprocess
import sys
import types

import numpy as np
import pytest

import sparsa
from conftest import PATTERNS

try:
    import torch
    import sparsa.torch as st
except ImportError:  # only torch can be missing: sparsa itself comes from the build
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed for this Python "
                                 "(apt install python3-torch); sparsa.torch's tests need it")

# float32 engine against the float64 reference: |error| <= RTOL * max(|reference|, 1), as in test_attention.py.
RTOL_FORWARD = 1e-5
RTOL_GRADIENTS = 2e-5


def tensors(shape, count, dtype=None, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=dtype or torch.float32).requires_grad_(requires_grad)
            for _ in range(count)]


def numpy_of(*ts):
    return [t.detach().numpy() for t in ts]


def close(got, want, rtol):
    """max |got - want| <= rtol * max(|want|, 1)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return np.abs(got - want).max() <= rtol * max(np.abs(want).max(), 1.0)


def grads_of(q, k, v, masks, d_o, **kwargs):
    for t in (q, k, v):
        t.grad = None
    o = st.attention(q, k, v, masks, **kwargs)
    (o * d_o).sum().backward()
    return o, [t.grad for t in (q, k, v)]


def with_empty_row():
    """3 heads, n = 37 (not a multiple of the block, 16), each head its own mask; head 1's row 5
    allows no key."""
    n = 37
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    dense = np.stack([np.abs(i - j) <= 3, j <= i, (j % 5 == 0) | (i == j)])
    dense[1, 5, :] = False
    return sparsa.mask_set_from_dense(dense[None], block=16)


def test_import_sparsa_never_needs_torch_and_sparsa_torch_says_what_is_missing():
    code = ("import sys; sys.modules['torch'] = None\n"   # makes `import torch` fail, as when it is not installed
            "import sparsa\n"
            "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
            "try:\n    import sparsa.torch\nexcept ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "sparsa.torch needs PyTorch" in out.stdout and "apt install python3-torch" in out.stdout


@needs_torch
@pytest.mark.parametrize("layer", [0, 1])
def test_forward_is_the_engines_bit_for_bit(layer):
    masks = sparsa.compile("heads 3\nlayers 2\nattend = window(17) | global(first(5))\n"
                           "attend[head 2] = causal & dilated(9, 3)", n=300, block=32)
    q, k, v = tensors((2, 3, 300, 40), 3)
    o = st.attention(q, k, v, masks, layer=layer, scale=0.2)
    want, _ = sparsa.attention(*numpy_of(q, k, v), masks, layer=layer, scale=0.2)
    assert o.dtype == torch.float32 and o.shape == (2, 3, 300, 40)
    np.testing.assert_array_equal(o.numpy(), want)
    # scale None is 1 / sqrt(d), the engine's default.
    np.testing.assert_array_equal(st.attention(q, k, v, masks, layer=layer).numpy(),
                                  sparsa.attention(*numpy_of(q, k, v), masks, layer=layer)[0])


@needs_torch
@pytest.mark.parametrize("name", ["causal", "longformer", "bigbird", "streaming", "per_head_mix", "sparse_transformer_fixed"])
def test_gradients_match_the_reference_on_example_patterns(name):
    masks = sparsa.compile_file(PATTERNS / f"{name}.pat", n=200, block=32)
    shape = (2, masks.heads, 200, 16)
    q, k, v = tensors(shape, 3, seed=1, requires_grad=True)
    (d_o,) = tensors(shape, 1, seed=2)
    layer = masks.layers - 1
    o, grads = grads_of(q, k, v, masks, d_o, layer=layer)
    o_ref, _ = sparsa.reference(*numpy_of(q, k, v), masks, layer=layer)
    refs = sparsa.reference_backward(*numpy_of(q, k, v, d_o), masks, layer=layer)
    assert close(o.detach().numpy(), o_ref, RTOL_FORWARD), name
    for what, g, r in zip(("dq", "dk", "dv"), grads, refs):
        assert g.dtype == torch.float32 and g.shape == shape, what
        assert close(g.numpy(), r, RTOL_GRADIENTS), (name, what)


@needs_torch
def test_float64_runs_the_reference():
    masks = with_empty_row()
    q, k, v = tensors((2, 3, 37, 8), 3, dtype=torch.float64)
    o = st.attention(q, k, v, masks)
    assert o.dtype == torch.float64
    np.testing.assert_array_equal(o.numpy(), sparsa.reference(*numpy_of(q, k, v), masks)[0])


@needs_torch
def test_gradcheck_float64_odd_n_per_head_masks_and_an_empty_row():
    masks = with_empty_row()
    q, k, v = tensors((1, 3, 37, 3), 3, dtype=torch.float64, seed=3, requires_grad=True)
    assert masks.stats(0, 1).empty_rows == 1
    assert torch.autograd.gradcheck(lambda q, k, v: st.attention(q, k, v, masks, scale=0.7), (q, k, v))
    # The empty row: zeros out, zero gradient into its query.
    o = st.attention(q, k, v, masks)
    o.sum().backward()
    assert not o[0, 1, 5].any() and not q.grad[0, 1, 5].any()


@needs_torch
def test_gradcheck_float64_grouped_query_attention():
    masks = with_empty_row()
    (q,) = tensors((2, 3, 37, 3), 1, dtype=torch.float64, seed=4, requires_grad=True)
    k, v = tensors((2, 1, 37, 3), 2, dtype=torch.float64, seed=5, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, k, v: st.attention(q, k, v, masks), (q, k, v))


@needs_torch
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_grouped_query_attention_equals_repeated_keys_and_values(dtype):
    dtype = getattr(torch, dtype)
    masks = sparsa.compile("heads 6\nattend = window(5 + 7 * h) | global(first(3))", n=70, block=16)
    (q,) = tensors((2, 6, 70, 8), 1, dtype=dtype, seed=6, requires_grad=True)
    k, v = tensors((2, 2, 70, 8), 2, dtype=dtype, seed=7, requires_grad=True)
    (d_o,) = tensors((2, 6, 70, 8), 1, dtype=dtype, seed=8)
    o, grads = grads_of(q, k, v, masks, d_o)
    # Query head h reads key head h // 3: repeat_interleave, whose backward sums over each group.
    q2, k2, v2 = (t.detach().clone().requires_grad_() for t in (q, k, v))
    o2 = st.attention(q2, k2.repeat_interleave(3, dim=1), v2.repeat_interleave(3, dim=1), masks)
    (o2 * d_o).sum().backward()
    assert torch.equal(o, o2) and torch.equal(grads[0], q2.grad)
    # dk, dv: the same three terms, summed by numpy here and by torch there (orders may differ by an ulp).
    for g, want in ((grads[1], k2.grad), (grads[2], v2.grad)):
        assert g.shape == (2, 2, 70, 8)
        assert close(g.numpy(), want.numpy(), 1e-6 if dtype == torch.float32 else 1e-14)


@needs_torch
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_is_upcast_to_the_float32_engine(dtype):
    dtype = getattr(torch, dtype)
    masks = sparsa.compile("heads 2\ncausal\nattend = window(left = 9, right = 0)", n=50, block=16)
    q, k, v = (t.to(dtype).requires_grad_() for t in tensors((1, 2, 50, 16), 3, seed=9))
    (d_o,) = tensors((1, 2, 50, 16), 1, seed=10)
    d_o = d_o.to(dtype)
    o, grads = grads_of(q, k, v, masks, d_o)
    up = [t.detach().float() for t in (q, k, v)]
    want_o, lse = sparsa.attention(*numpy_of(*up), masks)
    # the backward takes O as the caller got it (rounded to the dtype), on every torch
    o_seen = torch.from_numpy(want_o).to(dtype).float().numpy()
    want = sparsa.attention_backward(*numpy_of(*up), o_seen, lse, d_o.float().numpy(), masks)
    assert o.dtype == dtype and all(g.dtype == dtype for g in grads)
    assert torch.equal(o, torch.from_numpy(want_o).to(dtype))
    for g, w in zip(grads, want):
        assert torch.equal(g, torch.from_numpy(w).to(dtype))


@needs_torch
def test_any_strides_and_expanded_gradients():
    masks = sparsa.compile("heads 4\nattend = window(6)", n=40, block=16)
    # [batch, n, heads, d] transposed to [batch, heads, n, d]: not contiguous.
    q, k, v = (t.transpose(1, 2) for t in tensors((2, 40, 4, 8), 3, seed=11))
    assert not q.is_contiguous()
    np.testing.assert_array_equal(st.attention(q, k, v, masks).numpy(),
                                  st.attention(*(t.contiguous() for t in (q, k, v)), masks).numpy())
    # o.sum()'s gradient reaches backward as an expanded (stride 0) tensor.
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    st.attention(*leaves, masks).sum().backward()
    want = sparsa.attention_backward(*numpy_of(q, k, v), *sparsa.attention(*numpy_of(q, k, v), masks),
                                     np.ones((2, 4, 40, 8), np.float32), masks)
    for t, w in zip(leaves, want):
        np.testing.assert_array_equal(t.grad.numpy(), w)


@needs_torch
def test_requires_grad_combinations():
    masks = sparsa.compile("heads 2\nattend = window(4)", n=33, block=16)
    base = tensors((1, 2, 33, 4), 3, seed=12)
    (d_o,) = tensors((1, 2, 33, 4), 1, seed=13)
    full = [t.clone().requires_grad_() for t in base]
    _, all_grads = grads_of(*full, masks, d_o)
    for wanted in ([False, False, True], [True, False, False], [False, True, True]):
        ts = [t.clone().requires_grad_(w) for t, w in zip(base, wanted)]
        (st.attention(*ts, masks) * d_o).sum().backward()
        for t, w, g in zip(ts, wanted, all_grads):
            assert (t.grad is not None) == w
            if w:
                assert torch.equal(t.grad, g)
    o = st.attention(*base, masks)
    assert not o.requires_grad
    with torch.no_grad():
        assert not st.attention(*full, masks).requires_grad


@needs_torch
def test_not_twice_differentiable():
    masks = sparsa.compile("heads 1\nattend = window(4)", n=20, block=16)
    q, k, v = tensors((1, 1, 20, 4), 3, seed=14, requires_grad=True)
    o = st.attention(q, k, v, masks)
    (g,) = torch.autograd.grad(o.square().sum(), q, create_graph=True)   # d_o = 2 o needs a graph of its own
    # torch.autograd.Function (torch < 2.4) and the custom op (2.4+) each say it their way
    with pytest.raises(RuntimeError, match="differentiate twice a function that was marked with @once_differentiable"
                                           "|no autograd formula was registered"):
        g.sum().backward()


@needs_torch
def test_the_custom_op_is_registered_where_torch_has_custom_op():
    assert st.custom_op_registered == hasattr(torch.library, "custom_op")


@needs_torch
@pytest.mark.skipif(torch is None or not hasattr(torch.library, "opcheck"), reason="torch.library.opcheck needs torch 2.4+")
def test_opcheck():  # runs where torch is 2.4 or newer (not Debian's 1.13)
    masks = sparsa.compile("heads 4\ncausal\nattend = window(left = 9, right = 0)", n=40, block=16)
    (q,) = tensors((2, 4, 40, 8), 1, seed=15, requires_grad=True)
    k, v = tensors((2, 2, 40, 8), 2, seed=16, requires_grad=True)
    torch.library.opcheck(torch.ops.sparsa.attention.default, (q, k, v, st._masks_key(masks), 0, 0.0, 0))


def bad(**change):
    """attention()'s arguments, good but for `change`."""
    masks = sparsa.compile("heads 4\nlayers 2\nattend = window(3)", n=20, block=16)
    q, k, v = tensors((1, 4, 20, 8), 3)
    args = dict(q=q, k=k, v=v, masks=masks)
    args.update(change)
    return args


@needs_torch
@pytest.mark.parametrize("change, error, words", [
    (lambda: dict(q=np.zeros((1, 4, 20, 8), np.float32)), TypeError, "q must be a torch.Tensor .* not ndarray"),
    (lambda: dict(v=[1.0]), TypeError, "v must be a torch.Tensor"),
    (lambda: dict(masks=None), TypeError, "masks must be a sparsa.MaskSet .* not None"),
    (lambda: dict(layer=True), TypeError, "layer must be an integer"),
    (lambda: dict(layer=1.0), TypeError, "layer must be an integer"),
    (lambda: dict(layer=2), ValueError, r"layer 2 is out of range: the mask set has 2 layers \(0..1\)"),
    (lambda: dict(layer=-1), ValueError, "layer -1 is out of range"),
    (lambda: dict(scale="0.1"), TypeError, "scale must be a number or None"),
    (lambda: dict(scale=float("nan")), ValueError, "scale = nan is not usable"),
    (lambda: dict(scale=0), ValueError, r"scale = 0 is not usable .*None for 1 / sqrt\(d\)"),
    (lambda: dict(threads=-1), ValueError, "threads = -1 is negative"),
    (lambda: dict(threads=1.5), TypeError, "threads must be an integer"),
    (lambda: dict(q=torch.zeros(4, 20, 8)), ValueError, r"q: expected 4 dimensions \[batch, heads, n, d\], got shape \(4, 20, 8\)"),
    (lambda: dict(k=torch.zeros(1, 1, 4, 20, 8)), ValueError, "k: expected 4 dimensions"),
    (lambda: dict(q=torch.zeros(1, 4, 20, 8, dtype=torch.int64)), ValueError, "q: dtype torch.int64 is not supported"),
    (lambda: dict(q=torch.zeros(1, 4, 20, 8, dtype=torch.complex64)), ValueError, "q: dtype torch.complex64"),
    (lambda: dict(k=torch.zeros(1, 4, 20, 8, dtype=torch.float64)), ValueError,
     r"k: dtype torch.float64 differs from q's torch.float32 .*k.to\(q.dtype\)"),
    (lambda: dict(v=torch.zeros(1, 4, 20, 8, dtype=torch.float16)), ValueError, "v: dtype torch.float16 differs"),
    (lambda: dict(k=torch.zeros(1, 4, 20, 8, device="meta")), ValueError, "k is on meta but q is on cpu"),
    (lambda: dict(q=torch.zeros(1, 4, 20, 8, device="meta"), k=torch.zeros(1, 4, 20, 8, device="meta"),
                  v=torch.zeros(1, 4, 20, 8, device="meta")), NotImplementedError, "q is on meta; sparsa.torch runs on CPU and CUDA tensors"),
    (lambda: dict(v=torch.zeros(1, 4, 20, 7)), ValueError, r"v: shape \(1, 4, 20, 7\) differs from k's \(1, 4, 20, 8\)"),
    (lambda: dict(k=torch.zeros(2, 4, 20, 8), v=torch.zeros(2, 4, 20, 8)), ValueError,
     r"k: shape \(2, 4, 20, 8\) does not match q's \(1, 4, 20, 8\) in batch, n or d"),
    (lambda: dict(k=torch.zeros(1, 4, 20, 4), v=torch.zeros(1, 4, 20, 4)), ValueError, r"k: shape \(1, 4, 20, 4\) does not match q's"),
    (lambda: dict(k=torch.zeros(1, 3, 20, 8), v=torch.zeros(1, 3, 20, 8)), ValueError,
     "k: 3 heads do not divide q's 4 .*grouped-query"),
    (lambda: dict(q=torch.zeros(1, 0, 20, 8), k=torch.zeros(1, 0, 20, 8), v=torch.zeros(1, 0, 20, 8)), ValueError,
     "q: shape \\(1, 0, 20, 8\\) has an empty dimension"),
    (lambda: dict(q=torch.zeros(1, 8, 20, 8)), ValueError, r"q: 8 heads but the mask set has 4 .*`heads 8`"),
    # A one-head mask set is not spread over the heads (sparsa.attention does not do it either).
    (lambda: dict(masks=sparsa.compile("attend = window(3)", n=20, block=16)), ValueError, "q: 4 heads but the mask set has 1"),
    (lambda: dict(masks=sparsa.compile("heads 4\nattend = window(3)", n=21, block=16)), ValueError,
     r"q: n = 20 but the mask set was compiled for n = 21 \(compile the script with n=20\)"),
])
def test_errors_name_the_argument(change, error, words):
    with pytest.raises(error, match="^sparsa.torch.attention\\(\\): " + words):
        st.attention(**bad(**change()))


@needs_torch
def test_engine_errors_pass_through():
    q, k, v = tensors((1, 4, 20, 8), 3)
    q[0, 1, 2, 3] = float("nan")
    with pytest.raises(sparsa.Error, match=r"Q has NaN at \[0, 1, 2, 3\]"):
        st.attention(**bad(q=q, k=k, v=v))
    with pytest.raises(ValueError, match=r"q: head dimension d = 300 is above 256 \(split the heads"):
        st.attention(**bad(q=torch.zeros(1, 4, 20, 300), k=torch.zeros(1, 4, 20, 300), v=torch.zeros(1, 4, 20, 300)))


@needs_torch
def test_the_mask_set_registry_lets_go_of_a_collected_mask_set():
    # The custom op names its mask set by key; the entry (and on a GPU the set's device copies,
    # test_torch_cuda.py) goes with the MaskSet.
    import gc
    masks = sparsa.compile("heads 4\nattend = window(3)", n=20, block=16)
    q, k, v = tensors((1, 4, 20, 8), 3)
    st.attention(q, k, v, masks)
    key = st._masks_key(masks)
    assert st._masks_get(key) is masks and st._masks_by_key[key].heads == 4
    del masks
    gc.collect()
    assert key not in st._masks_by_key
    with pytest.raises(RuntimeError, match=f"mask set {key} is gone"):
        st._masks_get(key)


EXAMPLE = PATTERNS.parent / "torch" / "train_tiny_lm.py"


def example_run(tmp_path, name, *args):
    csv_path = tmp_path / f"{name}.csv"
    out = subprocess.run([sys.executable, str(EXAMPLE), "--steps", "4", "--batch", "8", "--csv", str(csv_path), *args],
                         capture_output=True, text=True, timeout=120)
    return out, csv_path


@needs_torch
def test_training_example_with_a_dense_script_tracks_dense_attention(tmp_path):
    curves = {}
    for name, args in (("sdpa", ["--attention", "sdpa"]),
                       ("dense", ["--pattern", str(EXAMPLE.parent / "dense_causal.pat")])):
        out, csv_path = example_run(tmp_path, name, *args)
        assert out.returncode == 0, out.stderr
        rows = np.genfromtxt(csv_path, delimiter=",", names=True)
        assert list(rows["step"]) == [1, 2, 3, 4]
        curves[name] = rows["loss"]
    # The same function, the same weights and batches: the same losses up to float32 rounding.
    assert np.abs(curves["sdpa"] - curves["dense"]).max() <= 1e-4
    assert curves["dense"][-1] < curves["dense"][0]


@needs_torch
def test_training_example_refuses_a_pattern_that_sees_the_future(tmp_path):
    out, csv_path = example_run(tmp_path, "bad", "--pattern", "heads 4\\nattend = window(2)")
    assert out.returncode != 0 and not csv_path.exists()
    assert "--pattern: layer 0, head 0 lets a query see later tokens (a causal language model needs `causal`" in out.stderr


@needs_torch
def test_seeds_summary_groups_runs_by_attention_and_refuses_mixed_runs(tmp_path):
    summary = EXAMPLE.parent / "seeds_summary.py"
    paths = {}
    for name, args in (("sdpa", ["--attention", "sdpa"]), ("dense", ["--pattern", str(EXAMPLE.parent / "dense_causal.pat")])):
        for seed in (1, 2):
            out, csv_path = example_run(tmp_path, f"{name}-seed{seed}", "--seed", str(seed), *args)
            assert out.returncode == 0, out.stderr
            paths.setdefault(name, []).append(str(csv_path))
    run = lambda *args: subprocess.run([sys.executable, str(summary), *args], capture_output=True, text=True, timeout=120)  # noqa: E731
    out = run("--group", "SDPA dense", *paths["sdpa"], "--group", "sparsa dense", *paths["dense"], "--learned", "100",
              "--at", "2,4", "-o", str(tmp_path / "s"))
    assert out.returncode == 0, out.stderr
    import json
    report = json.loads((tmp_path / "s.json").read_text())
    assert [g["label"] for g in report["groups"]] == ["SDPA dense", "sparsa dense"]
    assert all(r["learned_at"] == 1 for g in report["groups"] for r in g["runs"])   # every loss is below 100
    # the same function on the same seeds: the two groups' losses agree run by run (float32 rounding)
    for a, b in zip(*(g["runs"] for g in report["groups"])):
        assert np.abs(np.array(a["loss"]) - np.array(b["loss"])).max() <= 1e-4
    text = (tmp_path / "s.md").read_text()
    assert "| SDPA dense | 2 | 2 of 2 | 1 (1 to 1) |" in text and "loss at 4: median (range)" in text
    # a run of other steps in a group, a file that is no log, a label without files: refused, nothing written
    other = tmp_path / "other.csv"
    other.write_text("\n".join(open(paths["sdpa"][0]).read().splitlines()[:3]) + "\n")
    for args, words in (((*paths["sdpa"], str(other)), "do not have the same steps"),
                        ((str(tmp_path / "sdpa-seed1.csv"), str(EXAMPLE)), "is not a train_tiny_lm.py log")):
        out = run("--group", "x", *args, "-o", str(tmp_path / "bad"))
        assert out.returncode != 0 and words in out.stderr and not (tmp_path / "bad.md").exists()
    out = run("--group", "lonely", "-o", str(tmp_path / "bad"))
    assert out.returncode != 0 and "give the label, then at least one CSV" in out.stderr


@needs_torch
def test_the_cuda_content_path_hands_the_engine_host_arrays_with_grouped_heads_repeated(monkeypatch):
    """sparsa.torch on a content-based layer with fixed blocks beside it (whose fixed pass the CUDA
    content engine runs on host tensors) calls sparsa.attention_cuda with float32 host arrays, k and
    v repeated to q's heads, the dtype's name, and brings o back in q's dtype. Checked here with CPU
    tensors and the CPU engine in its place (the device path, for layers without fixed blocks, is
    test_torch_cuda.py's)."""
    masks = sparsa.compile("heads 4\ncausal\nattend = lsh(4, rounds = 2, chunk = 16, shared_qk = false) | window(2)", n=96, block=16)
    q = tensors((2, 4, 96, 8), 1, dtype=torch.bfloat16, seed=3)[0]
    k, v = tensors((2, 2, 96, 8), 2, dtype=torch.bfloat16, seed=4)
    calls = []

    def fake(qa, ka, va, masks_, layer, dtype, scale):
        calls.append((qa.dtype, qa.shape, ka.shape, dtype, layer, scale))
        return sparsa.attention(qa, ka, va, masks_, layer=layer, scale=scale)

    monkeypatch.setattr(st._sparsa, "attention_cuda", fake)
    monkeypatch.setattr(st, "_cuda_content_layer", lambda masks_, layer, d, device: types.SimpleNamespace(has_fixed=True))
    o, lse = st._forward_content_cuda(q, k, v, masks, 0, 0.0)
    assert calls == [(np.float32, (2, 4, 96, 8), (2, 4, 96, 8), "bfloat16", 0, 0.0)]
    want, want_lse = sparsa.attention(*(t.float().numpy() for t in (q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1))), masks)
    assert o.dtype == torch.bfloat16 and torch.equal(o, torch.from_numpy(want).to(torch.bfloat16))
    assert lse.shape == (2, 4, 96) and torch.equal(lse, torch.from_numpy(want_lse))
    assert 0 in st._masks_entry(masks)[1].content_layers
