"""sparsa.torch on the GPU: forward and the three gradients against PyTorch's SDPA with the same
boolean mask (in float64, so the error measured is sparsa's), bf16 and fp16 within 2e-2 of the
largest reference value, float32 within 1e-4; example patterns and script masks at n = 1000 (not a
multiple of the block), several heads with different masks, grouped-query attention, an empty row,
a negative scale; torch.library.opcheck; a torch.compile'd model step with no graph break; a
non-default stream; the device masks cached per (MaskSet, layer) and freed with the MaskSet; the
errors of the GPU path.

Skipped, saying why, without torch, without a CUDA device, or when this sparsa has no CUDA engine
(CI: Debian's CPU-only torch 1.13). python/run_gpu_torch.sh runs it on the GPU machine; each
comparison's error is printed (pytest -s shows it; the script keeps the log)."""
import gc

import numpy as np
import pytest

import sparsa
from conftest import PATTERNS, cuda_skip_reason

try:
    import torch
    import torch.nn.functional as F
    import sparsa.torch as st
except ImportError:  # only torch can be missing: sparsa itself comes from the build
    torch = None


pytestmark = pytest.mark.skipif(cuda_skip_reason() is not None, reason=str(cuda_skip_reason()))

HALF_TOLERANCE = 2e-2      # bf16 / fp16: |error| <= 2e-2 * max |reference| (issue 15)
FLOAT32_TOLERANCE = 1e-4
TOLERANCE = {"bfloat16": HALF_TOLERANCE, "float16": HALF_TOLERANCE, "float32": FLOAT32_TOLERANCE}
N = 1000                   # not a multiple of 64 or 128: the last block is partial


def inputs(batch, heads, kv_heads, n, d, dtype, seed):
    """q [batch, heads, n, d], k, v [batch, kv_heads, n, d] and d_o, on the GPU in `dtype`, leaves."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(batch, heads, n, d, device="cuda", generator=g).to(dtype)
    k, v = (torch.randn(batch, kv_heads, n, d, device="cuda", generator=g).to(dtype) for _ in range(2))
    d_o = torch.randn(batch, heads, n, d, device="cuda", generator=g).to(dtype)
    return [t.requires_grad_() for t in (q, k, v)], d_o


def allowed_of(masks, layer):
    """[heads, n, n] bool on the GPU: True where head h's query may read the key."""
    return torch.from_numpy(np.stack([masks.to_dense(layer, h) for h in range(masks.heads)])).cuda()


def reference(q, k, v, d_o, allowed, scale=None):
    """o, dq, dk, dv in float64 from SDPA with the boolean mask (k, v repeated to q's heads, the
    gradients of k and v summed back by autograd). Rows with no allowed key: zero output and zero
    gradients, as sparsa gives (SDPA alone would give NaN there)."""
    group = q.shape[1] // k.shape[1]
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    has_key = allowed.any(dim=-1, keepdim=True)
    o = F.scaled_dot_product_attention(q64, k64.repeat_interleave(group, dim=1), v64.repeat_interleave(group, dim=1),
                                       attn_mask=allowed | ~has_key, scale=scale)
    o = o * has_key
    o.backward(d_o.double())
    return [o.detach()] + [t.grad for t in (q64, k64, v64)]


def sparsa_run(q, k, v, d_o, masks, layer, scale=None):
    o = st.attention(q, k, v, masks, layer=layer, scale=scale)
    o.backward(d_o)
    return [o.detach()] + [t.grad for t in (q, k, v)]


def relative_errors(got, want):
    return [((g.double() - w).abs().max() / w.abs().max().clamp_min(1e-30)).item() for g, w in zip(got, want)]


