"""Runs bench/gpu_compare.py without a GPU, on this machine's CPU torch (1.13, which has neither
FlexAttention, SDPA's backends, torch.compile nor triton): those are replaced by small dense CPU
stand-ins, so that everything gpu_compare.py does around them (the mask loop, the fair Flex check,
the backward and forward + backward timings with autograd, the slow-case timer, the rows and the
file it writes) runs as on the GPU machine. Times are CPU times and mean nothing.

    /usr/bin/python3 tests/bench/fake_gpu.py [gpu_compare.py's arguments]

Stand-ins: flex_attention evaluates mask_mod on every (query, key) pair (the same mask_mod callables
gpu_compare.py builds) and refuses blocks under 128 with its default tiles, as torch 2.11 does on
Hopper; create_block_mask and BlockMask.from_kv_blocks keep the mask_mod; SDPA is dense or causal
softmax attention whatever the backend (FAKE_SDPA_REFUSE=cudnn-causal-bwd makes cuDNN refuse the
causal backward, to test that a refused case is reported, not fatal); "cuda" tensors are CPU float32
(int32 ones int64: torch 1.13 indexes with int64 only).
"""
import contextlib
import enum
import os
import runpy
import statistics
import sys
import time
import types

import torch

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


def cpu(device):
    return "cpu" if device is not None and str(device).startswith("cuda") else device


def fake_tensors():
    """'cuda' means the CPU, bfloat16 means float32 (CPU bf16 matmuls are slow and lossy)."""
    randn, generator, to = torch.randn, torch.Generator, torch.Tensor.to

    def fake_randn(*size, device=None, dtype=None, generator=None, **kw):
        dtype = torch.float32 if dtype in (None, torch.bfloat16) else dtype
        return randn(*size, device=cpu(device), dtype=dtype, generator=generator, **kw)

    def fake_generator(device="cpu"):
        return generator(device=cpu(device))

    def fake_to(self, *args, **kw):
        to_gpu = any(isinstance(a, str) and a.startswith("cuda") for a in args) or str(kw.get("device", "")).startswith("cuda")
        args = tuple(cpu(a) if isinstance(a, str) else a for a in args)
        if "device" in kw:
            kw["device"] = cpu(kw["device"])
        out = to(self, *args, **kw)
        # torch 2 indexes with int32 tensors (sparsa's block tables), torch 1.13 only with int64
        return out.long() if to_gpu and out.dtype == torch.int32 else out

    torch.randn, torch.Generator, torch.Tensor.to = fake_randn, fake_generator, fake_to


class FakeEvent:
    def __init__(self, enable_timing=True):
        self.t = None

    def record(self):
        self.t = time.perf_counter()

    def synchronize(self):
        pass

    def elapsed_time(self, end):
        return (end.t - self.t) * 1e3


def fake_cuda():
    torch.cuda.get_device_name = lambda i=0: "Fake GPU (CPU stand-ins)"
    torch.cuda.synchronize = lambda *a: None
    torch.cuda.empty_cache = lambda: None
    torch.cuda.reset_peak_memory_stats = lambda *a: None
    torch.cuda.max_memory_allocated = lambda *a: 3 * 2 ** 30
    torch.cuda.Event = FakeEvent


def attention(q, k, v, allowed):
    """softmax(q k^T / sqrt(d), where allowed) v; allowed [heads or 1, n, n]; empty rows give 0."""
    s = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
    s = s.masked_fill(~allowed, float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)
    return p @ v


class BlockMask:
    def __init__(self, mask_mod, block):
        self.mask_mod, self.block = mask_mod, block

    @classmethod
    def from_kv_blocks(cls, *arrays, BLOCK_SIZE=128, mask_mod=None, seq_lengths=None):
        return cls(mask_mod, BLOCK_SIZE)


def create_block_mask(mask_mod, B, H, Q_LEN, KV_LEN, device="cuda"):
    return BlockMask(mask_mod, 128)


def flex_attention(q, k, v, block_mask=None, kernel_options=None):
    n, heads = q.shape[-2], q.shape[1]
    if block_mask is None:
        return attention(q, k, v, torch.ones(1, n, n, dtype=torch.bool))
    if block_mask.block < 128 and not (kernel_options or {}).get("BLOCK_M"):
        raise ValueError(f"Q and KV block size must be divisible by BLOCK_M and BLOCK_N. "
                         f"We got Q_BLOCK_SIZE={block_mask.block} and KV_BLOCK_SIZE={block_mask.block}.")
    qi, ki = torch.arange(n)[:, None], torch.arange(n)[None, :]
    allowed = torch.stack([block_mask.mask_mod(torch.tensor(0), torch.tensor(h), qi, ki).expand(n, n) for h in range(heads)])
    return attention(q, k, v, allowed)


class SDPBackend(enum.Enum):
    CUDNN_ATTENTION = 1
    FLASH_ATTENTION = 2


BACKEND = [None]


@contextlib.contextmanager
def sdpa_kernel(backend):
    BACKEND.append(backend)
    try:
        yield
    finally:
        BACKEND.pop()


def scaled_dot_product_attention(q, k, v, is_causal=False):
    if (os.environ.get("FAKE_SDPA_REFUSE") == "cudnn-causal-bwd" and BACKEND[-1] == SDPBackend.CUDNN_ATTENTION
            and is_causal and q.requires_grad):
        raise RuntimeError("No available kernel. Aborting execution. (FAKE_SDPA_REFUSE)")
    n = q.shape[-2]
    allowed = torch.ones(1, n, n, dtype=torch.bool)
    return attention(q, k, v, allowed.tril() if is_causal else allowed)


def do_bench(fn, warmup=25, rep=100, return_mode="mean"):
    assert return_mode == "median"
    times = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def modules_install():
    attention_mod = types.ModuleType("torch.nn.attention")
    attention_mod.SDPBackend, attention_mod.sdpa_kernel = SDPBackend, sdpa_kernel
    flex_mod = types.ModuleType("torch.nn.attention.flex_attention")
    flex_mod.BlockMask, flex_mod.create_block_mask, flex_mod.flex_attention = BlockMask, create_block_mask, flex_attention
    triton = types.ModuleType("triton")
    testing = types.ModuleType("triton.testing")
    testing.do_bench = do_bench
    triton.testing = testing
    sys.modules.update({"torch.nn.attention": attention_mod, "torch.nn.attention.flex_attention": flex_mod,
                        "triton": triton, "triton.testing": testing})
    torch.nn.functional.scaled_dot_product_attention = scaled_dot_product_attention
    torch.compile = lambda fn, dynamic=None, **kw: fn
    torch._dynamo = types.SimpleNamespace(config=types.SimpleNamespace(recompile_limit=8, accumulated_recompile_limit=256,
                                                                       fail_on_recompile_limit_hit=False))


if __name__ == "__main__":
    torch.set_num_threads(1)   # a shared build machine: one thread is faster than many fighting
    fake_tensors()
    fake_cuda()
    modules_install()
    sys.argv = [os.path.join(REPO, "bench", "gpu_compare.py")] + sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
