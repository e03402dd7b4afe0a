#!/usr/bin/env python3
"""Where the pooled gate's selection spends its time at a model's shape: each kernel of
PooledGate.top_k (the pooling of q and k through each head's map, their product, the top-k),
timed by torch.profiler over --runs calls after a warm-up, beside the whole call's median, the
sparse attention under its blocks and SDPA cuDNN's causal attention in the same run (issue 16's 3x
bar compares selection + attention against that cuDNN time).

    PYTHONPATH=build-torch-gpu/python python3 bench/selection_parts.py [--n 16384] [--heads 16] [--d 128]
        [--block 64] [--density 0.125] [--width 32] [--key-pool mean+max+min] [--runs 20] [-o parts.md]

Random inputs (bfloat16 on CUDA, float32 on the CPU) and an untrained gate: the cost does not
depend on the weights. Prints a table and writes it, with the command and the device, to -o.
"""

import argparse
import os
import sys

import torch
import torch.nn.functional as F

import sparsa.torch as sparsa_torch
from sparsa.ruler_run import _sync, _time_ms
from sparsa.selectors import PooledGate, blocks_per_row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=16384)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--block", type=int, default=64)
    ap.add_argument("--density", type=float, default=0.125)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--key-pool", default="mean+max+min", choices=["mean", "mean+max+min"])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("-o", "--out", help="a Markdown file for the table (written whole)")
    a = ap.parse_args(argv)
    if a.n < a.block or a.runs < 1:
        ap.error(f"--n must be at least --block ({a.block}) and --runs at least 1")

    device = torch.device(a.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    g = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(1, a.heads, a.n, a.d, device=device, dtype=dtype, generator=g) for _ in range(3))
    keep = blocks_per_row(a.density, (a.n + a.block - 1) // a.block)
    gate = PooledGate(1, a.heads, a.d, a.width, a.block, True, 0, device, a.key_pool)
    select = lambda: gate.top_k(0, q, k, keep)  # noqa: E731
    with torch.no_grad():
        top = select()
        select_ms = _time_ms(select, device, a.runs)
        attention_ms = _time_ms(lambda: sparsa_torch.attention_top_k(q, k, v, top, a.block), device, a.runs)
        cudnn_ms = None
        if device.type == "cuda":
            from torch.nn.attention import SDPBackend, sdpa_kernel
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                cudnn_ms = _time_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), device, a.runs)
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as prof:
            for _ in range(a.runs):
                select()
            _sync(device)

    kind = "cuda" if device.type == "cuda" else "cpu"

    def self_us(e):   # torch 2.4+ names the device's time self_device_time_total; older torch self_cuda_time_total
        if kind == "cpu":
            return e.self_cpu_time_total
        return getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)

    rows = []
    for e in prof.key_averages():
        total_us = self_us(e) or 0
        if total_us <= 0 or (kind == "cuda" and e.key.startswith("cuda")):
            continue
        rows.append((total_us / a.runs / 1000, e.count / a.runs, e.key))
    rows.sort(reverse=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    lines = [f"# The pooled gate's selection, kernel by kernel ({name})", "",
             "A cost breakdown, not a quality report: the gate's accuracy beside its trivial baselines (the diagonal "
             "block alone, the identity gate, the best fixed pattern) is sparsa.ruler's report.", "",
             "Command: `python3 bench/selection_parts.py " + " ".join(sys.argv[1:] if argv is None else argv) + "`", "",
             f"Shape [1, {a.heads}, {a.n}, {a.d}] {str(dtype).replace('torch.', '')}, blocks of {a.block}, {keep} kept a row, gate "
             f"width {a.width}, keys {a.key_pool}; medians of {a.runs} calls (wall clock, synchronised):", "",
             f"- selection (PooledGate.top_k): {select_ms:.3f} ms",
             f"- sparse attention under its blocks (sparsa.torch.attention_top_k): {attention_ms:.3f} ms"]
    if cudnn_ms is not None:
        lines.append(f"- SDPA cuDNN, causal: {cudnn_ms:.3f} ms (selection + attention: {cudnn_ms / (select_ms + attention_ms):.2f}x "
                     "faster than it, eager)")
    lines += ["", f"Profiled ({kind} time of each kernel or operation, per call; torch.profiler over {a.runs} calls):", "",
              "| ms a call | calls a call | kernel or operation |", "|---:|---:|---|"]
    lines += [f"| {ms:.4f} | {count:g} | `{key[:120]}` |" for ms, count, key in rows[:25]]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:   # whole or not at all
        with open(a.out + ".tmp", "w") as f:
            f.write(text)
        os.replace(a.out + ".tmp", a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