def check(name, got, want, dtype_name):
    errors = relative_errors(got, want)
    print(f"{name}: relative error o {errors[0]:.2e}, dq {errors[1]:.2e}, dk {errors[2]:.2e}, dv {errors[3]:.2e}")
    for what, g, w, e in zip(("o", "dq", "dk", "dv"), got, want, errors):
        assert g.dtype == getattr(torch, dtype_name) and g.shape == w.shape, (name, what)
        assert torch.isfinite(g).all(), (name, what)
        assert e <= TOLERANCE[dtype_name], (name, what, e)


SCRIPTS = {
    "causal": "heads 4\ncausal\nattend = dense",
    "window": "heads 4\nattend = window(100)",
    "per-head": "heads 4\nattend = window(64)\nattend[head 1] = causal & dilated(9, 3)\n"
                "attend[head 2] = global(first(70)) | band(1)\nattend[head 3] = dense",
}


@pytest.mark.parametrize("dtype_name", ["bfloat16", "float16"])
@pytest.mark.parametrize("name", ["causal", "window", "per-head"])
@pytest.mark.parametrize("d, kv_heads", [(64, 4), (128, 2)])
def test_script_masks_match_sdpa(name, dtype_name, d, kv_heads):
    masks = sparsa.compile(SCRIPTS[name], n=N)
    (q, k, v), d_o = inputs(2, 4, kv_heads, N, d, getattr(torch, dtype_name), seed=1)
    got = sparsa_run(q, k, v, d_o, masks, 0)
    check(f"{name} {dtype_name} d={d} kv_heads={kv_heads}", got, reference(q, k, v, d_o, allowed_of(masks, 0)), dtype_name)


