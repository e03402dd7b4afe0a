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
  bfloat16 / float16 CUDA        the CUDA engine's tensor-core kernels, forward and backward (d = 64 or 128), on
                                 the current CUDA stream, with the layer's masks uploaded once per device
  float32 CUDA tensors           the CUDA engine's simple float32 kernels (any d up to 256): right, but slow
                                 (no tensor cores); use bfloat16 or float16 for speed

Importing this module needs torch; `import sparsa` alone never imports it. Where torch has
torch.library.custom_op (2.4 and newer) the operator is also registered as sparsa::attention with
CPU and CUDA kernels and a fake implementation, so torch.compile traces it without a graph break;
on older torch (Debian's 1.13) it is a torch.autograd.Function. Both run the same checks and the
same engine calls below.

Index
  [SECTION] checks        every argument, before anything runs; errors name the argument
  [SECTION] numpy calls   the CPU engines on torch tensors: GQA expansion, gradients summed over each group
  [SECTION] cuda calls    the CUDA engine on device pointers: masks cached per (MaskSet, layer, device), the
                          current stream, GQA as on the CPU
  [SECTION] autograd      torch.autograd.Function (every torch) and the custom op (torch 2.4+)
  [SECTION] attention     the public function
  [SECTION] top-k         select_top_k and attention_top_k: per-input block selections on masks uploaded once
                          (forward only)
"""

try:
    import torch
except ImportError as _error:
    raise ImportError(
        "sparsa.torch needs PyTorch, which this Python cannot import "
        f"({_error}); install it (Debian: apt install python3-torch; elsewhere: pip install torch). "
        "The rest of sparsa works without it") from _error

import atexit
import math
import numbers
import weakref

import numpy as np

import sparsa as _sparsa
from sparsa._arguments import describe as _describe

__all__ = ["attention", "attention_top_k", "select_top_k", "TopK", "top_k_masks", "custom_op_registered"]

_WHERE = "sparsa.torch.attention()"
_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

# [SECTION] checks


def _arguments_check(q, k, v, masks, layer, scale, threads):
    """Checks every argument; returns (layer, scale, key) as the engines take them (scale 0.0: 1 / sqrt(d);
    key: the mask set's in _masks_by_key).

    q: [batch, heads, n, d]; k, v: [batch, kv_heads, n, d] with heads a multiple of kv_heads.
    Raises TypeError (wrong kind of argument), ValueError (wrong shape, dtype or value),
    NotImplementedError (a device other than CPU and CUDA) or RuntimeError (CUDA tensors and a
    sparsa built without the CUDA engine), each naming the argument.
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
    if q.device.type not in ("cpu", "cuda"):
        raise NotImplementedError(f"{_WHERE}: q is on {q.device}; sparsa.torch runs on CPU and CUDA tensors "
                                  "(move them with .cpu() or .cuda())")
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
    key, sizes = _masks_entry(masks)   # the MaskSet's heads, n and layers as plain values (torch.compile)
    if heads != sizes.heads:
        raise ValueError(f"{_WHERE}: q: {heads} heads but the mask set has {sizes.heads} (one mask per query head: "
                         f"set `heads {heads}` in the script)")
    if n != sizes.n:
        raise ValueError(f"{_WHERE}: q: n = {n} but the mask set was compiled for n = {sizes.n} "
                         f"(compile the script with n={n})")
    if not 0 <= layer < sizes.layers:
        raise ValueError(f"{_WHERE}: layer {layer} is out of range: the mask set has {sizes.layers} "
                         f"layer{'' if sizes.layers == 1 else 's'} (0..{sizes.layers - 1})")
    if q.device.type == "cuda":
        _cuda_check(q)
    return int(layer), 0.0 if scale is None else float(scale), key


def _cuda_check(q):
    """What the CUDA engine runs: this build has it, bfloat16 / float16 at d = 64 or 128 (the
    tensor-core kernels), float32 at any d up to 256 (the simple kernels); no float64."""
    d = q.shape[3]
    if not _sparsa.cuda_built:
        raise RuntimeError(f"{_WHERE}: q is a CUDA tensor but this sparsa was built without the CUDA engine "
                           "(no nvcc when it was configured, or -DSPARSA_CUDA=OFF): rebuild with the CUDA toolkit, "
                           "or move the tensors with .cpu()")
    if q.dtype == torch.float64:
        raise ValueError(f"{_WHERE}: q: dtype torch.float64 runs on the CPU only (the double-precision reference); "
                         "on the GPU use torch.bfloat16 or torch.float16 (tensor cores, d = 64 or 128), or "
                         "torch.float32 (any d up to 256, slowly)")
    if q.dtype != torch.float32 and d not in (64, 128):
        raise ValueError(f"{_WHERE}: q: head dimension d = {d} with {q.dtype} on the GPU: its tensor-core kernels "
                         "run d = 64 or 128 (make the heads 64 or 128 wide, or use torch.float32 on the GPU, "
                         "which runs any d up to 256, slowly)")
    if d > 256:
        raise ValueError(f"{_WHERE}: q: head dimension d = {d} is above 256 (split the heads: the CUDA engine "
                         "runs d up to 256)")


# [SECTION] numpy calls


def _compute_dtype(dtype):
    """float64 runs the reference in double; everything else the float32 engine."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _array(t, dtype):
    """A tensor as a numpy array of `dtype`, sharing memory where it can (any strides: the module
    gathers them into C order, once)."""
    return t.detach().to(dtype).numpy()


def _host_arrays(q, k, v, dtype):
    """q, k, v as host numpy arrays of `dtype`, k and v repeated to q's heads (grouped-query
    attention: head h reads kv head h // group), as the engines' array calls take them."""
    group = q.shape[1] // k.shape[1]
    qa, ka, va = (t.detach().to(dtype).cpu().numpy() for t in (q, k, v))
    if group > 1:
        ka, va = np.repeat(ka, group, axis=1), np.repeat(va, group, axis=1)
    return qa, ka, va


def _forward_arrays(q, k, v, masks, layer, scale, threads):
    """(o, lse): o [batch, heads, n, d] and lse [batch, heads, n] in the compute dtype (float32 for
    the engine, float64 for the reference); -inf lse and zero o on rows with no allowed key.
    k, v: [batch, kv_heads, n, d], repeated to q's heads (head h reads kv head h // group)."""
    compute = _compute_dtype(q.dtype)
    qa, ka, va = _host_arrays(q, k, v, compute)
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


# [SECTION] cuda calls

# Live mask sets by integer key (id(masks)), as _MasksEntry objects: the custom op takes its mask
# set as such a key (an op's arguments are tensors and plain values); the entry keeps the set's
# sizes as plain Python values, which torch.compile reads without calling into the module, and its
# layers uploaded to the GPU, {(layer, device index): _sparsa._CudaLayerMasks}. The entry, and with
# it the device copies, goes when the MaskSet is collected (the weakref's callback); freeing device
# memory waits for the kernels still running (cudaFree synchronizes), so a launch in flight is safe.
_masks_by_key = {}


class _MasksEntry:
    def __init__(self, masks, key):
        self.ref = weakref.ref(masks, lambda _, key=key: _masks_by_key.pop(key, None))
        self.heads, self.n, self.layers = masks.heads, masks.n, masks.layers
        self.on_device = {}
        # layers with a content-based head (lsh, anchors, favor): on CUDA the content engine runs them
        self.content_layers = {l for l, heads in enumerate(masks.content) if any(h is not None for h in heads)}


def _compile_disable(fn):
    """torch.compiler.disable where torch has it (2.1+): the function runs outside any graph."""
    compiler = getattr(torch, "compiler", None)
    return compiler.disable(fn) if compiler is not None and hasattr(compiler, "disable") else fn


@_compile_disable
def _masks_register(masks, key):
    # Outside the graph: under torch.compile the first call with a new MaskSet breaks the graph
    # here once; the recompile that follows (the registry changed) has no break.
    _masks_by_key[key] = _MasksEntry(masks, key)


def _masks_entry(masks):
    """(key, entry) of a MaskSet, registered on first sight."""
    key = id(masks)
    if key not in _masks_by_key:
        _masks_register(masks, key)
    return key, _masks_by_key[key]


def _masks_key(masks):
    return _masks_entry(masks)[0]


def _masks_get(key):
    entry = _masks_by_key.get(key)
    masks = entry.ref() if entry is not None else None
    if masks is None:
        raise RuntimeError(f"sparsa::attention: mask set {key} is gone (keep the MaskSet alive while a compiled "
                           "model that uses it runs)")
    return masks


def _cached_on_device(masks, key, device, make):
    """make() on `device` (a CUDA torch.device) the first time (key, device) is asked of `masks`, the
    same object afterwards; kept in the MaskSet's entry, so freed with the MaskSet."""
    on_device = _masks_entry(masks)[1].on_device
    index = device.index if device.index is not None else torch.cuda.current_device()
    found = on_device.get((*key, index))
    if found is None:
        with torch.cuda.device(index):
            found = make()
        on_device[(*key, index)] = found
    return found


def _cuda_layer_masks(masks, layer, device):
    """Layer `layer` of `masks` on `device`: uploaded on the first call, the same object afterwards,
    freed with the MaskSet."""
    return _cached_on_device(masks, (layer,), device, lambda: _sparsa._sparsa._CudaLayerMasks(masks, layer))


def _device_tensor(t):
    """t as the kernels read it: C-order and 16-byte aligned (a contiguous view can start anywhere)."""
    t = t.contiguous()
    return t if t.data_ptr() % 16 == 0 else t.clone()


def _kv_to_query_heads(q, k, v):
    """k and v repeated to q's heads on the device (grouped-query attention: head h reads kv head
    h // group)."""
    group = q.shape[1] // k.shape[1]
    if group > 1:
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    return k, v


def _cuda_inputs(q, k, v, scale):
    """(q, k, v, scale) for the device call: k and v repeated to q's heads (grouped-query
    attention), a negative scale moved into k (the kernels take scale > 0; 0 is 1 / sqrt(d))."""
    k, v = _kv_to_query_heads(q, k, v)
    if scale < 0:
        k, scale = -k, -scale
    return _device_tensor(q), _device_tensor(k), _device_tensor(v), scale


_CUDA_DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}


def _cuda_content_layer(masks, layer, d, device):
    """Layer `layer` of `masks` for the CUDA content engine on device pointers (its heads' numbers
    drawn or read from the specs' files once), cached beside the uploaded fixed layers."""
    return _cached_on_device(masks, ("content", layer, d), device, lambda: _sparsa._sparsa._CudaContentLayer(masks, layer, d))


def _forward_content_cuda(q, k, v, masks, layer, scale):
    """(o, lse) of a layer with content-based heads on the CUDA content engine (engine/cuda/content/content_cuda.hpp),
    forward only. On device pointers (CudaContentAttention::forward_device: the inputs copied on the
    device, no host round trip), which that engine runs on the legacy default stream: another current
    stream is synchronised before and after. A layer with fixed blocks beside its content heads goes
    through host copies (sparsa.attention_cuda on float32 arrays: the engine's fixed pass needs them)."""
    content = _cuda_content_layer(masks, layer, q.shape[-1], q.device)
    if content.has_fixed:
        qa, ka, va = _host_arrays(q, k, v, torch.float32)
        o, lse = _sparsa.attention_cuda(qa, ka, va, masks, layer=layer, dtype=_CUDA_DTYPE_NAMES[q.dtype], scale=scale)
        return torch.from_numpy(o).to(q.device, q.dtype), torch.from_numpy(np.ascontiguousarray(lse)).to(q.device)
    batch, heads, n, d = q.shape
    k, v = _kv_to_query_heads(q, k, v)   # not _cuda_inputs: a negative scale must not flip k, whose rows lsh hashes
    qc, kc, vc = _device_tensor(q), _device_tensor(k), _device_tensor(v)
    o = torch.empty((batch, heads, n, d), dtype=q.dtype, device=q.device)
    lse = torch.empty((batch, heads, n), dtype=torch.float32, device=q.device)
    stream = torch.cuda.current_stream(q.device)
    with torch.cuda.device(q.device):
        if stream.cuda_stream != 0:
            stream.synchronize()
        content.forward(masks, qc.data_ptr(), kc.data_ptr(), vc.data_ptr(), o.data_ptr(), lse.data_ptr(), batch, heads, n, d,
                        _CUDA_DTYPE_NAMES[q.dtype], scale)
        if stream.cuda_stream != 0:
            torch.cuda.synchronize(q.device)
    return o, lse


def _forward_cuda(q, k, v, masks, layer, scale):
    """(o, lse): o [batch, heads, n, d] in q's dtype, lse [batch, heads, n] float32 (-inf on rows
    with no allowed key), launched on the current stream of q's device; a layer with content-based
    heads through _forward_content_cuda."""
    if layer in _masks_entry(masks)[1].content_layers:
        return _forward_content_cuda(q, k, v, masks, layer, scale)
    batch, heads, n, d = q.shape
    qc, kc, vc, scale = _cuda_inputs(q, k, v, scale)
    o = torch.empty((batch, heads, n, d), dtype=q.dtype, device=q.device)
    lse = torch.empty((batch, heads, n), dtype=torch.float32, device=q.device)
    on_device = _cuda_layer_masks(masks, layer, q.device)
    with torch.cuda.device(q.device):
        on_device.forward(qc.data_ptr(), kc.data_ptr(), vc.data_ptr(), o.data_ptr(), lse.data_ptr(), batch, heads, n,
                          d, _CUDA_DTYPE_NAMES[q.dtype], scale, torch.cuda.current_stream().cuda_stream)
    return o, lse


def _backward_cuda(q, k, v, o, lse, d_o, masks, layer, scale):
    """(dq, dk, dv) in q's dtype: dq [batch, heads, n, d]; dk, dv [batch, kv_heads, n, d], each
    the sum over its group of query heads. A float32 workspace of batch * heads * n holds
    D = rowsum(dO * O)."""
    if layer in _masks_entry(masks)[1].content_layers:
        raise NotImplementedError(f"{_WHERE}: layer {layer} has content-based heads (lsh, anchors, favor), which run forward "
                                  "only on the GPU (the CUDA content engine has no backward): train through them on the CPU "
                                  "(float32 or float64 tensors), or wrap the call in torch.no_grad()")
    batch, heads, n, d = q.shape
    kv_heads = k.shape[1]
    qc, kc, vc, device_scale = _cuda_inputs(q, k, v, scale)
    oc, lse_c, d_oc = _device_tensor(o), _device_tensor(lse), _device_tensor(d_o.to(q.dtype))
    dq = torch.empty((batch, heads, n, d), dtype=q.dtype, device=q.device)
    dk, dv = torch.empty_like(dq), torch.empty_like(dq)
    delta = torch.empty(batch * heads * n, dtype=torch.float32, device=q.device)
    on_device = _cuda_layer_masks(masks, layer, q.device)
    with torch.cuda.device(q.device):
        on_device.backward(qc.data_ptr(), kc.data_ptr(), vc.data_ptr(), oc.data_ptr(), lse_c.data_ptr(),
                           d_oc.data_ptr(), dq.data_ptr(), dk.data_ptr(), dv.data_ptr(), delta.data_ptr(), batch,
                           heads, n, d, _CUDA_DTYPE_NAMES[q.dtype], device_scale,
                           torch.cuda.current_stream().cuda_stream)
    if scale < 0:
        dk = -dk   # the kernels saw -k
    if heads != kv_heads:
        group = heads // kv_heads
        dk = dk.view(batch, kv_heads, group, n, d).sum(dim=2)
        dv = dv.view(batch, kv_heads, group, n, d).sum(dim=2)
    return dq, dk, dv


def _forward(q, k, v, masks, layer, scale, threads):
    """(o, lse) by device, as the backward wants them: on the CPU in the compute dtype (float32 for
    half inputs: the caller casts o), on the GPU o in q's dtype and lse in float32."""
    if q.device.type == "cuda":
        return _forward_cuda(q, k, v, masks, layer, scale)
    return _forward_arrays(q, k, v, masks, layer, scale, threads)


def _backward(q, k, v, o, lse, d_o, masks, layer, scale, threads):
    if q.device.type == "cuda":
        return _backward_cuda(q, k, v, o, lse, d_o, masks, layer, scale)
    return _backward_arrays(q, k, v, o, lse, d_o, masks, layer, scale, threads)


if hasattr(_sparsa._sparsa, "_cuda_shutdown"):   # built with the CUDA engine
    # At exit the device copies are left to the process's end rather than freed while PyTorch and
    # the CUDA runtime tear down (bind_cuda.cpp).
    atexit.register(_sparsa._sparsa._cuda_shutdown)


# [SECTION] autograd


class _AttentionFunction(torch.autograd.Function):
    """Every torch: forward runs the engine (or the reference) and saves o and lse; backward runs
    its backward. Not twice differentiable (gradgradcheck does not apply)."""

    @staticmethod
    def forward(ctx, q, k, v, masks, layer, scale, threads):
        o, lse = _forward(q, k, v, masks, layer, scale, threads)
        o = o.to(q.dtype)   # saved as returned: D = rowsum(dO * O) uses the O the caller got, as the custom op's does
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.arguments = (masks, layer, scale, threads)
        return o

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_o):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = _backward(q, k, v, o, lse, d_o, *ctx.arguments)
        wanted = ctx.needs_input_grad
        return (dq if wanted[0] else None, dk if wanted[1] else None, dv if wanted[2] else None, None, None, None, None)


