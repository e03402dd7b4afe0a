"""sparsa.torch: sparsa's block-sparse attention as a PyTorch operator with autograd.

    import torch, sparsa, sparsa.torch
    masks = sparsa.compile("heads 4\\ncausal\\nattend = window(left = 64, right = 0)", n=512)
    q, k, v = (torch.randn(2, 4, 512, 32, requires_grad=True) for _ in range(3))
    o = sparsa.torch.attention(q, k, v, masks)          # [2, 4, 512, 32], head h uses mask (0, h)
    o.square().sum().backward()                         # q.grad, k.grad, v.grad

What runs where (docs/torch.md):
  float32 CPU tensors            the CPU engine, forward and backward (sparsa.attention, sparsa.attention_backward)
  float16 / bfloat16 CPU tensors upcast to float32, the CPU engine, o and the gradients cast back to the input dtype
  float64 CPU tensors            the double-precision dense reference, forward and backward (sparsa.reference,
                                 sparsa.reference_backward): slow on purpose, so that torch.autograd.gradcheck
                                 checks sparsa's gradients against finite differences
  CUDA tensors                   NotImplementedError: the GPU forward and backward are issue 15's next part

Importing this module needs torch; `import sparsa` alone never imports it. Where torch has
torch.library.custom_op (2.4 and newer) the operator is also registered as sparsa::attention with
a fake implementation, so torch.compile can trace it; on older torch (Debian's 1.13) it is a
torch.autograd.Function. Both run the same checks and the same numpy calls below.

Index
  [SECTION] checks        every argument, before anything runs; errors name the argument
  [SECTION] numpy calls   the engines on torch tensors: GQA expansion, gradients summed over each group
  [SECTION] autograd      torch.autograd.Function (every torch) and the custom op (torch 2.4+)
  [SECTION] attention     the public function
"""

try:
    import torch
except ImportError as _error:
    raise ImportError(
        "sparsa.torch needs PyTorch, which this Python cannot import "
        f"({_error}); install it (Debian: apt install python3-torch; elsewhere: pip install torch). "
        "The rest of sparsa works without it") from _error

import math
import numbers
import weakref

import numpy as np

import sparsa as _sparsa
from sparsa._arguments import describe as _describe

__all__ = ["attention", "custom_op_registered"]

_WHERE = "sparsa.torch.attention()"
_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

# [SECTION] checks


def _arguments_check(q, k, v, masks, layer, scale, threads):
    """Checks every argument; returns (layer, scale) as the engines take them (scale 0.0: 1 / sqrt(d)).

    q: [batch, heads, n, d]; k, v: [batch, kv_heads, n, d] with heads a multiple of kv_heads.
    Raises TypeError (wrong kind of argument), ValueError (wrong shape, dtype or value) or
    NotImplementedError (a device sparsa.torch does not run on yet), each naming the argument.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{_WHERE}: {name} must be a torch.Tensor [batch, heads, n, d], not {_describe(t)}")
    if not isinstance(masks, _sparsa.MaskSet):
        raise TypeError(f"{_WHERE}: masks must be a sparsa.MaskSet (from sparsa.compile() or sparsa.load()), "
                        f"not {_describe(masks)}")
    if isinstance(layer, bool) or not isinstance(layer, numbers.Integral):
        raise TypeError(f"{_WHERE}: layer must be an integer (the mask set's layer), not {_describe(layer)}")
    if isinstance(threads, bool) or not isinstance(threads, numbers.Integral):
        raise TypeError(f"{_WHERE}: threads must be an integer (0 for all cores), not {_describe(threads)}")
    if threads < 0:
        raise ValueError(f"{_WHERE}: threads = {threads} is negative (0 uses all cores)")
    if scale is not None:
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
            raise TypeError(f"{_WHERE}: scale must be a number or None (for 1 / sqrt(d)), not {_describe(scale)}")
        if not math.isfinite(scale) or scale == 0:
            raise ValueError(f"{_WHERE}: scale = {scale} is not usable (give a finite, non-zero number, "
                             "or None for 1 / sqrt(d))")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"{_WHERE}: {name}: expected 4 dimensions [batch, heads, n, d], got shape {tuple(t.shape)}")
    if q.dtype not in _DTYPES:
        raise ValueError(f"{_WHERE}: q: dtype {q.dtype} is not supported (use torch.float32; float16, bfloat16 "
                         "and float64 work too)")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise ValueError(f"{_WHERE}: {name}: dtype {t.dtype} differs from q's {q.dtype} "
                             f"(give q, k and v one dtype, e.g. {name}.to(q.dtype))")
    for name, t in (("k", k), ("v", v)):
        if t.device != q.device:
            raise ValueError(f"{_WHERE}: {name} is on {t.device} but q is on {q.device} (put q, k and v on one device)")
    if q.device.type == "cuda":
        raise NotImplementedError(
            f"{_WHERE}: q is a CUDA tensor, and sparsa.torch runs only on the CPU so far: the GPU forward "
            "and backward are issue 15's next part (move the tensors with .cpu(), or use "
            "sparsa.attention_cuda on numpy arrays for a forward pass alone)")
    if q.device.type != "cpu":
        raise NotImplementedError(f"{_WHERE}: q is on {q.device}; sparsa.torch runs on CPU tensors (move them with .cpu())")
    if tuple(v.shape) != tuple(k.shape):
        raise ValueError(f"{_WHERE}: v: shape {tuple(v.shape)} differs from k's {tuple(k.shape)} "
                         "(k and v are both [batch, kv_heads, n, d])")
    if min(q.shape) < 1 or min(k.shape) < 1:
        t, name = (q, "q") if min(q.shape) < 1 else (k, "k")
        raise ValueError(f"{_WHERE}: {name}: shape {tuple(t.shape)} has an empty dimension "
                         "(each of batch, heads, n, d must be >= 1)")
    batch, heads, n, d = q.shape
    if (k.shape[0], k.shape[2], k.shape[3]) != (batch, n, d):
        raise ValueError(f"{_WHERE}: k: shape {tuple(k.shape)} does not match q's {tuple(q.shape)} in batch, n or d "
                         "(k and v are [batch, kv_heads, n, d] with q's batch, n and d)")
    if heads % k.shape[1] != 0:
        raise ValueError(f"{_WHERE}: k: {k.shape[1]} heads do not divide q's {heads} (grouped-query attention needs "
                         "q's heads to be a multiple of k's and v's; query head h uses key head h // (q heads / k heads))")
    if heads != masks.heads:
        raise ValueError(f"{_WHERE}: q: {heads} heads but the mask set has {masks.heads} (one mask per query head: "
                         f"set `heads {heads}` in the script)")
    if n != masks.n:
        raise ValueError(f"{_WHERE}: q: n = {n} but the mask set was compiled for n = {masks.n} "
                         f"(compile the script with n={n})")
    if not 0 <= layer < masks.layers:
        raise ValueError(f"{_WHERE}: layer {layer} is out of range: the mask set has {masks.layers} "
                         f"layer{'' if masks.layers == 1 else 's'} (0..{masks.layers - 1})")
    return int(layer), 0.0 if scale is None else float(scale)


# [SECTION] numpy calls


def _compute_dtype(dtype):
    """float64 runs the reference in double; everything else the float32 engine."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _array(t, dtype):
    """A tensor as a numpy array of `dtype`, sharing memory where it can (any strides: the module
    gathers them into C order, once)."""
    return t.detach().to(dtype).numpy()