@pytest.mark.parametrize("dtype_name", ["bfloat16", "float16"])
@pytest.mark.parametrize("pattern", ["bigbird", "longformer", "streaming", "per_head_mix", "sparse_transformer_fixed"])
def test_example_patterns_match_sdpa(pattern, dtype_name):
    masks = sparsa.compile_file(PATTERNS / f"{pattern}.pat", n=N)
    layer = masks.layers - 1
    (q, k, v), d_o = inputs(1, masks.heads, masks.heads // 2, N, 64, getattr(torch, dtype_name), seed=2)
    got = sparsa_run(q, k, v, d_o, masks, layer)
    check(f"{pattern} {dtype_name} (GQA {masks.heads}/{masks.heads // 2})", got,
          reference(q, k, v, d_o, allowed_of(masks, layer)), dtype_name)


@pytest.mark.parametrize("block", [64, 128])
def test_blocks_of_128_and_a_small_n(block):
    masks = sparsa.compile("heads 2\ncausal\nattend = window(left = 150, right = 0) | columns(first(7))", n=300,
                           block=block)
    (q, k, v), d_o = inputs(3, 2, 1, 300, 128, torch.bfloat16, seed=3)
    check(f"block {block} n=300", sparsa_run(q, k, v, d_o, masks, 0), reference(q, k, v, d_o, allowed_of(masks, 0)),
          "bfloat16")


def test_float32_runs_the_simple_kernel_and_any_d():
    masks = sparsa.compile("heads 2\nattend = window(40) | global(first(9))", n=333, block=32)
    (q, k, v), d_o = inputs(2, 2, 2, 333, 40, torch.float32, seed=4)
    check("float32 d=40 block 32", sparsa_run(q, k, v, d_o, masks, 0), reference(q, k, v, d_o, allowed_of(masks, 0)),
          "float32")


def test_an_empty_row_gives_zeros_and_a_negative_scale_works():
    n = 200
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    dense = np.stack([np.abs(i - j) <= 20, j <= i])
    dense[1, 77, :] = False
    masks = sparsa.mask_set_from_dense(dense[None], block=64)
    (q, k, v), d_o = inputs(1, 2, 2, n, 64, torch.bfloat16, seed=5)
    got = sparsa_run(q, k, v, d_o, masks, 0, scale=-0.1)
    check("empty row, scale -0.1", got, reference(q, k, v, d_o, allowed_of(masks, 0), scale=-0.1), "bfloat16")
    assert not got[0][0, 1, 77].any() and not got[1][0, 1, 77].any()


def test_strided_inputs_and_an_expanded_gradient():
    masks = sparsa.compile("heads 4\ncausal\nattend = dense", n=256)
    g = torch.Generator(device="cuda").manual_seed(6)
    # [batch, n, heads, d] transposed: what a model's projection gives.
    q, k, v = (torch.randn(2, 256, 4, 64, device="cuda", generator=g, dtype=torch.bfloat16).transpose(1, 2)
               .requires_grad_() for _ in range(3))
    o = st.attention(q, k, v, masks)
    o.sum().backward()   # d_o reaches backward as a stride-0 tensor
    want = reference(q, k, v, torch.ones_like(o), allowed_of(masks, 0))
    check("strided", [o.detach(), q.grad, k.grad, v.grad], want, "bfloat16")


def test_a_non_default_stream_is_the_one_used():
    masks = sparsa.compile("heads 4\nattend = window(64) | global(first(16))", n=2048)
    (q, k, v), d_o = inputs(1, 4, 4, 2048, 128, torch.bfloat16, seed=7)
    want = sparsa_run(q, k, v, d_o, masks, 0)
    for t in (q, k, v):
        t.grad = None
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        # A busy stream, then inputs made on it: a launch on any other stream would read them
        # before they are written.
        torch.cuda._sleep(100_000_000)
        q2, k2, v2 = ((t.detach() * 1).requires_grad_() for t in (q, k, v))
        got = sparsa_run(q2, k2, v2, d_o, masks, 0)
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    for what, g, w in zip(("o", "dq", "dk", "dv"), got, want):
        assert torch.equal(g, w), what   # the kernels are deterministic: the same bits on either stream


def test_device_masks_are_uploaded_once_per_layer_and_freed_with_the_mask_set():
    masks = sparsa.compile("heads 2\nlayers 2\nattend = window(10 + 30 * l)", n=300)
    (q, k, v), _ = inputs(1, 2, 2, 300, 64, torch.float16, seed=8)
    key = st._masks_key(masks)
    for layer in (0, 1, 0, 1):
        st.attention(q, k, v, masks, layer=layer)
    on_device = st._masks_by_key[key].on_device
    assert sorted(on_device) == [(0, torch.cuda.current_device()), (1, torch.cuda.current_device())]
    first = on_device[(0, torch.cuda.current_device())]
    st.attention(q, k, v, masks)
    assert on_device[(0, torch.cuda.current_device())] is first
    del masks, on_device, first
    gc.collect()
    assert key not in st._masks_by_key


@pytest.mark.skipif(torch is None or not hasattr(torch.library, "opcheck"), reason="torch.library.opcheck needs torch 2.4+")
@pytest.mark.parametrize("dtype_name", ["bfloat16", "float16", "float32"])
def test_opcheck(dtype_name):
    masks = sparsa.compile("heads 4\ncausal\nattend = window(left = 90, right = 0) | columns(first(5))", n=200)
    (q, k, v), _ = inputs(2, 4, 2, 200, 64, getattr(torch, dtype_name), seed=9)
    torch.library.opcheck(torch.ops.sparsa.attention.default, (q, k, v, st._masks_key(masks), 0, 0.0, 0))


class TinyBlock(torch.nn.Module if torch is not None else object):
    """One pre-norm attention block over [batch, n, dim]: q, k, v [batch, heads, n, dim / heads]."""

    def __init__(self, masks, dim=256, heads=4):
        super().__init__()
        self.masks, self.heads = masks, heads
        self.norm = torch.nn.LayerNorm(dim)
        self.qkv, self.out = torch.nn.Linear(dim, 3 * dim), torch.nn.Linear(dim, dim)

    def forward(self, x):
        b, n, dim = x.shape
        q, k, v = self.qkv(self.norm(x)).view(b, n, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        return x + self.out(st.attention(q, k, v, self.masks).transpose(1, 2).reshape(b, n, dim))


@pytest.mark.skipif(torch is None or not hasattr(torch, "compile") or not st.custom_op_registered,
                    reason="torch.compile over the custom op needs torch 2.4+")
def test_a_compiled_model_step_has_no_graph_break():
    torch._dynamo.reset()
    masks = sparsa.compile("heads 4\ncausal\nattend = window(left = 128, right = 0) | columns(first(16))", n=512)
    torch.manual_seed(10)
    model = TinyBlock(masks).cuda().to(torch.bfloat16)
    x = torch.randn(2, 512, 256, device="cuda", dtype=torch.bfloat16)

    def step(model, x):
        return model(x).float().square().mean()

    loss = step(model, x)   # eager: the reference
    loss.backward()
    want = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    explain = torch._dynamo.explain(step)(model, x)
    print(f"torch._dynamo.explain: {explain.graph_count} graph(s), {explain.graph_break_count} break(s) "
          f"{[str(r.reason)[:300] for r in explain.break_reasons]}")
    assert explain.graph_break_count == 0, [str(r.reason) for r in explain.break_reasons]
    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True)
    for _ in range(2):   # twice: the second call runs the cached graph
        model.zero_grad(set_to_none=True)
        got = compiled(model, x)
        got.backward()
    assert abs(got.item() - loss.item()) <= 2e-2 * abs(loss.item())
    for p, w in zip(model.parameters(), want):
        assert ((p.grad.float() - w.float()).abs().max() <= 2e-2 * w.float().abs().max().clamp_min(1e-6)).item()


@pytest.mark.skipif(torch is None or not hasattr(torch, "compile") or not st.custom_op_registered,
                    reason="torch.compile over the custom op needs torch 2.4+")
def test_a_mask_set_first_seen_inside_torch_compile():
    torch._dynamo.reset()
    masks = sparsa.compile("heads 4\nattend = window(33)", n=256)   # never seen eagerly
    (q, k, v), d_o = inputs(1, 4, 4, 256, 64, torch.bfloat16, seed=11)
    f = torch.compile(lambda q, k, v: st.attention(q, k, v, masks))
    o = f(q, k, v)
    o.backward(d_o)
    check("first seen inside torch.compile", [o.detach(), q.grad, k.grad, v.grad],
          reference(q, k, v, d_o, allowed_of(masks, 0)), "bfloat16")
    # Registered by that call; traced again, the function has no break.
    explain = torch._dynamo.explain(lambda q, k, v: st.attention(q, k, v, masks))(q, k, v)
    assert explain.graph_break_count == 0, [str(r.reason) for r in explain.break_reasons]


def cuda_args(**change):
    masks = sparsa.compile("heads 4\nattend = window(3)", n=64)
    (q, k, v), _ = inputs(1, 4, 4, 64, 64, torch.bfloat16, seed=12)
    args = dict(q=q, k=k, v=v, masks=masks)
    args.update(change)
    return args


@pytest.mark.parametrize("change, error, words", [
    (lambda: dict(k=torch.zeros(1, 4, 64, 64, dtype=torch.bfloat16)), ValueError, "k is on cpu but q is on cuda:0"),
    (lambda: dict(q=torch.zeros(1, 4, 64, 64, device="cuda", dtype=torch.float64),
                  k=torch.zeros(1, 4, 64, 64, device="cuda", dtype=torch.float64),
                  v=torch.zeros(1, 4, 64, 64, device="cuda", dtype=torch.float64)), ValueError,
     "q: dtype torch.float64 runs on the CPU only"),
    (lambda: dict(q=torch.zeros(1, 4, 64, 96, device="cuda", dtype=torch.float16),
                  k=torch.zeros(1, 4, 64, 96, device="cuda", dtype=torch.float16),
                  v=torch.zeros(1, 4, 64, 96, device="cuda", dtype=torch.float16)), ValueError,
     r"q: head dimension d = 96 with torch.float16 on the GPU: its tensor-core kernels run d = 64 or 128"),
    (lambda: dict(q=torch.zeros(1, 4, 64, 300, device="cuda"), k=torch.zeros(1, 4, 64, 300, device="cuda"),
                  v=torch.zeros(1, 4, 64, 300, device="cuda")), ValueError, "q: head dimension d = 300 is above 256"),
])
def test_errors_name_the_argument(change, error, words):
    with pytest.raises(error, match="^sparsa.torch.attention\\(\\): " + words):
        st.attention(**cuda_args(**change()))


def test_content_based_heads_run_forward_on_the_cuda_content_engine():
    """A layer of lsh heads on CUDA tensors: the CUDA content engine on the tensors' device memory,
    o and lse exactly what sparsa.attention_cuda gives on the same (already bf16) values through
    host copies, also on a stream of its own; a layer with fixed blocks beside lsh (the host path)
    the same; content_attention_cuda's device times; the backward refused by name; a layer mixing
    specs refused by the engine."""
    masks = sparsa.compile("heads 4\ncausal\nattend = lsh(4, rounds = 2, chunk = 16, shared_qk = false)", n=256, block=16)
    (q, k, v), _ = inputs(2, 4, 2, 256, 64, torch.bfloat16, seed=5)   # grouped-query: 2 key/value heads
    o = st.attention(q, k, v, masks)
    assert o.shape == q.shape and o.dtype == torch.bfloat16 and o.device == q.device
    qa, ka, va = (t.detach().float().cpu().numpy() for t in (q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)))
    want, lse = sparsa.attention_cuda(qa, ka, va, masks, dtype="bfloat16")
    assert torch.equal(o.cpu(), torch.from_numpy(want).to(torch.bfloat16))
    o_dev, lse_dev = st._forward_content_cuda(q, k, v, masks, 0, 0.0)
    assert torch.equal(o_dev, o) and torch.equal(lse_dev.cpu(), torch.from_numpy(np.ascontiguousarray(lse)).reshape(lse_dev.shape))
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        o_side = st.attention(q, k, v, masks)
    torch.cuda.synchronize()
    assert torch.equal(o_side, o)
    windowed = sparsa.compile("heads 4\ncausal\nattend = lsh(4, rounds = 2, chunk = 16, shared_qk = false) | window(2)", n=256,
                              block=16)
    want_w, _ = sparsa.attention_cuda(qa, ka, va, windowed, dtype="bfloat16")
    assert torch.equal(st.attention(q, k, v, windowed).cpu(), torch.from_numpy(want_w).to(torch.bfloat16))
    key = id(windowed)   # the cached content layer holds no reference: the set and its entry go together
    assert key in st._masks_by_key
    del windowed
    gc.collect()
    assert key not in st._masks_by_key
    o2, lse2, times = sparsa.content_attention_cuda(qa, ka, va, masks, dtype="bfloat16", repeats=3)
    assert np.array_equal(o2, want) and np.array_equal(lse2, lse)
    assert times["repeats"] == 3 and times["bucketing_ms"] > 0 and times["attention_ms"] > 0
    assert times["total_ms"] == pytest.approx(times["fixed_ms"] + times["bucketing_ms"] + times["attention_ms"] + times["merge_ms"],
                                              rel=0.5)   # medians of each part: near, not equal, to the total's
    with pytest.raises(ValueError, match="has no content-based head"):
        sparsa.content_attention_cuda(qa, ka, va, sparsa.compile("heads 4\nattend = window(3)", n=256))
    grad = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    with pytest.raises(NotImplementedError, match="run forward only on the GPU"):
        st.attention(*grad, masks).float().sum().backward()
    mixed = sparsa.compile("heads 4\ncausal\nattend = lsh(4, chunk = 16, shared_qk = false)\n"
                           "attend[head 2..4] = lsh(8, chunk = 16, shared_qk = false)", n=256, block=16)
    with pytest.raises(sparsa.Error, match="differs from head 0"):
        st.attention(q, k, v, mixed)