def _custom_op_register():
    """sparsa::attention and sparsa::attention_backward as torch.library custom ops (torch 2.4+):
    CPU and CUDA kernels, fake implementations giving the outputs' shapes, and autograd. None on
    older torch."""
    if not hasattr(torch.library, "custom_op"):
        return None
    Tensor = torch.Tensor

    @torch.library.custom_op("sparsa::attention", mutates_args=(), device_types="cpu")
    def attention_op(q: Tensor, k: Tensor, v: Tensor, masks_key: int, layer: int, scale: float,
                     threads: int) -> tuple[Tensor, Tensor]:
        o, lse = _forward_arrays(q, k, v, _masks_get(masks_key), layer, scale, threads)
        return o.to(q.dtype), lse

    @attention_op.register_kernel("cuda")
    def _(q, k, v, masks_key, layer, scale, threads):
        return _forward_cuda(q, k, v, _masks_get(masks_key), layer, scale)

    @attention_op.register_fake
    def _(q, k, v, masks_key, layer, scale, threads):
        # lse: float64 for float64 (the CPU reference), else float32 (the engines' softmax)
        return (torch.empty(q.shape, dtype=q.dtype, device=q.device),
                torch.empty(q.shape[:3], dtype=_compute_dtype(q.dtype), device=q.device))

    @torch.library.custom_op("sparsa::attention_backward", mutates_args=(), device_types="cpu")
    def attention_backward_op(q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor, d_o: Tensor, masks_key: int,
                              layer: int, scale: float, threads: int) -> tuple[Tensor, Tensor, Tensor]:
        return _backward_arrays(q, k, v, o, lse, d_o, _masks_get(masks_key), layer, scale, threads)

    @attention_backward_op.register_kernel("cuda")
    def _(q, k, v, o, lse, d_o, masks_key, layer, scale, threads):
        return _backward_cuda(q, k, v, o, lse, d_o, _masks_get(masks_key), layer, scale)

    @attention_backward_op.register_fake
    def _(q, k, v, o, lse, d_o, masks_key, layer, scale, threads):
        return tuple(torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v))

    def setup_context(ctx, inputs, output):
        q, k, v, masks_key, layer, scale, threads = inputs
        ctx.save_for_backward(q, k, v, *output)
        ctx.arguments = (masks_key, layer, scale, threads)
        # The graph holds the MaskSet until backward (a temporary one, as in
        # attention(q, k, v, sparsa.compile(...)), would be gone by then); the autograd.Function
        # path holds it the same way.
        entry = _masks_by_key.get(masks_key)
        ctx.masks = entry.ref() if entry is not None else None

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

    On the CPU: float32 runs the CPU engine forward and backward; float16 and bfloat16 are upcast to
    float32 for it and cast back; float64 runs the double-precision dense reference forward and
    backward (slow on purpose: torch.autograd.gradcheck in float64 checks sparsa's gradients against
    finite differences). On a CUDA device: bfloat16 and float16 run the CUDA engine's tensor-core
    kernels (d = 64 or 128; mask blocks of 64, 128 or 256, smaller blocks fall back to the simple
    kernels), float32 the simple float32 kernels (any d up to 256: right but slow, no tensor cores),
    on torch.cuda.current_stream(); the layer's masks are uploaded on the first call and kept on
    the device until the MaskSet is collected; threads is ignored; float64 is refused.
    Not twice differentiable. Errors: TypeError and ValueError naming the argument (see
    docs/torch.md); sparsa.Error from the engines for NaN or Inf inputs and scores that would
    overflow (the CPU engine; the GPU path reads no values back, so it does not check them).
    """
    layer, scale, key = _arguments_check(q, k, v, masks, layer, scale, threads)
    if _attention_op is not None:
        return _attention_op(q, k, v, key, layer, scale, int(threads))[0]
    return _AttentionFunction.apply(q, k, v, masks, layer, scale, int(threads))


# [SECTION] top-k

# (n, batch * heads, block, keep, device index) -> (layout MaskSet, _CudaLayerMasks, gather index)
_top_k_layouts = {}


def _top_k_gather(blocks, keep, device):
    """Where each row's kept entries sit in top [.., blocks * keep] once sorted: row r's first min(keep, r + 1)."""
    r = torch.arange(blocks, device=device)[:, None]
    j = torch.arange(keep, device=device)[None, :]
    return (r * keep + j)[j < torch.clamp(r + 1, max=keep)]


def _top_k_columns(top, gather):
    """The layout's col_idx from a selection: each row's blocks ascending (its diagonal last: every
    kept block is at most r, the ignored ones above it), concatenated row by row, head by head (int32)."""
    blocks, keep = top.shape[-2], top.shape[-1]
    ordered = torch.sort(top.reshape(-1, blocks, keep).to(torch.int32), dim=-1).values
    return ordered.reshape(-1, blocks * keep)[:, gather].reshape(-1).contiguous()


def _top_k_check(top, blocks):
    """ValueError unless every row r of top holds r, and its other blocks are distinct and below r
    (rows r < keep - 1: the entries above r are ignored). Reads top back: for tests."""
    keep = top.shape[-1]
    t = top.reshape(-1, blocks, keep).long()
    r = torch.arange(blocks, device=t.device)[None, :, None]
    valid = t <= r
    if bool((t < 0).any()):
        raise ValueError("sparsa.torch.attention_top_k(): top holds a negative block")
    if not bool((t == r).any(-1).all()):
        raise ValueError("sparsa.torch.attention_top_k(): a row of top lacks its own (diagonal) block")
    counts = valid.sum(-1)
    if not bool((counts == torch.clamp(r[..., 0] + 1, max=keep)).all()):
        raise ValueError("sparsa.torch.attention_top_k(): a row of top keeps a block twice or too few causal blocks")
    ordered = torch.sort(torch.where(valid, t, torch.full_like(t, blocks)), dim=-1).values
    if bool(((ordered[..., 1:] == ordered[..., :-1]) & (ordered[..., 1:] < blocks)).any()):
        raise ValueError("sparsa.torch.attention_top_k(): a row of top keeps a block twice")


class TopK:
    """A selection as select_top_k makes it, for attention_top_k: shape (batch, heads, blocks) and keep;
    on CUDA `columns`, the top-k layout's key blocks written on the device (int32, each row's kept
    blocks ascending, its own last, row by row, head by head), else `top`, the blocks as
    sparsa.selectors.top_k_blocks gives them (int64 [batch, heads, blocks, keep])."""

    __slots__ = ("shape", "keep", "columns", "top")

    def __init__(self, shape, keep, columns=None, top=None):
        self.shape, self.keep, self.columns, self.top = tuple(shape), int(keep), columns, top

    def __repr__(self):
        where = "columns" if self.columns is not None else "top"
        return f"sparsa.torch.TopK(shape={list(self.shape)}, keep={self.keep}, as {where})"


def _top_k_entries(blocks, keep):
    """Kept blocks of one head's causal top-k layout: row r keeps min(keep, r + 1)
    (engine/cuda/select/top_k_columns.hpp, top_k_columns_per_head)."""
    return blocks * (blocks + 1) // 2 if blocks <= keep else keep * (keep + 1) // 2 + (blocks - keep) * keep


def select_top_k(scores, keep):
    """Each causal row's own block and its keep - 1 best-scoring blocks below it, from block scores
    [batch, heads, blocks, blocks] (entries above the diagonal are not read), as attention_top_k takes
    them: a TopK. The kept blocks are sparsa.selectors.top_k_blocks(scores, keep)'s: by score, equal
    scores to the lower block, a NaN above every number (with keep or more NaNs in a row that function
    drops the row's own block; this one never does).

    On a CUDA device (blocks up to 4,096) one kernel ranks every row and writes the kept blocks
    straight into the top-k layout's columns (engine/cuda/select/top_k_columns.hpp): top_k_blocks and
    attention_top_k's reordering of its result take about ten launches for the same. Elsewhere, and
    for more blocks, it is top_k_blocks. No host step either way: it can run in a CUDA graph."""
    if not isinstance(scores, torch.Tensor) or scores.dim() != 4 or scores.shape[-1] != scores.shape[-2]:
        raise ValueError("sparsa.torch.select_top_k(): scores must be a tensor [batch, heads, blocks, blocks], got "
                         f"{list(scores.shape) if isinstance(scores, torch.Tensor) else _describe(scores)}")
    batch, heads, blocks = scores.shape[:3]
    if isinstance(keep, bool) or not isinstance(keep, numbers.Integral) or not 1 <= keep <= blocks:
        raise ValueError(f"sparsa.torch.select_top_k(): keep must be an integer from 1 to blocks = {blocks}, got {keep!r}")
    if batch * heads < 1:
        raise ValueError(f"sparsa.torch.select_top_k(): scores {list(scores.shape)} hold no grid")
    keep = int(keep)
    if scores.device.type == "cuda" and hasattr(_sparsa._sparsa, "_cuda_top_k_columns") \
            and blocks <= _sparsa._sparsa._cuda_top_k_max_blocks:
        s = scores.float().contiguous()   # no copy for float32 contiguous scores
        columns = torch.empty(batch * heads * _top_k_entries(blocks, keep), dtype=torch.int32, device=scores.device)
        with torch.cuda.device(scores.device):
            _sparsa._sparsa._cuda_top_k_columns(s.data_ptr(), batch * heads, blocks, keep, columns.data_ptr(),
                                                torch.cuda.current_stream().cuda_stream)
        return TopK((batch, heads, blocks), keep, columns=columns)
    from sparsa.selectors import top_k_blocks
    return TopK((batch, heads, blocks), keep, top=top_k_blocks(scores, keep))


def top_k_masks(top, n, block):
    """The MaskSet of a selection on the host: top [.., blocks, keep] (as attention_top_k takes it)
    as a grid, one mask per leading index (batch x heads), cut to causal (sparsa.learn.block_masks).
    What attention_top_k does on the CPU; on the GPU it is the host step that path avoids."""
    blocks, keep = top.shape[-2], top.shape[-1]
    grid = torch.zeros(top.numel() // (blocks * keep), blocks, blocks, dtype=torch.bool)
    grid.scatter_(-1, top.reshape(-1, blocks, keep).long().cpu(), True)
    return _sparsa.learn.block_masks(grid.numpy(), n, block, True)


def attention_top_k(q, k, v, top, block, scale=None, *, check=False):
    """Causal attention where query block r reads the key blocks listed in top[.., r, :]: forward only.

    q: [batch, heads, n, d]; k, v: [batch, kv_heads, n, d] (grouped-query attention as attention()).
    top: an integer tensor [batch, heads, ceil(n / block), keep] on q's device, as
    sparsa.selectors.top_k_blocks returns it: row r lists r itself and keep - 1 distinct blocks below
    r, in any order; a row r < keep - 1 has only r + 1 causal blocks, and its entries above r are
    ignored. Or a TopK from select_top_k (on CUDA: its columns are used as they are, no reordering). The diagonal block is cut to key <= query. The result is attention() under
    sparsa.learn.block_masks of the same grid (causal), o [batch, heads, n, d] in q's dtype.

    On a CUDA device no mask is built per call: the masks are a top-k layout
    (sparsa.learn.top_k_layout: every row's length known from keep alone), uploaded once per
    (n, batch * heads, block, keep), and each call only sorts top and writes it over the layout's
    key blocks on the device (a 64-query-tile kernel: 15 on Hopper, else 9, else the simple kernel
    1 for float32 or blocks under 64), so it can run inside a CUDA graph. On the CPU the grid
    becomes a MaskSet on the host. Not differentiable (no backward: the transposed masks would
    depend on the selection). check=True verifies an index tensor top first (reads it back; for tests): a row
    without its diagonal, a repeated or a later block is a ValueError; unchecked, such a row
    gives wrong results, and a block out of range reads out of bounds on the GPU."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        raise ValueError("sparsa.torch.attention_top_k(): forward only (no backward for per-input selections); "
                         "call it under torch.no_grad(), or use sparsa.torch.attention with a MaskSet")
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("sparsa.torch.attention_top_k(): q, k and v must be [batch, heads, n, d]")
    batch, heads, n, d = q.shape
    kv_heads = k.shape[1]
    if k.shape != v.shape or k.shape[0] != batch or k.shape[2] != n or k.shape[3] != d or heads % kv_heads:
        raise ValueError(f"sparsa.torch.attention_top_k(): k and v must be [batch, kv_heads, n, d] with kv_heads dividing "
                         f"q's {heads} heads; q is {list(q.shape)}, k {list(k.shape)}, v {list(v.shape)}")
    blocks = -(-n // block)
    columns = None
    if isinstance(top, TopK):
        if top.shape != (batch, heads, blocks):
            raise ValueError(f"sparsa.torch.attention_top_k(): the selection is for [batch, heads, blocks] = {list(top.shape)}, "
                             f"q needs [{batch}, {heads}, {blocks}] (blocks of {block})")
        if top.columns is None:
            top = top.top
        elif top.columns.device != q.device:
            raise ValueError(f"sparsa.torch.attention_top_k(): the selection's columns are on {top.columns.device}, q on {q.device}")
        else:
            columns, keep = top.columns, top.keep
    if columns is None:
        if not isinstance(top, torch.Tensor) or top.dim() != 4 or tuple(top.shape[:3]) != (batch, heads, blocks) \
                or top.shape[3] < 1 or top.shape[3] > blocks:
            got = list(top.shape) if isinstance(top, torch.Tensor) else _describe(top)
            raise ValueError(f"sparsa.torch.attention_top_k(): top must be [batch, heads, ceil(n / block), keep] = "
                             f"[{batch}, {heads}, {blocks}, 1 to {blocks}] or a TopK from select_top_k, got {got}")
        if top.dtype.is_floating_point or top.dtype == torch.bool or top.device != q.device:
            raise ValueError(f"sparsa.torch.attention_top_k(): top must be an integer tensor on {q.device}, "
                             f"got {top.dtype} on {top.device}")
        keep = top.shape[3]
        if check:
            _top_k_check(top, blocks)
    group = heads // kv_heads
    if group > 1:
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    flat = lambda t: t.reshape(1, batch * heads, n, d)  # noqa: E731
    if q.device.type != "cuda":
        masks = top_k_masks(top, n, block)
        with torch.no_grad():
            return attention(flat(q), flat(k), flat(v), masks, 0, scale).reshape(batch, heads, n, d)
    _cuda_check(q)
    if q.dtype not in _CUDA_DTYPE_NAMES:
        raise ValueError(f"sparsa.torch.attention_top_k(): q is {q.dtype}; on the GPU: bfloat16, float16 or float32")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"sparsa.torch.attention_top_k(): q, k and v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    index = q.device.index if q.device.index is not None else torch.cuda.current_device()
    key = (n, batch * heads, block, keep, index)
    entry = _top_k_layouts.get(key)
    if entry is None:
        layout = _sparsa.learn.top_k_layout(n, batch * heads, block, keep)
        with torch.cuda.device(index):
            on_device = _sparsa._sparsa._CudaLayerMasks(layout, 0)
        gather = _top_k_gather(blocks, keep, q.device)
        if gather.numel() * batch * heads != on_device.entries:   # the layout and the gather must agree (once per layout)
            raise RuntimeError(f"sparsa.torch.attention_top_k(): {gather.numel() * batch * heads} columns for a layout of "
                               f"{on_device.entries}")
        entry = (layout, on_device, gather)
        _top_k_layouts[key] = entry
    _, on_device, gather = entry
    if columns is None:
        columns = _top_k_columns(top, gather)
    elif columns.numel() != on_device.entries or columns.dtype != torch.int32:
        raise ValueError(f"sparsa.torch.attention_top_k(): the selection holds {columns.numel()} {columns.dtype} columns, "
                         f"the layout {on_device.entries} int32")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale) or scale == 0):
        raise ValueError(f"sparsa.torch.attention_top_k(): scale = {scale!r} is not usable (a finite, non-zero number, or None "
                         "for 1 / sqrt(d))")
    scale = 0.0 if scale is None else float(scale)   # 0: 1 / sqrt(d), as attention() passes it
    qc, kc, vc, scale = _cuda_inputs(flat(q), flat(k), flat(v), scale)
    o = torch.empty((1, batch * heads, n, d), dtype=q.dtype, device=q.device)
    lse = torch.empty((1, batch * heads, n), dtype=torch.float32, device=q.device)
    with torch.cuda.device(q.device):
        on_device.forward(qc.data_ptr(), kc.data_ptr(), vc.data_ptr(), o.data_ptr(), lse.data_ptr(), 1, batch * heads, n, d,
                          _CUDA_DTYPE_NAMES[q.dtype], scale, torch.cuda.current_stream().cuda_stream, columns.data_ptr())
    return o.reshape(batch, heads, n, d)