def _forward_arrays(q, k, v, masks, layer, scale, threads):
    """(o, lse): o [batch, heads, n, d] and lse [batch, heads, n] in the compute dtype (float32 for
    the engine, float64 for the reference); -inf lse and zero o on rows with no allowed key.
    k, v: [batch, kv_heads, n, d], repeated to q's heads (head h reads kv head h // group)."""
    compute = _compute_dtype(q.dtype)
    group = q.shape[1] // k.shape[1]
    qa, ka, va = (_array(t, compute) for t in (q, k, v))
    if group > 1:
        ka, va = np.repeat(ka, group, axis=1), np.repeat(va, group, axis=1)
    run = _sparsa.reference if compute == torch.float64 else _sparsa.attention
    o, lse = run(qa, ka, va, masks, layer=layer, scale=scale, threads=threads)
    return torch.from_numpy(o), torch.from_numpy(lse)


def _backward_arrays(q, k, v, o, lse, d_o, masks, layer, scale, threads):
    """(dq, dk, dv) in q's dtype: the gradients of sum(d_o * o). o and lse as _forward_arrays gave
    them (the reference recomputes them and reads neither). dk, dv: [batch, kv_heads, n, d], each
    the sum over its group of query heads."""
    compute = _compute_dtype(q.dtype)
    batch, kv_heads, n, d = k.shape
    group = q.shape[1] // kv_heads
    qa, ka, va, doa = (_array(t, compute) for t in (q, k, v, d_o))
    if group > 1:
        ka, va = np.repeat(ka, group, axis=1), np.repeat(va, group, axis=1)
    if compute == torch.float64:
        dq, dk, dv = _sparsa.reference_backward(qa, ka, va, doa, masks, layer=layer, scale=scale, threads=threads)
    else:
        dq, dk, dv = _sparsa.attention_backward(qa, ka, va, _array(o, compute), _array(lse, compute), doa, masks,
                                                layer=layer, scale=scale, threads=threads)
    if group > 1:
        dk = dk.reshape(batch, kv_heads, group, n, d).sum(axis=2)
        dv = dv.reshape(batch, kv_heads, group, n, d).sum(axis=2)
    return tuple(torch.from_numpy(np.ascontiguousarray(g)).to(q.dtype) for g in (dq, dk, dv))


# [SECTION] autograd


class _AttentionFunction(torch.autograd.Function):
    """Every torch: forward runs the engine (or the reference) and saves o and lse; backward runs
    its backward. Not twice differentiable (gradgradcheck does not apply)."""

    @staticmethod
    def forward(ctx, q, k, v, masks, layer, scale, threads):
        o, lse = _forward_arrays(q, k, v, masks, layer, scale, threads)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.arguments = (masks, layer, scale, threads)
        return o.to(q.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_o):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = _backward_arrays(q, k, v, o, lse, d_o, *ctx.arguments)
        wanted = ctx.needs_input_grad
        return (dq if wanted[0] else None, dk if wanted[1] else None, dv if wanted[2] else None, None, None, None, None)


# The custom op takes its mask set as an integer key (an op's arguments are tensors and plain
# values): the key of a live MaskSet, dropped when the MaskSet is collected.
_masks_by_key = {}


def _masks_key(masks):
    key = id(masks)
    if key not in _masks_by_key:
        _masks_by_key[key] = weakref.ref(masks, lambda _, key=key: _masks_by_key.pop(key, None))
    return key


def _masks_get(key):
    ref = _masks_by_key.get(key)
    masks = ref() if ref is not None else None
    if masks is None:
        raise RuntimeError(f"sparsa::attention: mask set {key} is gone (keep the MaskSet alive while a compiled "
                           "model that uses it runs)")
    return masks


def _custom_op_register():
    """sparsa::attention and sparsa::attention_backward as torch.library custom ops (torch 2.4+):
    CPU kernels, fake implementations giving the outputs' shapes, and autograd. None on older torch."""
    if not hasattr(torch.library, "custom_op"):
        return None
    Tensor = torch.Tensor

    @torch.library.custom_op("sparsa::attention", mutates_args=(), device_types="cpu")
    def attention_op(q: Tensor, k: Tensor, v: Tensor, masks_key: int, layer: int, scale: float,
                     threads: int) -> tuple[Tensor, Tensor]:
        o, lse = _forward_arrays(q, k, v, _masks_get(masks_key), layer, scale, threads)
        return o.to(q.dtype), lse

    @attention_op.register_fake
    def _(q, k, v, masks_key, layer, scale, threads):
        return (torch.empty(q.shape, dtype=q.dtype, device=q.device),
                torch.empty(q.shape[:3], dtype=_compute_dtype(q.dtype), device=q.device))

    @torch.library.custom_op("sparsa::attention_backward", mutates_args=(), device_types="cpu")
    def attention_backward_op(q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor, d_o: Tensor, masks_key: int,
                              layer: int, scale: float, threads: int) -> tuple[Tensor, Tensor, Tensor]:
        return _backward_arrays(q, k, v, o, lse, d_o, _masks_get(masks_key), layer, scale, threads)

    @attention_backward_op.register_fake
    def _(q, k, v, o, lse, d_o, masks_key, layer, scale, threads):
        return tuple(torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v))

    def setup_context(ctx, inputs, output):
        q, k, v, masks_key, layer, scale, threads = inputs
        ctx.save_for_backward(q, k, v, *output)
        ctx.arguments = (masks_key, layer, scale, threads)

    def backward(ctx, d_o, d_lse):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = attention_backward_op(q, k, v, o, lse, d_o, *ctx.arguments)
        return dq, dk, dv, None, None, None, None

    attention_op.register_autograd(backward, setup_context=setup_context)
    return attention_op


_attention_op = _custom_op_register()
custom_op_registered = _attention_op is not None   # True where torch has torch.library.custom_op (2.4+)

# [SECTION] attention


def attention(q, k, v, masks, layer=0, scale=None, *, threads=0):
    """Attention of q over k and v where layer `layer` of `masks` allows it, differentiable in q, k and v.

    q: [batch, heads, n, d]; k, v: [batch, kv_heads, n, d] with heads a multiple of kv_heads
    (grouped-query attention: query head h reads key/value head h // (heads // kv_heads), as
    repeat_interleave would give; their gradients are summed over each group). Head h uses mask
    (layer, h): masks.heads must equal q's heads and masks.n must equal n. Any strides are accepted.
    scale: None for 1 / sqrt(d). threads: the engine's worker threads, 0 for all cores.
    Returns o [batch, heads, n, d] in q's dtype; a row with no allowed key gives zeros (and zero gradients).

    float32 runs the CPU engine forward and backward; float16 and bfloat16 are upcast to float32 for
    it and cast back; float64 runs the double-precision dense reference forward and backward (slow on
    purpose: torch.autograd.gradcheck in float64 checks sparsa's gradients against finite
    differences). CUDA tensors raise NotImplementedError (the GPU path is issue 15's next part).
    Not twice differentiable. Errors: TypeError and ValueError naming the argument (see
    docs/torch.md); sparsa.Error from the engines for NaN or Inf inputs and scores that would overflow.
    """
    layer, scale = _arguments_check(q, k, v, masks, layer, scale, threads)
    if _attention_op is not None:
        return _attention_op(q, k, v, _masks_key(masks), layer, scale, int(threads))[0]
    return _AttentionFunction.apply(q, k, v, masks, layer, scale, int(threads))
